"""Helpers shared by the benchmark scripts: interleaved timing, training steps, the matmul rate.

Every comparison runs its contenders in one process, in interleaved rounds (each round calls
every contender once, in a fresh order), so that a slow-down of the machine during the run hits
all of them alike, and reports the median of the rounds.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def interleaved_times(
    contenders: dict[str, Callable[[], object]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each contender in every round, timed in interleaved rounds.

    Args:
        contenders: name -> a call to time.
        rounds: timed rounds; each round calls every contender once.
        warmup: untimed rounds first (allocator, oneDNN primitive caches, compilation).

    Returns:
        name -> one time per round.
    """
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    rng = random.Random(0)
    for _ in range(rounds):
        for name in order:
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
        # A fresh order every round: a contender that runs right after itself (warm allocator
        # and caches) or always after the same other one would be billed for its neighbours.
        last = order[-1]
        rng.shuffle(order)
        if order[0] == last and len(order) > 1:
            order.append(order.pop(0))
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    """Median seconds per call of each contender, from :func:`interleaved_times`."""
    return {name: statistics.median(ts) for name, ts in times.items()}


def paired_ratio(times: dict[str, list[float]], name: str, base: str) -> float:
    """Median over rounds of ``name``'s time over ``base``'s time in the same round.

    The machine's speed drifts over a run (other tenants, clocks); a ratio taken within one
    round sees both contenders at nearly the same speed, so its median is steadier than the
    ratio of two medians.
    """
    return statistics.median(a / b for a, b in zip(times[name], times[base]))


def matmul_rate(n: int = 2048, reps: int = 5, rounds: int = 3, dtype=torch.float32) -> float:
    """This machine's dense matrix-multiply rate in FLOP/s (best of ``rounds``)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * reps / best


def training_step(
    model: nn.Module,
    batch: int = 128,
    size: int = 32,
    num_classes: int = 10,
    optimizer_kwargs: dict | None = None,
    prepare_input: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    autocast=None,
) -> Callable[[], None]:
    """A closure that runs one SGD training step on a fixed random batch.

    Forward, cross-entropy, backward and an SGD step with momentum, as a training loop does.
    """
    model.train()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, **(optimizer_kwargs or {})
    )
    gen = torch.Generator().manual_seed(0)
    x = prepare_input(torch.randn(batch, 3, size, size, generator=gen))
    y = torch.randint(0, num_classes, (batch,), generator=gen)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if autocast is None:
            loss = F.cross_entropy(model(x), y)
        else:
            with autocast():
                loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


def step_flops(model: nn.Module, batch: int = 128, size: int = 32, num_classes: int = 10) -> float:
    """FLOPs of one whole training step (forward, loss, backward), counted by torch."""
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, num_classes, (batch,))
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def table(rows: list[list[object]], headers: list[str]) -> str:
    """A Markdown table, so that the output can be pasted into the README."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def machine_line() -> str:
    """torch version and thread count, for the head of every report."""
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads"
