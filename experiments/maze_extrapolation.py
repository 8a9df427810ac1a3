"""Does thinking longer solve larger mazes? A recurrent solver against its feedforward twin.

Trains ``+experiment=maze_recurrent`` and ``+experiment=maze_feedforward`` one after the other
(or reads runs already made), then prints, for every test size, the share of mazes solved by
each model at its trained depth and by the recurrent model at its best test-time step, and
draws both models' curves into one figure.

    python experiments/maze_extrapolation.py --out runs/maze            # train both, report
    python experiments/maze_extrapolation.py --out runs/maze --report   # report existing runs
    python experiments/maze_extrapolation.py --out runs/maze trainer.threads=1  # overrides

Each run writes its own ``summary.json`` and ``anytime.png`` in ``<out>/<model>``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import load_summaries, preset_steps, run_presets

MODELS = ("recurrent", "feedforward")


def report(summaries: dict[str, dict], trained: int) -> str:
    """A markdown table: solved share per size, trained depth and best test-time step."""
    rec, ff = summaries["recurrent"], summaries["feedforward"]
    lines = [
        f"| test size | feedforward ({2 * trained} blocks) | recurrent, {trained} steps "
        "| recurrent, best step | recurrent, last step |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, curve in rec["anytime"].items():
        best = max(range(len(curve)), key=lambda t: curve[t])
        lines.append(
            f"| {name.removeprefix('maze')}x{name.removeprefix('maze')} "
            f"| {ff[f'{name}/acc']:.1%} | {rec[f'{name}/acc']:.1%} "
            f"| {curve[best]:.1%} (step {best + 1}) | {curve[-1]:.1%} (step {len(curve)}) |"
        )
    lines.append("")
    lines.append(
        f"training wall clock: recurrent {rec['wall_s'] / 60:.1f} min "
        f"({rec['params']:,} parameters), feedforward {ff['wall_s'] / 60:.1f} min "
        f"({ff['params']:,} parameters); trained steps {trained}"
    )
    return "\n".join(lines)


def draw(summaries: dict[str, dict], trained: int, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = {}
    for model, style in zip(MODELS, ("-", "--")):
        # The twin's block i has the depth of the recurrent model's step i / 2.
        per_step = 1 if model == "recurrent" else 2
        for name, curve in summaries[model]["anytime"].items():
            line = ax.plot(
                [(t + 1) / per_step for t in range(len(curve))],
                curve,
                style,
                color=colors.get(name),
                label=f"{model} {name}",
            )[0]
            colors.setdefault(name, line.get_color())
    ax.axvline(trained, color="gray", linestyle=":", label=f"trained steps ({trained})")
    ax.set_xlabel("step (feedforward: blocks / 2, the same depth)")
    ax.set_ylabel("mazes solved")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    print(f"figure: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/maze"), help="runs go here")
    parser.add_argument("--report", action="store_true", help="only report existing runs")
    parser.add_argument("overrides", nargs="*", help="config overrides for both runs")
    args = parser.parse_args()
    if not args.report:
        presets = {m: f"maze_{m}" for m in MODELS}
        for model, s in run_presets(args.out, presets, args.overrides).items():
            print(f"{model}: {s / 60:.1f} min")
    summaries = load_summaries(args.out, MODELS)
    trained = preset_steps("maze_recurrent")
    print(report(summaries, trained))
    draw(summaries, trained, args.out / "maze_extrapolation.png")


if __name__ == "__main__":
    main()
