"""What every analysis shares: loading a trained run, scoring it, the plain-chain control, output.

An analysis takes a run directory (or one of its checkpoints), rebuilds the model and the data
from the configs stored in the checkpoint, and writes ``<name>.json`` and ``<name>.png`` into
``RUN_DIR/analysis/`` and a wandb run of job type ``analysis`` in the source run's group.
"""

# axes: b batch, c channels, h w space, k classes

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from cortexnet.models.blocks import ResidualBlock
from cortexnet.tracking import Tracker, flatten

log = logging.getLogger(__name__)

CHECKPOINT_NAMES = ("last.pt", "best.pt")
LOGGER_MODES = ("auto", "online", "offline", "disabled")


class AnalysisError(ValueError):
    """Bad input to an analysis: a missing checkpoint, an unsupported model or option."""


@dataclass
class Source:
    """A trained model and its evaluation data, rebuilt from a checkpoint.

    Attributes:
        checkpoint: the checkpoint file.
        run_dir: the run directory the checkpoint belongs to.
        model: the network in eval mode, on the CPU.
        task: the task rebuilt from the checkpoint's data config.
        batches: the first evaluation split's batches.
        model_config, data_config: the configs stored in the checkpoint.
        epoch: epochs the model was trained.
        plain_chain: whether the model is the plain-chain control (bypasses removed).
        group, project, entity: the source run's wandb fields (from .hydra/config.yaml).
    """

    checkpoint: Path
    run_dir: Path
    model: nn.Module
    task: Any
    batches: list[tuple[Tensor, Tensor]]
    model_config: dict[str, Any]
    data_config: dict[str, Any]
    epoch: int
    plain_chain: bool = False
    group: str | None = None
    project: str = "cortexnet"
    entity: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.run_dir.name


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """A run directory or a checkpoint file -> (checkpoint file, run directory).

    A run directory gives ``checkpoints/last.pt`` (the final model), else ``checkpoints/best.pt``.

    Raises:
        AnalysisError: when no checkpoint is found, naming the path and what would be valid.
    """
    path = Path(path)
    if path.is_file():
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return path, run_dir
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            for candidate in (path / "checkpoints" / name, path / name):
                if candidate.is_file():
                    return candidate, path
        raise AnalysisError(
            f"no checkpoint in {path}: expected checkpoints/last.pt or checkpoints/best.pt "
            "(a run directory of python -m cortexnet.train) or a .pt file"
        )
    raise AnalysisError(
        f"{path} does not exist: give a run directory with checkpoints/last.pt or a .pt file"
    )


def load_source(path: str | Path, batch_size: int = 256, max_eval: int | None = None) -> Source:
    """Rebuild a trained model and its evaluation data from a run directory or checkpoint.

    Args:
        path: run directory or checkpoint file.
        batch_size: evaluation batch size.
        max_eval: use at most this many evaluation examples (None: all).

    Returns:
        The :class:`Source`, its model in eval mode on the CPU.

    Raises:
        AnalysisError: for a missing or unreadable checkpoint.
    """
    from cortexnet.train import checkpoint as ckpt
    from cortexnet.train.loop import build_model
    from cortexnet.train.tasks import build_task

    file, run_dir = resolve_checkpoint(path)
    try:
        state = ckpt.load(file)
    except Exception as err:
        raise AnalysisError(f"cannot read checkpoint {file}: {type(err).__name__}: {err}") from None
    missing = [k for k in ("model", "model_config", "data_config") if k not in state]
    if missing:
        raise AnalysisError(
            f"checkpoint {file} lacks {', '.join(missing)}; analyses need a checkpoint written "
            "by cortexnet.train"
        )
    data_cfg = OmegaConf.create(state["data_config"])
    task = build_task(data_cfg, batch_size, 0, torch.device("cpu"))
    model = build_model(state["model_config"], task)
    plain = bool(state.get("plain_chain", False))
    if plain:
        make_plain(model)
    model.load_state_dict(state["model"])
    model.eval()
    if max_eval is not None:
        from cortexnet.train.tasks import EvalSet

        task.evals = [EvalSet(e.name, _take(e.batches, max_eval)) for e in task.evals]
    batches = list(task.evals[0].batches)
    group, project, entity = _wandb_fields(run_dir)
    return Source(
        file,
        run_dir,
        model,
        task,
        batches,
        dict(state["model_config"]),
        dict(state["data_config"]),
        int(state.get("epoch", 0)),
        plain,
        group,
        project,
        entity,
    )


