"""Residual blocks: basic and bottleneck, post- and pre-activation, with shortcuts A and B.

A block is ``shortcut(x) + branch(x, t)`` (then a ReLU, for post-activation blocks). The branch is
exposed on its own because an ODE stage integrates ``dh/dt = branch(h, t)`` and the analyses
delete or sample branches while keeping the bypass.
"""

# axes: b batch, c channels, h w space

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cortexnet.models.norm import make_norm

BLOCKS = ("basic", "bottleneck", "preact_basic", "preact_bottleneck")
SHORTCUTS = ("A", "B")


class Conv(nn.Conv2d):
    """A bias-free convolution that accepts (and ignores) the time argument."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=kernel // 2, bias=False)

    def forward(self, x: Tensor, t: Tensor | float = 0.0) -> Tensor:  # noqa: D102
        return super().forward(x)


class TimeConv(nn.Conv2d):
    """A convolution that sees time as one extra constant input plane (Chen et al. 2018).

    This is how an ODE stage's residual function is conditioned on ``t``.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__(cin + 1, cout, kernel, stride, padding=kernel // 2, bias=False)

    def forward(self, x: Tensor, t: Tensor | float = 0.0) -> Tensor:  # noqa: D102
        plane = torch.ones_like(x[:, :1]) * t  # b 1 h w
        return super().forward(torch.cat([x, plane], dim=1))


class ShortcutA(nn.Module):
    """Parameter-free shortcut: subsample, then zero-pad the new channels (He et al., CIFAR)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        if cout < cin:
            raise ValueError(f"shortcut A cannot reduce channels ({cin} -> {cout}); use shortcut B")
        self.stride, self.extra = stride, cout - cin

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


class ShortcutB(nn.Module):
    """Projection shortcut: a strided 1x1 convolution, then a norm in post-activation nets."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str | None):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
        self.norm = make_norm(norm, cout) if norm else None

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self.conv(x)
        return self.norm(x) if self.norm is not None else x


def make_shortcut(
    cin: int, cout: int, stride: int, kind: str, norm: str | None
) -> nn.Module | None:
    """Identity (``None``) when shapes match, else shortcut A or B."""
    if cin == cout and stride == 1:
        return None
    if kind == "A":
        return ShortcutA(cin, cout, stride)
    if kind == "B":
        return ShortcutB(cin, cout, stride, norm)
    raise ValueError(f"unknown shortcut {kind!r}; valid: {', '.join(SHORTCUTS)}")


class ResidualBlock(nn.Module, metaclass=ABCMeta):
    """Base class: a bypass plus a residual branch, with a switch to delete the branch.

    Attributes:
        branch_enabled: when False the block passes only its bypass (a lesion).
    """

    preact: bool = False

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str, norm: str, num_steps: int):
        super().__init__()
        self.cin, self.cout, self.stride = cin, cout, stride
        # Post-activation shortcuts carry their own norm; in pre-activation nets the bypass stays
        # a clean linear path, so a projection has none.
        sc_norm = (
            None if self.preact or norm == "none" else ("batch" if norm == "step_batch" else norm)
        )
        self.shortcut = make_shortcut(cin, cout, stride, shortcut, sc_norm)
        self.branch_enabled = True

    @abstractmethod
    def branch(self, x: Tensor, t: int | Tensor = 0) -> Tensor:
        """The residual function F(x, t)."""

    def forward(self, x: Tensor, t: int | Tensor = 0) -> Tensor:  # noqa: D102
        out = x if self.shortcut is None else self.shortcut(x)
        if not self.branch_enabled:
            return out if self.preact else F.relu(out)
        out = out + self.branch(x, t)
        # The sum is a fresh tensor that no backward needs, so the ReLU may overwrite it: one
        # activation-sized allocation and write less per block.
        return out if self.preact else F.relu(out, inplace=True)


def _step(t: int | Tensor) -> int:
    # Norm layers index statistics by integer step; an ODE passes continuous time and uses
    # step-free norms, so a tensor time maps to step 0.
    return t if isinstance(t, int) else 0


