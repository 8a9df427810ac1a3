"""Maze generation speed: mazes per second at several sizes, whole sets and training batches.

Run from the repository root:

    .venv/bin/python benchmarks/mazes.py
    .venv/bin/python benchmarks/mazes.py --sizes 5 9 13 17 33 --num 4096 --batch-size 256

"Set" times one ``generate_mazes`` call of ``--num`` mazes (how test sets are made); "stream"
times ``MazeStream`` batches of ``--batch-size`` (how fresh training mazes are made). Each
figure is the best of ``--repeats`` runs, since other work on the machine only slows a run
down. Generation is numpy on one thread, so the figures are per core.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from cortexnet.data.mazes import MazeStream, generate_mazes


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm the per-size lookup tables and the allocator
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 9, 13, 17])
    parser.add_argument("--num", type=int, default=4096, help="mazes per generate_mazes call")
    parser.add_argument("--batch-size", type=int, default=256, help="mazes per stream batch")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    print(
        f"numpy {np.__version__}, python {platform.python_version()}, "
        f"{os.cpu_count()} cpus, {platform.processor() or platform.machine()}"
    )
    print(
        f"{'size':>4} {'pixels':>7} {'set mazes/s':>12} {'stream mazes/s':>15} "
        f"{'ms/batch':>9} {'1000 mazes, ms':>15}"
    )
    for size in args.sizes:
        side = 2 * size + 1
        set_s = best_seconds(lambda s=size: generate_mazes(args.num, s, seed=0), args.repeats)
        stream = MazeStream(size, args.batch_size, seed=0)
        batch_s = best_seconds(lambda st=stream: next(st), args.repeats)
        thousand_s = best_seconds(lambda s=size: generate_mazes(1000, s, seed=0), args.repeats)
        print(
            f"{size:>4} {f'{side}x{side}':>7} {args.num / set_s:>12,.0f} "
            f"{args.batch_size / batch_s:>15,.0f} {batch_s * 1e3:>9.2f} {thousand_s * 1e3:>15.1f}"
        )


if __name__ == "__main__":
    main()
