"""The training loop in plain PyTorch: one process, one device (CPU, or a GPU when present).

Order of record: every epoch's metrics go to ``metrics.jsonl`` in the run directory first, then
to wandb; checkpoints (last and best) are written atomically after each epoch.
"""

# axes: t step, b batch, k classes

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from cortexnet.analysis.curves import plot_anytime
from cortexnet.analysis.profile import profile_model
from cortexnet.models import ResNet, create_model
from cortexnet.tracking import MetricsLog, Tracker, flatten
from cortexnet.train import checkpoint as ckpt
from cortexnet.train import distributed as dist
from cortexnet.train import recurrent
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


def train_epoch(
    model,
    task,
    optimizer,
    schedule,
    cfg,
    device,
    autocast,
    epoch: int,
    env: dist.DistEnv | None = None,
    stop: dist.StopSignal | None = None,
    partial: dict[str, Any] | None = None,
) -> dict:
    """One pass over the training stream; returns loss, accuracy and throughput.

    Sums are taken over all ranks. When ``stop`` is requested before the last batch, the pass
    ends after the batch in hand and returns ``{"partial": ...}``: the batches done and the
    running sums, from which a resumed run continues the same epoch (``partial``).
    """
    env = env or dist.DistEnv(device=device)
    partial = dict(partial or {})
    if env.rank != 0:
        # The saved sums already cover every rank; only rank 0 carries them on, so the
        # all-reduce at the end of the epoch counts them once.
        partial.update(loss_sum=0.0, correct=0.0, seen=0, nfe_backward=0)
    model.train()
    task.train.set_epoch(epoch)
    total_loss = torch.full((), partial.get("loss_sum", 0.0), device=device)
    correct = torch.full((), partial.get("correct", 0.0), device=device)
    seen = partial.get("seen", 0)
    nfe_backward = partial.get("nfe_backward", 0)
    done = partial.get("batch", 0)
    began = time.perf_counter() - partial.get("elapsed", 0.0)
    batches = iter(task.train)
    if done and not hasattr(task.train, "load_state_dict"):
        # A stream without a position to restore (fresh mazes) is replayed up to it.
        batches = itertools.islice(batches, done, None)
    # disable=None: a bar only on a terminal, so logs and CI output stay readable.
    bar = tqdm(
        batches,
        desc=f"epoch {epoch + 1}",
        total=len(task.train),
        initial=done,
        leave=False,
        disable=None if cfg.progress and env.is_main else True,
        dynamic_ncols=True,
    )
    scheme = recurrent.RecurrentTraining(cfg.loss, cfg.progressive_weight, cfg.tbptt)
    for x, y in bar:
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)  # as the weights are
        with autocast:
            if scheme.active:  # progressive loss or truncated backprop of a recurrent stage
                loss, last_logits = recurrent.training_loss(
                    model, x, lambda out, x=x, y=y: task.loss(out, x, y), scheme
                )
                steps = last_logits[None]  # 1 b k
            else:
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
        done += 1
        if stop is not None and done < len(task.train) and dist.any_rank(stop.requested, env):
            loss_sum, hits, count = dist.all_reduce_sum(
                [total_loss, correct, torch.tensor(float(seen), device=device)], env
            )
            return {
                "partial": {
                    "batch": done,
                    "loss_sum": loss_sum.item(),
                    "correct": hits.item(),
                    "seen": int(count.item()),
                    "nfe_backward": nfe_backward,
                    "elapsed": time.perf_counter() - began,
                }
            }
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - began
    total_loss, correct, count = dist.all_reduce_sum(
        [total_loss, correct, torch.tensor(float(seen), device=device)], env
    )
    seen = int(count.item())
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
def evaluate(
    model, task: Task, autocast, eval_steps: int | None, env: dist.DistEnv | None = None
) -> dict[str, Any]:
    """Accuracy of the trained readout, and at every step (the anytime curve) of each split.

    With ``eval_steps`` the curve comes from running recurrent and ODE stages that many steps;
    ``<split>/acc`` always uses the trained number of steps. Hits are summed over all ranks.
    """
    env = env or dist.DistEnv()
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
        size = split.size
        if env.distributed:
            extra = [] if curve_hits is None else [curve_hits]
            hits, count, *extra = dist.all_reduce_sum(
                [hits, torch.tensor(float(size), device=hits.device), *extra], env
            )
            size = int(count.item())
            curve_hits = extra[0] if extra else None
        curve = (curve_hits if curve_hits is not None else hits).float() / size
        out[f"{split.name}/acc"] = hits[-1].item() / size
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


