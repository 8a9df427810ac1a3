"""Accuracy against processing time: the cortex model with connections B versus BLT.

Trains ``+experiment=cortex_b`` and ``+experiment=cortex_blt`` on the digits (or reads runs
already made), prints the accuracy of IT's readout at every step, trained steps and past them,
and draws both curves into one figure.

    python experiments/cortex_anytime.py --out runs/cortex            # train both, report
    python experiments/cortex_anytime.py --out runs/cortex --report   # report existing runs
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import load_summaries, preset_steps, run_presets

PATTERNS = ("b", "blt")


def report(summaries: dict[str, dict]) -> str:
    """A markdown table: validation accuracy at every step, one row per connection pattern."""
    steps = max(len(s["anytime"]["val"]) for s in summaries.values())
    lines = [
        "| connections | params | " + " | ".join(f"step {t}" for t in range(1, steps + 1)) + " |",
        "| --- | --- |" + " --- |" * steps,
    ]
    for pattern, s in summaries.items():
        curve = s["anytime"]["val"]
        cells = " | ".join(f"{a:.1%}" for a in curve)
        lines.append(f"| {pattern.upper()} | {s['params']:,} | {cells} |")
    lines.append("")
    lines.append(
        "training wall clock: "
        + ", ".join(f"{p.upper()} {s['wall_s']:.0f} s" for p, s in summaries.items())
    )
    return "\n".join(lines)


def draw(summaries: dict[str, dict], path: Path, trained: int) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for pattern, s in summaries.items():
        curve = s["anytime"]["val"]
        ax.plot(range(1, len(curve) + 1), curve, marker="o", label=pattern.upper())
    ax.axvline(trained, color="gray", linestyle="--", label=f"trained steps ({trained})")
    ax.set_xlabel("step")
    ax.set_ylabel("digits accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"figure: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/cortex"), help="runs go here")
    parser.add_argument("--report", action="store_true", help="only report existing runs")
    parser.add_argument("overrides", nargs="*", help="config overrides for both runs")
    args = parser.parse_args()
    if not args.report:
        run_presets(args.out, {p: f"cortex_{p}" for p in PATTERNS}, args.overrides)
    summaries = load_summaries(args.out, PATTERNS)
    print(report(summaries))
    draw(summaries, args.out / "cortex_anytime.png", preset_steps("cortex_blt"))


if __name__ == "__main__":
    main()