def _take(batches: list[tuple[Tensor, Tensor]], n: int) -> list[tuple[Tensor, Tensor]]:
    out, left = [], n
    for x, y in batches:
        if left <= 0:
            break
        out.append((x[:left], y[:left]))
        left -= len(y)
    return out


def _wandb_fields(run_dir: Path) -> tuple[str | None, str, str | None]:
    """The source run's wandb group, project and entity; its folder name when it had no group.

    A single training run has no group; the folder name then ties the analysis runs of one
    training run together.
    """
    group, project, entity = None, "cortexnet", None
    hydra_cfg = run_dir / ".hydra" / "config.yaml"
    if hydra_cfg.is_file():
        try:
            lg = OmegaConf.load(hydra_cfg).get("logger", {}) or {}
            group, entity = lg.get("group"), lg.get("entity")
            project = lg.get("project") or project
        except Exception as err:  # a damaged config must not stop the analysis
            log.warning("could not read %s (%s); using default wandb fields", hydra_cfg, err)
    return group or run_dir.name, project, entity


@torch.no_grad()
def accuracy(
    model: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    correct: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
    **forward_kw: Any,
) -> float:
    """Share of examples ``model(x, **forward_kw)`` gets right.

    Args:
        model: the network (put it in eval mode first).
        batches: (x, y) pairs.
        correct: ``correct(logits, x, y) -> (b,)`` booleans, e.g. ``Task.correct`` (default:
            top-1 classification).
        **forward_kw: passed to the forward, e.g. ``num_steps``.
    """
    hits, seen = 0, 0
    for x, y in batches:
        logits = model(x, **forward_kw)
        ok = correct(logits, x, y) if correct is not None else logits.argmax(dim=1) == y
        hits += int(ok.sum())
        seen += len(y)
    return hits / max(1, seen)


# ---------------------------------------------------------------------------------------------
# The plain-chain control: the same network with every bypass removed.


class _PlainForward:
    """Mixin that turns a residual block into a plain layer: ``relu(branch(x))``.

    Deleting a plain layer (``branch_enabled = False``) passes its input on unchanged, or through
    the block's shortcut where the shape changes, which is how a layer is removed from a chain
    when the shapes allow it.
    """

    def forward(self, x: Tensor, t: int | Tensor = 0) -> Tensor:
        if not self.branch_enabled:
            return x if self.shortcut is None else self.shortcut(x)
        out = self.branch(x, t)
        return out if self.preact else F.relu(out)


_PLAIN_CLASSES: dict[type, type] = {}


def make_plain(model: nn.Module) -> nn.Module:
    """Remove the bypass of every residual block of ``model`` in place; returns the model.

    Each block's class is swapped for a subclass whose forward is ``relu(branch(x))``; weights
    and state-dict keys are unchanged (projection shortcuts keep their unused weights), so a
    checkpoint marked ``plain_chain`` loads into a rebuilt model after this call.
    """
    for module in model.modules():
        if isinstance(module, ResidualBlock) and not isinstance(module, _PlainForward):
            cls = type(module)
            if cls not in _PLAIN_CLASSES:
                _PLAIN_CLASSES[cls] = type(f"Plain{cls.__name__}", (_PlainForward, cls), {})
            module.__class__ = _PLAIN_CLASSES[cls]
    return model


