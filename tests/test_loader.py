"""The in-memory loader: batching, epochs, resume, sharding, batched augmentation."""

import math

import pytest
import torch
import torch.nn.functional as F

from cortexnet.data.augment import AUGMENTATIONS, Normalize, translate
from cortexnet.data.loader import InMemoryLoader


def images(n: int, c: int = 3, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # Values from 1 up, so a pixel shifted in (fill 0) can be told from an image pixel.
    x = torch.randint(1, 256, (n, c, size, size), dtype=torch.uint8, generator=gen)
    return x, torch.arange(n)  # the label of each image is its index


def epoch(loader: InMemoryLoader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def reference_crop(x, top, left, pad, flip, fill):
    """The per-sample pipeline the batched one must match: pad, crop, maybe mirror."""
    h, w = x.shape[-2:]
    out = []
    for i in range(len(x)):
        img = F.pad(x[i], (pad, pad, pad, pad), value=fill)
        img = img[:, top[i] : top[i] + h, left[i] : left[i] + w]
        out.append(img.flip(-1) if flip is not None and flip[i] else img)
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("c,h,w,pad", [(3, 8, 8, 2), (1, 6, 7, 1), (2, 5, 5, 0), (3, 4, 6, 3)])
def test_translate_matches_per_sample_pad_crop_flip(dtype, flip, c, h, w, pad):
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(1, 256, (40, c, h, w), generator=gen).to(dtype)
    top = torch.randint(0, 2 * pad + 1, (40,), generator=gen)
    left = torch.randint(0, 2 * pad + 1, (40,), generator=gen)
    flips = torch.rand(40, generator=gen) < 0.5 if flip else None
    out = translate(x, top, left, pad, flips, fill=7)
    assert out.dtype == dtype and out.is_contiguous()
    assert torch.equal(out, reference_crop(x, top, left, pad, flips, 7))


def test_normalize_uint8_and_float():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    expected = (x.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1).double()) / torch.tensor(
        std
    ).view(1, 3, 1, 1).double()
    out = Normalize(mean, std)(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(Normalize()(x), x.float() / 255)
    f = torch.randn(2, 3, 4, 4)
    kept = Normalize()(f)
    assert torch.equal(kept, f) and kept.data_ptr() != f.data_ptr()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mean": (0.5,)}, "both"),
        ({"mean": (0.5, 0.5), "std": (1.0,)}, "channels"),
        ({"mean": (0.5,), "std": (0.0,)}, "positive"),
    ],
)
def test_normalize_rejects_bad_constants(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Normalize(**kwargs)


@pytest.mark.parametrize("n,batch_size,drop_last,world_size", [
    (10, 3, False, 1), (10, 3, True, 1), (12, 4, False, 1), (10, 3, False, 3),
    (10, 2, True, 3), (7, 10, False, 2), (100, 8, True, 4),
])  # fmt: skip
def test_len_and_batch_sizes(n, batch_size, drop_last, world_size):
    x, y = images(n)
    per_rank = (
        (n // world_size // batch_size * batch_size) if drop_last else math.ceil(n / world_size)
    )
    counts = []
    for rank in range(world_size):
        loader = InMemoryLoader(
            x, y, batch_size, drop_last=drop_last, rank=rank, world_size=world_size
        )
        sizes = [len(xb) for xb, _ in loader]
        assert len(sizes) == len(loader) == math.ceil(per_rank / batch_size)
        assert sum(sizes) == per_rank
        assert all(s == batch_size for s in sizes[:-1])
        counts.append(len(loader))
    assert len(set(counts)) == 1, "every rank must run the same number of steps"


@pytest.mark.parametrize("shuffle", [False, True])
def test_one_epoch_sees_every_sample_once(shuffle):
    x, y = images(23)
    loader = InMemoryLoader(x, y, 5, shuffle=shuffle)
    xs, ys = epoch(loader)
    assert sorted(ys.tolist()) == list(range(23))
    assert (ys.tolist() == list(range(23))) == (not shuffle)
    # No augmentation: the batch is the normalized stored image of its label.
    torch.testing.assert_close(xs, x[ys].float() / 255)
    assert xs.dtype == torch.float32 and ys.dtype == torch.int64


@pytest.mark.parametrize("augment", ["shift", "crop", "crop_flip"])
def test_augmentation_keeps_shape_changes_pixels_and_is_seeded(augment):
    x, y = images(64, size=8)
    make = lambda seed: InMemoryLoader(x, y, 16, augment=augment, seed=seed, pad=2)  # noqa: E731
    xs, ys = epoch(make(0))
    assert xs.shape == (64, 3, 8, 8)
    plain = x[ys].float() / 255
    changed = (xs != plain).flatten(1).any(1)
    assert changed.float().mean() > 0.5  # 1 in 25 (or 50) draws is the identity
    again_x, again_y = epoch(make(0))
    assert torch.equal(again_x, xs) and torch.equal(again_y, ys)
    other_x, other_y = epoch(make(1))
    assert not torch.equal(other_y, ys)


def test_crop_flip_draws_match_the_reference():
    """The loader's output is the per-sample pipeline with some corners and flips."""
    x, y = images(32, size=6)
    loader = InMemoryLoader(x, y, 8, augment="crop_flip", pad=2, fill=0)
    xs, ys = epoch(loader)
    flips_seen = 0
    for out, label in zip(xs, ys, strict=True):
        candidates = {
            (t, l, f): reference_crop(x[label : label + 1], [t], [l], 2, [f], 0)[0].float() / 255
            for t in range(5)
            for l in range(5)  # noqa: E741
            for f in (False, True)
        }
        matches = [key for key, img in candidates.items() if torch.allclose(img, out)]
        assert matches, "each output must be one pad-crop-flip of its image"
        flips_seen += all(f for _, _, f in matches)
    assert 0 < flips_seen < 32


def test_pixels_shifted_in_are_black_before_normalization():
    x = torch.full((50, 1, 6, 6), 255, dtype=torch.uint8)
    loader = InMemoryLoader(
        x, torch.zeros(50), 50, augment="shift", pad=2, mean=(0.5,), std=(0.25,)
    )
    xb, _ = next(iter(loader))
    black, white = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25
    torch.testing.assert_close(xb.unique(), torch.tensor([black, white]))
    assert (xb < 0).any(1).flatten(1).any(1).float().mean() > 0.5  # most images were shifted
    # Every image is shifted by at most 2 pixels: its centre 2x2 is always the image.
    torch.testing.assert_close(xb[:, :, 2:4, 2:4], torch.full((50, 1, 2, 2), white))


def test_epochs_differ_and_depend_only_on_seed_and_epoch():
    x, y = images(40)
    sequential = InMemoryLoader(x, y, 10, augment="crop_flip", pad=2)
    epochs = [epoch(sequential) for _ in range(3)]  # finishing an epoch moves to the next
    assert sequential.epoch == 3
    assert not torch.equal(epochs[0][1], epochs[1][1])
    jumped = InMemoryLoader(x, y, 10, augment="crop_flip", pad=2)
    jumped.set_epoch(2)
    xs, ys = epoch(jumped)
    assert torch.equal(xs, epochs[2][0]) and torch.equal(ys, epochs[2][1])
    jumped.set_epoch(0)
    assert torch.equal(epoch(jumped)[1], epochs[0][1])


def test_state_dict_resumes_mid_epoch_exactly():
    x, y = images(50)
    full = InMemoryLoader(x, y, 8, augment="crop", pad=2, seed=3)
    full.set_epoch(4)
    expected = list(full)

    first = InMemoryLoader(x, y, 8, augment="crop", pad=2, seed=3)
    first.set_epoch(4)
    it = iter(first)
    for _ in range(3):
        next(it)
    state = first.state_dict()
    assert state == {"seed": 3, "world_size": 1, "epoch": 4, "batch": 3}

    resumed = InMemoryLoader(x, y, 8, augment="crop", pad=2, seed=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # a loop that sets the epoch each time must not lose the position
    rest = list(resumed)
    assert len(rest) == len(expected) - 3
    for (xa, ya), (xb, yb) in zip(rest, expected[3:], strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert resumed.state_dict()["epoch"] == 5 and resumed.state_dict()["batch"] == 0
    with pytest.raises(ValueError, match="seed"):
        InMemoryLoader(x, y, 8, seed=4).load_state_dict(state)
    with pytest.raises(ValueError, match="world_size"):
        InMemoryLoader(x, y, 8, seed=3, world_size=2).load_state_dict(state)


@pytest.mark.parametrize("n,world_size", [(60, 3), (61, 4), (5, 2)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_shards_are_disjoint_and_cover_the_epoch(n, world_size, shuffle):
    x, y = images(n)
    shards = []
    for rank in range(world_size):
        loader = InMemoryLoader(x, y, 4, shuffle=shuffle, rank=rank, world_size=world_size)
        loader.set_epoch(1)
        shards.append(epoch(loader)[1].tolist())
    assert len({len(s) for s in shards}) == 1
    seen = [i for s in shards for i in s]
    assert set(seen) == set(range(n))  # covering
    repeats = len(seen) - n
    assert repeats == (-n) % world_size  # padding only to a multiple of world_size
    if repeats == 0:
        assert len(set(seen)) == len(seen)  # disjoint


def test_shards_with_drop_last_are_disjoint_and_equal():
    x, y = images(61)
    shards = [
        epoch(InMemoryLoader(x, y, 4, drop_last=True, rank=r, world_size=4))[1].tolist()
        for r in range(4)
    ]
    seen = [i for s in shards for i in s]
    assert all(len(s) == 12 for s in shards)  # 61 // 4 = 15 -> 3 full batches of 4
    assert len(set(seen)) == len(seen) == 48


def test_shards_deal_the_global_order_with_a_stride():
    x, y = images(30)
    single = InMemoryLoader(x, y, 30)
    order = single.epoch_indices(0)
    for rank in range(3):
        shard = InMemoryLoader(x, y, 5, rank=rank, world_size=3)
        assert torch.equal(shard.epoch_indices(0), order[rank::3])


def test_eval_loader_is_in_order_and_unaugmented():
    x, y = images(20)
    loader = InMemoryLoader(x, y, 6, shuffle=False, augment="none", mean=(0.5,) * 3, std=(0.5,) * 3)
    for _ in range(2):
        xs, ys = epoch(loader)
        assert ys.tolist() == list(range(20))
        torch.testing.assert_close(xs, (x.float() / 255 - 0.5) / 0.5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"augment": "rotate"}, "valid: " + ", ".join(AUGMENTATIONS)),
        ({"batch_size": 0}, "batch_size"),
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"seed": -1}, "seed"),
        ({"pad": -1}, "pad"),
        ({"fill": 0.5, "augment": "crop"}, "fill"),
        ({"drop_last": True, "batch_size": 64}, "drop_last"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    x, y = images(10)
    args = {"batch_size": 4} | kwargs
    with pytest.raises(ValueError, match=match):
        InMemoryLoader(x, y, **args)


def test_mismatched_labels_are_refused():
    x, y = images(10)
    with pytest.raises(ValueError, match="one label per image"):
        InMemoryLoader(x, y[:9], 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_equal_cpu_batches():
    x, y = images(100, size=32)
    kwargs = {"augment": "crop_flip", "mean": (0.5,) * 3, "std": (0.25,) * 3, "seed": 5}
    cpu = epoch(InMemoryLoader(x, y, 32, **kwargs))
    gpu = epoch(InMemoryLoader(x, y, 32, device="cuda", **kwargs))
    assert gpu[0].device.type == "cuda"
    torch.testing.assert_close(gpu[0].cpu(), cpu[0])
    assert torch.equal(gpu[1].cpu(), cpu[1])
