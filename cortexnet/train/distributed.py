"""Running beyond one process: torch DDP under ``torchrun``, and stopping cleanly on a signal.

Data parallel training. ``torchrun --nproc_per_node=N -m cortexnet.train ...`` starts N copies of
the app; :func:`setup` reads torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``) and joins the process group, NCCL on CUDA and gloo on the
CPU. ``trainer.batch_size`` is the global batch: each rank takes ``batch_size / world_size``
samples of every step, dealt from the same global permutation with a stride (see
:class:`cortexnet.data.loader.InMemoryLoader`), and DDP averages the gradients, so N ranks take
the same optimizer steps as one process on the whole batch. Only rank 0 writes metrics,
checkpoints, the summary and the wandb run; loss sums, correct counts and evaluation hits are
summed over ranks first.

Batch norm. Without ``trainer.sync_bn`` every rank normalizes with the statistics of its own
share of the batch, which differs from one process on the whole batch. With it, every batch norm
(cortexnet's step-aware ones included) becomes a :class:`torch.nn.SyncBatchNorm`. torch
synchronizes batch statistics only on GPUs (and a few other accelerators), not on the CPU, so
``sync_bn`` with gloo on the CPU is refused with an error; use ``model.norm=group`` or ``none``
there when runs must match a single process.

Preemption. :class:`StopSignal` turns SIGUSR2 (what SLURM sends, through submitit, before a
time limit or a preemption) and SIGTERM into a request to stop: the loop finishes the batch in
hand, writes ``checkpoints/last.pt`` with the epoch's progress and a ``preempted.json`` marker,
then hands the signal on: to the handler that was installed before (submitit's, which requeues
the job) or, when there was none, exits with status 128 + the signal number. A run started
again in the same run directory finds the marker and resumes, as with ``trainer.resume=true``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from cortexnet.models.norm import BatchNorm as StepAwareBatchNorm

log = logging.getLogger(__name__)

STOP_SIGNALS = ("SIGUSR2", "SIGTERM")


@dataclass
class DistEnv:
    """Where this process stands in a (possibly one-process) job.

    Attributes:
        rank: global rank, 0 for the process that writes.
        local_rank: rank on this node (which GPU it drives).
        world_size: number of processes.
        device: the device this process trains on.
        owns_group: whether :func:`setup` created the process group (and so must end it).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def setup(device: torch.device) -> DistEnv:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1; otherwise a one-process env.

    Args:
        device: the device the run asked for (``cuda`` becomes ``cuda:LOCAL_RANK``).

    Returns:
        The process's place in the job.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size <= 1:
        return DistEnv(device=device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        owns = True
        log.info("rank %d/%d joined the %s process group on %s", rank, world_size, backend, device)
    return DistEnv(rank, local_rank, world_size, device, owns)


def teardown(env: DistEnv) -> None:
    """Leave the process group if :func:`setup` joined it."""
    if env.owns_group and dist.is_initialized():
        dist.barrier()  # nobody leaves while rank 0 still writes what the others will read
        dist.destroy_process_group()


def per_rank_batch(batch_size: int, env: DistEnv) -> int:
    """The share of the global batch that one rank takes.

    Raises:
        ValueError: when the global batch does not split evenly over the ranks.
    """
    if batch_size % env.world_size:
        raise ValueError(
            f"trainer.batch_size={batch_size} is not valid with {env.world_size} processes; it "
            f"must be a multiple of the world size (the global batch is split evenly)"
        )
    return batch_size // env.world_size


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank (a run directory, say)."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values: list[Tensor], env: DistEnv) -> list[Tensor]:
    """The element-wise sums over ranks of same-shaped tensors (in one collective)."""
    if not env.distributed:
        return values
    flat = torch.cat([v.detach().float().reshape(-1) for v in values])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, at = [], 0
    for v in values:
        out.append(flat[at : at + v.numel()].reshape(v.shape))
        at += v.numel()
    return out


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    if not env.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def broadcast_buffers(model: nn.Module, env: DistEnv) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics) before an evaluation."""
    if not env.distributed:
        return
    for buf in model.buffers():
        dist.broadcast(buf, src=0)


class _StepAwareSyncBatchNorm(nn.SyncBatchNorm):
    """SyncBatchNorm called as ``norm(x, t)``, like the batch norm it replaces."""

    def forward(self, x: Tensor, t: int = 0) -> Tensor:  # noqa: D102
        return super().forward(x)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every batch norm in ``module`` by a SyncBatchNorm with the same state.

    torch's own converter would turn cortexnet's ``BatchNorm`` (called with a step index) into a
    SyncBatchNorm that does not take one; this one keeps that call signature. The per-step
    statistics of ``step_batch`` norms are plain ``BatchNorm2d`` modules and convert as they are.

    Returns:
        The converted module (``module`` itself, changed in place, unless it is a batch norm).
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, nn.SyncBatchNorm
    ):
        step_aware = isinstance(module, StepAwareBatchNorm)
        new = (_StepAwareSyncBatchNorm if step_aware else nn.SyncBatchNorm)(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        ).to(next(iter(module.buffers()), torch.empty(0)).device)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = convert_sync_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def check_sync_bn(sync_bn: bool, env: DistEnv) -> None:
    """Refuse ``trainer.sync_bn`` where torch cannot synchronize (CPU processes).

    Raises:
        ValueError: naming the key and what to use instead.
    """
    if sync_bn and env.distributed and env.device.type == "cpu":
        raise ValueError(
            "trainer.sync_bn=true is not supported on the CPU: torch's SyncBatchNorm runs on "
            "GPUs only; use trainer.sync_bn=false with model.norm=group or none for CPU processes"
        )


class _Dispatch(nn.Module):
    """Routes DDP's forward to any of the model's forward methods (``forward_steps`` too)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, *args: Any, method: str = "forward", **kwargs: Any) -> Any:
        return getattr(self.model, method)(x, *args, **kwargs)


