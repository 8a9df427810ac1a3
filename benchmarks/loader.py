"""Throughput of InMemoryLoader against a per-sample torch DataLoader, CIFAR-shaped data.

Run:
    .venv/bin/python benchmarks/loader.py --threads 1     # 10000 images, 7 rounds, batch 128
    .venv/bin/python benchmarks/loader.py --images 50000 --rounds 5 --device cuda

Both sides do the same work on random uint8 images of shape 3x32x32: pad 4 with zeros, a
random 32x32 crop, a random horizontal flip, conversion to float and per-channel
normalization. The per-sample side does it in `Dataset.__getitem__` one image at a time and
lets the DataLoader collate batches, with 0 and with 2 worker processes (started for each
epoch, the DataLoader default); InMemoryLoader does it on whole batches, on `--device`.
One round is one full epoch of each contender, in turn (interleaved, so drifts in machine
load hit all of them alike); the first round is a warm-up and is not counted.

Prints, per contender, the median images per second and the median CPU time per image
(this process's threads plus its reaped worker processes), and the ratios. The CPU time is
the steadier figure on a shared machine. There, more than one torch thread can make the
in-memory loader far slower (its threads wait for each other on busy cores), hence
`--threads 1` for CPU runs.
"""

import argparse
import os
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from cortexnet.data.loader import InMemoryLoader

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class PerSampleCrops(Dataset):
    """The usual per-sample pipeline: pad, random crop, random flip, normalize."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, pad: int = 4):
        self.x, self.y, self.pad = x, y, pad
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        p = self.pad
        img = F.pad(self.x[i], (p, p, p, p))
        top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
        img = img[:, top : top + 32, left : left + 32]
        if torch.rand(()) < 0.5:
            img = img.flip(-1)
        img = (img.float() / 255 - self.mean) / self.std
        return img, self.y[i]


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished, reaped worker processes."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def run_epoch(loader) -> tuple[float, float]:
    """One full pass: (images per wall-clock second, CPU microseconds per image)."""
    n = 0
    cpu, start = cpu_seconds(), time.perf_counter()
    for xb, _ in loader:
        n += len(xb)
    if xb.is_cuda:
        torch.cuda.synchronize()
    # Workers that are not persistent have exited and been reaped by now, so they count.
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    return n / wall, 1e6 * cpu / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps the default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = f"{os.getloadavg()[0]:.2f}"
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (args.images,), generator=gen)
    dataset = PerSampleCrops(x, y)
    contenders = {
        "in_memory": InMemoryLoader(
            x, y, args.batch_size, augment="crop_flip", device=args.device, mean=MEAN, std=STD
        ),
        "per_sample_w0": DataLoader(dataset, args.batch_size, shuffle=True, num_workers=0),
        "per_sample_w2": DataLoader(dataset, args.batch_size, shuffle=True, num_workers=2),
    }
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    costs: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(args.rounds + 1):
        for name, loader in contenders.items():
            rate, cost = run_epoch(loader)
            if r > 0:
                rates[name].append(rate)
                costs[name].append(cost)

    print(
        f"{args.images} images 3x32x32 uint8, batch {args.batch_size}, crop_flip, "
        f"device {args.device}, torch threads {torch.get_num_threads()}, "
        f"{args.rounds} rounds (+1 warm-up)"
    )
    print(f"load average before: {load_before}, after: {os.getloadavg()[0]:.2f}")
    rate = {name: statistics.median(values) for name, values in rates.items()}
    cost = {name: statistics.median(values) for name, values in costs.items()}
    for name in contenders:
        spread = f"{min(rates[name]):,.0f}..{max(rates[name]):,.0f}"
        print(
            f"{name:>14}: median {rate[name]:>10,.0f} images/s (range {spread}), "
            f"{cost[name]:7.2f} CPU us/image"
        )
    for name in ("per_sample_w0", "per_sample_w2"):
        print(
            f"in_memory vs {name}: {rate['in_memory'] / rate[name]:.1f}x images/s, "
            f"{cost[name] / cost['in_memory']:.1f}x less CPU per image"
        )


if __name__ == "__main__":
    main()
