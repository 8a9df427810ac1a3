"""Maze generation speed: mazes per second at several sizes, whole sets and training batches.

Run from the repository root:

    .venv/bin/python benchmarks/mazes.py
    .venv/bin/python benchmarks/mazes.py --sizes 5 9 13 17 33 --num 4096 --batch-size 256

"Set" times one ``generate_mazes`` call of ``--num`` mazes (how test sets are made). "Stream"
times ``MazeStream`` batches of ``--batch-size`` (how fresh training mazes are made), averaged
over two blocks of ``--block-size`` mazes, once as configured and once with every batch
generated on its own (block size 1). Generation is numpy on one thread, so times are the
process's CPU time (per core, and less disturbed by other work on a shared machine than wall
time), the best of ``--repeats`` runs.
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
        began = time.process_time()
        fn()
        times.append(time.process_time() - began)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 9, 13, 17])
    parser.add_argument("--num", type=int, default=4096, help="mazes per generate_mazes call")
    parser.add_argument("--batch-size", type=int, default=256, help="mazes per stream batch")
    parser.add_argument("--block-size", type=int, default=2048, help="stream mazes per refill")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    print(
        f"numpy {np.__version__}, python {platform.python_version()}, "
        f"{os.cpu_count()} cpus, {platform.processor() or platform.machine()}"
    )
    print(
        f"{'size':>4} {'pixels':>7} {'1000 mazes ms':>14} {'set mazes/s':>12} "
        f"{'stream mazes/s':>15} {'unblocked':>10}"
    )
    num_batches = 2 * max(1, args.block_size // args.batch_size)
    for size in args.sizes:
        side = 2 * size + 1
        thousand_s = best_seconds(lambda s=size: generate_mazes(1000, s, seed=0), args.repeats)
        set_s = best_seconds(lambda s=size: generate_mazes(args.num, s, seed=0), args.repeats)
        stream_rate = []
        for block_size in (args.block_size, 1):

            def draw(s=size, b=block_size):
                stream = MazeStream(s, args.batch_size, seed=0, block_size=b)
                for _ in range(num_batches):
                    next(stream)

            stream_rate.append(num_batches * args.batch_size / best_seconds(draw, args.repeats))
        print(
            f"{size:>4} {f'{side}x{side}':>7} {thousand_s * 1e3:>14.1f} {args.num / set_s:>12,.0f} "
            f"{stream_rate[0]:>15,.0f} {stream_rate[1]:>10,.0f}"
        )


if __name__ == "__main__":
    main()
