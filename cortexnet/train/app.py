"""``python -m cortexnet.train``: the Hydra training app.

A bad setting ends the program with one line on stderr that names the key (exit status 2) and
no traceback; in a multirun the failed job is recorded in its folder (``failed.json``) and the
other jobs go on.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cortexnet.train.config import register_configs

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
log = logging.getLogger(__name__)

register_configs()


def _one_line(err: BaseException) -> str:
    """The most specific line of an error, with the config key when it has one."""
    while err.__cause__ is not None and not isinstance(err, ValueError):
        err = err.__cause__
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = lines[0] if lines else type(err).__name__
    key = getattr(err, "full_key", None)
    for ln in lines:
        if ln.startswith("full_key:") and not key:
            key = ln.split(":", 1)[1].strip()
    if text.startswith("Could not override") and len(lines) > 1:
        text = f"{text} {lines[-1]}"
    if key and key not in text:
        text = f"{text} (key: {key})"
    return text


def _precheck(overrides: list[str]) -> None:
    """Compose the config as Hydra will, so that a bad key fails in one line before any work."""
    from hydra import compose, initialize_config_dir

    from cortexnet.train.config import validate

    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        validate(cfg)
    except Exception as err:
        print(f"cortexnet.train: config error: {_one_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None


def _shown(path: str | Path) -> str:
    # Paths under the working directory are shown relative to it: shorter, and copy-pastable.
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _result_lines(summary: dict, run_dir: Path) -> list[str]:
    lines = [
        f"accuracy {summary['final_acc']:.4f} (best {summary['best_acc']:.4f} at epoch "
        f"{summary['best_epoch']}), {summary['params']:,} parameters, "
        f"{summary['images_per_s']:.0f} images/s, {summary['wall_s']:.1f} s",
        f"run directory: {_shown(run_dir)}",
    ]
    if summary.get("wandb_dir"):
        lines.append(f"wandb ({summary['wandb_mode']}): {_shown(summary['wandb_dir'])}")
        if summary["wandb_mode"] == "offline":
            lines.append(f"upload it with: wandb sync {_shown(summary['wandb_dir'])}")
    return lines


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _task(cfg: DictConfig) -> float | None:
    from cortexnet.data.errors import DatasetError
    from cortexnet.models import NFELimitError
    from cortexnet.train.loop import run

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(cfg.out_dir or hc.runtime.output_dir)
    if multirun and cfg.logger.group is None:
        cfg.logger.group = Path(hc.sweep.dir).name
    if multirun and cfg.logger.name is None:
        cfg.logger.name = hc.job.override_dirname or f"job{hc.job.num}"
    try:
        summary = run(cfg, run_dir, dict(hc.runtime.choices))
    except (ValueError, DatasetError, NFELimitError, FloatingPointError) as err:
        message = _one_line(err)
        if not multirun:
            print(f"cortexnet.train: error: {message}", file=sys.stderr)
            raise SystemExit(2) from None
        _record_failure(run_dir, message)
        return None
    except Exception as err:
        if not multirun:
            raise
        log.exception("job %s failed", hc.job.num)
        _record_failure(run_dir, f"{type(err).__name__}: {err}")
        return None
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the job
        for line in _result_lines(summary, run_dir):
            print(line)
    return summary["best_acc"]


def _record_failure(run_dir: Path, message: str) -> None:
    # A failed job of a sweep is kept on record and the others go on.
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "failed.json").write_text(json.dumps({"error": message}) + "\n")
    print(f"cortexnet.train: job in {run_dir} failed: {message}", file=sys.stderr)


def main() -> None:
    """Console entry point (``cortexnet-train``)."""
    args = sys.argv[1:]
    hydra_flags = {
        "-m",
        "--multirun",
        "--help",
        "-h",
        "--hydra-help",
        "--cfg",
        "-c",
        "--info",
        "--shell-completion",
        "-sc",
        "--resolve",
        "--package",
        "-p",
        "--config-dir",
        "-cd",
        "--config-name",
        "-cn",
        "--config-path",
        "-cp",
        "--experimental-rerun",
    }
    if not any(a.split("=")[0] in hydra_flags for a in args):
        _precheck([a for a in args if not a.startswith("hydra.")])
    if os.environ.get("RANK", "0") != "0":
        # torchrun's other ranks write nothing: rank 0's run directory holds the job's record.
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    _task()


if __name__ == "__main__":
    main()
