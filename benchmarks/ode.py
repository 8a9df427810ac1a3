"""cortexnet's ODE stage against a minimal torchdiffeq ODE block: NFE and time at equal tolerance.

The reference is the smallest ODE function one would write by hand for torchdiffeq: two 3x3
convolutions that each see time as an extra input plane, with group norm and a ReLU between
(the residual branch of a basic block). It gets cortexnet's weights, so both solve the same ODE
and must agree in result and in function evaluations; what differs is the overhead of
cortexnet's block, norm and stage wrappers. Forward alone runs without gradients; forward and
backward differentiate through the solver (no adjoint), or with ``--adjoint`` use the adjoint.

Run (default: about 1-2 minutes on 2 cores)::

    .venv/bin/python benchmarks/ode.py
    .venv/bin/python benchmarks/ode.py --tol 1e-3 1e-5 1e-7 --rounds 7 --adjoint
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import interleaved_times, machine_line, medians, paired_ratio, table
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

from cortexnet.models.blocks import BasicBlock
from cortexnet.models.stages import ODEFunc, ODEStage


class ReferenceODEFunc(nn.Module):
    """``dh/dt = gn(conv([relu(gn(conv([h, t]))), t]))``, written directly."""

    def __init__(self, width: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width + 1, width, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(width + 1, width, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, width)
        self.norm2 = nn.GroupNorm(groups, width)
        self.nfe = 0

    def forward(self, t: Tensor, h: Tensor) -> Tensor:  # noqa: D102
        self.nfe += 1
        tt = torch.ones_like(h[:, :1]) * t
        h = F.relu(self.norm1(self.conv1(torch.cat([h, tt], 1))))
        return self.norm2(self.conv2(torch.cat([h, tt], 1)))


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, solve with both functions at every tolerance, print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tol", type=float, nargs="+", default=[1e-3, 1e-5])
    p.add_argument("--solver", default="dopri5")
    p.add_argument("--t-end", type=float, default=1.0)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--adjoint", action="store_true")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine_line())

    torch.manual_seed(0)
    w = args.width
    block = BasicBlock(w, w, norm="group", time_conditioned=True)
    ref = ReferenceODEFunc(w, block.norm1.num_groups)
    with torch.no_grad():  # the same ODE: copy cortexnet's weights into the reference
        for name in ("conv1", "conv2", "norm1", "norm2"):
            for q, r in zip(getattr(block, name).parameters(), getattr(ref, name).parameters()):
                r.copy_(q)
    x = torch.randn(args.batch, w, args.size, args.size)
    times = torch.tensor([0.0, args.t_end])
    solve = odeint_adjoint if args.adjoint else odeint

    rows = []
    for tol in args.tol:
        stage = ODEStage(
            None,
            ODEFunc(block, max_nfe=0),
            t_end=args.t_end,
            solver=args.solver,
            rtol=tol,
            atol=tol,
            adjoint=args.adjoint,
        )

        def ref_forward(tol: float = tol) -> Tensor:
            kw = {"adjoint_params": tuple(ref.parameters())} if args.adjoint else {}
            return solve(ref, x, times, rtol=tol, atol=tol, method=args.solver, **kw)[-1]

        def run(fn, train: bool):
            def call() -> None:
                if train:
                    fn().square().mean().backward()
                else:
                    with torch.no_grad():
                        fn()

            return call

        contenders = {
            "cx fwd": run(lambda stage=stage: stage(x), False),
            "ref fwd": run(ref_forward, False),
            "cx train": run(lambda stage=stage: stage(x), True),
            "ref train": run(ref_forward, True),
        }
        times_s = interleaved_times(contenders, args.rounds)
        med = medians(times_s)
        # One counted pass of each for the evaluation counts and the agreement of the results.
        ref.nfe = 0
        out_ref = ref_forward()
        ref_fwd = ref.nfe
        out_ref.square().mean().backward()
        ref_bwd = ref.nfe - ref_fwd
        out_cx = stage(x)
        out_cx.square().mean().backward()
        diff = (out_cx - out_ref).abs().max().item()
        rows.append(
            [
                f"{tol:g}",
                f"{stage.nfe_forward}/{ref_fwd}",
                f"{stage.nfe_backward}/{ref_bwd}",
                med["cx fwd"] * 1e3,
                med["ref fwd"] * 1e3,
                paired_ratio(times_s, "cx fwd", "ref fwd"),
                med["cx train"] * 1e3,
                med["ref train"] * 1e3,
                paired_ratio(times_s, "cx train", "ref train"),
                f"{diff:.1e}",
            ]
        )
    mode = "adjoint" if args.adjoint else "backprop through the solver"
    print(
        f"{args.solver}, rtol=atol=tol, t in [0, {args.t_end}], state {args.batch}x{w}x"
        f"{args.size}x{args.size}, {mode}; median of {args.rounds} interleaved rounds"
    )
    headers = ["tol", "NFE fwd cx/ref", "NFE bwd cx/ref", "cx fwd ms", "ref fwd ms", "fwd ratio"]
    headers += ["cx train ms", "ref train ms", "train ratio", "max |diff|"]
    print(table(rows, headers))


if __name__ == "__main__":
    main()