class DataParallelModel(DistributedDataParallel):
    """DDP around a cortexnet model that keeps the loop's view of it.

    DDP prepares the gradient all-reduce only for calls that go through its ``forward``, so
    ``forward_steps`` is routed through it as well; ``nfe`` and ``dynamics`` read the model.
    """

    def __init__(self, model: nn.Module, env: DistEnv):
        ids = [env.device.index] if env.device.type == "cuda" else None
        super().__init__(_Dispatch(model), device_ids=ids)

    @property
    def inner(self) -> nn.Module:
        return self.module.model

    def forward_steps(self, x: Tensor, num_steps: int | None = None) -> Tensor:
        return self(x, num_steps, method="forward_steps")

    def nfe(self) -> dict[str, int]:
        inner = self.inner
        return inner.nfe() if hasattr(inner, "nfe") else {"nfe_forward": 0, "nfe_backward": 0}

    @property
    def dynamics(self) -> Any:
        return getattr(self.inner, "dynamics", ())


class StopSignal:
    """Turns SIGUSR2 and SIGTERM into a flag that the loop reads between batches.

    Use as a context manager; the handlers that were installed before are put back on exit,
    and :meth:`hand_on` passes the caught signal to them once the state is saved.

    Args:
        enabled: install the handlers (off: never requests a stop).
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        # Kept after restore(): the loop restores the handlers before it hands the signal on.
        self._before: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        self.install()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()

    def install(self) -> StopSignal:
        """Catch the stop signals from now on."""
        if not self.enabled:
            return self
        if threading.current_thread() is not threading.main_thread():
            log.warning("not on the main thread: SIGUSR2/SIGTERM will not checkpoint the run")
            return self
        for name in STOP_SIGNALS:
            num = getattr(signal, name)
            self._previous[num] = signal.signal(num, self._catch)
        self._before = dict(self._previous)
        return self

    def restore(self) -> None:
        """Put back the handlers that were installed before."""
        for num, handler in self._previous.items():
            signal.signal(num, handler)
        self._previous.clear()

    def _catch(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            log.warning(
                "caught %s: stopping after this batch to write a checkpoint",
                signal.Signals(signum).name,
            )
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def hand_on(self) -> None:
        """Pass the caught signal to the handler that was there before, then exit.

        submitit's handler requeues the job and exits; with no Python handler before (a plain
        process, or torchrun's workers) this exits with status 128 + the signal number.
        """
        if self.signum is None:
            return
        signum = self.signum
        previous = self._before.get(signum)
        self.restore()
        if callable(previous):
            previous(signum, None)
        raise SystemExit(128 + signum)
