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
"""

from __future__ import annotations

import functools
import logging
import numbers
import time
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["MazeStream", "exact_solve", "generate_mazes", "load_mazes", "pixel_accuracy"]

# Mazes are generated this many at a time: large enough that numpy's per-call overhead is spread
# thin, small enough that the per-chunk arrays (a few (chunk, n^2) tables) stay in cache-sized
# megabytes. The draws depend on it, so changing it changes the mazes a seed gives.
_CHUNK = 4096

# Offsets added to a load_mazes seed so its training and test sets never share a stream.
_TRAIN, _TEST = 0, 1


def _check_int(name: str, value: object, minimum: int, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} ({meaning}), got {value!r}")
    return int(value)


@functools.lru_cache(maxsize=64)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-size lookup tables: neighbours (k, d) and each cell's grid row and column (k,)."""
    k = size * size
    row, col = np.divmod(np.arange(k), size)
    neighbours = np.full((k, 4), k, dtype=np.intp)  # k is a sentinel cell that is always visited
    for d, (di, dj) in enumerate(((-1, 0), (1, 0), (0, -1), (0, 1))):
        r, c = row + di, col + dj
        inside = (r >= 0) & (r < size) & (c >= 0) & (c < size)
        neighbours[inside, d] = (r * size + c)[inside]
    return neighbours, row, col


def _spanning_trees(num: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Randomized depth-first search over ``num`` grids at once.

    Returns:
        parent (b, k): each cell's parent in the tree (the root is its own parent), and
        depth (b, k): its distance from the root in cell steps.
    """
    k = size * size
    neighbours, _, _ = _grid(size)
    rows = np.arange(num)

    # Flat (b * (k + 1)) tables, so that every lookup is one take/put on a 1-d index.
    stride = k + 1
    base = rows * stride
    visited = np.zeros(num * stride, dtype=bool)
    visited[base + k] = True
    parent = np.zeros(num * stride, dtype=np.intp)
    depth = np.zeros(num * stride, dtype=np.intp)
    stack = np.zeros(num * k, dtype=np.intp)
    top_at = np.zeros(num, dtype=np.intp)  # stack pointer

    root = rng.integers(k, size=num)
    visited[base + root] = True
    parent[base + root] = root
    stack[rows * k] = root

    pushes_left = num * (k - 1)
    while pushes_left:
        top = stack[rows * k + top_at]
        candidates = neighbours[top]  # b d
        free = ~visited[base[:, None] + candidates]
        # A uniform choice among the free directions: the largest of independent uniforms.
        score = np.where(free, rng.random((num, 4), dtype=np.float32), -1.0)
        choice = score.argmax(axis=1)
        push = free[rows, choice]

        # Mazes with nowhere to go backtrack; finished ones stay on their root with an empty
        # stack, which costs nothing since they never push again.
        pb = rows[push]
        new = candidates[pb, choice[push]]
        old = top[push]
        visited[base[pb] + new] = True
        parent[base[pb] + new] = old
        depth[base[pb] + new] = depth[base[pb] + old] + 1
        top_at = np.where(push, top_at + 1, np.maximum(top_at - 1, 0))
        stack[pb * k + top_at[pb]] = new
        pushes_left -= len(pb)

    parent = parent.reshape(num, stride)[:, :k]
    depth = depth.reshape(num, stride)[:, :k]
    return parent, depth


def _tree_paths(
    parent: np.ndarray, depth: np.ndarray, start: np.ndarray, goal: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The cells on the tree path from start to goal.

    Returns:
        on_path (b, k): cells on the path, and below_meet (b, k): the path's cells other than
        the lowest common ancestor, each of which reaches the path through its parent.
    """
    num, k = parent.shape
    rows = np.arange(num)
    flat_parent = parent.ravel()

    # Mark start, goal and all their ancestors, start's in the first half of the table and
    # goal's in the second; the root is its own parent, so rounds after reaching it are no-ops.
    ancestor = np.zeros(2 * num * k, dtype=bool)
    cell = np.concatenate([start, goal])
    mark_offset = np.arange(2 * num) * k
    tree_offset = np.concatenate([rows, rows]) * k
    for _ in range(int(max(depth[rows, start].max(), depth[rows, goal].max())) + 1):
        ancestor[mark_offset + cell] = True
        cell = flat_parent[tree_offset + cell]
    ancestor = ancestor.reshape(2, num, k)

    below_meet = ancestor[0] ^ ancestor[1]
    meet = np.where(ancestor[0] & ancestor[1], depth, -1).argmax(axis=1)
    on_path = below_meet.copy()
    on_path[rows, meet] = True
    return on_path, below_meet


def _generate(num: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One chunk of mazes as numpy arrays: inputs (b, c, h, w) float32, targets (b, h, w)."""
    k = size * size
    side = 2 * size + 1
    _, row, col = _grid(size)
    rows = np.arange(num)

    parent, depth = _spanning_trees(num, size, rng)
    start = rng.integers(k, size=num)
    goal = (start + rng.integers(1, k, size=num)) % k  # uniform over cells other than start
    on_path, below_meet = _tree_paths(parent, depth, start, goal)

    cell_pixel = (2 * row + 1) * side + (2 * col + 1)  # k
    # The pixel between a cell and its parent; for the root (its own parent) it is the cell.
    link_pixel = (row + row[parent] + 1) * side + (col + col[parent] + 1)  # b k
    offset = (rows * side * side)[:, None]

    open_ = np.zeros(num * side * side, dtype=np.float32)
    open_[(offset + cell_pixel).ravel()] = 1.0
    open_[(offset + link_pixel).ravel()] = 1.0
    inputs = np.zeros((num, 3, side * side), dtype=np.float32)
    inputs[:, 0] = open_.reshape(num, side * side)
    inputs[rows, 1, cell_pixel[start]] = 1.0
    inputs[rows, 2, cell_pixel[goal]] = 1.0

    targets = np.zeros(num * side * side, dtype=np.int64)
    targets[(offset + cell_pixel)[on_path]] = 1
    targets[(offset + link_pixel)[below_meet]] = 1
    shape = (num, side, side)
    return inputs.reshape(num, 3, side, side), targets.reshape(shape)


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
    to bigger mazes (see FINDINGS). One seeded generator advances with every batch, so two
    streams with the same arguments yield the same batches, and the first batch equals
    ``generate_mazes(batch_size, size, seed)``. Batches are made in the calling thread, on the
    CPU.

    Args:
        size: cells per side.
        batch_size: mazes per batch.
        seed: seed of the stream (a non-negative integer).

    Raises:
        ValueError: on size < 2, batch_size < 1 or seed < 0.
    """

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size = _check_int("size", size, 2, "cells per side")
        self.batch_size = _check_int("batch_size", batch_size, 1, "mazes per batch")
        self.seed = _check_int("seed", seed, 0, "generator seed")
        self._rng = np.random.default_rng(self.seed)

    def __next__(self) -> tuple[Tensor, Tensor]:
        return _generate_chunked(self.batch_size, self.size, self._rng)


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
