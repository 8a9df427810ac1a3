# axes: b batch, c channels (open, start, goal), h w pixels
"""Mazes: every maze is a perfect maze and every target its unique start-to-goal path.

The checks work on the pixel images only, with a breadth-first search written here, so they do
not share any logic with the generator's tree bookkeeping.
"""

from collections import deque

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cortexnet.data import mazes
from cortexnet.data.mazes import (
    MazeStream,
    exact_solve,
    generate_mazes,
    load_mazes,
    pixel_accuracy,
)

SIZES = [2, 3, 5, 9, 13, 17]
STEPS = ((-1, 0), (1, 0), (0, -1), (0, 1))


def bfs_parents(open_: np.ndarray, source: tuple[int, int]) -> dict:
    """Breadth-first search over open pixels; each reached pixel maps to its predecessor."""
    parents = {source: None}
    queue = deque([source])
    while queue:
        r, c = queue.popleft()
        for dr, dc in STEPS:
            nxt = (r + dr, c + dc)
            if open_[nxt] and nxt not in parents:
                parents[nxt] = (r, c)
                queue.append(nxt)
    return parents


def check_maze(x: np.ndarray, y: np.ndarray, size: int) -> None:
    """Assert that one drawn maze is perfect and that y is its start-to-goal path."""
    side = 2 * size + 1
    open_, start, goal = x
    assert set(np.unique(open_)) <= {0.0, 1.0}
    assert set(np.unique(y)) <= {0, 1}

    # Frame and wall corners closed, every cell open.
    assert not open_[0].any() and not open_[-1].any()
    assert not open_[:, 0].any() and not open_[:, -1].any()
    assert not open_[0::2, 0::2].any()
    assert open_[1::2, 1::2].all()

    # A spanning tree over n*n cells has n*n - 1 edges and reaches every cell.
    opened_walls = open_[1::2, 2::2].sum() + open_[2::2, 1::2].sum()
    assert opened_walls == size * size - 1
    reached = bfs_parents(open_, (1, 1))
    assert len(reached) == int(open_.sum())
    assert all((2 * i + 1, 2 * j + 1) in reached for i in range(size) for j in range(size))

    # Start and goal: one distinct cell pixel each.
    (sr,), (sc,) = np.nonzero(start)
    (gr,), (gc,) = np.nonzero(goal)
    assert sr % 2 == sc % 2 == gr % 2 == gc % 2 == 1
    assert (sr, sc) != (gr, gc)
    assert start.sum() == goal.sum() == 1

    # The target is exactly the path BFS finds from start to goal, both ends included.
    parents = bfs_parents(open_, (int(sr), int(sc)))
    expected = np.zeros((side, side), dtype=np.int64)
    node = (int(gr), int(gc))
    while node is not None:
        expected[node] = 1
        node = parents[node]
    np.testing.assert_array_equal(y, expected)
    assert y[sr, sc] == 1 and y[gr, gc] == 1
    assert not (y.astype(bool) & (open_ == 0)).any()


@pytest.mark.parametrize("size", SIZES)
def test_shapes_and_dtypes(size):
    x, y = generate_mazes(7, size, seed=0)
    side = 2 * size + 1
    assert x.shape == (7, 3, side, side) and x.dtype == torch.float32
    assert y.shape == (7, side, side) and y.dtype == torch.int64


@pytest.mark.parametrize("size", SIZES)
def test_every_maze_is_perfect_and_target_is_its_path(size):
    x, y = generate_mazes(48, size, seed=size)
    for xi, yi in zip(x.numpy(), y.numpy(), strict=True):
        check_maze(xi, yi, size)


def test_chunk_boundaries_keep_mazes_valid(monkeypatch):
    monkeypatch.setattr(mazes, "_CHUNK", 5)
    x, y = generate_mazes(12, 4, seed=3)
    assert x.shape[0] == y.shape[0] == 12
    for xi, yi in zip(x.numpy(), y.numpy(), strict=True):
        check_maze(xi, yi, 4)
    # Later chunks draw from the same advancing generator, so they are new mazes.
    assert not torch.equal(x[:5], x[5:10])


@pytest.mark.parametrize("size", [3, 9])
def test_same_seed_same_mazes_other_seed_other_mazes(size):
    x1, y1 = generate_mazes(16, size, seed=11)
    x2, y2 = generate_mazes(16, size, seed=11)
    x3, _ = generate_mazes(16, size, seed=12)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)


def test_mazes_in_a_batch_differ():
    x, _ = generate_mazes(64, 5, seed=0)
    walls = {tuple(m.flatten().tolist()) for m in x[:, 0]}
    assert len(walls) == 64


def test_wall_choice_is_unbiased():
    # A 2x2 maze is the 4-cycle of cells minus one wall; with a uniform root and a uniform choice
    # of direction each wall stays closed a quarter of the time. A search that prefers a
    # direction would skew this.
    x, _ = generate_mazes(4000, 2, seed=0)
    open_ = x[:, 0]
    closed = torch.stack(
        [1 - open_[:, 1, 2], 1 - open_[:, 3, 2], 1 - open_[:, 2, 1], 1 - open_[:, 2, 3]]
    ).sum(dim=1)
    assert closed.sum() == 4000
    # About 1000 each, standard deviation about 27.
    assert ((closed - 1000).abs() < 150).all(), closed


