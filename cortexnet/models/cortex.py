"""The cortex view: a chain of areas unrolled jointly in time, with lateral and top-down loops.

A ResNet stage, even a recurrent one, keeps the network a pipeline: a stage finishes all its steps
before the next one starts. :class:`CortexNet` unrolls the whole network instead. At every step
each area (V1, V2, V4, IT by default) is updated from the area below at the same step, its own
previous state and the area above at the previous step, and a readout of the top area at every
step gives an answer that can improve with processing time (the anytime curve).

This module also registers ``cortexnet`` (connections BLT) and its ablations ``cortexnet_b``,
``cortexnet_bl`` and ``cortexnet_bt``, and ``cornet_s``, a CORnet-S-like pipeline built from the
project's recurrent ResNet stages (:class:`CORnetS`).
"""

# axes: t step, b batch, c channels, h w space, k classes

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor, nn

from cortexnet.models.norm import NORMS, make_norm
from cortexnet.models.registry import register_model
from cortexnet.models.resnet import STEMS, ResNet, Stem, init_weights

log = logging.getLogger(__name__)

CONNECTIONS = ("B", "BL", "BT", "BLT")
UPSAMPLE = ("nearest", "bilinear")
AREA_NAMES = ("V1", "V2", "V4", "IT")


class Area(nn.Module):
    """One area: its state at step t is computed from three inputs and the step's norm.

    ``drive = bottom_up(below_t) + lateral(own_{t-1}) + resize(top_down(above_{t-1}))``;
    ``F = norm2(conv(relu(norm1(drive, t))), t)``. With a lateral connection the update is residual,
    ``own_t = relu(own_{t-1} + F)``; without one the area keeps no memory of its own state and
    ``own_t = relu(F)``. At t = 0 the previous states are zero, and since every convolution here is
    bias-free their terms are exactly zero and are skipped.

    The top-down projection is applied at the upper area's resolution and then resized: a 1x1
    convolution and nearest or bilinear resizing are both linear (one across channels, one across
    space), so the order does not change the result, and projecting first is cheaper.

    Args:
        cin: channels of the bottom-up input.
        width: channels of the area's state.
        stride: stride of the bottom-up convolution (the area's downsampling).
        lateral: whether the area has a lateral connection (learned 3x3 plus the bypass).
        above_width: channels of the area above when it sends top-down input, else None.
        norm: norm name, see :func:`cortexnet.models.norm.make_norm`.
        num_steps: steps that get their own statistics with ``norm="step_batch"``.
        upsample: ``nearest`` or ``bilinear`` resizing of the top-down input.
    """

    def __init__(
        self,
        cin: int,
        width: int,
        stride: int,
        lateral: bool,
        above_width: int | None,
        norm: str,
        num_steps: int,
        upsample: str,
    ):
        super().__init__()
        self.bottom_up = nn.Conv2d(cin, width, 3, stride, padding=1, bias=False)
        self.lateral = nn.Conv2d(width, width, 3, padding=1, bias=False) if lateral else None
        self.top_down = nn.Conv2d(above_width, width, 1, bias=False) if above_width else None
        self.norm1 = make_norm(norm, width, num_steps)
        self.conv = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm, width, num_steps)
        self.output = nn.Identity()  # a hook point: called once per step with the new state
        self.upsample = upsample

    def forward(
        self, bottom_up: Tensor, prev: Tensor | None, above: Tensor | None, t: int
    ) -> Tensor:
        """One step of the area.

        Args:
            bottom_up: the bottom-up convolution already applied to the area below, (b, c, h, w).
            prev: the area's own state at step t - 1, or None at t = 0.
            above: the state of the area above at step t - 1, or None (at t = 0, for the top
                area, or without top-down connections).
            t: step index, selects the norm statistics.

        Returns:
            The area's state at step t, (b, c, h, w).
        """
        drive = bottom_up
        if self.lateral is not None and prev is not None:
            drive = drive + self.lateral(prev)
        if self.top_down is not None and above is not None:
            feedback = self.top_down(above)  # b c h' w', at the upper area's resolution
            if feedback.shape[-2:] != drive.shape[-2:]:
                align = False if self.upsample == "bilinear" else None
                feedback = F.interpolate(
                    feedback, size=drive.shape[-2:], mode=self.upsample, align_corners=align
                )
            drive = drive + feedback
        x = F.relu(self.norm1(drive, t))
        x = self.norm2(self.conv(x), t)
        if self.lateral is not None and prev is not None:
            x = prev + x  # the residual bypass is the identity part of the lateral connection
        return self.output(F.relu(x))


