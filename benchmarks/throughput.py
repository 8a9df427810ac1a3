"""Training-step throughput of cortexnet's CIFAR ResNets against a plain hand-written ResNet-20.

A step is forward, cross-entropy, backward and an SGD step (momentum, weight decay) at batch 128
on 32x32 inputs. All contenders run in one process in interleaved rounds; the table gives the
median images/s, the speed relative to the plain reference (the median of per-round ratios),
the FLOPs of a whole step (counted by torch's FlopCounterMode over forward, loss and backward)
and the achieved FLOP rate as a share of this machine's float32 matrix-multiply rate (2048x2048
matmuls, measured before and after the rounds; the higher of the two is the reference, since a
shared machine's speed drifts and the lower one would flatter the share).

The fast-path rows apply ``cortexnet.train.fastpath.FastPath`` settings (channels-last, compile,
the foreach optimizer) to the models named by ``--fast-models``. Compiling takes 20-60 s cold on
two cores; the inductor cache lives under ``$TMPDIR``, so a second run starts faster.

Run (default: about 2-3 minutes on 2 cores)::

    .venv/bin/python benchmarks/throughput.py
    .venv/bin/python benchmarks/throughput.py --rounds 15 --fast-models resnet20 resnet56
    .venv/bin/python benchmarks/throughput.py --models resnet20 --no-fast   # eager only, ~30 s
"""

from __future__ import annotations

import argparse
import sys
import warnings

import torch
from common import (
    interleaved_times,
    machine_line,
    matmul_rate,
    medians,
    paired_ratio,
    step_flops,
    table,
    training_step,
)
from plain_resnet import PlainResNet20

import cortexnet
from cortexnet.train.fastpath import FastPath

MODELS = (
    "resnet20",
    "recurrent_resnet20",
    "ode_resnet20",
    "resnet56",
    "recurrent_resnet56",
    "ode_resnet56",
)
FAST = {
    "channels_last": FastPath(channels_last=True),
    "compile": FastPath(compile=True),
    "channels_last+compile": FastPath(channels_last=True, compile=True),
}


def build(name: str, fast: FastPath | None, batch: int):
    """A training-step closure for a model name (``plain`` is the reference) and settings."""
    torch.manual_seed(0)
    model = PlainResNet20() if name == "plain" else cortexnet.create_model(name)
    if fast is None:
        return training_step(model, batch)
    model = fast.apply_model(model, "cpu")
    return training_step(
        model,
        batch,
        optimizer_kwargs=fast.optimizer_kwargs("cpu"),
        prepare_input=fast.prepare_input,
    )


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, time every contender, print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--fast-models", nargs="+", default=["resnet20"])
    p.add_argument("--fast", nargs="+", default=["channels_last", "channels_last+compile"])
    p.add_argument("--no-fast", action="store_true", help="eager rows only")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    for f in args.fast:
        if f not in FAST:
            p.error(f"unknown fast setting {f!r}; valid: {', '.join(FAST)}")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="torch._inductor")

    rate_before = matmul_rate()
    print(
        f"{machine_line()}; float32 matmul 2048x2048: {rate_before / 1e9:.1f} GFLOP/s", flush=True
    )

    rows = [("plain", "plain", None)] + [(m, m, None) for m in args.models]
    if not args.no_fast:
        rows += [(f"{m} [{f}]", m, FAST[f]) for m in args.fast_models for f in args.fast]
    flops, params, steps = {}, {}, {}
    for label, name, fast in rows:
        if name not in flops:
            ref = PlainResNet20() if name == "plain" else cortexnet.create_model(name)
            flops[name] = step_flops(ref, args.batch)
            params[name] = sum(p.numel() for p in ref.parameters())
        print(f"building {label}", file=sys.stderr, flush=True)
        steps[label] = build(name, fast, args.batch)
    # Two warm-up rounds: the first compiles (and fills oneDNN's primitive cache), the second
    # lets a compiled step's guards settle.
    times = interleaved_times(steps, args.rounds, warmup=2)
    med = medians(times)
    rate_after = matmul_rate()
    rate = max(rate_before, rate_after)

    out = []
    for label, name, _ in rows:
        ips = args.batch / med[label]
        gflops = flops[name] / med[label] / 1e9
        out.append(
            [
                label,
                params[name],
                flops[name] / 1e9,
                ips,
                1 / paired_ratio(times, label, "plain"),
                gflops,
                gflops * 1e9 / rate,
            ]
        )
    headers = ["model", "params", "step GFLOP", "img/s", "x plain", "GFLOP/s", "share of matmul"]
    print(f"float32 matmul after the rounds: {rate_after / 1e9:.1f} GFLOP/s")
    print(f"batch {args.batch}, 32x32, median of {args.rounds} interleaved rounds")
    print(table(out, headers))


if __name__ == "__main__":
    main()
