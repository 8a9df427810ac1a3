"""Tasks: what a batch is, how it is scored, and what a model's head must output.

Classification (the image sets) reads logits (b, k); mazes read per-pixel logits (b, 2, h, w)
and count a maze as solved only when every open pixel is right.
"""

# axes: t step, b batch, k classes, h w pixels

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    """One evaluation split: batches on the device, and the name its metrics are logged under."""

    name: str
    batches: list[tuple[Tensor, Tensor]]

    @property
    def size(self) -> int:
        return sum(len(y) for _, y in self.batches)


@dataclass
class Task:
    """A training stream, evaluation splits, and the task's loss and score."""

    kind: str  # classify or pixel
    in_channels: int
    num_classes: int
    train: Any  # iterable of (x, y) batches with len() and set_epoch()
    evals: list[EvalSet] = field(default_factory=list)
    input_size: tuple[int, int, int] = (1, 8, 8)

    def loss(self, logits: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy of one readout (b, k) or (b, 2, h, w)."""
        if self.kind == "classify":
            return F.cross_entropy(logits, y)
        # Mazes: walls are given in the input, so only open pixels carry information.
        open_mask = x[:, 0] > 0.5
        per_pixel = F.cross_entropy(logits, y, reduction="none")
        return (per_pixel * open_mask).sum() / open_mask.sum().clamp_min(1)

    def correct(self, logits: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Per-sample correctness (b,) of one readout."""
        pred = logits.argmax(dim=1)
        if self.kind == "classify":
            return pred == y
        from cortexnet.data.mazes import exact_solve

        return exact_solve(pred, y, x[:, 0] > 0.5)


class MazeEpochs:
    """Fresh mazes in every batch; an epoch is a fixed number of batches.

    The batches of epoch e come from a stream seeded by (seed, e, rank), so a resumed run draws
    the same mazes as an uninterrupted one, and ranks of a distributed run draw different ones.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        batches: int,
        seed: int,
        device: torch.device,
        rank: int = 0,
    ):
        self.size, self.batch_size, self.batches = size, batch_size, batches
        self.seed, self.device, self.epoch, self.rank = seed, device, 0, rank

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        from cortexnet.data.mazes import MazeStream

        seed = self.seed * 100_003 + self.epoch
        if self.rank:  # rank 0 keeps the single-process stream
            seed = seed * 1_009 + self.rank
        stream = MazeStream(self.size, self.batch_size, seed=seed)
        for _ in range(self.batches):
            x, y = next(stream)
            yield x.to(self.device), y.to(self.device)


def build_task(
    data_cfg: Any,
    batch_size: int,
    seed: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> Task:
    """Load the configured data onto ``device`` and wrap it as a :class:`Task`.

    Raises:
        ValueError: for bad data settings; DatasetError for missing or corrupt files.
    """
    if data_cfg.name == "mazes":
        from cortexnet.data.mazes import load_mazes

        _, tests = load_mazes(
            data_cfg.train_size, list(data_cfg.test_sizes), 1, data_cfg.num_test, seed
        )
        evals = [
            EvalSet(f"maze{s}", _batches(x, y, batch_size, device)) for s, (x, y) in tests.items()
        ]
        train = MazeEpochs(
            data_cfg.train_size, batch_size, data_cfg.batches_per_epoch, seed, device, rank
        )
        n = 2 * data_cfg.train_size + 1
        return Task("pixel", 3, 2, train, evals, (3, n, n))

    from cortexnet.data.datasets import load_dataset

    ds = load_dataset(data_cfg.name, root=data_cfg.root, download=data_cfg.download)
    train = ds.train_loader(
        batch_size,
        device=device,
        seed=seed,
        rank=rank,
        world_size=world_size,
        augment=data_cfg.augment,
    )
    test = ds.test_loader(max(batch_size, 256), device=device, rank=rank, world_size=world_size)
    test.set_epoch(0)
    evals = [EvalSet("val", list(test))]
    return Task(
        "classify",
        ds.in_channels,
        ds.num_classes,
        train,
        evals,
        (ds.in_channels, ds.image_size, ds.image_size),
    )


def _batches(x: Tensor, y: Tensor, batch_size: int, device: torch.device):
    x, y = x.to(device), y.to(device)
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]
