"""A sweep's comparison table and plots, from its run folders alone (no network).

``python -m cortexnet.analysis.report SWEEP_DIR [--out DIR]`` reads every run folder under
SWEEP_DIR (a Hydra multirun folder: one sub-folder per job with ``.hydra/overrides.yaml``,
``summary.json`` or ``failed.json``), groups the runs into variants and writes, into DIR
(default ``SWEEP_DIR/report``):

- ``table.md`` and ``table.csv``: per variant the parameters, FLOPs per image, ODE function
  evaluations (NFE), final validation accuracy as mean and standard deviation over the runs
  (seeds), best accuracy, training images/s, and the numbers of finished and failed runs;
- ``acc_vs_params.png``, ``acc_vs_flops.png``: mean accuracy (bars: one standard deviation);
- ``acc_vs_steps.png``: the anytime curve (accuracy of the readout after each step) of every
  recurrent or ODE run.

A variant is what tells a job apart from the others of its sweep: the overrides that differ
between jobs, without ``seed``; when nothing but the seed differs, the model choice. A job
with ``failed.json``, or stopped by a signal and not resumed (``preempted.json``), counts as
failed; one with neither a summary nor a failure (still running, or killed) is left out with
a warning.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

COLUMNS = (
    "variant",
    "runs",
    "failed",
    "params",
    "mflops",
    "nfe",
    "acc_mean",
    "acc_std",
    "best_acc_mean",
    "images_per_s",
)


@dataclass
class Run:
    """One job of a sweep, as its folder records it."""

    path: Path
    overrides: list[str]
    model: str | None
    dynamics: list[str] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    error: str | None = None
    variant: str = ""

    @property
    def failed(self) -> bool:
        return self.error is not None


@dataclass
class Variant:
    """The runs of one variant and their aggregates."""

    name: str
    runs: list[Run] = field(default_factory=list)

    @property
    def done(self) -> list[Run]:
        return [r for r in self.runs if not r.failed]

    def row(self) -> dict[str, Any]:
        """The table row (numbers unrounded; NaN where no run has the value)."""
        done = [r.summary for r in self.done]
        accs = [s["final_acc"] for s in done]
        return {
            "variant": self.name,
            "runs": len(done),
            "failed": len(self.runs) - len(done),
            "params": _first(done, "params"),
            "mflops": _first(done, "flops") / 1e6,
            "nfe": _mean([s["ode/nfe_forward"] for s in done if "ode/nfe_forward" in s]),
            "acc_mean": _mean(accs),
            "acc_std": statistics.stdev(accs) if len(accs) > 1 else (0.0 if accs else math.nan),
            "best_acc_mean": _mean([s["best_acc"] for s in done]),
            "images_per_s": _mean([s["images_per_s"] for s in done]),
        }


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _first(summaries: list[dict[str, Any]], key: str) -> float:
    values = {s[key] for s in summaries if key in s}
    if len(values) > 1:
        log.warning("runs of one variant differ in %s: %s", key, sorted(values))
    return float(min(values)) if values else math.nan


def _read_run(path: Path) -> Run | None:
    hydra_dir = path / ".hydra"
    overrides: list[str] = []
    model = None
    if (hydra_dir / "overrides.yaml").exists():
        overrides = list(yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) or [])
    if (hydra_dir / "hydra.yaml").exists():
        hydra_cfg = yaml.safe_load((hydra_dir / "hydra.yaml").read_text()) or {}
        model = hydra_cfg.get("hydra", {}).get("runtime", {}).get("choices", {}).get("model")
    dynamics: Any = None
    if (hydra_dir / "config.yaml").exists():
        cfg = yaml.safe_load((hydra_dir / "config.yaml").read_text()) or {}
        dynamics = (cfg.get("model") or {}).get("dynamics")
    dynamics = dynamics if isinstance(dynamics, list) else [dynamics or model or ""]
    run = Run(path, overrides, model, [str(d) for d in dynamics])
    if (path / "failed.json").exists():
        run.error = json.loads((path / "failed.json").read_text()).get("error", "failed")
    elif (path / "preempted.json").exists():
        run.error = "stopped by a signal and not resumed"
    elif (path / "summary.json").exists():
        run.summary = json.loads((path / "summary.json").read_text())
    else:
        log.warning("%s has neither summary.json nor failed.json (still running?); left out", path)
        return None
    return run


def find_runs(sweep_dir: str | Path) -> list[Run]:
    """Every run folder under ``sweep_dir`` (the folder itself when it is a single run).

    Raises:
        FileNotFoundError: when ``sweep_dir`` does not exist.
        ValueError: when it holds no run folder.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist")
    marks = ("summary.json", "failed.json", "preempted.json", ".hydra")
    folders = sorted(
        {
            p.parent
            for mark in marks
            for p in sweep_dir.rglob(mark)
            if "wandb" not in p.parts and ".submitit" not in p.parts
        },
        key=lambda p: (len(p.parts), _natural(p.name)),
    )
    runs = [r for r in (_read_run(p) for p in folders) if r is not None]
    if not runs:
        raise ValueError(
            f"no run folder (summary.json, failed.json or .hydra/) under {sweep_dir}; "
            "give a multirun folder such as multirun/<date>/<time>"
        )
    _name_variants(runs)
    return runs


