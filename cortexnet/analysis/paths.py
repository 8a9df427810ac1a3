"""Path analysis (Veit et al. 2016): a ResNet as a collection of paths of different lengths.

Unrolling n residual blocks ``h <- s(h) + F(h)`` gives 2^n paths from input to output; a path
picks, at every block, either the branch F or the bypass s, and its length is the number of
branches it goes through. C(n, k) paths have length k, so lengths are binomially distributed.

How much gradient do paths of each length carry? For one set S of k units, the backward pass is
routed through the branch of every unit in S and through the bypass of every other unit (the
forward pass is unchanged: the other route is only detached), so the gradient at the input of
the first stage is the gradient of the paths that use exactly the branches in S. Its norm,
averaged over sets S of size k, times C(n, k) is the total gradient magnitude of length-k paths.
For a linear residual network this is exactly the expansion of prod_i (I + W_i) into products
over subsets (see the tests).

Units: the blocks of feedforward stages (the transitions that change shape included, as
ResNet-110's 54 blocks include its two downsampling blocks) and the steps of recurrent stages.
ODE stages have no discrete branches and are not supported.

Run ``python -m cortexnet.analysis.paths RUN_DIR_OR_CHECKPOINT``.
"""

# axes: b batch, c channels, h w space, k classes

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
from cortexnet.analysis.lesion import Unit, units
from cortexnet.models.blocks import ResidualBlock
from cortexnet.models.stages import ODEStage, RecurrentStage

log = logging.getLogger(__name__)


def path_length_distribution(n: int) -> list[float]:
    """Fraction of the 2^n paths of an n-block residual network that have length k = 0..n."""
    if n < 0:
        raise ValueError(f"number of blocks must be >= 0, got {n}")
    return [math.comb(n, k) / 2**n for k in range(n + 1)]


