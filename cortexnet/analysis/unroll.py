"""Unroll analysis: accuracy at every step, up to more steps than the model was trained with.

The curve is the training loop's own anytime evaluation (:func:`cortexnet.train.loop.evaluate`
with ``eval_steps``), so the analysis and the logged ``val/acc_step/<t>`` metrics agree. Running
more steps means: a recurrent stage applies its shared blocks more times (per-step norms reuse
the last trained step's statistics), an ODE stage integrates further at the same readout
spacing, a cortex model updates all its areas for more steps. An integer step count overrides
every recurrent and ODE stage of a ResNet, while the curve reads the last stage at each of its
steps; so the curve's early steps differ from the trained anytime curve when earlier stages
are recurrent too, and both are reported. A feedforward model has no steps beyond its blocks:
its curve is the readout after each block of its last stage, and asking it for more steps is an
error.

Run ``python -m cortexnet.analysis.unroll RUN_DIR_OR_CHECKPOINT``.
"""

# axes: t step, b batch, k classes

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cortexnet.analysis.common import (
    AnalysisError,
    Source,
    base_parser,
    cli_main,
    load_source,
    log_analysis,
    output_dir,
    write_json,
)
from cortexnet.models.stages import FeedforwardStage

log = logging.getLogger(__name__)


def trained_steps(model: nn.Module) -> tuple[int, bool]:
    """Steps of the model's anytime readout as built, and whether it can run more.

    Returns:
        (steps of the last stage, or of a cortex model; False for a feedforward last stage).
    """
    stages = getattr(model, "stages", None)
    if isinstance(stages, nn.ModuleDict):
        last = list(stages.values())[-1]
        return last.num_steps, not isinstance(last, FeedforwardStage)
    steps = getattr(model, "num_steps", None)
    if not isinstance(steps, int) or not hasattr(model, "forward_steps"):
        raise NotImplementedError(
            f"{type(model).__name__} has no forward_steps and num_steps; the unroll analysis "
            "needs a ResNet or a CortexNet"
        )
    return steps, True


def unroll_curve(model: nn.Module, task: Any, num_steps: int | None = None) -> dict[str, Any]:
    """Accuracy at every step from 1 to ``num_steps`` (default: as trained), per split.

    Args:
        model: a trained model in eval mode.
        task: the task (its evaluation splits are scored).
        num_steps: steps to run; more than trained extends the curve.

    Returns:
        ``trained_steps``, ``num_steps``, ``curves`` (split -> accuracy at steps 1..num_steps,
        every recurrent and ODE stage run ``num_steps``), ``trained_curves`` (the same with every
        stage as trained; equal to ``curves`` for a one-stage model), ``acc`` (split -> accuracy
        as trained) and, for ODE models, ``nfe_forward``.

    Raises:
        AnalysisError: for more steps than a feedforward model has blocks, or fewer than 1.
    """
    from cortexnet.train.loop import _curves, evaluate

    trained, extendable = trained_steps(model)
    steps = trained if num_steps is None else num_steps
    if steps < 1:
        raise AnalysisError(f"--steps must be >= 1, got {steps}")
    if steps != trained and not extendable:
        raise AnalysisError(
            f"--steps={steps}: a feedforward last stage has {trained} blocks and no weights for "
            "other step counts; omit --steps, or analyse a recurrent, ODE or cortex model"
        )
    as_trained = evaluate(model, task, contextlib.nullcontext(), None)
    metrics = (
        as_trained if steps == trained else evaluate(model, task, contextlib.nullcontext(), steps)
    )
    out: dict[str, Any] = {
        "trained_steps": trained,
        "num_steps": steps,
        "curves": _curves(metrics),
        "trained_curves": _curves(as_trained),
        "acc": {k.split("/")[0]: v for k, v in as_trained.items() if k.endswith("/acc")},
    }
    if "ode/nfe_forward" in metrics:
        out["nfe_forward"] = metrics["ode/nfe_forward"]
    return out


def run_unroll(
    source: Source,
    out: str | Path | None = None,
    num_steps: int | None = None,
    logger: str = "auto",
) -> dict[str, Any]:
    """Unroll analysis of a loaded run: JSON, figure and a wandb analysis run.

    Args:
        source: the loaded run.
        out: output folder (default: RUN_DIR/analysis).
        num_steps: steps to run (default: three times the trained steps, or as trained for a
            feedforward model).
        logger: wandb mode.

    Returns:
        The result, with ``json``, ``figure`` and ``wandb`` paths added.
    """
    from cortexnet.analysis.plots import plot_unroll

    trained, extendable = trained_steps(source.model)
    if num_steps is None:
        num_steps = 3 * trained if extendable else trained
    result = unroll_curve(source.model, source.task, num_steps)
    for split, curve in result["curves"].items():
        best = max(range(len(curve)), key=curve.__getitem__)
        result.setdefault("peak", {})[split] = {"step": best + 1, "acc": curve[best]}
    result.update(
        source=str(source.checkpoint),
        dynamics=list(getattr(source.model, "dynamics", ["cortex"])),
        options={"num_steps": num_steps},
    )
    folder = output_dir(source, out)
    result["figure"] = str(plot_unroll(result, folder / "unroll.png", title=source.name))
    curves = [
        (f"unroll/{split}", list(range(1, len(c) + 1)), c, "step", "accuracy",
         f"{split}: accuracy against steps (trained: {trained})")
        for split, c in result["curves"].items()
    ]  # fmt: skip
    summary = {"unroll/trained_steps": trained, "unroll/num_steps": num_steps}
    for split, c in result["curves"].items():
        summary[f"unroll/{split}/acc_trained"] = c[trained - 1]
        summary[f"unroll/{split}/acc_last"] = c[-1]
    result["wandb"] = log_analysis(
        source, "unroll", folder, logger, curves, summary, result["options"]
    )
    result["json"] = str(write_json(result, folder / "unroll.json"))
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m cortexnet.analysis.unroll RUN_DIR_OR_CHECKPOINT [options]``."""
    prog = "cortexnet.analysis.unroll"
    p = base_parser(prog, "Accuracy at every step, including more steps than trained.")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps to run (default: 3x trained; feedforward: as built)",
    )
    args = p.parse_args(argv)

    def body() -> None:
        torch.set_num_threads(args.threads)
        source = load_source(args.source, max_eval=args.max_eval)
        r = run_unroll(source, args.out, args.steps, args.logger)
        for split, curve in r["curves"].items():
            print(f"{split}: trained {r['trained_steps']} steps")
            for t, acc in enumerate(curve, start=1):
                mark = "  (trained)" if t == r["trained_steps"] else ""
                print(f"  step {t:>3}  {acc:.4f}{mark}")
        print(f"results: {r['json']}\nfigure: {r['figure']}")
        if r["wandb"]:
            print(f"wandb: {r['wandb']}")

    cli_main(prog, body)


if __name__ == "__main__":
    main()
