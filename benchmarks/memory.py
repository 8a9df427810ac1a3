"""Peak memory of long unrolls and deep networks: recurrent stages with and without
checkpointing, a 1000-layer network with and without it, ODE stages with and without the
adjoint as the integration time grows.

Two measures, both per training step (forward, mean-square loss, backward):

- ``saved MB``: bytes of the distinct tensor storages that autograd saves for backward during the
  forward pass, recorded with ``torch.autograd.graph.saved_tensors_hooks``. Deterministic, and
  exactly what backprop keeps; it does not see what a checkpointed segment recomputes during
  backward, nor the workspace of the kernels.
- ``peak MB``: the highest rise of the resident set over one step (after a warm-up step), in a
  fresh subprocess per configuration, sampled every 0.2 ms by a thread reading /proc/self/statm,
  with glibc's mmap threshold fixed so that freed large blocks go back to the system rather
  than into a growing heap. Noisier, and a short spike between samples can be missed, but it
  includes the recomputation and every temporary. On CUDA the script reads
  ``torch.cuda.max_memory_allocated`` instead.

Times show what the memory costs: checkpointed and plain steps alternate in interleaved rounds in
this process, and "time ratio" is the median over rounds of checkpointed time / plain time.
A stage on its own keeps its last segment (its output goes straight to the loss), so at T steps
and interval k it recomputes T - k steps; a network keeps only its final stage's last segment.

Run (default: about 2 minutes on 2 cores)::

    .venv/bin/python benchmarks/memory.py
    .venv/bin/python benchmarks/memory.py --steps 64 --every 4 8 16 --rounds 9 --skip-ode
    .venv/bin/python benchmarks/memory.py --steps 8 --skip-ode --network-every 5 10 37
    .venv/bin/python benchmarks/memory.py --skip-ode --t-end 1 4 16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time

import torch
from common import interleaved_times, machine_line, paired_ratio, table
from torch.autograd.graph import saved_tensors_hooks

import cortexnet
from cortexnet.models.blocks import BasicBlock
from cortexnet.models.stages import ODEFunc, ODEStage, RecurrentStage

FIXED_STEP = ("euler", "midpoint", "rk4", "explicit_adams", "implicit_adams")


def make_stage(cfg: dict) -> torch.nn.Module:
    """A recurrent or ODE stage of width ``cfg['width']``, or a named network, from ``cfg``."""
    torch.manual_seed(0)
    w = cfg["width"]
    if cfg["kind"] == "network":
        return cortexnet.create_model(cfg["model"], checkpoint_every=cfg["every"])
    if cfg["kind"] == "recurrent":
        block = BasicBlock(w, w, norm="batch", num_steps=cfg["steps"])
        return RecurrentStage(None, [block], cfg["steps"], checkpoint_every=cfg["every"])
    func = ODEFunc(BasicBlock(w, w, norm="group", time_conditioned=True), max_nfe=0)
    fixed = cfg["solver"] in FIXED_STEP
    step_size = cfg["step_size"] if fixed else None
    options = dict(solver=cfg["solver"], rtol=1e-3, atol=1e-3, step_size=step_size)
    return ODEStage(None, func, num_steps=1, t_end=cfg["t_end"], adjoint=cfg["adjoint"], **options)


def make_input(cfg: dict, device: torch.device | str) -> torch.Tensor:
    """A random batch for ``make_stage(cfg)``: images for a network, states for a stage."""
    channels = 3 if cfg["kind"] == "network" else cfg["width"]
    return torch.randn(cfg["batch"], channels, cfg["size"], cfg["size"], device=device)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(cfg: dict) -> dict:
    """Saved-tensor bytes and peak memory rise of one training step (run in a fresh process)."""
    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    stage = make_stage(cfg).to(device)
    x = make_input(cfg, device)
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    stage(x).square().mean().backward()  # warm-up: kernel caches, lazily built state
    stage.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before, samples, done = _rss_bytes(), [], threading.Event()

        def sample() -> None:  # torch releases the GIL inside its kernels, so this keeps running
            while not done.is_set():
                samples.append(_rss_bytes())
                time.sleep(0.0002)

        sampler = threading.Thread(target=sample)
        sampler.start()
    with saved_tensors_hooks(pack, lambda t: t):
        loss = stage(x).square().mean()
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        done.set()
        sampler.join()
        peak = max(samples) - before
    out = {"saved": sum(seen.values()), "peak": max(0, peak)}
    if isinstance(stage, ODEStage):
        out.update(nfe_forward=stage.nfe_forward, nfe_backward=stage.nfe_backward)
    return out


def in_child(cfg: dict) -> dict:
    """Run :func:`measure` in a fresh interpreter, so earlier runs leave no cached memory."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, __file__, "--child", json.dumps(cfg)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def train_step(stage: torch.nn.Module, x: torch.Tensor):
    """A closure running forward, mean-square loss and backward (no optimizer: memory only)."""

    def step() -> None:
        stage.zero_grad(set_to_none=True)
        stage(x).square().mean().backward()

    return step


