"""A ResNet stage, ``h <- h + F(h)`` applied again and again, in three dynamics.

- ``feedforward``: N distinct blocks, each applied once.
- ``recurrent``: K blocks with shared weights, unrolled ``num_steps`` times.
- ``ode``: ``dh/dt = F(h, t)`` integrated by torchdiffeq, read out at ``num_steps`` equally spaced
  times in ``[0, t_end]``.

Every stage starts with the same transition (a block that changes width or resolution, or
nothing), so the three dynamics differ only in how the residual function is applied.
"""

# axes: t step, b batch, c channels, h w space

from __future__ import annotations

import contextlib
import logging
from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from cortexnet.models.blocks import ResidualBlock

log = logging.getLogger(__name__)

DYNAMICS = ("feedforward", "recurrent", "ode")
try:  # the solver table is private to torchdiffeq; fall back to its documented names
    from torchdiffeq._impl.odeint import SOLVERS as _TD_SOLVERS

    SOLVERS = tuple(sorted(_TD_SOLVERS))
except ImportError:  # pragma: no cover
    SOLVERS = ("adaptive_heun", "bosh3", "dopri5", "dopri8", "euler", "midpoint", "rk4")


class Stage(nn.Module, metaclass=ABCMeta):
    """Base of the three dynamics: a transition, then steps of a residual update.

    Subclasses implement :meth:`_steps`, which yields the state after every step. ``forward``
    returns the last state and keeps no other state alive (so that activation checkpointing
    really bounds memory); :meth:`forward_states` stacks them all on a leading time axis.

    ``store_last_segment`` (checkpointing only): keep the last segment's activations rather than
    recompute them. Right for a stage whose output goes straight to the loss; a network clears it
    on every stage but its last, where stored activations would stay alive while later stages run.
    """

    dynamics: str = ""

    def __init__(self, transition: ResidualBlock | None, num_steps: int):
        super().__init__()
        _check_steps(num_steps)
        self.transition = transition
        self.num_steps = num_steps
        self.store_last_segment = True

    @abstractmethod
    def _steps(self, h: Tensor, num_steps: int, keep_all: bool = True) -> list[Tensor]:
        """Advance the state ``num_steps`` times.

        Returns the state after each step, or (``keep_all=False``) a list holding only the last
        one, so that intermediate states can be freed as soon as backprop no longer needs them.
        """

    def _resolve(self, num_steps: int | None) -> int:
        if num_steps is None:
            return self.num_steps
        _check_steps(num_steps)
        return num_steps

    def forward(self, x: Tensor, num_steps: int | None = None) -> Tensor:  # noqa: D102
        h = x if self.transition is None else self.transition(x)
        return self._steps(h, self._resolve(num_steps), keep_all=False)[-1]

    def forward_states(self, x: Tensor, num_steps: int | None = None) -> Tensor:
        """Run the stage and return its state after every step.

        Args:
            x: input of shape (b, c, h, w).
            num_steps: steps to run instead of the configured ``num_steps``.

        Returns:
            Tensor of shape (t, b, c, h, w).
        """
        h = x if self.transition is None else self.transition(x)
        return torch.stack(self._steps(h, self._resolve(num_steps)))  # t b c h w


def _check_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")