def mass_range(weights: Sequence[float], share: float) -> tuple[int, int]:
    """The shortest range [lo, hi] of indices whose weights hold at least ``share`` of the total.

    Ties go to the range with more mass.
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    total = sum(weights)
    best: tuple[int, int] | None = None
    best_mass = -1.0
    for lo in range(len(weights)):
        mass = 0.0
        for hi in range(lo, len(weights)):
            mass += weights[hi]
            if mass >= share * total - 1e-12 * total:
                width = hi - lo
                if (
                    best is None
                    or width < best[1] - best[0]
                    or (width == best[1] - best[0] and mass > best_mass)
                ):
                    best, best_mass = (lo, hi), mass
                break
    if best is None:
        raise ValueError("weights are empty or sum to zero")
    return best


def _routed_forward(block: ResidualBlock, on: Callable[[int | Tensor], bool]) -> Callable:
    """A forward with the block's output unchanged but its gradient routed by ``on(t)``.

    ``on(t)`` true: the gradient flows through the branch only; false: through the bypass only.
    """

    def forward(x: Tensor, t: int | Tensor = 0) -> Tensor:
        bypass = x if block.shortcut is None else block.shortcut(x)
        if not block.branch_enabled:
            out = bypass
        elif on(t):
            out = bypass.detach() + block.branch(x, t)
        else:
            out = bypass + block.branch(x, t).detach()
        return out if block.preact else F.relu(out)

    return forward


@contextlib.contextmanager
def routed(model: nn.Module, active: Sequence[Unit]) -> Iterator[nn.Module]:
    """Route the backward pass through the branches of ``active`` and the bypasses of the rest.

    Every residual block of the model's stages gets a routed forward while the context is open
    (an instance attribute over the class's method, removed on exit); a block that no unit
    names (an ODE function's block) is left alone.
    """
    stages = dict(model.stages.items())
    active_set = set(active)
    patched: list[ResidualBlock] = []
    try:
        for name, stage in stages.items():
            if isinstance(stage.transition, ResidualBlock):
                on = Unit(name, -1, "transition") in active_set
                stage.transition.forward = _routed_forward(stage.transition, lambda t, on=on: on)
                patched.append(stage.transition)
            if isinstance(stage, ODEStage):
                continue
            for i, block in enumerate(stage.blocks):
                if isinstance(stage, RecurrentStage):
                    steps = {u.index for u in active_set if u.stage == name and u.kind == "step"}
                    fn = lambda t, steps=steps: int(t) in steps  # noqa: E731
                else:
                    on = Unit(name, i, "block") in active_set
                    fn = lambda t, on=on: on  # noqa: E731
                block.forward = _routed_forward(block, fn)
                patched.append(block)
        yield model
    finally:
        for block in patched:
            del block.forward


def input_gradient_norm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> float:
    """Mean per-example norm of the loss gradient at the input of the first stage.

    The model must be in eval mode, so that every example's gradient depends on that example
    alone; the loss is summed over the batch, so each example's gradient is its own.

    Args:
        model: a ResNet-like module with ``stem``, ``stages`` and ``forward_head``.
        x, y: a batch.
        loss: ``loss(logits, y)`` summed over the batch (default: cross-entropy).
    """
    loss = loss or (lambda logits, y: F.cross_entropy(logits, y, reduction="sum"))
    with torch.no_grad():
        h0 = model.stem(x)
    h0 = h0.detach().requires_grad_(True)
    h = h0
    with torch.enable_grad():
        for stage in model.stages.values():
            h = stage(h)
        value = loss(model.forward_head(h), y)
        (grad,) = torch.autograd.grad(value, h0)
    return grad.flatten(1).norm(dim=1).mean().item()


def gradient_by_path_length(
    model: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    samples: int = 8,
    seed: int = 0,
    loss: Callable[[Tensor, Tensor], Tensor] | None = None,
    k_values: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Gradient magnitude carried by paths of each length, as Veit et al. measured it.

    For every k, sets of k units are drawn (all of them when there are at most ``samples``);
    for each set the backward pass goes through exactly those branches (:func:`routed`) and the
    per-example gradient norm at the first stage's input is averaged over the batches.

    Args:
        model: a ResNet in eval mode, without ODE stages.
        batches: (x, y) batches; the gradient is averaged over them.
        samples: sets drawn per path length.
        seed: seed of the draws.
        loss: summed loss (default: cross-entropy).
        k_values: path lengths to measure (default: 0..n).

    Returns:
        ``n``, ``units`` (labels), ``k``, ``per_path`` (mean gradient norm of one path of
        length k), ``total`` (per_path times C(n, k)), ``distribution`` (share of paths),
        ``enumerated`` (whether every set of that size was used) and ``full`` (the ordinary
        gradient norm, every route open).

    Raises:
        NotImplementedError: for a model with ODE stages.
    """
    if any(isinstance(s, ODEStage) for s in model.stages.values()):
        raise NotImplementedError(
            "path analysis needs discrete branches; an ODE stage has none (its field is "
            "integrated by a solver); use model=feedforward or model=recurrent"
        )
    if any(getattr(s, "recall", None) is not None for s in model.stages.values()):
        warnings.warn(
            "a recurrent stage with recall feeds its input into every step, a route that is "
            "neither branch nor bypass; path gradients include it",
            stacklevel=2,
        )
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    all_units = units(model)
    n = len(all_units)
    ks = list(range(n + 1)) if k_values is None else list(k_values)
    bad = [k for k in ks if not 0 <= k <= n]
    if bad:
        raise ValueError(f"path lengths {bad} are outside 0..{n}")
    rng = random.Random(seed)

    def norm_for(active: Sequence[Unit]) -> float:
        with routed(model, active):
            vals = [input_gradient_norm(model, x, y, loss) * len(y) for x, y in batches]
        return sum(vals) / sum(len(y) for _, y in batches)

    per_path, enumerated = [], []
    for k in ks:
        count = math.comb(n, k)
        if count <= samples:
            sets = list(itertools.combinations(range(n), k))
        else:
            seen: set[tuple[int, ...]] = set()
            while len(seen) < samples:
                seen.add(tuple(sorted(rng.sample(range(n), k))))
            sets = sorted(seen)
        per_path.append(sum(norm_for([all_units[i] for i in s]) for s in sets) / len(sets))
        enumerated.append(count <= samples)
        log.info("k=%d: %d sets, mean path gradient %.3g", k, len(sets), per_path[-1])
    full = sum(input_gradient_norm(model, x, y, loss) * len(y) for x, y in batches) / sum(
        len(y) for _, y in batches
    )
    dist = path_length_distribution(n)
    return {
        "n": n,
        "units": [u.label for u in all_units],
        "k": ks,
        "per_path": per_path,
        "total": [p * math.comb(n, k) for p, k in zip(per_path, ks)],
        "distribution": [dist[k] for k in ks],
        "enumerated": enumerated,
        "full": full,
    }


def summarize(result: dict[str, Any], share: float = 0.9, path_share: float = 0.95) -> dict:
    """Ranges of path lengths: where ``path_share`` of the paths lie and where ``share`` of the
    total gradient comes from (the effective paths), and the length carrying the most."""
    n, ks = result["n"], result["k"]
    out = {"share": share, "path_share": path_share}
    lo, hi = mass_range(path_length_distribution(n), path_share)
    out["paths_range"] = [lo, hi]
    if ks == list(range(n + 1)):
        lo, hi = mass_range(result["total"], share)
        out["effective_range"] = [lo, hi]
        out["peak"] = int(max(range(len(ks)), key=lambda i: result["total"][i]))
    return out


def run_paths(
    source: Source,
    out: str | Path | None = None,
    samples: int = 8,
    seed: int = 0,
    logger: str = "auto",
    batches: int = 1,
    share: float = 0.9,
) -> dict[str, Any]:
    """Path analysis of a loaded run: JSON, figure and a wandb analysis run.

    Args:
        source: the loaded run.
        out: output folder (default: RUN_DIR/analysis).
        samples: sets drawn per path length.
        seed: seed of the draws.
        logger: wandb mode.
        batches: evaluation batches the gradient is averaged over.
        share: share of the total gradient the effective range must hold.

    Returns:
        The result, with ``json``, ``figure`` and ``wandb`` paths added.
    """
    from cortexnet.analysis.plots import plot_paths

    if source.task.kind != "classify":
        raise NotImplementedError(
            f"path analysis scores classification; task {source.data_config.get('name')!r} is "
            "dense (per-pixel); use a classification data set"
        )
    result = gradient_by_path_length(source.model, source.batches[:batches], samples, seed)
    result.update(summarize(result, share))
    result.update(
        source=str(source.checkpoint),
        options={"samples": samples, "seed": seed, "batches": batches, "share": share},
    )
    folder = output_dir(source, out)
    result["figure"] = str(plot_paths(result, folder / "paths.png", title=source.name))
    curves = [
        ("paths/distribution", result["k"], result["distribution"], "length", "share of paths",
         "path length distribution"),
        ("paths/per_path", result["k"], result["per_path"], "length", "gradient norm",
         "gradient norm of one path of each length"),
        ("paths/total", result["k"], result["total"], "length", "gradient norm",
         "total gradient norm of the paths of each length"),
    ]  # fmt: skip
    summary = {"paths/n": result["n"], "paths/full_gradient": result["full"]}
    if "effective_range" in result:
        summary["paths/effective_lo"], summary["paths/effective_hi"] = result["effective_range"]
    result["wandb"] = log_analysis(
        source, "paths", folder, logger, curves, summary, result["options"]
    )
    result["json"] = str(write_json(result, folder / "paths.json"))
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m cortexnet.analysis.paths RUN_DIR_OR_CHECKPOINT [options]``."""
    prog = "cortexnet.analysis.paths"
    p = base_parser(prog, "Path-length distribution and gradient carried by paths of each length.")
    p.add_argument("--samples", type=int, default=8, help="sets of branches drawn per length")
    p.add_argument("--batches", type=int, default=1, help="evaluation batches to average over")
    p.add_argument("--share", type=float, default=0.9, help="gradient share of effective paths")
    args = p.parse_args(argv)

    def body() -> None:
        torch.set_num_threads(args.threads)
        for name, value, ok in (
            ("--samples", args.samples, args.samples >= 1),
            ("--batches", args.batches, args.batches >= 1),
            ("--share", args.share, 0 < args.share <= 1),
        ):
            if not ok:
                raise AnalysisError(
                    f"{name}={value} is invalid: {name} must be "
                    + ("in (0, 1]" if name == "--share" else ">= 1")
                )
        source = load_source(args.source, batch_size=128, max_eval=args.max_eval)
        r = run_paths(source, args.out, args.samples, args.seed, args.logger, args.batches,
                      args.share)  # fmt: skip
        print(f"{r['n']} units; {100 * r['path_share']:.0f}% of paths have length "
              f"{r['paths_range'][0]}-{r['paths_range'][1]}")  # fmt: skip
        if "effective_range" in r:
            lo, hi = r["effective_range"]
            print(f"{100 * r['share']:.0f}% of the total gradient comes from paths of length "
                  f"{lo}-{hi} (peak at {r['peak']})")  # fmt: skip
        print(f"results: {r['json']}\nfigure: {r['figure']}")
        if r["wandb"]:
            print(f"wandb: {r['wandb']}")

    cli_main(prog, body)


if __name__ == "__main__":
    main()
