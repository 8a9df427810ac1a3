"""The ResNet builder: stem, stages of any dynamics, and an average-pool linear head."""

# axes: t step, b batch, c channels, h w space, k classes

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from cortexnet.models.blocks import SHORTCUTS, block_class
from cortexnet.models.norm import NORMS, make_norm
from cortexnet.models.stages import (
    DYNAMICS,
    FeedforwardStage,
    ODEFunc,
    ODEStage,
    RecurrentStage,
    Stage,
)

STEMS = ("cifar", "imagenet")
HEADS = ("classify", "pixel")


class Stem(nn.Module):
    """``imagenet``: 7x7 stride-2 convolution, norm, ReLU, 3x3 stride-2 max-pool.
    ``cifar``: one 3x3 stride-1 convolution (norm and ReLU unless the net is pre-activation).
    """

    def __init__(self, kind: str, in_channels: int, width: int, norm: str, preact: bool):
        super().__init__()
        if kind not in STEMS:
            raise ValueError(f"unknown stem {kind!r}; valid: {', '.join(STEMS)}")
        k, stride = (7, 2) if kind == "imagenet" else (3, 1)
        self.conv = nn.Conv2d(in_channels, width, k, stride, padding=k // 2, bias=False)
        # A pre-activation net normalizes at the start of its first block instead.
        norm = "batch" if norm == "step_batch" else norm
        self.norm = None if preact else make_norm(norm, width)
        self.pool = nn.MaxPool2d(3, 2, padding=1) if kind == "imagenet" else None

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self.conv(x)
        if self.norm is not None:
            x = F.relu(self.norm(x))
        return self.pool(x) if self.pool is not None else x


@dataclass
class ODEOptions:
    """Solver settings of ODE stages (see :class:`cortexnet.models.stages.ODEStage`)."""

    t_end: float = 1.0
    solver: str = "rk4"
    rtol: float = 1e-3
    atol: float = 1e-3
    step_size: float | None = None
    adjoint: bool = False
    max_nfe: int = 1000


def _per_stage(value, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries but the model has {n} stages")
        return list(value)
    return [value] * n


class ResNet(nn.Module):
    """A ResNet whose stages can each be feedforward, recurrent or ODE.

    Args:
        blocks_per_stage: residual blocks per stage, the depth of each stage. A stage that
            changes shape starts with an unshared transition block; in a recurrent stage the
            remaining depth is the unroll length, so a recurrent stage of depth N has the depth
            and FLOPs of a feedforward stage of N blocks with the parameters of two blocks.
        widths: output channels of each stage.
        block: ``basic``, ``bottleneck``, ``preact_basic`` or ``preact_bottleneck``.
        dynamics: one name for all stages, or one per stage.
        num_steps: unroll length per recurrent or ODE stage; None derives it from the depth.
        shared_blocks: blocks with shared weights in a recurrent stage (K).
        norm: ``batch``, ``group``, ``none`` or ``step_batch`` (a batch norm per step).
        ode_norm: norm inside ODE functions (batch statistics drift with solver time).
        stem: ``cifar`` (3x3) or ``imagenet`` (7x7 and max-pool).
        stem_width: channels after the stem (default: the first stage's input width).
        shortcut: ``A`` (zero-padding identity) or ``B`` (1x1 projection) on shape changes.
        in_channels, num_classes: input channels and classes.
        recall: re-inject each recurrent stage's input at every step.
        checkpoint_every: activation checkpointing interval in steps or blocks (0: off).
        ode: solver settings for ODE stages.
        head: ``classify`` (average pool, linear: logits (b, k)) or ``pixel`` (two convolutions
            at full resolution: logits (b, k, h, w), for dense tasks such as mazes).
    """

    def __init__(
        self,
        blocks_per_stage: Sequence[int] = (3, 3, 3),
        widths: Sequence[int] = (16, 32, 64),
        block: str = "basic",
        dynamics: str | Sequence[str] = "feedforward",
        num_steps: int | Sequence[int | None] | None = None,
        shared_blocks: int = 1,
        norm: str = "batch",
        ode_norm: str = "group",
        stem: str = "cifar",
        stem_width: int | None = None,
        shortcut: str = "A",
        in_channels: int = 3,
        num_classes: int = 10,
        recall: bool = False,
        checkpoint_every: int = 0,
        ode: ODEOptions | dict | None = None,
        head: str = "classify",
    ):
        super().__init__()
        n = len(blocks_per_stage)
        if n == 0 or len(widths) != n:
            raise ValueError(
                f"blocks_per_stage ({list(blocks_per_stage)}) and widths ({list(widths)}) must be "
                "non-empty and of equal length"
            )
        if any(int(d) < 1 for d in blocks_per_stage):
            raise ValueError(f"blocks_per_stage must all be >= 1, got {list(blocks_per_stage)}")
        for name, value, valid in (
            ("norm", norm, NORMS),
            ("ode_norm", ode_norm, NORMS),
            ("shortcut", shortcut, SHORTCUTS),
        ):
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
        if ode_norm == "step_batch":
            raise ValueError(
                "ode_norm=step_batch is not supported: ODE time is continuous; "
                "use group, batch or none"
            )
        if shared_blocks < 1:
            raise ValueError(f"shared_blocks must be >= 1, got {shared_blocks}")
        dyn = _per_stage(dynamics, n, "dynamics")
        for d in dyn:
            if d not in DYNAMICS:
                raise ValueError(f"unknown dynamics {d!r}; valid: {', '.join(DYNAMICS)}")
        steps = _per_stage(num_steps, n, "num_steps")
        ode = ode if isinstance(ode, ODEOptions) else ODEOptions(**(ode or {}))
        cls = block_class(block)
        self.preact = cls.preact
        self.dynamics = dyn

        stem_width = stem_width or (widths[0] if "bottleneck" not in block else widths[0] // 4)
        self.stem = Stem(stem, in_channels, stem_width, norm, self.preact)
        self.stages = nn.ModuleDict()
        cin = stem_width
        for i, (depth, width, d, t) in enumerate(zip(blocks_per_stage, widths, dyn, steps)):
            stride = 1 if i == 0 else 2
            transition = None
            if cin != width or stride != 1:
                transition = cls(cin, width, stride, shortcut, _single_step(norm))
            core_depth = depth - (transition is not None)
            self.stages[f"stage{i + 1}"] = self._stage(
                cls,
                d,
                transition,
                width,
                core_depth,
                t,
                shared_blocks,
                norm,
                ode_norm,
                shortcut,
                recall,
                checkpoint_every,
                ode,
            )
            cin = width
        for stage in list(self.stages.values())[:-1]:
            stage.store_last_segment = False  # its output has further stages to run through
        self.num_features = cin
        self.final_norm = make_norm(_single_step(norm), cin) if self.preact else None
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; valid: {', '.join(HEADS)}")
        self.head = head
        if head == "classify":
            self.fc = nn.Linear(cin, num_classes)
        else:
            mid = max(8, cin // 2)
            self.fc = nn.Sequential(
                nn.Conv2d(cin, mid, 3, padding=1), nn.ReLU(), nn.Conv2d(mid, num_classes, 1)
            )
        init_weights(self)

    @staticmethod
    def _stage(
        cls,
        dynamics,
        transition,
        width,
        core_depth,
        steps,
        shared,
        norm,
        ode_norm,
        shortcut,
        recall,
        checkpoint_every,
        ode,
    ) -> Stage:
        if dynamics == "feedforward":
            if steps is not None and steps != core_depth:
                raise ValueError(
                    f"num_steps={steps} given for a feedforward stage of depth {core_depth}; "
                    "set blocks_per_stage instead"
                )
            blocks = [cls(width, width, 1, shortcut, _single_step(norm)) for _ in range(core_depth)]
            return FeedforwardStage(transition, blocks, checkpoint_every)
        if steps is None:
            steps = max(1, core_depth // shared) if dynamics == "recurrent" else max(1, core_depth)
        if dynamics == "recurrent":
            blocks = [cls(width, width, 1, shortcut, norm, num_steps=steps) for _ in range(shared)]
            return RecurrentStage(transition, blocks, steps, recall, checkpoint_every)
        func = ODEFunc(cls(width, width, 1, shortcut, ode_norm, time_conditioned=True))
        return ODEStage(
            transition,
            func,
            steps,
            ode.t_end,
            ode.solver,
            ode.rtol,
            ode.atol,
            ode.step_size,
            ode.adjoint,
            ode.max_nfe,
        )

    def _steps_for(self, num_steps) -> list[int | None]:
        """An int overrides every recurrent and ODE stage; a sequence gives one per stage."""
        if num_steps is None or isinstance(num_steps, int):
            return [None if d == "feedforward" else num_steps for d in self.dynamics]
        return _per_stage(list(num_steps), len(self.stages), "num_steps")

    def forward_features(self, x: Tensor, num_steps=None) -> Tensor:
        """Stem and stages; returns the last stage's final state (b, c, h, w)."""
        x = self.stem(x)
        for stage, t in zip(self.stages.values(), self._steps_for(num_steps)):
            x = stage(x, t)
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        """Final norm (pre-activation nets), then the readout: (b, k) or, for a pixel head,
        (b, k, h, w)."""
        if self.final_norm is not None:
            x = F.relu(self.final_norm(x))
        if self.head == "pixel":
            return self.fc(x)  # b k h w
        return self.fc(x.mean(dim=(2, 3)))  # b k

    def forward(self, x: Tensor, num_steps=None) -> Tensor:
        """Class logits (b, k); softmax lives in the loss."""
        return self.forward_head(self.forward_features(x, num_steps))

    def stage_states(self, x: Tensor, num_steps=None) -> dict[str, Tensor]:
        """The state of every stage at every step, keyed by stage name, each (t, b, c, h, w)."""
        out = {}
        x = self.stem(x)
        for (name, stage), t in zip(self.stages.items(), self._steps_for(num_steps)):
            out[name] = stage.forward_states(x, t)
            x = out[name][-1]
        return out

    def forward_steps(self, x: Tensor, num_steps=None) -> Tensor:
        """Readout at every step of the last stage, the anytime curve's logits: (t, b, k).

        Earlier stages run to completion; the head reads each state of the last stage. For a
        feedforward last stage the steps are its blocks.
        """
        x = self.stem(x)
        names = list(self.stages)
        for name, t in zip(names, self._steps_for(num_steps)):
            stage = self.stages[name]
            if name == names[-1]:
                states = stage.forward_states(x, t)  # t b c h w
                t_len = states.shape[0]
                logits = self.forward_head(rearrange(states, "t b c h w -> (t b) c h w"))
                return logits.reshape(t_len, -1, *logits.shape[1:])  # t b k (h w)
            x = stage(x, t)
        raise AssertionError("unreachable: a model has at least one stage")

    def nfe(self) -> dict[str, int]:
        """Function evaluations of the last forward and backward pass, summed over ODE stages."""
        stages = [s for s in self.stages.values() if isinstance(s, ODEStage)]
        return {
            "nfe_forward": sum(s.nfe_forward for s in stages),
            "nfe_backward": sum(s.nfe_backward for s in stages),
        }

    def set_num_steps(self, num_steps: int) -> None:
        """Change the default unroll length of every recurrent and ODE stage in place.

        An ODE stage keeps its step spacing, so it integrates further.
        """
        for stage in self.stages.values():
            if isinstance(stage, ODEStage):
                stage.t_end = stage.t_end / stage.num_steps * num_steps
                stage.num_steps = num_steps
            elif isinstance(stage, RecurrentStage):
                stage.num_steps = num_steps


def init_weights(model: nn.Module) -> None:
    """He initialization of convolutions (fan-out), unit scale and zero shift of norms."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _single_step(norm: str) -> str:
    # Blocks applied once (feedforward blocks, transitions) need only one set of statistics.
    return "batch" if norm == "step_batch" else norm


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["ODEOptions", "ResNet", "Stem", "count_parameters"]
