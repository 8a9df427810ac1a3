"""Lesion study (Veit et al. 2016): delete residual branches, keep the bypasses, measure accuracy.

What a lesion is depends on the stage's dynamics:

- ``feedforward``: delete one block's branch (``branch_enabled = False``); the block then passes
  only its bypass. Also: delete k random branches at once, and swap neighbouring blocks.
- ``recurrent``: the shared block is every step at once, so the unit of a lesion is a step:
  skipping step t disables the shared branches at that step only. Also: run fewer steps.
- ``ode``: integrate for a shorter time (``t_end`` scaled down, same number of readouts).

A plain chain (:func:`cortexnet.analysis.common.make_plain`) is the control: deleting one of its
layers passes the input on unchanged, which a net without bypasses was never trained to expect.

Run ``python -m cortexnet.analysis.lesion RUN_DIR_OR_CHECKPOINT``.
"""

# axes: b batch, c channels, h w space, k classes

from __future__ import annotations

import contextlib
import logging
import math
import random
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from cortexnet.analysis.common import (
    AnalysisError,
    Source,
    accuracy,
    base_parser,
    cli_main,
    load_source,
    log_analysis,
    output_dir,
    write_json,
)
from cortexnet.models.blocks import ResidualBlock
from cortexnet.models.stages import FeedforwardStage, ODEStage, RecurrentStage

log = logging.getLogger(__name__)

T_END_FRACTIONS = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125)


@dataclass(frozen=True)
class Unit:
    """One thing a lesion can delete.

    Attributes:
        stage: the stage's name (``stage1``, ...).
        index: block index in a feedforward stage (-1: its transition), or step of a recurrent
            stage.
        kind: ``block``, ``transition`` (a block that changes width or resolution) or ``step``.
    """

    stage: str
    index: int
    kind: str

    @property
    def label(self) -> str:
        if self.kind == "transition":
            return f"{self.stage}.down"
        if self.kind == "step":
            return f"{self.stage}@t{self.index + 1}"
        return f"{self.stage}.{self.index + 1}"


def _stages(model: nn.Module) -> dict[str, nn.Module]:
    stages = getattr(model, "stages", None)
    if not isinstance(stages, nn.ModuleDict):
        raise NotImplementedError(
            f"{type(model).__name__} has no ResNet stages to lesion; the lesion study needs a "
            "ResNet (model=feedforward, recurrent or ode); use cortexnet.analysis.unroll for it"
        )
    return dict(stages.items())


def units(model: nn.Module, transitions: bool = True) -> list[Unit]:
    """Every deletable unit of a ResNet, bottom to top.

    Args:
        model: a :class:`cortexnet.models.ResNet`.
        transitions: include the blocks that change shape (their bypass is a projection or a
            zero-padded subsampling rather than the identity).

    Returns:
        Blocks of feedforward stages and steps of recurrent stages; ODE stages have none.
    """
    out: list[Unit] = []
    for name, stage in _stages(model).items():
        if transitions and isinstance(stage.transition, ResidualBlock):
            out.append(Unit(name, -1, "transition"))
        if isinstance(stage, FeedforwardStage):
            out.extend(Unit(name, i, "block") for i in range(len(stage.blocks)))
        elif isinstance(stage, RecurrentStage):
            out.extend(Unit(name, t, "step") for t in range(stage.num_steps))
    return out


@contextlib.contextmanager
def lesioned(model: nn.Module, deleted: Sequence[Unit]) -> Iterator[nn.Module]:
    """Delete the branches of ``deleted`` while the context is open; restore them on exit.

    A block or transition unit disables that block's branch; a step unit disables every shared
    branch of its recurrent stage at that step, through a forward pre-hook that reads the step
    index the stage passes to its blocks.
    """
    stages = _stages(model)
    saved: list[tuple[ResidualBlock, bool]] = []
    hooks = []
    skip: dict[str, set[int]] = {}
    try:
        for unit in deleted:
            stage = stages[unit.stage]
            if unit.kind == "step":
                skip.setdefault(unit.stage, set()).add(unit.index)
                continue
            block = stage.transition if unit.kind == "transition" else stage.blocks[unit.index]
            saved.append((block, block.branch_enabled))
            block.branch_enabled = False
        for name, steps in skip.items():
            for block in stages[name].blocks:
                saved.append((block, block.branch_enabled))
                hooks.append(block.register_forward_pre_hook(_step_switch(steps, True)))
        yield model
    finally:
        for handle in hooks:
            handle.remove()
        for block, enabled in reversed(saved):
            block.branch_enabled = enabled