def compare_checkpointing(plain: dict, intervals: list[int], rounds: int) -> list[list[object]]:
    """Plain backprop against checkpointing every k steps (or blocks), for each k in intervals.

    Returns one row per interval: k, saved MB plain and checkpointed and their ratio, peak MB
    plain and checkpointed and their ratio, and the median per-round time ratio.
    """
    mb = 2**20
    intervals = sorted(set(intervals))
    configs = {e: dict(plain, every=e) for e in intervals}
    m_plain = in_child(plain)
    measured = {e: in_child(cfg) for e, cfg in configs.items()}
    x = make_input(plain, plain["device"])
    models = {"plain": make_stage(plain).to(plain["device"])}
    models.update({e: make_stage(cfg).to(plain["device"]) for e, cfg in configs.items()})
    times = interleaved_times({k: train_step(m, x) for k, m in models.items()}, rounds)
    return [
        [
            e,
            m_plain["saved"] / mb,
            measured[e]["saved"] / mb,
            measured[e]["saved"] / m_plain["saved"],
            m_plain["peak"] / mb,
            measured[e]["peak"] / mb,
            measured[e]["peak"] / max(1, m_plain["peak"]),
            paired_ratio(times, e, "plain"),
        ]
        for e in intervals
    ]


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, measure every configuration, print the tables."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, nargs="+", default=[8, 32, 64, 128])
    p.add_argument(
        "--every",
        type=int,
        nargs="+",
        default=[0],
        help="checkpoint intervals to compare (0: round(sqrt(T)))",
    )
    p.add_argument("--t-end", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    p.add_argument("--solver", default="rk4")
    p.add_argument("--step-size", type=float, default=0.25, help="fixed-step solvers only")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-ode", action="store_true")
    p.add_argument("--network", default="preact_resnet1001", help="a named model to checkpoint")
    p.add_argument("--network-batch", type=int, default=8)
    p.add_argument("--network-every", type=int, nargs="+", default=[10])
    p.add_argument("--skip-network", action="store_true")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = dict(width=args.width, size=args.size, batch=args.batch, threads=args.threads)
    base["device"] = device
    mb = 2**20
    print(machine_line(), f"device {device}")
    print(f"state {args.batch}x{args.width}x{args.size}x{args.size} float32", end=" ")
    print(f"= {args.batch * args.width * args.size**2 * 4 / mb:.2f} MB")

    rows = []
    for t in args.steps:
        plain = dict(base, kind="recurrent", steps=t, every=0)
        intervals = [e or max(1, round(math.sqrt(t))) for e in args.every]
        rows += [[t, *row] for row in compare_checkpointing(plain, intervals, args.rounds)]
        print(f"  T={t} done", file=sys.stderr, flush=True)
    print(f"\nrecurrent stage, one shared basic block, batch norm; {args.rounds} rounds")
    headers = ["T", "every", "saved MB", "ckpt saved MB", "saved ratio", "peak MB"]
    headers += ["ckpt peak MB", "peak ratio", "time ratio"]
    print(table(rows, headers))

    if not args.skip_network:
        plain = dict(base, kind="network", model=args.network, every=0, batch=args.network_batch)
        rows = compare_checkpointing(plain, args.network_every, args.rounds)
        print(f"\n{args.network}, batch {args.network_batch}, {args.size}x{args.size} images")
        print(table(rows, headers[1:]))
    if args.skip_ode:
        return

    rows = []
    for t_end in args.t_end:
        cfg = dict(base, kind="ode", t_end=t_end, solver=args.solver, step_size=args.step_size)
        direct, adjoint = in_child(dict(cfg, adjoint=False)), in_child(dict(cfg, adjoint=True))
        rows.append(
            [
                t_end,
                direct["nfe_forward"],
                direct["saved"] / mb,
                adjoint["saved"] / mb,
                direct["peak"] / mb,
                adjoint["peak"] / mb,
                adjoint["nfe_backward"],
            ]
        )
        print(f"  t_end={t_end} done", file=sys.stderr, flush=True)
    step = f", step {args.step_size}" if args.solver in FIXED_STEP else ", rtol=atol=1e-3"
    print(f"\nODE stage, {args.solver}{step}, group norm")
    headers = ["t_end", "NFE fwd", "saved MB", "adjoint saved MB", "peak MB", "adjoint peak MB"]
    headers += ["adjoint NFE bwd"]
    print(table(rows, headers))


if __name__ == "__main__":
    main()
