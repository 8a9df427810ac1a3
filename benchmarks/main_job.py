"""Wall time and accuracy of the README's main job, for each model variant.

    python benchmarks/main_job.py                       # feedforward, recurrent, ode; seed 0
    python benchmarks/main_job.py --models recurrent --seeds 0 1 2

Each run is a fresh process (`python -m cortexnet.train model=M seed=S`), timed from start to exit
as a user would see it: imports, data, training, evaluation, checkpoints and the offline wandb
run included. Run it on an otherwise idle machine; other load inflates the times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_job(model: str, seed: int, folder: Path, extra: list[str]) -> dict:
    out = folder / f"{model}-{seed}"
    cmd = [
        sys.executable,
        "-m",
        "cortexnet.train",
        f"model={model}",
        f"seed={seed}",
        f"out_dir={out}",
        "trainer.progress=false",
        *extra,
    ]
    began = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "wall_s": wall,
        "acc": summary["final_acc"],
        "params": summary["params"],
        "train_images_per_s": summary["images_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["feedforward", "recurrent", "ode"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("extra", nargs="*", help="more overrides for every run")
    args = parser.parse_args()
    print("| model | seed | parameters | test accuracy | wall time (s) | train images/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        results: dict[str, list[dict]] = {}
        for model in args.models:
            for seed in args.seeds:
                r = run_job(model, seed, Path(tmp), args.extra)
                results.setdefault(model, []).append(r)
                print(
                    f"| {model} | {seed} | {r['params']:,} | {r['acc']:.4f} | {r['wall_s']:.1f} | "
                    f"{r['train_images_per_s']:.0f} |",
                    flush=True,
                )
    if len(args.seeds) > 1:
        print()
        for model, rs in results.items():
            accs = [r["acc"] for r in rs]
            print(
                f"{model}: accuracy {statistics.mean(accs):.4f} +- {statistics.stdev(accs):.4f}, "
                f"median wall {statistics.median(r['wall_s'] for r in rs):.1f} s"
            )


if __name__ == "__main__":
    main()