class CortexNet(nn.Module):
    """Areas with bottom-up, lateral and top-down connections, unrolled jointly in time.

    At step t the areas are updated from the bottom up. Area i reads the area below at step t
    (V1 reads the stem output, the same at every step), its own state at t - 1 (lateral) and area
    i + 1 at t - 1 (top-down), as described in :class:`Area`. Previous states start at zero, so
    step 0 is an ordinary feedforward pass through all areas; feedback and lateral input act from
    step 1 on. Feedback descends one area per step (the top area's state at step 0 reaches the
    area below at step 1 and V1 at step n - 1, for n areas), and every bottom-up sweep carries the
    result back to the top within its step. The same linear readout (global average pool, linear)
    reads the top area at every step; ``forward`` returns the last step's logits and
    ``forward_steps`` all of them.

    ``connections`` picks the pattern of Spoerer et al. 2017: ``B`` (bottom-up only), ``BL``
    (plus lateral), ``BT`` (plus top-down), ``BLT`` (all three).

    Differences from Spoerer et al. 2017 ("Recurrent convolutional neural networks: a better
    model of biological object recognition"):

    - Each area is a residual unit (two convolutions, two norms) rather than one convolution
      layer, and with a lateral connection its state is updated residually. Without one (B, BT)
      the area's state is recomputed from its inputs, as in their model.
    - Areas downsample with a strided bottom-up convolution instead of max-pooling, and top-down
      input is a 1x1 projection resized by interpolation, not a transposed convolution.
    - One head reads the top area at every step; how the steps enter the loss is the training
      loop's choice, not the model's.
    - Norm: ``step_batch`` keeps batch statistics per step with an affine shared by all steps
      (see :class:`cortexnet.models.norm.StepBatchNorm`), so the parameter count does not depend
      on ``num_steps``.

    Differences from CORnet-S (Kubilius et al. 2019): every area is recurrent and receives
    top-down input, all areas advance together in time rather than each finishing its own loop,
    there is no stride change at step 0 (the bottom-up convolution carries the stride at every
    step) and no gated or bottleneck-expanded block. :class:`CORnetS` is the closer model.

    Known shortcomings: with ``norm="none"`` or ``norm="group"`` the residual states of areas with
    lateral connections are not rescaled between steps and can grow when run far past the trained
    number of steps; running past the trained steps with ``step_batch`` reuses the last step's
    statistics (warned once per norm layer). There is no activation checkpointing, so training
    memory grows linearly with ``num_steps``.

    Args:
        area_names: names of the areas, bottom to top; keys of :meth:`stage_states`.
        widths: channels of each area's state.
        strides: stride of each area's bottom-up convolution. An area's resolution is
            ceil(resolution below / stride), so it never goes below 1x1.
        connections: ``B``, ``BL``, ``BT`` or ``BLT``.
        num_steps: default number of steps the areas are unrolled for.
        norm: ``batch``, ``group``, ``none`` or ``step_batch``.
        in_channels: input channels.
        num_classes: classes of the readout.
        stem: ``cifar`` (one 3x3 convolution) or ``imagenet`` (7x7 stride 2 and a max-pool).
        upsample: ``nearest`` or ``bilinear`` resizing of the top-down input.

    Raises:
        ValueError: for a bad argument, naming it and its valid values.
    """

    def __init__(
        self,
        area_names: Sequence[str] = AREA_NAMES,
        widths: Sequence[int] = (32, 64, 128, 256),
        strides: Sequence[int] = (1, 2, 2, 2),
        connections: str = "BLT",
        num_steps: int = 4,
        norm: str = "step_batch",
        in_channels: int = 3,
        num_classes: int = 10,
        stem: str = "cifar",
        upsample: str = "nearest",
    ):
        super().__init__()
        names = _names(area_names)
        n = len(names)
        widths = _positive_ints(widths, n, "widths")
        strides = _positive_ints(strides, n, "strides")
        for arg, value, valid in (
            ("connections", connections, CONNECTIONS),
            ("norm", norm, NORMS),
            ("stem", stem, STEMS),
            ("upsample", upsample, UPSAMPLE),
        ):
            if value not in valid:
                raise ValueError(f"unknown {arg} {value!r}; valid: {', '.join(valid)}")
        _check_steps(num_steps)
        for arg, value in (("in_channels", in_channels), ("num_classes", num_classes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{arg} must be an integer >= 1, got {value!r}")

        self.area_names = names
        self.connections = connections
        self.num_steps = num_steps
        self.dynamics = ["recurrent"] * n  # the interface of ResNet: one entry per area
        lateral, top_down = "L" in connections, "T" in connections

        self.stem = Stem(stem, in_channels, widths[0], norm, preact=False)
        self.areas = nn.ModuleDict()
        cin = widths[0]
        for i, (name, width, stride) in enumerate(zip(names, widths, strides)):
            above = widths[i + 1] if top_down and i + 1 < n else None
            self.areas[name] = Area(cin, width, stride, lateral, above, norm, num_steps, upsample)
            cin = width
        self.num_features = widths[-1]
        self.fc = nn.Linear(widths[-1], num_classes)
        init_weights(self)
        log.debug(
            "CortexNet areas %s, widths %s, strides %s, connections %s, %d steps",
            names,
            widths,
            strides,
            connections,
            num_steps,
        )

    def _resolve(self, num_steps: int | None) -> int:
        if num_steps is None:
            return self.num_steps
        _check_steps(num_steps)
        return num_steps

    def _unroll(self, x: Tensor, num_steps: int | None) -> list[list[Tensor]]:
        """Run all areas jointly; return ``states[t][i]``, area i's state at step t."""
        num_steps = self._resolve(num_steps)
        areas = list(self.areas.values())
        # The stem output is the same at every step, so its bottom-up projection into V1 is too.
        first_drive = areas[0].bottom_up(self.stem(x))
        states: list[list[Tensor]] = []
        prev: list[Tensor | None] = [None] * len(areas)
        for t in range(num_steps):
            new: list[Tensor] = []
            for i, area in enumerate(areas):
                drive = first_drive if i == 0 else area.bottom_up(new[i - 1])
                above = prev[i + 1] if i + 1 < len(areas) else None
                new.append(area(drive, prev[i], above, t))
            states.append(new)
            prev = new
        return states

    def forward_features(self, x: Tensor, num_steps: int | None = None) -> Tensor:
        """The top area's state at the last step, (b, c, h, w).

        Args:
            x: images, (b, c, h, w).
            num_steps: steps to run instead of ``self.num_steps``.

        Returns:
            Tensor of shape (b, c, h, w).
        """
        return self._unroll(x, num_steps)[-1][-1]

    def forward_head(self, feats: Tensor) -> Tensor:
        """Global average pool and the linear readout: (b, c, h, w) -> logits (b, k)."""
        return self.fc(reduce(feats, "b c h w -> b c", "mean"))

    def forward(self, x: Tensor, num_steps: int | None = None) -> Tensor:
        """Class logits of the last step, (b, k); softmax lives in the loss."""
        return self.forward_head(self.forward_features(x, num_steps))

    def forward_steps(self, x: Tensor, num_steps: int | None = None) -> Tensor:
        """The readout at every step, the anytime curve's logits.

        Args:
            x: images, (b, c, h, w).
            num_steps: steps to run instead of ``self.num_steps``.

        Returns:
            Tensor of shape (t, b, k).
        """
        top = torch.stack([s[-1] for s in self._unroll(x, num_steps)])  # t b c h w
        logits = self.forward_head(rearrange(top, "t b c h w -> (t b) c h w"))
        return rearrange(logits, "(t b) k -> t b k", t=top.shape[0])

    def stage_states(self, x: Tensor, num_steps: int | None = None) -> dict[str, Tensor]:
        """Every area's state at every step.

        Args:
            x: images, (b, c, h, w).
            num_steps: steps to run instead of ``self.num_steps``.

        Returns:
            Dict from area name to a tensor of shape (t, b, c, h, w), in area order.
        """
        states = self._unroll(x, num_steps)
        return {
            name: torch.stack([s[i] for s in states])  # t b c h w
            for i, name in enumerate(self.area_names)
        }

    def set_num_steps(self, num_steps: int) -> None:
        """Change the default number of steps in place.

        Per-step norms keep the statistics they were built with; steps past them reuse the last.

        Raises:
            ValueError: unless num_steps is an integer >= 1.
        """
        _check_steps(num_steps)
        self.num_steps = num_steps

    def nfe(self) -> dict[str, int]:
        """Function evaluations, as for ResNet; always zero, since there is no ODE solve."""
        return {"nfe_forward": 0, "nfe_backward": 0}


class CORnetS(ResNet):
    """A CORnet-S-like pipeline (Kubilius et al. 2019) from the project's recurrent ResNet stages.

    Areas are the stages of a :class:`cortexnet.models.resnet.ResNet`, renamed after the areas, so
    :meth:`stage_states` is keyed by area name. V1 is the stem and one feedforward block; V2, V4
    and IT are recurrent stages: an unshared transition block that changes width and resolution,
    then one shared bottleneck block unrolled 2, 4 and 2 steps with per-step batch statistics
    (``norm="step_batch"``). The readout (average pool, linear) reads IT's last state, and
    ``forward_steps`` reads IT at each of its steps. Any ResNet argument can be overridden; an
    integer ``num_steps`` (in ``forward`` or :meth:`set_num_steps`) replaces all three per-area
    step counts.

    Differences from CORnet-S:

    - The stem defaults to a 3x3 convolution for small images (CIFAR, digits); pass
      ``stem="imagenet"`` for a 7x7 stride-2 convolution and max-pool, which with 224x224 inputs
      gives CORnet-S's resolutions (56, 28, 14, 7). CORnet-S's V1 is two convolutions; here it is
      the stem and one bottleneck block.
    - CORnet-S runs its shared block with stride 2 at step 0 and stride 1 afterwards. Here a
      separate transition block takes the stride, so each area has one unshared block more and
      the step counts 2, 4, 2 all apply the same shared block.
    - Blocks are standard bottlenecks that narrow to a quarter of the area width; CORnet-S's
      block widens to four times the width. The per-step norms share one affine (scale, shift)
      across steps; CORnet-S learns one per step. There is no gating in either.
    - Area widths are CORnet-S's (64, 128, 256, 512), so parameter counts differ from its 53M
      because of the narrower blocks.

    Args:
        area_names: names given to the stages, bottom to top.
        **kwargs: :class:`cortexnet.models.resnet.ResNet` arguments.

    Raises:
        ValueError: for a bad argument, or when the number of names differs from the stages.
    """

    def __init__(self, area_names: Sequence[str] = AREA_NAMES, **kwargs):
        super().__init__(**kwargs)
        names = _names(area_names)
        if len(names) != len(self.stages):
            raise ValueError(
                f"area_names has {len(names)} entries but the model has {len(self.stages)} stages"
            )
        self.area_names = names
        self.stages = nn.ModuleDict(zip(names, self.stages.values()))


def _check_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")


def _names(area_names: Sequence[str]) -> list[str]:
    names = [area_names] if isinstance(area_names, str) else list(area_names)
    if (
        not names
        or not all(isinstance(s, str) and s for s in names)
        or len(set(names)) < len(names)
    ):
        raise ValueError(f"area_names must be distinct non-empty strings, got {area_names!r}")
    if any("." in s for s in names):  # a dot would break the module path of the area
        raise ValueError(f"area_names must not contain '.', got {names}")
    return names


def _positive_ints(value: Sequence[int], n: int, name: str) -> list[int]:
    try:
        out = list(value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of {n} integers, got {value!r}") from None
    if len(out) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
        raise ValueError(f"{name} must be {n} integers (one per area), got {value!r}")
    if min(out) < 1:
        raise ValueError(f"{name} must all be >= 1, got {out}")
    return out


# Small-image defaults: with a 3x3 stem and strides 1, 2, 2, 2 a 32x32 image gives area maps of
# 32, 16, 8, 4 and an 8x8 digit 8, 4, 2, 1. Four steps, as in Spoerer et al. 2017.
_CORTEX = dict(
    area_names=AREA_NAMES,
    widths=(32, 64, 128, 256),
    strides=(1, 2, 2, 2),
    num_steps=4,
    norm="step_batch",
    stem="cifar",
    in_channels=3,
    num_classes=10,
)
register_model("cortexnet", CortexNet, connections="BLT", **_CORTEX)
for _conn in ("B", "BL", "BT"):
    register_model(f"cortexnet_{_conn.lower()}", CortexNet, connections=_conn, **_CORTEX)

# CORnet-S's area widths and step counts (V2 2, V4 4, IT 2). blocks_per_stage counts the
# transition block plus the steps; num_steps fixes the steps explicitly.
register_model(
    "cornet_s",
    CORnetS,
    area_names=AREA_NAMES,
    blocks_per_stage=(1, 3, 5, 3),
    widths=(64, 128, 256, 512),
    block="bottleneck",
    dynamics=("feedforward", "recurrent", "recurrent", "recurrent"),
    num_steps=(None, 2, 4, 2),
    norm="step_batch",
    stem="cifar",
    stem_width=64,
    shortcut="B",
    in_channels=3,
    num_classes=10,
)
