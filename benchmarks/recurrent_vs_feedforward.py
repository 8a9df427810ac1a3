"""A recurrent stage of T steps against a feedforward stage of N = T blocks: time and parameters.

Both stages apply T basic blocks (the same FLOPs); the recurrent one shares one block's weights
across all steps, so it has 1/T of the feedforward stage's parameters. A step is forward, a
mean-square loss against a fixed random target, backward and an SGD step, timed in interleaved
rounds in one process; the times are medians over rounds and the time ratio is the median of the
per-round ratios.

Run (default: about 1 minute on 2 cores)::

    .venv/bin/python benchmarks/recurrent_vs_feedforward.py
    .venv/bin/python benchmarks/recurrent_vs_feedforward.py --steps 4 8 16 32 --rounds 11
    .venv/bin/python benchmarks/recurrent_vs_feedforward.py --norm step_batch
"""

from __future__ import annotations

import argparse

import torch
from common import interleaved_times, machine_line, medians, paired_ratio, table

from cortexnet.models.blocks import BasicBlock
from cortexnet.models.stages import FeedforwardStage, RecurrentStage


def stage_step(stage: torch.nn.Module, x: torch.Tensor, target: torch.Tensor):
    """A closure running one SGD training step of ``stage`` on ``x``.

    The loss pulls the output towards a random ``target`` rather than zero: trained towards zero
    over the rounds, the shared block (whose gradient sums T steps) shrank its states about
    fivefold while the feedforward stage's did not, so the two no longer ran on like data.
    """
    opt = torch.optim.SGD(stage.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        (stage(x) - target).square().mean().backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, time both stages at every T, print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--size", type=int, default=16, help="height and width of the state")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--norm", default="batch", choices=["batch", "step_batch", "group", "none"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine_line())

    x = torch.randn(args.batch, args.width, args.size, args.size)
    target = torch.randn_like(x)
    rows = []
    for t in args.steps:
        torch.manual_seed(0)
        ff_norm = "batch" if args.norm == "step_batch" else args.norm
        ff = FeedforwardStage(
            None, [BasicBlock(args.width, args.width, norm=ff_norm) for _ in range(t)]
        )
        rec = RecurrentStage(
            None, [BasicBlock(args.width, args.width, norm=args.norm, num_steps=t)], num_steps=t
        )
        times = interleaved_times(
            {"ff": stage_step(ff, x, target), "rec": stage_step(rec, x, target)}, args.rounds
        )
        med = medians(times)
        n_ff = sum(p.numel() for p in ff.parameters())
        n_rec = sum(p.numel() for p in rec.parameters())
        rows.append(
            [
                t,
                med["ff"] * 1e3,
                med["rec"] * 1e3,
                paired_ratio(times, "rec", "ff"),
                n_ff,
                n_rec,
                n_rec / n_ff,
            ]
        )
    print(
        f"width {args.width}, {args.size}x{args.size}, batch {args.batch}, norm {args.norm}, "
        f"median of {args.rounds} interleaved rounds"
    )
    headers = ["T = N", "ff ms", "rec ms", "time rec/ff", "ff params", "rec params", "param ratio"]
    print(table(rows, headers))


if __name__ == "__main__":
    main()