def _step_switch(steps: set[int], enabled: bool) -> Callable:
    def hook(block: ResidualBlock, args: tuple) -> None:
        t = args[1] if len(args) > 1 else 0
        block.branch_enabled = enabled if int(t) not in steps else not enabled

    return hook


@contextlib.contextmanager
def swapped(model: nn.Module, stage: str, i: int) -> Iterator[nn.Module]:
    """Swap blocks ``i`` and ``i + 1`` of a feedforward stage while the context is open."""
    blocks = _stages(model)[stage].blocks
    if not 0 <= i < len(blocks) - 1:
        raise AnalysisError(f"cannot swap blocks {i} and {i + 1} of {stage} ({len(blocks)} blocks)")
    blocks[i], blocks[i + 1] = blocks[i + 1], blocks[i]
    try:
        yield model
    finally:
        blocks[i], blocks[i + 1] = blocks[i + 1], blocks[i]


@contextlib.contextmanager
def shortened(model: nn.Module, stage: str, fraction: float) -> Iterator[nn.Module]:
    """Integrate an ODE stage over ``fraction * t_end`` (same readouts) while the context is
    open."""
    ode = _stages(model)[stage]
    if not isinstance(ode, ODEStage):
        raise AnalysisError(f"{stage} is a {ode.dynamics} stage; only ODE stages have t_end")
    if not 0 < fraction:
        raise AnalysisError(f"t_end fraction must be > 0, got {fraction}")
    t_end = ode.t_end
    ode.t_end = t_end * fraction
    try:
        yield model
    finally:
        ode.t_end = t_end


def lesion_study(
    model: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    correct: Callable | None = None,
    draws: int = 10,
    seed: int = 0,
    max_k: int | None = None,
    t_end_fractions: Sequence[float] = T_END_FRACTIONS,
) -> dict[str, Any]:
    """Accuracy of a trained ResNet under every kind of lesion its stages allow.

    Args:
        model: a ResNet in eval mode.
        batches: evaluation (x, y) batches.
        correct: ``correct(logits, x, y)`` per example (default: top-1).
        draws: random draws per number of deleted units.
        seed: seed of the draws.
        max_k: largest number of units deleted at once (default: all of them).
        t_end_fractions: integration-time fractions tried on ODE stages.

    Returns:
        ``baseline``; ``single`` (one entry per unit, transitions included); ``random_k`` (k
        random non-transition units deleted: mean, std, min and max over draws); ``swaps``
        (neighbouring feedforward blocks); ``steps`` (recurrent stages run with fewer steps);
        ``t_end`` (ODE stages integrated for a fraction of their time).
    """
    acc = lambda: accuracy(model, batches, correct)  # noqa: E731
    out: dict[str, Any] = {"baseline": acc()}
    log.info("baseline accuracy %.4f", out["baseline"])

    out["single"] = []
    for unit in units(model):
        with lesioned(model, [unit]):
            out["single"].append({**asdict(unit), "label": unit.label, "acc": acc()})

    pool = units(model, transitions=False)
    rng = random.Random(seed)
    out["random_k"] = []
    for k in range(1, min(len(pool), max_k or len(pool)) + 1):
        n_draws = min(draws, math.comb(len(pool), k))
        seen: set[tuple[int, ...]] = set()
        scores = []
        while len(scores) < n_draws:  # distinct subsets, so small pools are not over-counted
            pick = tuple(sorted(rng.sample(range(len(pool)), k)))
            if pick in seen:
                continue
            seen.add(pick)
            with lesioned(model, [pool[i] for i in pick]):
                scores.append(acc())
        out["random_k"].append(_spread(k, scores))
    log.info("random deletions: %d values of k", len(out["random_k"]))

    out["swaps"] = []
    out["steps"] = {}
    out["t_end"] = {}
    for name, stage in _stages(model).items():
        if isinstance(stage, FeedforwardStage):
            for i in range(len(stage.blocks) - 1):
                with swapped(model, name, i):
                    out["swaps"].append(
                        {"stage": name, "i": i, "label": f"{name}.{i + 1}<>{i + 2}"}
                    )
                    out["swaps"][-1]["acc"] = acc()
        elif isinstance(stage, RecurrentStage):
            trained = stage.num_steps
            curve = []
            for t in range(1, trained + 1):
                stage.num_steps = t
                try:
                    curve.append({"num_steps": t, "acc": acc()})
                finally:
                    stage.num_steps = trained
            out["steps"][name] = curve
        elif isinstance(stage, ODEStage):
            curve = []
            for f in t_end_fractions:
                with shortened(model, name, f):
                    curve.append({"fraction": f, "t_end": stage.t_end, "acc": acc()})
            out["t_end"][name] = curve
    return out