def _draw_curves(curves: dict[str, list[float]], path: Path, model: nn.Module) -> None:
    # A figure that cannot be drawn must not cost the run its results: they are on disk already.
    try:
        plot_anytime(curves, path, recurrent.trained_steps(model), "accuracy against steps")
    except Exception as err:  # noqa: BLE001
        log.warning("could not draw %s: %s", path, err)


def run(cfg: DictConfig, run_dir: str | Path, choices: dict[str, str] | None = None) -> dict:
    """Train and evaluate one configuration; returns the run's summary.

    Under ``torchrun`` every rank calls this; rank 0's run directory is used by all, and only
    rank 0 writes to it (see :mod:`cortexnet.train.distributed`).

    Args:
        cfg: the composed configuration (see :mod:`cortexnet.train.config`).
        run_dir: where metrics.jsonl, checkpoints/ and wandb/ go.
        choices: the config-group choices (for naming the wandb job type).

    Raises:
        ConfigError, ValueError, DatasetError: for bad settings, before any training.
        SystemExit: after a stop signal, once the checkpoint is written (see StopSignal).
    """
    validate(cfg)
    env = dist.setup(pick_device(cfg.trainer.device))
    try:
        return _run(cfg, Path(dist.broadcast_object(str(run_dir), env)), choices, env)
    finally:
        dist.teardown(env)


