"""GPU throughput in bf16 autocast: the throughput suite and a CIFAR-shaped training run.

On a CUDA device this times training steps (forward, cross-entropy, backward, fused SGD) of the
plain ResNet-20 and cortexnet's CIFAR models in bf16 autocast with channels-last and cuDNN
autotuning, in interleaved rounds, then trains resnet20 for a number of steps on a CIFAR-shaped
synthetic set held on the device (50,000 32x32 images, random crops and flips done on the GPU),
and prints images/s and the achieved FLOP rate as a share of the device's peak dense bf16 rate.
The peak is looked up by device name (H100/H200 SXM 989 TFLOP/s, A100 312, ...) or, for an
unknown device, measured with a large bf16 matmul.

Without a GPU it prints one line and exits 0. ``--dry-run`` runs the same code on the CPU with
tiny sizes, so that the script is exercised where no GPU exists (its figures mean nothing).

Run::

    .venv/bin/python benchmarks/gpu.py                 # on a CUDA machine, a few minutes
    .venv/bin/python benchmarks/gpu.py --compile       # adds torch.compile
    .venv/bin/python benchmarks/gpu.py --dry-run       # CPU smoke run, under a minute
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from common import machine_line, step_flops, table
from plain_resnet import PlainResNet20

import cortexnet
from cortexnet.train.fastpath import FastPath

# Dense bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets (without sparsity).
PEAK_BF16 = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
}
MODELS = ("resnet20", "recurrent_resnet20", "ode_resnet20", "resnet56", "recurrent_resnet56")


def peak_bf16(device: torch.device) -> tuple[float, str]:
    """The device's peak dense bf16 rate in FLOP/s, and where the figure comes from."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_BF16.items():  # the more specific names come first
            if key in name:
                return tflops * 1e12, f"data sheet ({name})"
    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    a @ b
    _sync(device)
    start, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start), f"measured {n}x{n} bf16 matmul"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(name: str, fast: FastPath, device: torch.device, batch: int):
    """Model, optimizer and a one-step closure on a fixed batch."""
    torch.manual_seed(0)
    model = PlainResNet20() if name == "plain" else cortexnet.create_model(name)
    model = fast.apply_model(model, device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, **fast.optimizer_kwargs(device))
    x = fast.prepare_input(torch.randn(batch, 3, 32, 32, device=device))
    y = torch.randint(0, 10, (batch,), device=device)

    def step(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with fast.autocast_context(device):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return model, step


def suite(args, fast: FastPath, device: torch.device, peak: float) -> None:
    """Interleaved training-step throughput of the plain reference and cortexnet models."""
    names = ["plain", *args.models]
    steps, flops = {}, {}
    for name in names:
        _, steps[name] = make_step(name, fast, device, args.batch)
        ref = PlainResNet20() if name == "plain" else cortexnet.create_model(name)
        flops[name] = step_flops(ref, batch=2) / 2 * args.batch  # counted in float32 on the CPU
    for _ in range(args.warmup):
        for s in steps.values():
            s()
    _sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name, s in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps_per_round):
                s()
            _sync(device)
            times[name].append((time.perf_counter() - start) / args.steps_per_round)
    rows = []
    for name in names:
        t = _median(times[name])
        rows.append([name, args.batch / t, _median(times["plain"]) / t])
        rows[-1] += [flops[name] / t / 1e12, flops[name] / t / peak]
    print(f"training step, batch {args.batch}, bf16 autocast, median of {args.rounds} rounds")
    print(table(rows, ["model", "img/s", "x plain", "TFLOP/s", "share of bf16 peak"]))


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def cifar_run(args, fast: FastPath, device: torch.device, peak: float) -> None:
    """Train resnet20 on a CIFAR-shaped set held on the device, with on-device augmentation."""
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.rand(args.dataset_size, 3, 32, 32, device=device, generator=gen)
    labels = torch.randint(0, 10, (args.dataset_size,), device=device, generator=gen)
    model, step = make_step("resnet20", fast, device, args.batch)
    flops = step_flops(cortexnet.create_model("resnet20"), batch=2) / 2
    padded = F.pad(images, (4, 4, 4, 4), mode="reflect")  # pad once; crops are views of it
    seen, start = 0, None
    for i in range(args.train_steps + args.warmup):
        if i == args.warmup:
            _sync(device)
            start, seen = time.perf_counter(), 0
        idx = torch.randint(0, args.dataset_size, (args.batch,), device=device, generator=gen)
        dx, dy = (int(v) for v in torch.randint(0, 9, (2,)))  # one crop offset per batch
        x = padded[idx, :, dy : dy + 32, dx : dx + 32]
        flip = torch.rand(args.batch, device=device, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        loss = step(fast.prepare_input(x), labels[idx])
        seen += args.batch
    _sync(device)
    elapsed = time.perf_counter() - start
    ips = seen / elapsed
    print(
        f"CIFAR-shaped run: resnet20, {args.train_steps} steps of {args.batch}, final loss "
        f"{loss.item():.3f}: {ips:,.0f} img/s, {flops * ips / 1e12:.2f} TFLOP/s, "
        f"{flops * ips / peak:.1%} of bf16 peak"
    )
    del model


def main(argv: list[str] | None = None) -> None:
    """Parse arguments; run on CUDA, or on the CPU with --dry-run, or say there is no GPU."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="tiny run of the same code on the CPU")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps-per-round", type=int, default=20)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--train-steps", type=int, default=500)
    p.add_argument("--dataset-size", type=int, default=50_000)
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.dry_run:
        print("no GPU: benchmarks/gpu.py needs CUDA (use --dry-run to exercise it on the CPU)")
        return
    if torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        device = torch.device("cpu")
        torch.set_num_threads(2)
        args.models, args.batch, args.rounds = args.models[:1], 8, 2
        args.steps_per_round, args.warmup, args.train_steps, args.dataset_size = 1, 1, 3, 64
    fast = FastPath(channels_last=True, compile=args.compile, autocast="bf16")
    fast.configure_backends(device)
    peak, source = peak_bf16(device)
    print(f"{machine_line()}; device {device}; bf16 peak {peak / 1e12:.1f} TFLOP/s ({source})")
    if args.dry_run and device.type == "cpu":
        print("dry run on the CPU: the figures below only show that the code runs")
    suite(args, fast, device, peak)
    cifar_run(args, fast, device, peak)


if __name__ == "__main__":
    main()