def _spread(k: int, scores: list[float]) -> dict[str, float]:
    return {
        "k": k,
        "mean": statistics.fmean(scores),
        "std": statistics.pstdev(scores) if len(scores) > 1 else 0.0,
        "min": min(scores),
        "max": max(scores),
        "draws": len(scores),
    }


def run_lesion(
    source: Source,
    out: str | Path | None = None,
    draws: int = 10,
    seed: int = 0,
    logger: str = "auto",
    max_k: int | None = None,
) -> dict[str, Any]:
    """The lesion study of a loaded run: JSON, figure and a wandb analysis run.

    Returns:
        The result, with ``json``, ``figure`` and ``wandb`` paths added.
    """
    from cortexnet.analysis.plots import plot_lesion

    result = lesion_study(source.model, source.batches, source.task.correct, draws, seed, max_k)
    result.update(
        source=str(source.checkpoint),
        plain_chain=source.plain_chain,
        chance=1.0 / source.task.num_classes if source.task.kind == "classify" else None,
        options={"draws": draws, "seed": seed, "max_k": max_k},
    )
    folder = output_dir(source, out)
    stem = "lesion_plain" if source.plain_chain else "lesion"
    result["figure"] = str(plot_lesion(result, folder / f"{stem}.png", title=source.name))
    curves = [
        (
            "lesion/single",
            list(range(1, len(result["single"]) + 1)),
            [r["acc"] for r in result["single"]],
            "unit",
            "accuracy",
            "accuracy after deleting one unit",
        )
    ]
    if result["random_k"]:
        curves.append(
            (
                "lesion/random_k",
                [r["k"] for r in result["random_k"]],
                [r["mean"] for r in result["random_k"]],
                "deleted",
                "accuracy",
                "accuracy after deleting k random units",
            )
        )
    summary = {"lesion/baseline": result["baseline"]}
    if result["single"]:
        summary["lesion/single_min"] = min(r["acc"] for r in result["single"])
        summary["lesion/single_mean"] = statistics.fmean(r["acc"] for r in result["single"])
    result["wandb"] = log_analysis(
        source, "lesion", folder, logger, curves, summary, result["options"]
    )
    result["json"] = str(write_json(result, folder / f"{stem}.json"))
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m cortexnet.analysis.lesion RUN_DIR_OR_CHECKPOINT [options]``."""
    prog = "cortexnet.analysis.lesion"
    p = base_parser(prog, "Lesion study: delete residual branches, skip steps, shorten t_end.")
    p.add_argument("--draws", type=int, default=10, help="random draws per number of deletions")
    p.add_argument("--max-k", type=int, default=None, help="most units deleted at once")
    args = p.parse_args(argv)

    def body() -> None:
        import torch

        torch.set_num_threads(args.threads)
        if args.draws < 1:
            raise AnalysisError(f"--draws must be >= 1, got {args.draws}")
        source = load_source(args.source, max_eval=args.max_eval)
        r = run_lesion(source, args.out, args.draws, args.seed, args.logger, args.max_k)
        print(f"baseline accuracy {r['baseline']:.4f}")
        for row in r["single"]:
            print(f"  delete {row['label']:<14} {row['acc']:.4f}")
        for row in r["random_k"]:
            print(f"  delete {row['k']:>2} random   {row['mean']:.4f} +- {row['std']:.4f}")
        print(f"results: {r['json']}\nfigure: {r['figure']}")
        if r["wandb"]:
            print(f"wandb: {r['wandb']}")

    cli_main(prog, body)


if __name__ == "__main__":
    main()
