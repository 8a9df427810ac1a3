"""A data loader for data sets that fit in memory, with batched augmentation on the device.

The whole split is moved to the training device once. Each epoch draws one global
permutation and one set of augmentation parameters, both from generators seeded by the seed
and the epoch number alone, so an epoch can be replayed exactly, on any device, after a
restart. Batches are gathered with one indexing operation and augmented as a whole; nothing
runs per sample in Python.
"""

import logging
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from cortexnet.data.augment import Normalize, check_augment, crop_padded, window_offsets

logger = logging.getLogger(__name__)

# Independent random streams drawn for each epoch.
_ORDER_STREAM, _AUGMENT_STREAM = 0, 1


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    # SeedSequence mixes the three numbers so that nearby (seed, epoch) pairs give unrelated
    # streams; a CPU generator makes the draws the same whatever the training device.
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class InMemoryLoader:
    """Iterates over (x, y) batches of tensors held on the training device.

    Sharding: for distributed training every rank builds a loader with its own `rank` and the
    same `seed` and `world_size`. Each epoch's global order (a permutation when shuffling, the
    natural order otherwise) is dealt out with a stride: rank r takes positions r, r + w,
    r + 2w, ... The slices are disjoint and every rank gets the same number of samples and
    batches. With `drop_last=False` the order is first extended by wrapping around to its
    start until its length divides by `world_size`, so up to `world_size - 1` samples are seen
    twice in an epoch (an evaluation sharded this way counts them twice); the last batch of
    each rank may be short. With `drop_last=True` each rank keeps only full batches of its
    slice, so up to `world_size * batch_size - 1` samples of an epoch are left out.

    Epochs: iterating runs the current epoch, and finishing it moves to the next, so a plain
    `for epoch ...: for x, y in loader:` sees a new order each time. `set_epoch` picks an
    epoch explicitly (as with a distributed sampler). `state_dict` records the epoch and the
    number of batches already handed out, so a run restored mid-epoch continues with the
    very next batch. Only one iteration may be in progress at a time.

    Augmentation works on the stored tensors before normalization, so for uint8 images the
    pixels shifted in are black. Each epoch's random window corners and flips are drawn for
    the whole global order at once and moved to the device in one copy. With 'crop_flip' the
    loader also holds a mirrored copy of the images (twice the memory of x: 300 MB for
    CIFAR-10's uint8 training images, still half of their float32 size), which makes a
    flipped sample a plain lookup.

    Args:
        x: images, n c h w (uint8 pixels or floating point).
        y: labels, n.
        batch_size: samples per batch on this rank.
        shuffle: draw a new permutation each epoch; otherwise keep the stored order.
        drop_last: keep only full batches (see Sharding).
        augment: one of 'none', 'shift', 'crop' (the same random translation), 'crop_flip'
            (translation and a random left-right flip). Use 'none' for evaluation.
        device: where the tensors live and batches are made; None keeps x's device.
        seed: base seed of the order and the augmentation; non-negative.
        rank: this process's rank, 0 <= rank < world_size.
        world_size: number of ranks sharing the data.
        mean: per-channel means for normalization (0..1 scale for uint8 x), or None.
        std: per-channel standard deviations, or None.
        pad: largest translation in pixels for 'shift', 'crop' and 'crop_flip'.
        fill: value of the pixels shifted in, in x's units (0 is black for uint8 pixels).

    Raises:
        ValueError: naming a bad argument and its valid values.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        augment: str = "none",
        device: torch.device | str | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        pad: int = 4,
        fill: float = 0.0,
    ):
        if x.ndim != 4:
            raise ValueError(f"x must be n c h w, got shape {tuple(x.shape)}")
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"y must hold one label per image: x {len(x)}, y {tuple(y.shape)}")
        if len(x) == 0:
            raise ValueError("x is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        if not x.is_floating_point() and not float(fill).is_integer():
            raise ValueError(f"fill must be a whole number for {x.dtype} images, got {fill}")
        self.augment = check_augment(augment)
        self.device = torch.device(device) if device is not None else x.device
        x = x.to(self.device)
        if augment == "crop_flip":
            # A mirrored copy next to the images makes a flipped sample a plain lookup:
            # mirroring half of every batch instead costs more than the rest of the work.
            self._images = torch.cat([x, x.flip(3)])
            self.x = self._images[: len(x)]  # a view, not a third copy
        else:
            self._images = self.x = x
        self.num_samples = len(x)
        self.y = y.to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.fill = fill
        self.normalize = Normalize(mean, std)
        self.epoch = 0
        self._position = 0  # batches of the current epoch already handed out

        n = self.num_samples
        if drop_last:
            per_rank = n // world_size // batch_size * batch_size
            if per_rank == 0:
                raise ValueError(
                    f"drop_last leaves no batch: {n} samples, batch_size={batch_size}, "
                    f"world_size={world_size}"
                )
        else:
            per_rank = math.ceil(n / world_size)
        self.samples_per_rank = per_rank
        self._num_batches = math.ceil(per_rank / batch_size)
        logger.debug(
            "loader: %d samples on %s, rank %d/%d takes %d in %d batches, augment %s",
            n,
            self.device,
            rank,
            world_size,
            per_rank,
            self._num_batches,
            self.augment,
        )

    def __len__(self) -> int:
        """Number of batches this rank yields in a full epoch."""
        return self._num_batches

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration run `epoch` (0-based).

        Setting the epoch that is already current keeps the position within it, so calling
        this at the top of every epoch does not undo a mid-epoch restore.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self.epoch = epoch
            self._position = 0

    def state_dict(self) -> dict[str, int]:
        """The epoch and how many of its batches were handed out, for an exact resume."""
        return {
            "seed": self.seed,
            "world_size": self.world_size,
            "epoch": self.epoch,
            "batch": self._position,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a `state_dict`: the next batch is the one after the last handed out.

        Raises:
            ValueError: if the state was saved with another seed or world size (the order
                would differ) or its position is out of range.
        """
        for key in ("seed", "world_size"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"state was saved with {key} {state[key]}, loader has {getattr(self, key)}"
                )
        if not 0 <= state["batch"] <= len(self):
            raise ValueError(f"batch {state['batch']} out of range 0..{len(self)}")
        self.epoch = int(state["epoch"])
        self._position = int(state["batch"])

    def epoch_indices(self, epoch: int) -> Tensor:
        """Indices into x of the samples this rank sees in `epoch`, in order (on the CPU)."""
        return self._global_order(epoch)[self.rank :: self.world_size]

    def _global_order(self, epoch: int) -> Tensor:
        n = self.num_samples
        if self.shuffle:
            order = torch.randperm(n, generator=_generator(self.seed, epoch, _ORDER_STREAM))
        else:
            order = torch.arange(n)
        total = self.samples_per_rank * self.world_size
        if total > n:
            order = order.repeat(math.ceil(total / n))
        return order[:total]

    def _epoch_plan(self, epoch: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """For this rank's samples of `epoch`, on the device: the indices of the images and
        labels, the indices into the stored images (mirrored ones for a flip) and the crop
        window offsets (None without augmentation)."""
        order = self.epoch_indices(epoch)
        if self.augment == "none":
            order = order.to(self.device)
            return order, order, None
        total = self.samples_per_rank * self.world_size
        g = _generator(self.seed, epoch, _AUGMENT_STREAM)
        corners = torch.randint(0, 2 * self.pad + 1, (2, total), generator=g)
        flip = torch.rand(total, generator=g) < 0.5 if self.augment == "crop_flip" else None
        mine = slice(self.rank, None, self.world_size)
        top, left = corners[:, mine]
        if flip is not None:
            flip = flip[mine]
        offsets = window_offsets(top, left, flip, self.pad, self.x.shape[3])
        source = order if flip is None else order + self.num_samples * flip
        order, source, offsets = (t.to(self.device) for t in (order, source, offsets))
        return order, source, offsets

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch, start = self.epoch, self._position
        order, source, offsets = self._epoch_plan(epoch)
        for k in range(start, len(self)):
            part = slice(k * self.batch_size, (k + 1) * self.batch_size)
            xb = self._images.index_select(0, source[part])
            if offsets is not None:
                xb = crop_padded(xb, offsets[part], self.pad, self.fill)
            # Counted before the yield, so a checkpoint taken while the batch is in use
            # resumes after it.
            self._position = k + 1
            yield self.normalize(xb), self.y.index_select(0, order[part])
        if (self.epoch, self._position) == (epoch, len(self)):
            self.epoch, self._position = epoch + 1, 0