def _natural(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (sys.maxsize, name)


def _name_variants(runs: list[Run]) -> None:
    """Set each run's variant: its overrides that differ between runs, less the seed."""
    common = set.intersection(*(set(r.overrides) for r in runs))
    for r in runs:
        own = [o for o in r.overrides if o not in common and o.split("=")[0] != "seed"]
        r.variant = " ".join(own) or r.model or "run"


def group(runs: list[Run]) -> list[Variant]:
    """Runs grouped by variant, in the order the variants first appear."""
    variants: dict[str, Variant] = {}
    for r in runs:
        variants.setdefault(r.variant, Variant(r.variant)).runs.append(r)
    return list(variants.values())


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if key in ("acc_mean", "acc_std", "best_acc_mean"):
        return f"{value:.4f}"
    if key == "mflops":
        return f"{value:.2f}"
    if key in ("images_per_s", "nfe"):
        return f"{value:.0f}"
    return f"{int(value):,}" if key == "params" else str(value)


HEADERS = {
    "variant": "variant",
    "runs": "runs",
    "failed": "failed",
    "params": "parameters",
    "mflops": "MFLOPs",
    "nfe": "NFE",
    "acc_mean": "accuracy (mean)",
    "acc_std": "accuracy (std)",
    "best_acc_mean": "best accuracy (mean)",
    "images_per_s": "images/s",
}


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a GitHub markdown table."""
    lines = [
        "| " + " | ".join(HEADERS[c] for c in COLUMNS) + " |",
        "| " + " | ".join("---" if c == "variant" else "---:" for c in COLUMNS) + " |",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(c, row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """The rows with full precision (empty cells where a value is missing)."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
            )


def plot(variants: list[Variant], out: Path) -> list[Path]:
    """Accuracy against parameters and FLOPs, and the anytime curves; returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    rows = [(v, v.row()) for v in variants if v.done]
    for key, label, name in (
        ("params", "parameters", "acc_vs_params.png"),
        ("mflops", "MFLOPs per image", "acc_vs_flops.png"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for v, row in rows:
            ax.errorbar(row[key], row["acc_mean"], yerr=row["acc_std"], fmt="o", capsize=4)
            ax.annotate(
                v.name,
                (row[key], row["acc_mean"]),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=8,
            )
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy (mean, std over runs)")
        ax.set_title(f"accuracy against {label}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        files.append(out / name)

    fig, ax = plt.subplots(figsize=(6, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = 0
    for i, (v, _) in enumerate(rows):
        for j, r in enumerate(v.done):
            curve = (r.summary.get("anytime") or {}).get("val")
            if not curve or not {"recurrent", "ode"} & set(r.dynamics):
                continue
            steps = range(1, len(curve) + 1)
            ax.plot(
                steps,
                curve,
                "o-",
                color=colors[i % len(colors)],
                alpha=0.7,
                label=v.name if j == 0 else None,
            )
            drawn += 1
    ax.set_xlabel("steps of the last stage")
    ax.set_ylabel("validation accuracy")
    ax.set_title("anytime accuracy of recurrent and ODE runs")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no recurrent or ODE run", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(out / "acc_vs_steps.png", dpi=120)
    plt.close(fig)
    files.append(out / "acc_vs_steps.png")
    return files


def report(sweep_dir: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Write the table and plots of a sweep.

    Args:
        sweep_dir: the multirun folder.
        out: where to write (default ``sweep_dir/report``).

    Returns:
        ``rows`` (the table's rows), ``markdown`` (the table), ``files`` (what was written)
        and ``failed`` (the failed runs' folders and errors).
    """
    runs = find_runs(sweep_dir)
    variants = group(runs)
    out = Path(out) if out is not None else Path(sweep_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = [v.row() for v in variants]
    md = markdown_table(rows)
    (out / "table.md").write_text(md)
    write_csv(rows, out / "table.csv")
    files = [out / "table.md", out / "table.csv", *plot(variants, out)]
    failed = [(str(r.path), r.error) for r in runs if r.failed]
    return {"rows": rows, "markdown": md, "files": files, "failed": failed}


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``cortexnet-report``)."""
    parser = argparse.ArgumentParser(
        prog="python -m cortexnet.analysis.report",
        description="Comparison table (markdown, CSV) and plots of a sweep's runs.",
    )
    parser.add_argument("sweep_dir", help="the multirun folder, e.g. multirun/2024-01-01/12-00-00")
    parser.add_argument("--out", help="output folder (default: SWEEP_DIR/report)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        result = report(args.sweep_dir, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"cortexnet.analysis.report: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(result["markdown"], end="")
    for path, error in result["failed"]:
        print(f"failed: {path}: {error}")
    print("written: " + ", ".join(str(p) for p in result["files"]))


if __name__ == "__main__":
    main()
