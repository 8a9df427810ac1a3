"""Learning-rate schedules, stepped once per batch: linear warm-up, then a decay."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def build_schedule(
    optimizer: Optimizer,
    name: str,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    milestones: list[float] | tuple[float, ...] = (0.5, 0.75),
    gamma: float = 0.1,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """A per-batch schedule as a multiplier of the optimizer's learning rate.

    Args:
        optimizer: the optimizer whose ``lr`` is the peak.
        name: ``cosine`` (to ``min_lr_ratio``), ``multistep`` (times ``gamma`` at each
            milestone, given as fractions of training) or ``constant``.
        total_steps: batches in the whole run.
        steps_per_epoch: batches per epoch (to convert ``warmup_epochs``).
        warmup_epochs: linear warm-up from zero over this many epochs.

    Returns:
        A LambdaLR whose state_dict resumes exactly.
    """
    warmup = int(round(warmup_epochs * steps_per_epoch))
    marks = sorted(int(m * total_steps) for m in milestones)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if name == "constant":
            return 1.0
        if name == "multistep":
            return gamma ** sum(step >= m for m in marks)
        if name == "cosine":
            progress = (step - warmup) / max(1, total_steps - warmup)
            cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
            return min_lr_ratio + (1 - min_lr_ratio) * cos
        raise ValueError(f"unknown schedule {name!r}; valid: cosine, multistep, constant")

    factor(0)  # fail on a bad name now, not at the first step
    return LambdaLR(optimizer, factor)
