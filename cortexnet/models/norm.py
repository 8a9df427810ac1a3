"""Normalization layers chosen by name, all called as ``norm(x, t)``.

Every norm takes the step index ``t`` so that blocks can be written once and used in feedforward,
recurrent and ODE stages alike; only the per-step batch norm looks at it.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

NORMS = ("batch", "group", "none", "step_batch")


class BatchNorm(nn.BatchNorm2d):
    """Plain 2-D batch norm that ignores the step index."""

    def forward(self, x: Tensor, t: int = 0) -> Tensor:  # noqa: D102
        return super().forward(x)


class GroupNorm(nn.GroupNorm):
    """Group norm with at least two channels per group and at most 32 groups.

    One channel per group would be instance norm, which removes each channel's spatial mean: a
    residual branch ending in it then adds nothing that a global average pool can see.
    """

    def __init__(self, channels: int):
        super().__init__(math.gcd(32, max(1, channels // 2)), channels)

    def forward(self, x: Tensor, t: int = 0) -> Tensor:  # noqa: D102
        return super().forward(x)


class NoNorm(nn.Module):
    """No normalization: the identity."""

    def forward(self, x: Tensor, t: int = 0) -> Tensor:  # noqa: D102
        return x


class StepBatchNorm(nn.Module):
    """Batch statistics kept separately for every time step (Liao and Poggio 2016, CORnet-S).

    Step ``t`` normalizes with its own running statistics. Unlike those papers, the affine scale
    and shift are shared by all steps, so a recurrent model's parameter count stays independent
    of its unroll length; only the statistics buffers grow with it.

    A model run for more steps than it was built with reuses the last step's statistics for every
    later step: the state of a converging recurrence changes little between late steps, so the
    last trained statistics are the closest match. This is warned about once per layer, because
    accuracy past the trained horizon rests on that assumption.
    """

    def __init__(self, channels: int, num_steps: int):
        super().__init__()
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1 for step_batch norm, got {num_steps}")
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels, affine=False) for _ in range(num_steps))
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self._warned = False

    @property
    def num_steps(self) -> int:
        return len(self.norms)

    def forward(self, x: Tensor, t: int = 0) -> Tensor:  # noqa: D102
        if t >= len(self.norms):
            if not self._warned:
                warnings.warn(
                    f"running past the {len(self.norms)} steps a per-step norm was built for; "
                    "later steps reuse the last step's statistics",
                    stacklevel=3,
                )
                self._warned = True
            t = len(self.norms) - 1
        x = self.norms[t](x)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def make_norm(name: str, channels: int, num_steps: int = 1) -> nn.Module:
    """Build a norm layer by name.

    Args:
        name: one of ``batch``, ``group``, ``none``, ``step_batch``.
        channels: number of channels normalized.
        num_steps: steps that get their own statistics (``step_batch`` only).

    Returns:
        A module called as ``norm(x, t)``.

    Raises:
        ValueError: for an unknown name.
    """
    if name == "batch":
        return BatchNorm(channels)
    if name == "group":
        return GroupNorm(channels)
    if name == "none":
        return NoNorm()
    if name == "step_batch":
        return StepBatchNorm(channels, num_steps)
    raise ValueError(f"unknown norm {name!r}; valid: {', '.join(NORMS)}")
