"""Lesions of a ResNet against a plain chain (Veit et al. 2016, section 4).

Trains a 3-stage feedforward ResNet and the same network with every bypass removed (the plain
chain, trained by the same loop and settings), then deletes single blocks, k random blocks and
swaps neighbouring blocks of each, and writes a figure and a markdown summary.

Veit et al. used ResNet-110 (54 blocks) and a 15-layer VGG on CIFAR-10. Here the default is a
ResNet of 3 stages of 6 blocks (18 blocks, 2 of them downsampling; 38 layers) on the digits, so
that it trains in about a minute on 2 CPU cores; ``--blocks 18 --cifar-root DIR`` gives
ResNet-110 on CIFAR-10 (hours on a CPU). The chain is the same builder with 2 blocks per stage
(14 layers, the depth of Veit et al.'s VGG): a 38-layer chain does not train at this budget
(55% test error after 10 epochs, the degradation He et al. 2015 describe), which would make its
lesions meaningless; ``--chain-blocks 6`` trains it at the ResNet's depth anyway.

    python experiments/lesion_resnet_vs_chain.py [--blocks 6] [--epochs 10] [--cifar-root DIR]
"""

from __future__ import annotations

import statistics

from common import data_name, model_overrides, out_dir, parser, pct, summary_of, train

from cortexnet.analysis.common import load_source, write_json
from cortexnet.analysis.lesion import run_lesion
from cortexnet.analysis.plots import plot_lesion

NAME = "lesion_resnet_vs_chain"


def main() -> None:
    p = parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=5, help="random draws per number of deletions")
    p.add_argument("--max-k", type=int, default=10, help="most blocks deleted at once")
    p.add_argument("--chain-blocks", type=int, default=2, help="blocks per stage of the chain")
    args = p.parse_args()
    out = out_dir(args, NAME)
    size = f"ff{args.blocks}x3"
    runs = {
        "ResNet": train(args, size, model_overrides(args, "feedforward"), NAME),
        "plain chain": train(
            args,
            f"plain{args.chain_blocks}x3",
            model_overrides(args, "feedforward", args.chain_blocks),
            NAME,
            plain=True,
        ),
    }
    results = {}
    for label, run_dir in runs.items():
        source = load_source(run_dir)
        results[label] = run_lesion(
            source, run_dir / "analysis", args.draws, args.seed, args.logger, args.max_k
        )
    figure = plot_lesion(
        list(results.items()), out / f"{NAME}.png", title=f"lesions, {data_name(args)}"
    )
    write_json({k: v for k, v in results.items()}, out / f"{NAME}.json")

    lines = [
        "# Lesions: ResNet against a plain chain",
        "",
        f"Data: {data_name(args)}. ResNet: 3 stages x {args.blocks} basic blocks; plain chain: "
        f"3 stages x {args.chain_blocks} blocks without bypasses; widths 16/32/64, "
        f"{args.epochs} epochs, otherwise identical settings. Test error (lower is better); "
        "chance is 90%.",
        "",
        "| | ResNet | plain chain |",
        "| --- | --- | --- |",
    ]
    res, chain = results["ResNet"], results["plain chain"]

    def row(name: str, f) -> None:
        lines.append(f"| {name} | {f(res)} | {f(chain)} |")

    lines.append(
        f"| params | {summary_of(runs['ResNet'])['params']:,} | "
        f"{summary_of(runs['plain chain'])['params']:,} |"
    )
    row("intact", lambda r: pct(r["baseline"]))
    inner = lambda r: [x["acc"] for x in r["single"] if x["kind"] == "block"]  # noqa: E731
    down = lambda r: [x["acc"] for x in r["single"] if x["kind"] == "transition"]  # noqa: E731
    row("delete one block: mean", lambda r: pct(statistics.fmean(inner(r))))
    row("delete one block: median", lambda r: pct(statistics.median(inner(r))))
    row("delete one block: worst", lambda r: pct(min(inner(r))))
    row("delete one block: best", lambda r: pct(max(inner(r))))
    row("delete a downsampling block (each)", lambda r: ", ".join(pct(a) for a in down(r)))
    for k in (1, 2, 4, 8):
        if k <= min(len(res["random_k"]), len(chain["random_k"])):
            row(
                f"delete {k} random blocks (mean +- sd)",
                lambda r, k=k: (
                    f"{pct(r['random_k'][k - 1]['mean'])} +- "
                    f"{100 * r['random_k'][k - 1]['std']:.1f}"
                ),
            )
    row("swap neighbours: mean", lambda r: pct(statistics.fmean(x["acc"] for x in r["swaps"])))
    row("swap neighbours: worst", lambda r: pct(min(x["acc"] for x in r["swaps"])))
    per_block = " ".join(
        f"{x['label']}:{pct(x['acc'])}" for x in res["single"] if x["kind"] == "block"
    )
    lines += [
        "",
        f"ResNet, error after deleting each block: {per_block}",
        "",
        f"![lesions]({figure.name})",
        "",
        "Veit et al. 2016 (ResNet-110 / VGG-15, CIFAR-10): deleting any single block but a "
        "downsampling one leaves ResNet's error almost unchanged, while deleting any layer of "
        "the VGG net brings it to chance; error rises smoothly as more blocks are deleted or "
        "swapped.",
    ]
    md = out / f"{NAME}.md"
    md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nfigure: {figure}\nsummary: {md}")


if __name__ == "__main__":
    main()
