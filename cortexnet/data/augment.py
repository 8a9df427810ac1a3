"""Batched, vectorized augmentation and normalization of image tensors.

Both transforms work on a whole batch at once with per-sample random parameters given as
tensors, so the training loop never runs per-sample Python.
"""

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

# 'shift' and 'crop' are the same transform, a random translation by up to `pad` pixels whose
# uncovered border is filled with a constant; the two names are both in common use.
AUGMENTATIONS = ("none", "shift", "crop", "crop_flip")


def check_augment(augment: str) -> str:
    """Return `augment` if it names a known augmentation.

    Raises:
        ValueError: naming the bad value and the valid ones.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {augment!r}; valid: {', '.join(AUGMENTATIONS)}")
    return augment


def translate(
    x: Tensor,
    top: Tensor,
    left: Tensor,
    pad: int,
    flip: Tensor | None = None,
    fill: float = 0.0,
) -> Tensor:
    """Translate each image of a batch by its own offset, and mirror some of them.

    Each image is padded by `pad` pixels of `fill`, cropped back to h x w with its top-left
    corner at (top, left) of the padded image, and mirrored left-right where `flip` is true.

    Args:
        x: images, b c h w, any dtype.
        top: b window corners, in 0..2 pad (pad means no vertical shift).
        left: b window corners, in 0..2 pad.
        pad: largest shift in pixels.
        flip: optional b booleans; true mirrors that image left-right.
        fill: value of the pixels shifted in from outside the image, in x's units.

    Returns:
        A new contiguous tensor with x's shape, dtype and device.
    """
    if flip is not None:
        # Picking from the batch and its mirror image costs far less than torch.where.
        b = len(x)
        x = torch.cat([x, x.flip(3)]).index_select(0, torch.arange(b, device=x.device) + b * flip)
    return crop_padded(x, window_offsets(top, left, flip, pad, x.shape[3]), pad, fill)


def window_offsets(top: Tensor, left: Tensor, flip: Tensor | None, pad: int, width: int) -> Tensor:
    """Offsets of crop windows in padded images, for `crop_padded`.

    Args:
        top: window corners, in 0..2 pad.
        left: window corners, in 0..2 pad, before any mirroring.
        flip: optional booleans; true for an image that is mirrored before it is cropped.
        pad: padding on each side.
        width: image width before padding.

    Returns:
        top * (width + 2 pad) + left, with left mirrored to 2 pad - left where flip is true:
        cropping and then mirroring equals mirroring and then cropping at the mirrored corner.
    """
    if flip is not None:
        left = torch.where(flip, 2 * pad - left, left)
    return top * (width + 2 * pad) + left


def crop_padded(x: Tensor, offsets: Tensor, pad: int, fill: float = 0.0) -> Tensor:
    """Pad each image by `pad` pixels of `fill` and crop it back to h x w at its offset.

    Done without per-sample work: every output row is a run of w consecutive values of the
    padded batch, so all b * c * h rows are copied by one `index_select` over a sliding window
    view (`unfold`) of the flat padded batch.

    Args:
        x: images, b c h w, any dtype.
        offsets: b window offsets from `window_offsets`.
        pad: padding on each side.
        fill: value of the padding, in x's units.

    Returns:
        A new contiguous tensor with x's shape, dtype and device.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=fill) if pad else x.contiguous()
    starts = offsets[:, None] + _row_offsets(b, c, h, h + 2 * pad, w + 2 * pad, x.device)
    windows = padded.view(-1).unfold(0, w, 1)  # every run of w values, without a copy
    return windows.index_select(0, starts.view(-1)).view(b, c, h, w)


@functools.lru_cache(maxsize=16)
def _row_offsets(b: int, c: int, h: int, hp: int, wp: int, device: torch.device) -> Tensor:
    """Where row i of channel k of image j of a padded batch starts: b (c h)."""
    images = torch.arange(b, device=device).view(b, 1, 1) * (c * hp * wp)
    channels = torch.arange(c, device=device).view(1, c, 1) * (hp * wp)
    rows = torch.arange(h, device=device).view(1, 1, h) * wp
    return (images + channels + rows).view(b, c * h)


class Normalize:
    """Per-channel normalization to float32, applied on the device the batch lives on.

    uint8 input is read as pixels in 0..255 and scaled to 0..1 before `(x - mean) / std`, so
    `mean` and `std` are in the 0..1 scale in which the published constants are quoted.
    Floating input is normalized as is. Without mean and std, only the uint8 scaling (if any)
    and the conversion to float32 are done.

    Args:
        mean: per-channel means, or None.
        std: per-channel standard deviations, or None.

    Raises:
        ValueError: if only one of mean and std is given, their lengths differ, or a std is
            not positive.
    """

    def __init__(self, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None):
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if mean is not None and std is not None:
            if len(mean) != len(std):
                raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
            if min(std) <= 0:
                raise ValueError(f"std must be positive, got {tuple(std)}")
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def _affine(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Scale and bias planes, c h w, such that x * scale + bias is the normalized x."""
        from_uint8 = x.dtype == torch.uint8
        key = (x.device, from_uint8, *x.shape[1:])
        if key not in self._cache:
            c = x.shape[1]
            unit = 1 / 255 if from_uint8 else 1.0
            mean = torch.tensor(self.mean or (0.0,) * c, dtype=torch.float64)
            std = torch.tensor(self.std or (1.0,) * c, dtype=torch.float64)
            # Whole planes rather than c 1 1: an add that broadcasts over the batch only is
            # markedly faster on the CPU than one that also broadcasts over h and w.
            planes = (1, c, *x.shape[2:])
            scale = (unit / std).float().view(1, c, 1, 1).expand(planes).contiguous()
            bias = (-mean / std).float().view(1, c, 1, 1).expand(planes).contiguous()
            self._cache[key] = (scale.to(x.device), bias.to(x.device))
        return self._cache[key]

    def __call__(self, x: Tensor) -> Tensor:
        """Return x as a new, contiguous, normalized float32 tensor (b c h w) on x's device."""
        if self.mean is not None and x.shape[1] != len(self.mean):
            raise ValueError(f"x has {x.shape[1]} channels but mean/std have {len(self.mean)}")
        # Always a copy, so that the in-place step below never writes into x.
        out = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        if self.mean is None and x.dtype != torch.uint8:
            return out
        scale, bias = self._affine(x)
        return torch.addcmul(bias, out, scale, out=out)  # one pass: bias + out * scale