class BasicBlock(ResidualBlock):
    """Two 3x3 convolutions: conv-norm-relu-conv-norm, then the sum and a ReLU."""

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int = 1,
        shortcut: str = "B",
        norm: str = "batch",
        num_steps: int = 1,
        time_conditioned: bool = False,
    ):
        super().__init__(cin, cout, stride, shortcut, norm, num_steps)
        conv = TimeConv if time_conditioned else Conv
        self.conv1, self.norm1 = conv(cin, cout, 3, stride), make_norm(norm, cout, num_steps)
        self.conv2, self.norm2 = conv(cout, cout, 3), make_norm(norm, cout, num_steps)

    def branch(self, x: Tensor, t: int | Tensor = 0) -> Tensor:  # noqa: D102
        s = _step(t)
        # In place: a norm's (or a convolution's) output is not saved for any backward.
        x = F.relu(self.norm1(self.conv1(x, t), s), inplace=True)
        return self.norm2(self.conv2(x, t), s)


class Bottleneck(ResidualBlock):
    """1x1 down to a quarter of the output width, 3x3 (carrying the stride), 1x1 back up."""

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int = 1,
        shortcut: str = "B",
        norm: str = "batch",
        num_steps: int = 1,
        time_conditioned: bool = False,
    ):
        super().__init__(cin, cout, stride, shortcut, norm, num_steps)
        if cout % 4:
            raise ValueError(f"bottleneck output width must be divisible by 4, got {cout}")
        mid, conv = cout // 4, TimeConv if time_conditioned else Conv
        self.conv1, self.norm1 = conv(cin, mid, 1), make_norm(norm, mid, num_steps)
        self.conv2, self.norm2 = conv(mid, mid, 3, stride), make_norm(norm, mid, num_steps)
        self.conv3, self.norm3 = conv(mid, cout, 1), make_norm(norm, cout, num_steps)

    def branch(self, x: Tensor, t: int | Tensor = 0) -> Tensor:  # noqa: D102
        s = _step(t)
        x = F.relu(self.norm1(self.conv1(x, t), s), inplace=True)
        x = F.relu(self.norm2(self.conv2(x, t), s), inplace=True)
        return self.norm3(self.conv3(x, t), s)


class PreActBasicBlock(ResidualBlock):
    """Pre-activation basic block (He et al. 2016): norm-relu-conv, twice; no ReLU after the sum."""

    preact = True

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int = 1,
        shortcut: str = "B",
        norm: str = "batch",
        num_steps: int = 1,
        time_conditioned: bool = False,
    ):
        super().__init__(cin, cout, stride, shortcut, norm, num_steps)
        conv = TimeConv if time_conditioned else Conv
        self.norm1, self.conv1 = make_norm(norm, cin, num_steps), conv(cin, cout, 3, stride)
        self.norm2, self.conv2 = make_norm(norm, cout, num_steps), conv(cout, cout, 3)

    def branch(self, x: Tensor, t: int | Tensor = 0) -> Tensor:  # noqa: D102
        s = _step(t)
        # Only the first ReLU may see the block input itself (norm "none"), so only the later
        # ones run in place.
        x = self.conv1(F.relu(self.norm1(x, s)), t)
        return self.conv2(F.relu(self.norm2(x, s), inplace=True), t)


class PreActBottleneck(ResidualBlock):
    """Pre-activation bottleneck, the block of the 164- and 1001-layer CIFAR networks."""

    preact = True

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int = 1,
        shortcut: str = "B",
        norm: str = "batch",
        num_steps: int = 1,
        time_conditioned: bool = False,
    ):
        super().__init__(cin, cout, stride, shortcut, norm, num_steps)
        if cout % 4:
            raise ValueError(f"bottleneck output width must be divisible by 4, got {cout}")
        mid, conv = cout // 4, TimeConv if time_conditioned else Conv
        self.norm1, self.conv1 = make_norm(norm, cin, num_steps), conv(cin, mid, 1)
        self.norm2, self.conv2 = make_norm(norm, mid, num_steps), conv(mid, mid, 3, stride)
        self.norm3, self.conv3 = make_norm(norm, mid, num_steps), conv(mid, cout, 1)

    def branch(self, x: Tensor, t: int | Tensor = 0) -> Tensor:  # noqa: D102
        s = _step(t)
        x = self.conv1(F.relu(self.norm1(x, s)), t)
        x = self.conv2(F.relu(self.norm2(x, s), inplace=True), t)
        return self.conv3(F.relu(self.norm3(x, s), inplace=True), t)


BLOCK_TYPES: dict[str, type[ResidualBlock]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "preact_basic": PreActBasicBlock,
    "preact_bottleneck": PreActBottleneck,
}


def block_class(name: str) -> type[ResidualBlock]:
    """Look a block type up by name; ValueError names the valid ones."""
    try:
        return BLOCK_TYPES[name]
    except KeyError:
        raise ValueError(f"unknown block {name!r}; valid: {', '.join(BLOCKS)}") from None
