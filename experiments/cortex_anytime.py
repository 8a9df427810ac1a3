"""Accuracy against processing time: the cortex model with connections B versus BLT.

Trains ``+experiment=cortex_b`` and ``+experiment=cortex_blt`` on the digits (or reads runs
already made), prints the accuracy of IT's readout at every step, trained steps and past them,
and draws both curves into one figure.

    python experiments/cortex_anytime.py --out runs/cortex            # train both, report
    python experiments/cortex_anytime.py --out runs/cortex --report   # report existing runs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PATTERNS = ("b", "blt")


def train(out: Path, overrides: list[str]) -> None:
    for pattern in PATTERNS:
        cmd = [
            sys.executable,
            "-m",
            "cortexnet.train",
            f"+experiment=cortex_{pattern}",
            f"out_dir={out / pattern}",
            *overrides,
        ]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def load(out: Path) -> dict[str, dict]:
    summaries = {}
    for pattern in PATTERNS:
        path = out / pattern / "summary.json"
        if not path.exists():
            raise SystemExit(f"no {path}: train first (drop --report)")
        summaries[pattern] = json.loads(path.read_text())
    return summaries


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


def trained_steps() -> int:
    """The presets' training unroll, read from the composed config."""
    from hydra import compose, initialize_config_dir

    from cortexnet.train.app import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return int(compose("config", ["+experiment=cortex_blt"]).model.num_steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/cortex"), help="runs go here")
    parser.add_argument("--report", action="store_true", help="only report existing runs")
    parser.add_argument("overrides", nargs="*", help="config overrides for both runs")
    args = parser.parse_args()
    if not args.report:
        train(args.out, args.overrides)
    summaries = load(args.out)
    print(report(summaries))
    draw(summaries, args.out / "cortex_anytime.png", trained_steps())


if __name__ == "__main__":
    main()
