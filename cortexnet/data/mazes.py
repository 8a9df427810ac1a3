# axes: b batch, c channels (open, start, goal), h w pixels, k cells (row-major), d direction
"""Perfect mazes for testing whether more steps solve bigger problems.

A maze of ``size`` x ``size`` cells is a spanning tree over the grid of cells, so exactly one
path joins any two cells. It is drawn as a (2n+1) x (2n+1) image: cell (i, j) is the pixel
(2i+1, 2j+1), the wall between two adjacent cells is the pixel between them, open pixels are 1
and walls 0. The start and the goal are two distinct cells drawn uniformly at random, so path
lengths vary from 1 cell step to the longest path in the tree.

Inputs have three channels (open, start, goal) as float32; the target is the mask of the unique
path from start to goal (its cells and the opened walls between them) as int64 0/1.

The tree comes from randomized depth-first search (the "recursive backtracker"), run for a
whole chunk of mazes at once in numpy: every maze takes one push or pop per step, so the loop
runs about 2 n^2 times whatever the chunk size. Depth-first mazes have long corridors and few
branches, which gives long paths; they are not uniform spanning trees. The DFS root is a random
cell independent of the start and goal, and the path is read off the tree's parent pointers:
the cells that are ancestors of exactly one of start and goal, plus their lowest common
ancestor.

Shortcomings: the mazes a seed gives depend on how many are drawn in one call (draws are made
per chunk of mazes), so ``generate_mazes(10, n, s)`` is not the first ten of
``generate_mazes(20, n, s)``. Depth-first mazes are one family only; a network trained on them
may not transfer to mazes with more branching (e.g. uniform spanning trees). Generation runs
on the CPU in the calling thread.
"""

from __future__ import annotations

import functools
import logging
import numbers
import time
from collections import deque
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["MazeStream", "exact_solve", "generate_mazes", "load_mazes", "pixel_accuracy"]

# Mazes are generated this many at a time: large enough that numpy's per-call overhead is spread
# thin, small enough that the search's (chunk, n^2) tables stay a few megabytes. The draws depend
# on it, so changing it changes the mazes a seed gives.
_CHUNK = 4096

# Stream keys that keep load_mazes' training and test sets apart for the same seed and size.
_TRAIN, _TEST = 0, 1


def _check_int(name: str, value: object, minimum: int, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} ({meaning}), got {value!r}")
    return int(value)


def _choice_table() -> np.ndarray:
    """Direction to take for each (free-direction bit mask, r in 0..11), shape (16, 12).

    With r uniform over 12 values, ``table[mask, r]`` is uniform over the set bits of ``mask``,
    exactly, because 12 is a multiple of 1, 2, 3 and 4. Mask 0 (nowhere to go) maps to 0.
    """
    table = np.zeros((16, 12), dtype=np.intp)
    for mask in range(1, 16):
        directions = [d for d in range(4) if mask >> d & 1]
        table[mask] = [directions[r % len(directions)] for r in range(12)]
    return table


_CHOICE = _choice_table()