def test_start_and_goal_cover_every_cell():
    size = 3
    x, _ = generate_mazes(2000, size, seed=0)
    for channel in (1, 2):
        cells = x[:, channel, 1::2, 1::2].sum(dim=0)
        # Uniform over 9 cells: about 222 each; 150 is far outside chance.
        assert (cells > 150).all(), cells


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num": 0, "size": 5, "seed": 0}, "num"),
        ({"num": 4, "size": 1, "seed": 0}, "size"),
        ({"num": 4, "size": 2.5, "seed": 0}, "size"),
        ({"num": 4, "size": True, "seed": 0}, "size"),
        ({"num": 4, "size": 5, "seed": -1}, "seed"),
    ],
)
def test_bad_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        generate_mazes(**kwargs)


def test_load_mazes_sets_and_cache():
    train, tests = load_mazes(5, [5, 7], num_train=20, num_test=10, seed=4)
    x, y = train
    assert x.shape == (20, 3, 11, 11) and y.shape == (20, 11, 11)
    assert sorted(tests) == [5, 7]
    assert tests[7][0].shape == (10, 3, 15, 15) and tests[7][1].shape == (10, 15, 15)
    # The test set at the training size is its own draw, not a slice of the training set.
    assert not torch.equal(tests[5][0], x[:10])
    again, tests_again = load_mazes(5, [7], num_train=20, num_test=10, seed=4)
    assert again[0] is x and tests_again[7][0] is tests[7][0]
    other, _ = load_mazes(5, [7], num_train=20, num_test=10, seed=5)
    assert not torch.equal(other[0], x)
    for xi, yi in zip(tests[7][0].numpy(), tests[7][1].numpy(), strict=True):
        check_maze(xi, yi, 7)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"train_size": 1}, "train_size"),
        ({"test_sizes": []}, "test_sizes"),
        ({"test_sizes": [5, 1]}, "test_sizes"),
        ({"num_train": 0}, "num_train"),
        ({"num_test": 0}, "num_test"),
    ],
)
def test_load_mazes_bad_arguments_raise(kwargs, name):
    args = {"train_size": 5, "test_sizes": [5], "num_train": 4, "num_test": 4, "seed": 0}
    with pytest.raises(ValueError, match=name):
        load_mazes(**(args | kwargs))


@pytest.mark.parametrize("block_size", [1, 20])
def test_stream_is_fresh_and_seeded(block_size):
    def take(n):
        stream = MazeStream(5, 8, seed=2, block_size=block_size)
        return [next(stream) for _ in range(n)]

    batches, again = take(4), take(4)
    for (x, y), (x2, y2) in zip(batches, again, strict=True):
        assert x.shape == (8, 3, 11, 11) and y.shape == (8, 11, 11)
        assert torch.equal(x, x2) and torch.equal(y, y2)
    # Every batch is new, within a block (20 mazes make two batches of 8) and across blocks.
    firsts = {tuple(x[0, 0].flatten().tolist()) for x, _ in batches}
    assert len(firsts) == 4
    block = max(1, block_size // 8) * 8
    first = generate_mazes(block, 5, seed=2)
    assert torch.equal(batches[0][0], first[0][:8]) and torch.equal(batches[0][1], first[1][:8])
    for x, y in batches:
        for xi, yi in zip(x.numpy(), y.numpy(), strict=True):
            check_maze(xi, yi, 5)


def test_stream_bad_arguments_raise():
    with pytest.raises(ValueError, match="batch_size"):
        MazeStream(5, 0, seed=0)
    with pytest.raises(ValueError, match="size"):
        MazeStream(1, 4, seed=0)
    with pytest.raises(ValueError, match="block_size"):
        MazeStream(5, 4, seed=0, block_size=0)


def as_logits(labels: torch.Tensor) -> torch.Tensor:
    return F.one_hot(labels, 2).permute(0, 3, 1, 2).float()  # b 2 h w


@pytest.mark.parametrize("size", [3, 9])
def test_exact_solve_and_pixel_accuracy(size):
    x, y = generate_mazes(6, size, seed=1)
    open_ = x[:, 0]
    assert exact_solve(y, y, open_).all()
    assert exact_solve(as_logits(y), y, open_).all()
    assert exact_solve(y.bool(), y, None).all()
    assert torch.allclose(pixel_accuracy(as_logits(y), y, open_), torch.ones(6))

    # Flip one path pixel of maze 2: only that maze fails, by one scored pixel.
    wrong = y.clone()
    r, c = torch.nonzero(y[2])[0]
    wrong[2, r, c] = 0
    solved = exact_solve(as_logits(wrong), y, open_)
    assert solved.tolist() == [True, True, False, True, True, True]
    accuracy = pixel_accuracy(wrong, y, open_)
    assert accuracy[2] == pytest.approx(1 - 1 / open_[2].sum().item())
    assert torch.allclose(accuracy[[0, 1, 3, 4, 5]], torch.ones(5))

    # Marking a wall as path is ignored with the open mask and counted without it.
    on_wall = y.clone()
    on_wall[0, 0, 0] = 1
    assert exact_solve(on_wall, y, open_).all()
    assert not exact_solve(on_wall, y, None)[0]
    assert pixel_accuracy(on_wall, y, None)[0] == pytest.approx(1 - 1 / (2 * size + 1) ** 2)


def test_metric_shape_errors():
    y = torch.zeros(2, 5, 5, dtype=torch.int64)
    with pytest.raises(ValueError, match="logits"):
        exact_solve(torch.zeros(2, 3, 5, 5), y)
    with pytest.raises(ValueError, match="shape"):
        exact_solve(torch.zeros(2, 7, 7, dtype=torch.int64), y)
    with pytest.raises(ValueError, match="open_mask"):
        pixel_accuracy(y, y, torch.ones(2, 1, 5, 5))
