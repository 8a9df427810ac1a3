"""Shared by the experiment scripts: composing configs, training (or reusing) runs, the CLI.

Runs go to ``outputs/experiments/runs/<tag>`` by default, so scripts that need the same model
(the lesion and path experiments both use the feedforward ResNet) train it once: a run is
reused when its stored config equals the new one and its checkpoint exists.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere in the checkout

from cortexnet.analysis.common import ArgumentParser  # noqa: E402

DEFAULT_RUNS = ROOT / "outputs" / "experiments" / "runs"
DEFAULT_OUT = ROOT / "outputs" / "experiments"


def parser(name: str, description: str) -> ArgumentParser:
    """Options every experiment takes."""
    p = ArgumentParser(prog=f"experiments/{name}.py", description=description)
    p.add_argument("--blocks", type=int, default=6, help="blocks per stage (3 stages)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs of every model")
    p.add_argument("--cifar-root", default=None, help="train on CIFAR-10 from this folder")
    p.add_argument("--runs", default=str(DEFAULT_RUNS), help="folder of the training runs")
    p.add_argument("--out", default=None, help="folder of figures and summary")
    p.add_argument("--logger", default="auto", choices=("auto", "offline", "online", "disabled"))
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retrain", action="store_true", help="train again even if a run exists")
    return p


def compose(overrides: list[str]):
    """The training app's config, composed from conf/ with overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cortexnet.train.app import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def model_overrides(
    args: argparse.Namespace, dynamics: str, blocks: int | None = None
) -> list[str]:
    """Config overrides of one model of an experiment, at the experiment's size."""
    n = blocks or args.blocks
    out = [
        f"model={dynamics}",
        f"model.blocks_per_stage=[{n},{n},{n}]",
        f"trainer.epochs={args.epochs}",
        f"trainer.threads={args.threads}",
        "trainer.progress=false",
        f"seed={args.seed}",
        f"logger.mode={args.logger}",
    ]
    if dynamics == "ode":
        # Euler steps of size t_end / num_steps: the ODE twin at the recurrent twin's cost.
        out.append("model.ode.solver=euler")
    if args.cifar_root:
        out += ["data=cifar10", f"data.root={args.cifar_root}"]
    return out


def train(
    args: argparse.Namespace, tag: str, overrides: list[str], group: str, plain: bool = False
) -> Path:
    """Train one model (or reuse an identical finished run); returns its run directory.

    Args:
        args: the experiment's options.
        tag: the run's folder name under ``--runs``.
        overrides: config overrides.
        group: wandb group of the training run.
        plain: train the plain-chain control (every bypass removed).
    """
    from omegaconf import OmegaConf

    from cortexnet.analysis.common import mark_plain_checkpoints, plain_models
    from cortexnet.train.loop import run

    cfg = compose([*overrides, f"logger.group={group}", f"logger.name={tag}"])
    run_dir = Path(args.runs) / tag
    stored = run_dir / ".hydra" / "config.yaml"
    wanted = OmegaConf.to_container(cfg, resolve=True)
    wanted["plain_chain"] = plain
    done = (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "summary.json").is_file()
    if not args.retrain and done and stored.is_file():
        if OmegaConf.to_container(OmegaConf.load(stored), resolve=True) == wanted:
            print(f"reusing {run_dir}")
            return run_dir
    if run_dir.exists():
        for name in ("metrics.jsonl", "summary.json"):  # a fresh log, not an appended one
            (run_dir / name).unlink(missing_ok=True)
    began = time.perf_counter()
    if plain:
        with plain_models():
            summary = run(cfg, run_dir)
        mark_plain_checkpoints(run_dir)
    else:
        summary = run(cfg, run_dir)
    stored.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(wanted), stored)
    print(
        f"trained {tag}: accuracy {summary['final_acc']:.4f}, {summary['params']:,} parameters, "
        f"{time.perf_counter() - began:.0f} s"
    )
    return run_dir


def summary_of(run_dir: Path) -> dict[str, Any]:
    """A run's summary.json."""
    return json.loads((run_dir / "summary.json").read_text())


def out_dir(args: argparse.Namespace, name: str) -> Path:
    """The experiment's output folder, created."""
    path = Path(args.out) if args.out else DEFAULT_OUT / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_name(args: argparse.Namespace) -> str:
    return "CIFAR-10" if args.cifar_root else "digits (scikit-learn, 8x8, 1437/360)"


def pct(acc: float) -> str:
    """Accuracy as a test error in percent."""
    return f"{100 * (1 - acc):.1f}%"


def run_presets(out: Path, presets: dict[str, str], overrides: list[str]) -> dict[str, float]:
    """Train each ``+experiment=`` preset in a process of its own, into ``out/<name>``.

    Returns:
        name -> wall-clock seconds of that run.
    """
    seconds = {}
    for name, experiment in presets.items():
        began = time.perf_counter()
        cmd = [
            sys.executable,
            "-m",
            "cortexnet.train",
            f"+experiment={experiment}",
            f"out_dir={out / name}",
            *overrides,
        ]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        seconds[name] = time.perf_counter() - began
    return seconds


def load_summaries(out: Path, names: list[str] | tuple[str, ...]) -> dict[str, dict]:
    """The ``summary.json`` of each run ``out/<name>``; exits with one line if one is missing."""
    summaries = {}
    for name in names:
        path = out / name / "summary.json"
        if not path.exists():
            raise SystemExit(f"no {path}: train first (drop --report)")
        summaries[name] = json.loads(path.read_text())
    return summaries


def preset_steps(experiment: str) -> int:
    """The training unroll (model.num_steps) of an experiment preset."""
    return int(compose([f"+experiment={experiment}"]).model.num_steps)
