"""Anytime curves drawn to a PNG: accuracy against steps, one line per evaluation set."""

# axes: t step

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


def plot_anytime(
    curves: Mapping[str, Sequence[float]],
    path: str | Path,
    trained_steps: int | None = None,
    title: str = "accuracy against steps",
) -> Path:
    """Draw accuracy against steps for every evaluation set and save it as a PNG.

    Args:
        curves: accuracy at steps 1, 2, ... keyed by evaluation set (``maze7``, ``val``, ...).
        path: where the PNG goes.
        trained_steps: steps the model was trained with, marked by a dashed vertical line.
        title: the figure title.

    Returns:
        The path written.

    Raises:
        ValueError: when there is no curve, or a curve is empty.
    """
    if not curves or any(len(c) == 0 for c in curves.values()):
        raise ValueError("plot_anytime needs at least one non-empty curve")
    # The Agg canvas directly, not pyplot: no global figure state and no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, curve in curves.items():
        steps = range(1, len(curve) + 1)
        ax.plot(steps, list(curve), label=name, marker="." if len(curve) <= 30 else None)
    if trained_steps is not None:
        ax.axvline(trained_steps, color="gray", linestyle="--", label=f"trained ({trained_steps})")
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    log.info("anytime curves drawn to %s", path)
    return path


__all__ = ["plot_anytime"]