@contextlib.contextmanager
def plain_models() -> Iterator[None]:
    """Make ``cortexnet.train.loop.run`` build plain chains while the context is open.

    The control is trained by the same loop, configs and schedule as the residual network; only
    the model builder is wrapped, so every other setting stays identical.
    """
    from cortexnet.train import loop

    original = loop.build_model

    def build_plain(model_cfg, task):
        return make_plain(original(model_cfg, task))

    loop.build_model = build_plain
    try:
        yield
    finally:
        loop.build_model = original


def mark_plain_checkpoints(run_dir: str | Path) -> None:
    """Record in a run's checkpoints that its model is a plain chain, so analyses rebuild it so."""
    from cortexnet.train import checkpoint as ckpt

    for name in CHECKPOINT_NAMES:
        file = Path(run_dir) / "checkpoints" / name
        if file.is_file():
            state = ckpt.load(file)
            state["plain_chain"] = True
            ckpt.save_atomic(state, file)


# ---------------------------------------------------------------------------------------------
# Output: JSON, figure, wandb.


def output_dir(source: Source, out: str | Path | None) -> Path:
    """``out`` or ``RUN_DIR/analysis``, created."""
    path = Path(out) if out else source.run_dir / "analysis"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(result: dict[str, Any], path: Path) -> Path:
    """Write ``result`` as indented JSON; returns the path."""
    path.write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def log_analysis(
    source: Source,
    analysis: str,
    out_dir: Path,
    mode: str,
    curves: Sequence[tuple[str, list, list, str, str, str]],
    summary: dict[str, Any],
    config: dict[str, Any] | None = None,
) -> str | None:
    """Log an analysis as its own wandb run (job type ``analysis``, the source run's group).

    Each curve goes in as a table and a line plot drawn from it. wandb failures only warn.

    Args:
        source: the analysed run.
        analysis: the analysis name (``lesion``, ``paths``, ``unroll``).
        out_dir: where the wandb files go.
        mode: ``auto``, ``online``, ``offline`` or ``disabled``.
        curves: (key, xs, ys, x name, y name, title) per curve.
        summary: scalars for the run summary.
        config: the analysis options, recorded with the source's configs.

    Returns:
        The wandb run folder, or None when wandb was disabled or failed.
    """
    cfg = {
        "analysis": analysis,
        "source/run_dir": str(source.run_dir),
        "source/checkpoint": str(source.checkpoint),
        "source/epoch": source.epoch,
        "source/plain_chain": source.plain_chain,
        **flatten({"model": source.model_config, "data": source.data_config}),
        **{f"options/{k}": v for k, v in (config or {}).items()},
    }
    tracker = Tracker(
        out_dir,
        mode,
        cfg,
        source.project,
        source.entity,
        source.group,
        "analysis",
        f"{analysis}-{source.name}",
    )
    for key, xs, ys, x_name, y_name, title in curves:
        tracker.log_curve(key, list(xs), list(ys), x_name, y_name, title)
    tracker.summary(summary)
    path = tracker.run_path
    tracker.finish()
    return path


# ---------------------------------------------------------------------------------------------
# Command lines.


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors that list the valid options."""

    def error(self, message: str) -> None:  # noqa: D102
        if message.startswith("unrecognized arguments"):
            valid = sorted(s for a in self._actions for s in a.option_strings if s.startswith("--"))
            message = f"{message}; valid options: {', '.join(valid)}"
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def base_parser(prog: str, description: str) -> ArgumentParser:
    """The options every analysis command takes."""
    p = ArgumentParser(prog=prog, description=description)
    p.add_argument("source", help="run directory of python -m cortexnet.train, or a checkpoint")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/analysis)")
    p.add_argument(
        "--logger", default="auto", choices=LOGGER_MODES, help="wandb mode (auto: offline w/o key)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random draws")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--max-eval", type=int, default=None, help="evaluate on at most N examples")
    return p


def cli_main(prog: str, body) -> None:
    """Run ``body()``, turning bad input into one line on stderr and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from cortexnet.data.errors import DatasetError

    try:
        body()
    except (ValueError, NotImplementedError, DatasetError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