def _run(cfg: DictConfig, run_dir: Path, choices: dict[str, str] | None, env) -> dict:
    began = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    t = cfg.trainer
    if t.threads:
        torch.set_num_threads(t.threads)
    device = env.device
    dist.check_sync_bn(t.sync_bn, env)
    seed_everything(cfg.seed, t.deterministic)
    batch_size = dist.per_rank_batch(t.batch_size, env)
    task = build_task(cfg.data, batch_size, cfg.seed, device, env.rank, env.world_size)
    model = build_model(cfg.model, task)
    if t.sync_bn:
        model = dist.convert_sync_batchnorm(model)
    fast = FastPath(
        channels_last=t.channels_last,
        compile=t.compile,
        autocast="bf16" if t.precision == "bf16" else "none",
        fused_optimizer=t.fused_optimizer,
        cudnn_benchmark=t.cudnn_benchmark,
    )
    fast.configure_backends(device)
    train_model = fast.apply_model(model, device)  # compiled wrapper when asked; shares weights
    recurrent.check_model(
        train_model,
        recurrent.RecurrentTraining(t.loss, t.progressive_weight, t.tbptt),
        env.distributed,
    )
    if env.distributed:
        train_model = dist.DataParallelModel(train_model, env)  # averages gradients over ranks
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
    marker = run_dir / PREEMPTED
    start_epoch, best, best_epoch, wandb_id, partial = 0, -1.0, 0, None, None
    # A run stopped by a signal resumes by itself, so a requeued job needs no extra setting.
    resume = t.resume or dist.broadcast_object(marker.exists(), env)
    if resume and not t.resume:
        log.info("%s marks a stopped run: resuming it", marker)
    if resume and (ckpt_dir / "last.pt").exists():
        state = ckpt.load(ckpt_dir / "last.pt", map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        ckpt.set_rng_state(state["rng"])
        start_epoch, best, best_epoch = state["epoch"], state["best"], state["best_epoch"]
        wandb_id = state.get("wandb_id") or None
        if "partial" in state:
            partial = state["partial"]
            if "loader" in state:
                task.train.load_state_dict(state["loader"])
            if not env.is_main:  # rank 0 holds the sums of every rank so far
                partial = {k: v for k, v in partial.items() if k in ("batch", "elapsed")}
        log.info(
            "resumed from %s at epoch %d, batch %d",
            ckpt_dir / "last.pt",
            start_epoch,
            (partial or {}).get("batch", 0),
        )
    elif resume:
        log.warning(
            "trainer.resume=true but %s does not exist; starting afresh", ckpt_dir / "last.pt"
        )

    metrics_log = MetricsLog(run_dir / "metrics.jsonl")
    lg = cfg.logger
    choices = choices or {}
    tracker = Tracker(
        run_dir,
        lg.mode if env.is_main else "disabled",
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
    stop = dist.StopSignal(t.handle_signals).install()
    try:
        for epoch in range(start_epoch, t.epochs):
            record: dict[str, Any] = {"epoch": epoch + 1}
            out = train_epoch(
                train_model,
                task,
                optimizer,
                schedule,
                t,
                device,
                autocast,
                epoch,
                env,
                stop,
                partial,
            )
            partial = None
            if "partial" in out:
                state = _state(model, optimizer, schedule, epoch, best, best_epoch, tracker, cfg)
                state["partial"] = out["partial"]
                if hasattr(task.train, "state_dict"):
                    state["loader"] = task.train.state_dict()
                _save_stopped(state, run_dir, stop, env)
                summary["stopped_at_epoch"] = epoch + out["partial"]["batch"] / len(task.train)
                break
            record.update(out)
            throughput.append(record["train/images_per_s"])
            final = epoch + 1 == t.epochs
            if final or (epoch + 1) % t.eval_every == 0:
                dist.broadcast_buffers(model, env)  # every rank scores with rank 0's statistics
                record.update(evaluate(model, task, autocast, t.eval_steps, env))
                score = record[f"{task.evals[0].name}/acc"]
                if score > best:
                    best, best_epoch = score, epoch + 1
                    record["best"] = True
            if env.is_main:
                metrics_log.write(record)
            tracker.log(record, step=epoch + 1)
            last = record
            state = _state(model, optimizer, schedule, epoch + 1, best, best_epoch, tracker, cfg)
            if env.is_main and (final or (epoch + 1) % t.checkpoint_every == 0):
                ckpt.save_atomic(state, ckpt_dir / "last.pt")
            if env.is_main and record.get("best"):
                ckpt.save_atomic(state, ckpt_dir / "best.pt")
            if not final and dist.any_rank(stop.requested, env):
                _save_stopped(state, run_dir, stop, env)
                summary["stopped_at_epoch"] = epoch + 1
                break
            if t.stop_after is not None and epoch + 1 - start_epoch >= t.stop_after and not final:
                if env.is_main:
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
        stop.restore()
        curves = _curves(last)
        for name, curve in curves.items():
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
        if curves:
            summary["anytime"] = curves
        tracker.summary({k: v for k, v in summary.items() if not isinstance(v, dict)})
        summary["wandb_dir"] = tracker.run_path
        summary["wandb_mode"] = tracker.mode
        tracker.finish(exit_code)
        summary["wall_s"] = time.perf_counter() - began
        if env.is_main:
            text = json.dumps(summary, indent=2, default=str) + "\n"
            (run_dir / "summary.json").write_text(text)
            if curves:
                _draw_curves(curves, run_dir / "anytime.png", model)
            if exit_code == 0 and not stop.requested and "stopped_at_epoch" not in summary:
                marker.unlink(missing_ok=True)
    dist.barrier(env)
    stop.hand_on()  # after a stop signal: requeue (submitit) or exit
    return summary


PREEMPTED = "preempted.json"  # marks a run directory whose run was stopped by a signal


def _state(model, optimizer, schedule, epoch, best, best_epoch, tracker, cfg) -> dict[str, Any]:
    """What last.pt and best.pt hold; ``epoch`` counts the completed epochs."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "rng": ckpt.rng_state(),
        "epoch": epoch,
        "best": best,
        "best_epoch": best_epoch,
        "wandb_id": tracker.run_id or "",
        "model_config": OmegaConf.to_container(cfg.model, resolve=True),
        "data_config": OmegaConf.to_container(cfg.data, resolve=True),
    }


def _save_stopped(state: dict[str, Any], run_dir: Path, stop, env) -> None:
    """Write last.pt and the marker that makes the next start in ``run_dir`` resume."""
    if env.is_main:
        ckpt.save_atomic(state, run_dir / "checkpoints" / "last.pt")
        where = {"epoch": state["epoch"], "batch": state.get("partial", {}).get("batch", 0)}
        name = signal.Signals(stop.signum).name if stop.signum else None
        (run_dir / PREEMPTED).write_text(json.dumps({"signal": name, **where}) + "\n")
    log.warning(
        "stopped by a signal in epoch %d; checkpoints/last.pt holds the run, which resumes when "
        "started again in %s",
        state["epoch"] + 1,
        run_dir,
    )