@functools.lru_cache(maxsize=64)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-size lookup tables for a grid padded with one ring of border cells.

    Returns:
        inner (k,): the padded index of each cell; to_cell (padded cells,): the inverse, 0 on
        the border; row and col (k,): each cell's grid coordinates.
    """
    k = size * size
    side = size + 2
    row, col = np.divmod(np.arange(k), size)
    inner = (row + 1) * side + (col + 1)
    to_cell = np.zeros(side * side, dtype=np.int32)
    to_cell[inner] = np.arange(k)
    return inner, to_cell, row, col


def _spanning_trees(num: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Randomized depth-first search over ``num`` grids at once.

    The grid is padded with a ring of cells that count as visited, so a cell's neighbours are
    fixed offsets away and no bounds test is needed; each step reads the four neighbours'
    "free" flags of every maze's stack top, packs them into a 4-bit mask, and picks a free
    direction from a table with one random draw per maze.

    Returns:
        parent (b, k): each cell's parent in the tree (the root is its own parent), and
        root (b,): the cell the search began from.
    """
    k = size * size
    side = size + 2
    padded = side * side
    inner, to_cell, _, _ = _grid(size)
    # Small tables keep the random-access reads in cache; int16 holds up to 179 cells a side.
    cell_t = np.int16 if padded < 2**15 else np.int32
    step = np.array([-side, side, -1, 1])[_CHOICE].ravel()  # (mask * 12 + r) -> offset
    rows = np.arange(num)

    # Flat per-maze tables, so every lookup is one take/put on a 1-d index. Cell 0 of each
    # padded grid is a corner no step can reach; mazes that backtrack write their no-op there.
    base = rows * padded
    free = np.zeros((num, side, side), dtype=np.uint8)
    free[:, 1:-1, 1:-1] = 1
    free = free.ravel()
    parent = np.zeros(num * padded, dtype=cell_t)
    stack_base = rows * (k + 1)
    scratch = stack_base + k  # one slot past the deepest possible stack
    stack = np.zeros(num * (k + 1), dtype=cell_t)
    top_at = np.zeros(num, dtype=np.intp)  # stack pointer

    root = rng.integers(k, size=num)
    free[base + inner[root]] = 0
    parent[base + inner[root]] = inner[root]
    stack[stack_base] = inner[root]

    draws_per_block = 64
    pushes_left = num * (k - 1)
    t = 0
    while pushes_left:
        if t % draws_per_block == 0:
            draws = rng.integers(12, size=(draws_per_block, num), dtype=np.int16)
        r = draws[t % draws_per_block]
        t += 1

        top = stack[stack_base + top_at]
        at_top = base + top
        mask = (
            free[at_top - side]
            | free[at_top + side] << 1
            | free[at_top - 1] << 2
            | free[at_top + 1] << 3
        )
        push = mask != 0
        # Mazes with nowhere to go pop their stack; finished ones stay on an empty stack,
        # which costs nothing since they never push again.
        new = np.where(push, top + step[mask * 12 + r], 0)  # mask * 12 + r < 192 fits uint8
        at_new = base + new
        free[at_new] = 0
        parent[at_new] = top
        top_at = np.maximum(top_at + push * 2 - 1, 0)
        stack[np.where(push, stack_base + top_at, scratch)] = new
        pushes_left -= int(np.count_nonzero(push))

    parent = to_cell[parent.reshape(num, padded)[:, inner]]
    return parent, root


