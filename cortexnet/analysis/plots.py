"""Figures of the analyses, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _error(acc: float) -> float:
    return 100.0 * (1.0 - acc)


def _lesion_panels(axes, result: dict[str, Any], label: str, color: str) -> None:
    """Draw one lesion result into the four panels (single, random k, swaps, steps or t_end)."""
    single, random_k = result["single"], result["random_k"]
    ax = axes[0]
    if single:
        xs = list(range(1, len(single) + 1))
        ax.plot(xs, [_error(r["acc"]) for r in single], "o-", color=color, ms=3, label=label)
        down = [i for i, r in enumerate(single) if r["kind"] == "transition"]
        ax.plot([xs[i] for i in down], [_error(single[i]["acc"]) for i in down], "s", mfc="none",
                mec=color, ms=8)  # fmt: skip
    ax.axhline(_error(result["baseline"]), color=color, ls=":", lw=1)
    ax = axes[1]
    if random_k:
        ks = [r["k"] for r in random_k]
        mean = [_error(r["mean"]) for r in random_k]
        lo = [_error(r["mean"]) - 100 * r["std"] for r in random_k]
        hi = [_error(r["mean"]) + 100 * r["std"] for r in random_k]
        ax.plot(ks, mean, "o-", color=color, ms=3, label=label)
        ax.fill_between(ks, lo, hi, color=color, alpha=0.2)
    ax = axes[2]
    if result["swaps"]:
        xs = list(range(1, len(result["swaps"]) + 1))
        ax.plot(xs, [_error(r["acc"]) for r in result["swaps"]], "o-", color=color, ms=3,
                label=label)  # fmt: skip
    ax.axhline(_error(result["baseline"]), color=color, ls=":", lw=1)
    ax = axes[3]
    if ax is None:
        return
    for name, curve in result["steps"].items():
        ax.plot([c["num_steps"] for c in curve], [_error(c["acc"]) for c in curve], "o-",
                color=color, ms=3, label=f"{label} {name}: steps run")  # fmt: skip
    for name, curve in result["t_end"].items():
        ax.plot([c["fraction"] for c in curve], [_error(c["acc"]) for c in curve], "^-",
                color=color, ms=3, label=f"{label} {name}: t_end fraction")  # fmt: skip


def plot_lesion(
    result: dict[str, Any] | Sequence[tuple[str, dict[str, Any]]],
    path: str | Path,
    title: str = "",
) -> Path:
    """Test error under lesions: one result, or several (label, result) pairs overlaid.

    Panels: deleting each single unit (squares mark blocks that change shape), deleting k
    random units (band: one standard deviation over draws), swapping neighbouring blocks, and
    running recurrent stages fewer steps or ODE stages for a fraction of their time.
    """
    results = [("", result)] if isinstance(result, dict) else list(result)
    # The fourth panel only when some stage is recurrent or ODE.
    timed = any(r["steps"] or r["t_end"] for _, r in results)
    fig, axes = plt.subplots(1, 4 if timed else 3, figsize=(17 if timed else 13, 3.8))
    axes = list(axes) + ([] if timed else [None])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (label, r), color in zip(results, colors):
        _lesion_panels(axes, r, label, color)
    chance = next((r.get("chance") for _, r in results if r.get("chance")), None)
    axes = [ax for ax in axes if ax is not None]
    for ax in axes:
        if chance:
            ax.axhline(_error(chance), color="grey", ls="--", lw=1)
        ax.set_ylabel("test error (%)")
        ax.set_ylim(bottom=0)
    axes[0].set(xlabel="deleted unit (bottom to top)", title="delete one unit")
    axes[1].set(xlabel="units deleted at random", title="delete k units")
    axes[2].set(xlabel="swapped pair (bottom to top)", title="swap neighbours")
    if timed:
        axes[3].set(xlabel="steps run / t_end fraction", title="fewer steps, shorter time")
    for ax in axes:
        if ax.get_legend_handles_labels()[0] and any(lbl for lbl, _ in results):
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, Path(path))


def plot_paths(result: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Path-length distribution, gradient per path and total gradient per path length."""
    ks = result["k"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].bar(ks, result["distribution"], color="C0")
    axes[0].set(xlabel="path length", ylabel="share of paths", title=f"{result['n']} units")
    axes[1].semilogy(ks, result["per_path"], "o-", ms=3, color="C1")
    axes[1].set(xlabel="path length", ylabel="gradient norm", title="one path of each length")
    axes[2].plot(ks, result["total"], "o-", ms=3, color="C2")
    axes[2].set(xlabel="path length", ylabel="gradient norm", title="all paths of each length")
    if "effective_range" in result:
        lo, hi = result["effective_range"]
        axes[2].axvspan(lo - 0.5, hi + 0.5, color="C2", alpha=0.15,
                        label=f"{100 * result['share']:.0f}% of gradient: {lo}-{hi}")  # fmt: skip
        axes[2].legend(fontsize=8)
    lo, hi = result["paths_range"]
    axes[0].axvspan(lo - 0.5, hi + 0.5, color="C0", alpha=0.15,
                    label=f"{100 * result['path_share']:.0f}% of paths: {lo}-{hi}")  # fmt: skip
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, Path(path))


def plot_unroll(
    result: dict[str, Any] | Sequence[tuple[str, dict[str, Any]]],
    path: str | Path,
    title: str = "",
) -> Path:
    """Accuracy against steps, one line per split (or per labelled result); a dotted line marks
    the trained number of steps."""
    results = [("", result)] if isinstance(result, dict) else list(result)
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, r) in enumerate(results):
        for j, (split, curve) in enumerate(r["curves"].items()):
            name = " ".join(s for s in (label, split) if s)
            color = f"C{(i + j) % 10}"
            ax.plot(range(1, len(curve) + 1), [100 * a for a in curve], "o-", ms=3, label=name,
                    color=color)  # fmt: skip
        ax.axvline(r["trained_steps"], color=f"C{i % 10}", ls=":", lw=1)
    ax.set(xlabel="step", ylabel="accuracy (%)", title=title or "accuracy against steps")
    ax.legend(fontsize=8)
    return _save(fig, Path(path))
