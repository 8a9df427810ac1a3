"""The training loop in plain PyTorch: one process, one device (CPU, or a GPU when present).

Order of record: every epoch's metrics go to ``metrics.jsonl`` in the run directory first, then
to wandb; checkpoints (last and best) are written atomically after each epoch.
"""

# axes: t step, b batch, k classes

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from cortexnet.analysis.profile import profile_model
from cortexnet.models import ResNet, create_model
from cortexnet.tracking import MetricsLog, Tracker, flatten
from cortexnet.train import checkpoint as ckpt
from cortexnet.train.config import validate
from cortexnet.train.fastpath import FastPath
from cortexnet.train.schedule import build_schedule
from cortexnet.train.tasks import Task, build_task

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("trainer.device=cuda but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def build_model(model_cfg: Any, task: Task) -> nn.Module:
    """A model from the ``model`` config: registered by name, or a ResNet from arguments.

    Keys left at None keep the model's own defaults; the data decide input channels, classes
    and, for dense tasks, the pixel head.
    """
    cfg = (
        OmegaConf.to_container(model_cfg, resolve=True)
        if isinstance(model_cfg, DictConfig)
        else dict(model_cfg)
    )
    name = cfg.pop("name", None)
    ode = {k: v for k, v in (cfg.pop("ode", None) or {}).items() if v is not None}
    kwargs = {k: v for k, v in cfg.items() if v is not None}
    if ode:
        kwargs["ode"] = ode
    kwargs.update(in_channels=task.in_channels, num_classes=task.num_classes)
    if task.kind == "pixel":
        kwargs.setdefault("head", "pixel")
    for key in ("blocks_per_stage", "widths", "num_steps", "dynamics", "strides", "area_names"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    if name is None:
        return ResNet(**kwargs)
    return create_model(name, **kwargs)


def _readouts(model: nn.Module, x: torch.Tensor, loss_kind: str, num_steps=None) -> torch.Tensor:
    """(t, b, ...) logits when every step is needed, else (1, b, ...)."""
    if loss_kind == "mean":
        return model.forward_steps(x, num_steps)
    return model(x)[None] if num_steps is None else model(x, num_steps=num_steps)[None]


def train_epoch(model, task, optimizer, schedule, cfg, device, autocast, epoch: int) -> dict:
    """One pass over the training stream; returns loss, accuracy and throughput."""
    model.train()
    task.train.set_epoch(epoch)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    nfe_backward = 0
    began = time.perf_counter()
    # disable=None: a bar only on a terminal, so logs and CI output stay readable.
    bar = tqdm(
        task.train,
        desc=f"epoch {epoch + 1}",
        leave=False,
        disable=None if cfg.progress else True,
        dynamic_ncols=True,
    )
    for x, y in bar:
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)  # as the weights are
        with autocast:
            steps = _readouts(model, x, cfg.loss)  # t b k
            loss = torch.stack([task.loss(s, x, y) for s in steps]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        schedule.step()
        nfe_backward += _nfe(model)["nfe_backward"]
        total_loss += loss.detach() * len(y)
        correct += task.correct(steps[-1].detach().float(), x, y).sum()
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - began
    if not math.isfinite(total_loss.item()):
        raise FloatingPointError(
            f"training loss became {total_loss.item()} in epoch {epoch + 1}; lower optim.lr or "
            "set trainer.grad_clip"
        )
    out = {
        "train/loss": total_loss.item() / seen,
        "train/acc": correct.item() / seen,
        "train/images_per_s": seen / elapsed,
        "train/epoch_s": elapsed,
        "train/lr": optimizer.param_groups[0]["lr"],
    }
    if _has_ode(model):
        out["ode/nfe_backward"] = nfe_backward / max(1, len(task.train))
    return out


def _nfe(model) -> dict[str, int]:
    return model.nfe() if hasattr(model, "nfe") else {"nfe_forward": 0, "nfe_backward": 0}


def _has_ode(model) -> bool:
    return "ode" in getattr(model, "dynamics", ())


@torch.no_grad()
def evaluate(model, task: Task, autocast, eval_steps: int | None) -> dict[str, Any]:
    """Accuracy of the trained readout, and at every step (the anytime curve) of each split.

    With ``eval_steps`` the curve comes from running recurrent and ODE stages that many steps;
    ``<split>/acc`` always uses the trained number of steps.
    """
    model.eval()
    out: dict[str, Any] = {}
    nfe = 0
    for split in task.evals:
        hits = None
        curve_hits = None
        for x, y in split.batches:
            with autocast:
                steps = model.forward_steps(x)  # t b k
            nfe = max(nfe, _nfe(model)["nfe_forward"])
            step_hits = torch.stack([task.correct(s.float(), x, y) for s in steps]).sum(1)
            hits = step_hits if hits is None else hits + step_hits
            if eval_steps is not None and eval_steps != steps.shape[0]:
                with autocast:
                    more = model.forward_steps(x, eval_steps)
                more_hits = torch.stack([task.correct(s.float(), x, y) for s in more]).sum(1)
                curve_hits = more_hits if curve_hits is None else curve_hits + more_hits
        curve = (curve_hits if curve_hits is not None else hits).float() / split.size
        out[f"{split.name}/acc"] = hits[-1].item() / split.size
        for t, acc in enumerate(curve.tolist(), start=1):
            out[f"{split.name}/acc_step/{t}"] = acc
    if _has_ode(model):
        out["ode/nfe_forward"] = nfe
    return out


def _curves(metrics: dict[str, Any]) -> dict[str, list[float]]:
    curves: dict[str, list[float]] = {}
    for key, value in metrics.items():
        if "/acc_step/" in key:
            curves.setdefault(key.split("/acc_step/")[0], []).append(value)
    return curves


def run(cfg: DictConfig, run_dir: str | Path, choices: dict[str, str] | None = None) -> dict:
    """Train and evaluate one configuration; returns the run's summary.

    Args:
        cfg: the composed configuration (see :mod:`cortexnet.train.config`).
        run_dir: where metrics.jsonl, checkpoints/ and wandb/ go.
        choices: the config-group choices (for naming the wandb job type).

    Raises:
        ConfigError, ValueError, DatasetError: for bad settings, before any training.
    """
    began = time.perf_counter()
    validate(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t = cfg.trainer
    if t.threads:
        torch.set_num_threads(t.threads)
    device = pick_device(t.device)
    seed_everything(cfg.seed, t.deterministic)
    task = build_task(cfg.data, t.batch_size, cfg.seed, device)
    model = build_model(cfg.model, task)
    fast = FastPath(
        channels_last=t.channels_last,
        compile=t.compile,
        autocast="bf16" if t.precision == "bf16" else "none",
        fused_optimizer=t.fused_optimizer,
        cudnn_benchmark=t.cudnn_benchmark,
    )
    fast.configure_backends(device)
    train_model = fast.apply_model(model, device)  # compiled wrapper when asked; shares weights
    prof = profile_model(model, task.input_size)
    opt_partial = instantiate(cfg.optim)
    optimizer = opt_partial(model.parameters(), **fast.optimizer_kwargs(device, opt_partial.func))
    steps_per_epoch = len(task.train)
    s = cfg.schedule
    schedule = build_schedule(
        optimizer,
        s.name,
        t.epochs * steps_per_epoch,
        steps_per_epoch,
        s.warmup_epochs,
        list(s.milestones),
        s.gamma,
        s.min_lr_ratio,
    )
    autocast = fast.autocast_context(device)

    ckpt_dir = run_dir / "checkpoints"
    start_epoch, best, best_epoch, wandb_id = 0, -1.0, 0, None
    if t.resume and (ckpt_dir / "last.pt").exists():
        state = ckpt.load(ckpt_dir / "last.pt", map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        ckpt.set_rng_state(state["rng"])
        start_epoch, best, best_epoch = state["epoch"], state["best"], state["best_epoch"]
        wandb_id = state.get("wandb_id") or None
        log.info("resumed from %s at epoch %d", ckpt_dir / "last.pt", start_epoch)
    elif t.resume:
        log.warning(
            "trainer.resume=true but %s does not exist; starting afresh", ckpt_dir / "last.pt"
        )

    metrics_log = MetricsLog(run_dir / "metrics.jsonl")
    lg = cfg.logger
    choices = choices or {}
    tracker = Tracker(
        run_dir,
        lg.mode,
        flatten(OmegaConf.to_container(cfg, resolve=True)),
        lg.project,
        lg.entity,
        lg.group,
        lg.job_type or choices.get("model"),
        lg.name,
        list(lg.tags),
        lg.init_timeout,
        run_id=wandb_id,
    )
    summary: dict[str, Any] = {"params": prof["params"], "flops": prof["flops"]}
    last: dict[str, Any] = {}
    throughput: list[float] = []
    epoch = start_epoch
    exit_code = 1
    try:
        for epoch in range(start_epoch, t.epochs):
            record: dict[str, Any] = {"epoch": epoch + 1}
            record.update(
                train_epoch(train_model, task, optimizer, schedule, t, device, autocast, epoch)
            )
            throughput.append(record["train/images_per_s"])
            final = epoch + 1 == t.epochs
            if final or (epoch + 1) % t.eval_every == 0:
                record.update(evaluate(model, task, autocast, t.eval_steps))
                score = record[f"{task.evals[0].name}/acc"]
                if score > best:
                    best, best_epoch = score, epoch + 1
                    record["best"] = True
            metrics_log.write(record)
            tracker.log(record, step=epoch + 1)
            last = record
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "rng": ckpt.rng_state(),
                "epoch": epoch + 1,
                "best": best,
                "best_epoch": best_epoch,
                "wandb_id": tracker.run_id or "",
                "model_config": OmegaConf.to_container(cfg.model, resolve=True),
                "data_config": OmegaConf.to_container(cfg.data, resolve=True),
            }
            if final or (epoch + 1) % t.checkpoint_every == 0:
                ckpt.save_atomic(state, ckpt_dir / "last.pt")
            if record.get("best"):
                ckpt.save_atomic(state, ckpt_dir / "best.pt")
            if t.stop_after is not None and epoch + 1 - start_epoch >= t.stop_after and not final:
                ckpt.save_atomic(state, ckpt_dir / "last.pt")
                log.info(
                    "stopping after %d epochs as asked (trainer.stop_after); resume with "
                    "trainer.resume=true",
                    t.stop_after,
                )
                summary["stopped_at_epoch"] = epoch + 1
                break
        exit_code = 0
    finally:
        for name, curve in _curves(last).items():
            tracker.log_curve(
                f"{name}/anytime",
                list(range(1, len(curve) + 1)),
                curve,
                "step",
                "accuracy",
                f"{name}: accuracy against steps",
                step=epoch + 1,
            )
        summary.update(
            {
                "best_acc": best,
                "best_epoch": best_epoch,
                "final_acc": last.get(f"{task.evals[0].name}/acc", float("nan")),
                "images_per_s": float(np.median(throughput)) if throughput else float("nan"),
                "epochs": last.get("epoch", start_epoch),
                "wall_s": time.perf_counter() - began,
            }
        )
        summary.update(
            {k: v for k, v in last.items() if k.endswith("/acc") or k.startswith("ode/")}
        )
        if _curves(last):
            summary["anytime"] = _curves(last)
        tracker.summary({k: v for k, v in summary.items() if not isinstance(v, dict)})
        summary["wandb_dir"] = tracker.run_path
        summary["wandb_mode"] = tracker.mode
        tracker.finish(exit_code)
        summary["wall_s"] = time.perf_counter() - began
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
