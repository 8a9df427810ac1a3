"""Shared against unshared weights at matched depth (Liao and Poggio 2016), and the ODE twin.

Trains three 3-stage ResNets of the same depth and FLOPs: feedforward (every block its own
weights), recurrent (one shared block per stage, per-step batch statistics) and ODE (one
time-conditioned block per stage, Euler steps of t_end / num_steps, so the same cost). Reports
accuracy and parameters, lesions (deleting a block, skipping a step, shortening t_end) and
running past the trained steps.

    python experiments/shared_vs_unshared.py [--blocks 6] [--epochs 10] [--cifar-root DIR]
"""

from __future__ import annotations

import statistics

from common import data_name, model_overrides, out_dir, parser, pct, summary_of, train

from cortexnet.analysis.common import load_source, write_json
from cortexnet.analysis.lesion import run_lesion
from cortexnet.analysis.plots import plot_lesion, plot_unroll
from cortexnet.analysis.unroll import run_unroll

NAME = "shared_vs_unshared"


def main() -> None:
    p = parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=3, help="random draws per number of deletions")
    p.add_argument("--max-k", type=int, default=4, help="most units deleted at once")
    args = p.parse_args()
    out = out_dir(args, NAME)
    tags = {"feedforward": "ff", "recurrent": "rec", "ode": "ode"}
    groups = {"feedforward": "lesion_resnet_vs_chain", "recurrent": NAME, "ode": NAME}
    runs = {
        d: train(args, f"{tag}{args.blocks}x3", model_overrides(args, d), groups[d])
        for d, tag in tags.items()
    }
    lesions, unrolls = {}, {}
    for d, run_dir in runs.items():
        source = load_source(run_dir)
        lesions[d] = run_lesion(source, out / d, args.draws, args.seed, args.logger, args.max_k)
        unrolls[d] = run_unroll(source, out / d, None, args.logger)
    lesion_fig = plot_lesion(list(lesions.items()), out / f"{NAME}_lesion.png", title=NAME)
    unroll_fig = plot_unroll(
        [(d, unrolls[d]) for d in ("recurrent", "ode")], out / f"{NAME}_unroll.png",
        title="accuracy against steps (dotted: trained)",
    )  # fmt: skip
    write_json({"lesion": lesions, "unroll": unrolls}, out / f"{NAME}.json")

    lines = [
        "# Shared against unshared weights at matched depth",
        "",
        f"Data: {data_name(args)}; 3 stages of depth {args.blocks} (stages 2 and 3 start with "
        f"an unshared downsampling block), widths 16/32/64, {args.epochs} epochs; running more "
        "steps runs every recurrent or ODE stage longer. Test error (lower is better).",
        "",
        "| | feedforward | recurrent | ODE (Euler) |",
        "| --- | --- | --- | --- |",
    ]
    ds = list(runs)

    def row(name, f):
        lines.append(f"| {name} | " + " | ".join(f(d) for d in ds) + " |")

    row("params", lambda d: f"{summary_of(runs[d])['params']:,}")
    row("intact", lambda d: pct(lesions[d]["baseline"]))

    def single(d, kind):
        accs = [r["acc"] for r in lesions[d]["single"] if r["kind"] == kind]
        return f"{pct(statistics.fmean(accs))} (worst {pct(min(accs))})" if accs else "-"

    row("delete one block, mean", lambda d: single(d, "block"))
    row("skip one step, mean", lambda d: single(d, "step"))
    row("delete a downsampling block, mean", lambda d: single(d, "transition"))

    def k_random(d, k):
        rk = lesions[d]["random_k"]
        return pct(rk[k - 1]["mean"]) if len(rk) >= k else "-"

    row("delete/skip 2 random units", lambda d: k_random(d, 2))
    row("delete/skip 4 random units", lambda d: k_random(d, 4))

    row("t_end x 0.5 (every ODE stage alone)", lambda d: ", ".join(
        pct(c["acc"]) for curve in lesions[d]["t_end"].values() for c in curve
        if c["fraction"] == 0.5) or "-")  # fmt: skip

    def more(d, factor):
        r = unrolls[d]
        t = r["trained_steps"] * factor
        c = r["curves"]["val"]
        return pct(c[t - 1]) if len(c) >= t and r["num_steps"] > r["trained_steps"] else "-"

    row("run 2x the trained steps", lambda d: more(d, 2))
    row("run 3x the trained steps", lambda d: more(d, 3))
    lines += [
        "",
        f"![lesions]({lesion_fig.name}) ![unroll]({unroll_fig.name})",
        "",
        "Liao and Poggio 2016 report that a ResNet whose blocks share weights within a stage (a "
        "recurrent network) reaches accuracy close to the unshared ResNet of the same depth with "
        "far fewer parameters; per-step batch norm was what made the shared version train well.",
    ]
    md = out / f"{NAME}.md"
    md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nfigures: {lesion_fig}, {unroll_fig}\nsummary: {md}")


if __name__ == "__main__":
    main()