def _tree_paths(
    parent: np.ndarray, root: np.ndarray, start: np.ndarray, goal: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The cells on the tree path from start to goal (which must differ).

    The path is the set of cells that are ancestors (inclusive) of exactly one of start and
    goal, plus the lowest common ancestor, which is the parent of the highest of those cells.

    Returns:
        on_path (b, k): cells on the path, and below_meet (b, k): the path's cells other than
        the lowest common ancestor, each of which joins the path through its parent.
    """
    num, k = parent.shape
    rows = np.arange(num)
    flat_parent = parent.ravel()

    # Mark start, goal and all their ancestors, start's in the first half of the table and
    # goal's in the second; the root is its own parent, so rounds after reaching it are no-ops.
    ancestor = np.zeros(2 * num * k, dtype=bool)
    cell = np.concatenate([start, goal])
    roots = np.concatenate([root, root])
    mark_offset = np.arange(2 * num) * k
    tree_offset = np.concatenate([rows, rows]) * k
    for t in range(k):
        ancestor[mark_offset + cell] = True
        if t % 8 == 7 and np.array_equal(cell, roots):
            break
        cell = flat_parent[tree_offset + cell]
    ancestor = ancestor.reshape(2, num, k)

    below_meet = ancestor[0] ^ ancestor[1]
    on_path = below_meet.copy()
    on_path.ravel()[(rows[:, None] * k + parent)[below_meet]] = True
    return on_path, below_meet


def _generate(num: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One chunk of mazes as numpy arrays: inputs (b, c, h, w) float32, targets (b, h, w)."""
    k = size * size
    side = 2 * size + 1
    _, _, row, col = _grid(size)
    rows = np.arange(num)

    parent, root = _spanning_trees(num, size, rng)
    start = rng.integers(k, size=num)
    goal = (start + rng.integers(1, k, size=num)) % k  # uniform over cells other than start
    on_path, below_meet = _tree_paths(parent, root, start, goal)

    area = side * side
    cell_pixel = ((2 * row + 1) * side + (2 * col + 1)).astype(np.int32)  # k
    # The pixel between a cell and its parent is the mean of their flat pixel indices (the
    # index is linear in row and column); for the root, its own parent, it is the cell itself.
    link_pixel = (cell_pixel + cell_pixel[parent]) // 2  # b k

    inputs = np.zeros((num, 3, side, side), dtype=np.float32)
    inputs[:, 0, 1::2, 1::2] = 1.0
    flat = inputs.reshape(-1)  # a view: writes land in inputs
    image_at = rows * (3 * area)
    flat[image_at[:, None] + link_pixel] = 1.0
    flat[image_at + area + cell_pixel[start]] = 1.0
    flat[image_at + 2 * area + cell_pixel[goal]] = 1.0

    targets = np.zeros((num, side, side), dtype=np.int64)
    targets[:, 1::2, 1::2] = on_path.reshape(num, size, size)
    targets.reshape(-1)[((rows * area)[:, None] + link_pixel)[below_meet]] = 1
    return inputs, targets


def _generate_chunked(num: int, size: int, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    parts = [_generate(min(_CHUNK, num - i), size, rng) for i in range(0, num, _CHUNK)]
    inputs = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    targets = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def generate_mazes(num: int, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Draw perfect mazes with a start, a goal and the path between them.

    The same seed gives the same mazes; the mazes depend on ``num`` as well (draws are made for
    a chunk of mazes at a time), so the first mazes of a bigger call differ from a smaller one.

    Args:
        num: how many mazes.
        size: cells per side, n; images are (2n+1) x (2n+1) pixels.
        seed: seed of numpy's default generator (a non-negative integer).

    Returns:
        inputs (num, 3, 2n+1, 2n+1) float32 with channels open (1 on open pixels, 0 on walls),
        start and goal (1 on one cell pixel each), and targets (num, 2n+1, 2n+1) int64, 1 on
        the cells and opened walls of the unique path from start to goal, start and goal
        included.

    Raises:
        ValueError: if num < 1, size < 2 or seed < 0, or one of them is not an integer.
    """
    num = _check_int("num", num, 1, "number of mazes")
    size = _check_int("size", size, 2, "cells per side")
    seed = _check_int("seed", seed, 0, "generator seed")
    return _generate_chunked(num, size, np.random.default_rng(seed))


@functools.lru_cache(maxsize=64)
def _cached_set(num: int, size: int, seed: int, split: int) -> tuple[Tensor, Tensor]:
    began = time.perf_counter()
    mazes = _generate_chunked(num, size, np.random.default_rng([seed, split, size]))
    logger.debug(
        "generated %d mazes of %dx%d cells in %.2f s", num, size, size, time.perf_counter() - began
    )
    return mazes


def load_mazes(
    train_size: int, test_sizes: list[int], num_train: int, num_test: int, seed: int
) -> tuple[tuple[Tensor, Tensor], dict[int, tuple[Tensor, Tensor]]]:
    """A training set at one size and test sets at others, generated once and kept in memory.

    Each set is drawn from its own stream, keyed by (seed, train or test, size), so a test set
    at the training size is not the training set. Repeated calls with the same arguments return
    the same tensor objects from an in-memory cache: treat them as read-only.

    Args:
        train_size: cells per side of the training mazes.
        test_sizes: cells per side of each test set, e.g. ``[5, 7, 9, 13, 17]``.
        num_train: number of training mazes.
        num_test: number of mazes in each test set.
        seed: seed of the whole collection (a non-negative integer).

    Returns:
        ``((x, y), {size: (x, y)})``: the training inputs and targets, and the test sets keyed
        by size, laid out as in :func:`generate_mazes`.

    Raises:
        ValueError: on a size < 2, a count < 1, a negative seed, or an empty ``test_sizes``.
    """
    train_size = _check_int("train_size", train_size, 2, "cells per side")
    num_train = _check_int("num_train", num_train, 1, "number of training mazes")
    num_test = _check_int("num_test", num_test, 1, "number of mazes per test set")
    seed = _check_int("seed", seed, 0, "generator seed")
    if not test_sizes:
        raise ValueError("test_sizes must name at least one size (cells per side), got none")
    sizes = [_check_int("test_sizes", s, 2, "cells per side") for s in test_sizes]

    train = _cached_set(num_train, train_size, seed, _TRAIN)
    tests = {s: _cached_set(num_test, s, seed, _TEST) for s in sizes}
    return train, tests


class MazeStream(Iterator[tuple[Tensor, Tensor]]):
    """An endless stream of fresh training mazes, one new batch per step.

    Training on fresh mazes rather than a fixed pool is what made recurrent models extrapolate
    to bigger mazes (see FINDINGS). The search steps all mazes of a call in lockstep, so its
    fixed cost per step is shared by every maze generated together: the stream generates a
    block of about ``block_size`` mazes at a time and hands it out in batches, which at
    17x17 cells is several times faster than one call per batch of 256. One seeded generator
    advances with every block, so two streams with the same arguments yield the same batches;
    the first block equals ``generate_mazes(block, size, seed)``, where block is
    ``block_size`` rounded down to whole batches (at least one). Blocks are made in the calling
    thread, on the CPU, so every ``block_size // batch_size``-th batch takes the whole block's
    time.

    Args:
        size: cells per side.
        batch_size: mazes per batch.
        seed: seed of the stream (a non-negative integer).
        block_size: mazes generated at a time; 1 generates every batch on its own.

    Raises:
        ValueError: on size < 2, batch_size < 1, seed < 0 or block_size < 1.
    """

    def __init__(self, size: int, batch_size: int, seed: int, block_size: int = 2048) -> None:
        self.size = _check_int("size", size, 2, "cells per side")
        self.batch_size = _check_int("batch_size", batch_size, 1, "mazes per batch")
        self.seed = _check_int("seed", seed, 0, "generator seed")
        self.block_size = _check_int("block_size", block_size, 1, "mazes generated at a time")
        self._batches_per_block = max(1, self.block_size // self.batch_size)
        self._rng = np.random.default_rng(self.seed)
        self._ready: deque[tuple[Tensor, Tensor]] = deque()

    def __next__(self) -> tuple[Tensor, Tensor]:
        if not self._ready:
            num = self._batches_per_block * self.batch_size
            inputs, targets = _generate_chunked(num, self.size, self._rng)
            self._ready.extend(
                zip(inputs.split(self.batch_size), targets.split(self.batch_size), strict=True)
            )
        return self._ready.popleft()


def _correct_pixels(
    pred: Tensor, target: Tensor, open_mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    if pred.ndim == 4:
        if pred.shape[1] != 2:
            raise ValueError(
                f"pred with 4 dims must be logits (b, 2, h, w), got shape {tuple(pred.shape)}"
            )
        pred = pred.argmax(dim=1)
    elif pred.ndim != 3:
        raise ValueError(
            f"pred must be logits (b, 2, h, w) or labels (b, h, w), got shape {tuple(pred.shape)}"
        )
    if pred.shape != target.shape:
        raise ValueError(
            f"pred labels {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
        )
    correct = (pred != 0) == (target != 0)  # b h w
    if open_mask is None:
        scored = torch.ones_like(correct)
    else:
        if open_mask.shape != target.shape:
            raise ValueError(
                f"open_mask must match target {tuple(target.shape)}, got {tuple(open_mask.shape)}"
            )
        scored = open_mask > 0.5 if open_mask.is_floating_point() else open_mask != 0
    return correct.flatten(1), scored.flatten(1)


def exact_solve(pred: Tensor, target: Tensor, open_mask: Tensor | None = None) -> Tensor:
    """Whether each maze is solved: every scored pixel predicted right.

    Only open pixels are scored when ``open_mask`` is given, since a wall is never on the path
    and what a model says about it cannot change the route it draws; with no mask every pixel
    counts.

    Args:
        pred: logits (b, 2, h, w), class 1 meaning "on the path", or labels (b, h, w), where any
            non-zero value means "on the path".
        target: (b, h, w) path mask, 0/1 or bool.
        open_mask: (b, h, w) open pixels, e.g. ``inputs[:, 0]`` (float > 0.5 or non-zero
            counts as open), or None to score every pixel.

    Returns:
        (b,) bool, True where the maze is solved.

    Raises:
        ValueError: if the shapes do not fit together.
    """
    correct, scored = _correct_pixels(pred, target, open_mask)
    return (correct | ~scored).all(dim=1)


def pixel_accuracy(pred: Tensor, target: Tensor, open_mask: Tensor | None = None) -> Tensor:
    """The share of scored pixels predicted right, per maze.

    Args:
        pred: logits (b, 2, h, w) or labels (b, h, w), as in :func:`exact_solve`.
        target: (b, h, w) path mask, 0/1 or bool.
        open_mask: (b, h, w) open pixels, or None to score every pixel.

    Returns:
        (b,) float32 in [0, 1]; a maze with no scored pixel counts as 1.

    Raises:
        ValueError: if the shapes do not fit together.
    """
    correct, scored = _correct_pixels(pred, target, open_mask)
    right = (correct & scored).sum(dim=1)
    total = scored.sum(dim=1)
    return torch.where(total > 0, right / total.clamp(min=1), 1.0).float()