@contextlib.contextmanager
def _frozen_batch_stats(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Leave every batch norm's running statistics in ``modules`` as they were on entry.

    Checkpointing recomputes a segment's forward pass during backward; in training mode that
    would fold each batch's statistics into the running averages a second time (and count the
    batch twice), so a checkpointed model would silently drift from its plain twin.
    """
    saved = [
        (buf, buf.clone())
        for module in modules
        for m in module.modules()
        if isinstance(m, _BatchNorm) and m.track_running_stats and m.training
        for buf in (m.running_mean, m.running_var, m.num_batches_tracked)
        if buf is not None
    ]
    try:
        yield
    finally:
        for buf, value in saved:
            # Through .data, so the version counter stays put: the recomputed batch-norm calls
            # saved these buffers for backward, and a version bump would fail autograd's check
            # although the values they saw were used already.
            buf.data.copy_(value)


def _run_segments(
    step: Callable[[Tensor, int], Tensor],
    h: Tensor,
    num_steps: int,
    every: int,
    used_by: Callable[[int, int], Iterable[nn.Module]],
    keep_all: bool = True,
    store_last: bool = True,
) -> list[Tensor]:
    """Apply ``step`` num_steps times, checkpointing every ``every`` steps when grads are on.

    Only segment boundaries keep activations; the rest is recomputed in the backward pass, so
    memory grows with num_steps / every + every instead of num_steps. The recomputation leaves
    the batch-norm statistics untouched (see :func:`_frozen_batch_stats`).

    The segments are laid out from the end, so that a shorter one (when ``every`` does not divide
    ``num_steps``) comes first. With ``store_last`` the last segment keeps its activations: the
    backward pass needs them first, so recomputing them would cost a forward pass of ``every``
    steps and save no peak memory (they would be rebuilt at once, into the same space). That is
    true only when nothing else runs between this stage and the loss, which is why a network
    turns it off for all but its final stage.

    Checkpointing is the non-reentrant kind, though the reentrant kind measured a few percent
    faster on a 64-step CPU unroll: the reentrant kind cannot serve ``torch.autograd.grad``, and
    under DDP it fails on weights used more than once, which is every weight of a recurrent stage.

    Args:
        step: ``step(h, t)`` advances the state by step ``t``.
        h: the initial state.
        num_steps: steps to run.
        every: steps per checkpointed segment (0: no checkpointing).
        used_by: ``used_by(start, stop)`` gives the modules that steps start..stop-1 run, so
            that a recomputed segment saves and restores only its own norms' statistics rather
            than those of a whole 1000-layer stage.
        keep_all: return every state; otherwise only the last, so that no segment has to keep
            its inner states as outputs.
        store_last: keep the last segment's activations instead of recomputing them.

    Returns:
        The states after every step, or a one-element list with the last.
    """
    states: list[Tensor] = []
    use_ckpt = every > 0 and torch.is_grad_enabled()
    seg_len = every if use_ckpt else num_steps
    bounds = [0, *range(num_steps % seg_len or seg_len, num_steps + 1, seg_len)]
    for start, stop in zip(bounds, bounds[1:]):

        def segment(h: Tensor, start: int = start, stop: int = stop) -> tuple[Tensor, ...]:
            out = []
            for t in range(start, stop):
                h = step(h, t)
                if keep_all or t == stop - 1:
                    out.append(h)
            return tuple(out)

        if use_ckpt and not (store_last and stop == num_steps):
            seg = checkpoint(
                segment,
                h,
                use_reentrant=False,
                context_fn=lambda start=start, stop=stop: (
                    contextlib.nullcontext(),
                    _frozen_batch_stats(used_by(start, stop)),
                ),
            )
        else:
            seg = segment(h)
        if keep_all:
            states.extend(seg)
        h = seg[-1]
    return states if keep_all else [h]


class FeedforwardStage(Stage):
    """N distinct blocks, each applied once (an ordinary ResNet stage).

    Running fewer steps than blocks truncates the stage (used by lesion and anytime analyses);
    running more is an error, since there are no weights for the extra blocks.
    """

    dynamics = "feedforward"

    def __init__(
        self,
        transition: ResidualBlock | None,
        blocks: list[ResidualBlock],
        checkpoint_every: int = 0,
    ):
        super().__init__(transition, max(1, len(blocks)))
        self.blocks = nn.ModuleList(blocks)
        self.checkpoint_every = checkpoint_every

    def _resolve(self, num_steps: int | None) -> int:
        n = super()._resolve(num_steps)
        if n > len(self.blocks) and len(self.blocks) > 0:
            raise ValueError(
                f"a feedforward stage has {len(self.blocks)} blocks and cannot run {n} steps; "
                "use dynamics=recurrent or ode to run longer"
            )
        return n

    def _steps(self, h: Tensor, num_steps: int, keep_all: bool = True) -> list[Tensor]:
        if not self.blocks:  # a stage that is only its transition
            return [h]
        return _run_segments(
            lambda h, t: self.blocks[t](h),
            h,
            num_steps,
            self.checkpoint_every,
            lambda start, stop: self.blocks[start:stop],
            keep_all,
            self.store_last_segment,
        )


class RecurrentStage(Stage):
    """K blocks with shared weights, unrolled ``num_steps`` times (Liao and Poggio 2016).

    With ``recall`` the stage input is concatenated to the state before every step and projected
    back to the state width by a 3x3 convolution (Bansal et al. 2022), so later steps still see
    the input; this is what lets a recurrent stage run far past its training horizon.

    Args:
        transition: block that changes shape before the loop, or None.
        blocks: the K shared blocks, applied in order at every step.
        num_steps: default unroll length T.
        recall: re-inject the stage input at every step.
        checkpoint_every: keep activations only every this many steps in training (0: all).
    """

    dynamics = "recurrent"

    def __init__(
        self,
        transition: ResidualBlock | None,
        blocks: list[ResidualBlock],
        num_steps: int,
        recall: bool = False,
        checkpoint_every: int = 0,
    ):
        super().__init__(transition, num_steps)
        if not blocks:
            raise ValueError("a recurrent stage needs at least one shared block")
        self.blocks = nn.ModuleList(blocks)
        width = blocks[0].cin
        self.recall = nn.Conv2d(2 * width, width, 3, padding=1, bias=False) if recall else None
        self.checkpoint_every = checkpoint_every

    def _steps(self, h: Tensor, num_steps: int, keep_all: bool = True) -> list[Tensor]:
        return self.unroll(h, h, num_steps, keep_all=keep_all)

    def unroll(
        self,
        state: Tensor,
        inputs: Tensor,
        num_steps: int,
        start: int = 0,
        keep_all: bool = True,
    ) -> list[Tensor]:
        """Advance a given state, for training schemes that cut the unroll into pieces.

        ``forward`` is ``unroll(h, h, num_steps)`` with ``h`` the transition's output; the
        progressive loss and truncated backpropagation instead continue from a detached state.

        Args:
            state: the state to start from (b, c, h, w).
            inputs: the stage input that recall re-injects (b, c, h, w), usually the state the
                whole unroll started from.
            num_steps: steps to run.
            start: index of the first step, which picks per-step norm statistics.
            keep_all: return every state; otherwise a one-element list with the last.

        Returns:
            The states after each step (or only the last).
        """
        _check_steps(num_steps)

        def step(h: Tensor, t: int) -> Tensor:
            if self.recall is not None:
                h = self.recall(torch.cat([h, inputs], dim=1))
            for block in self.blocks:
                h = block(h, start + t)  # same weights at every step
            return h

        return _run_segments(
            step,
            state,
            num_steps,
            self.checkpoint_every,
            lambda start, stop: [self],  # the shared blocks serve every step
            keep_all,
            self.store_last_segment,
        )


class NFELimitError(RuntimeError):
    """Raised when an ODE solve needs more function evaluations than ``max_nfe`` allows."""


class ODEFunc(nn.Module):
    """``F(t, h)`` for torchdiffeq: a block's residual branch, conditioned on time.

    Counts its evaluations and stops a solve that exceeds ``max_nfe``: adaptive solvers on a stiff
    learned field can otherwise take hours on a single batch.
    """

    def __init__(self, block: ResidualBlock, max_nfe: int = 1000):
        super().__init__()
        self.block = block
        self.max_nfe = max_nfe
        self.calls = 0
        self._budget_end = max_nfe

    def forward(self, t: Tensor, h: Tensor) -> Tensor:  # noqa: D102
        self.calls += 1
        if self.max_nfe and self.calls > self._budget_end:
            raise NFELimitError(
                f"ODE solve exceeded max_nfe={self.max_nfe} function evaluations; raise max_nfe, "
                "loosen rtol/atol, or use a fixed-step solver (solver=rk4 or euler)"
            )
        return self.block.branch(h, t)


class ODEStage(Stage):
    """``dh/dt = F(h, t)`` integrated over time with torchdiffeq (Chen et al. 2018).

    The state is read out at ``num_steps`` equally spaced times ending at ``t_end``; asking for
    more steps integrates further, with the same spacing, which is the ODE form of running a
    recurrent stage longer. ``nfe_forward`` and ``nfe_backward`` hold the function evaluations of
    the last forward and backward pass (the backward count is zero without the adjoint, because
    autograd then differentiates through the stored forward evaluations instead).

    Differs from Chen et al.: F is a ResNet block's branch (norm, ReLU, convolutions with a time
    plane) rather than their exact ODE block, and its norm defaults to group norm because batch
    statistics shift with the solver's evaluation times.
    """

    dynamics = "ode"

    def __init__(
        self,
        transition: ResidualBlock | None,
        func: nn.Module,
        num_steps: int = 1,
        t_end: float = 1.0,
        solver: str = "rk4",
        rtol: float = 1e-3,
        atol: float = 1e-3,
        step_size: float | None = None,
        adjoint: bool = False,
        max_nfe: int = 1000,
    ):
        super().__init__(transition, num_steps)
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; valid: {', '.join(SOLVERS)}")
        if not t_end > 0:
            raise ValueError(f"t_end must be > 0, got {t_end}")
        if step_size is not None and not step_size > 0:
            raise ValueError(f"step_size must be > 0 or None, got {step_size}")
        if max_nfe < 0:
            raise ValueError(f"max_nfe must be >= 0 (0: no cap), got {max_nfe}")
        self.func = func
        self.t_end, self.solver, self.rtol, self.atol = t_end, solver, rtol, atol
        self.step_size, self.adjoint = step_size, adjoint
        if isinstance(func, ODEFunc):
            func.max_nfe = max_nfe
        self.nfe_forward = 0
        self._calls_after_forward = 0

    @property
    def nfe_backward(self) -> int:
        calls = getattr(self.func, "calls", 0)
        return calls - self._calls_after_forward

    def _steps(self, h: Tensor, num_steps: int, keep_all: bool = True) -> list[Tensor]:
        from torchdiffeq import odeint, odeint_adjoint

        dt = self.t_end / self.num_steps
        times = torch.arange(num_steps + 1, dtype=h.dtype, device=h.device) * dt
        options = {"step_size": self.step_size} if self.step_size else None
        solve = odeint_adjoint if self.adjoint else odeint
        kwargs = {"adjoint_params": tuple(self.func.parameters())} if self.adjoint else {}
        count = isinstance(self.func, ODEFunc)
        if count:
            self.func.calls = 0
            self.func._budget_end = self.func.max_nfe
        out = solve(
            self.func,
            h,
            times,
            rtol=self.rtol,
            atol=self.atol,
            method=self.solver,
            options=options,
            **kwargs,
        )  # (t+1) b c h w
        if count:
            self.nfe_forward = self.func.calls
            self._calls_after_forward = self.func.calls
            self.func._budget_end = self.func.calls + self.func.max_nfe  # budget for backward
        # The solver returns every readout time in one tensor, so keeping only the last state
        # would save nothing: a view of it holds the whole solution anyway.
        return list(out[1:])
