"""Experiment tracking: a local metrics log first, Weights & Biases second.

Every metric is appended to ``metrics.jsonl`` in the run directory before wandb sees it, so
nothing is lost when wandb is unreachable. wandb is the only optional part: its mode is settled
before ``wandb.init`` (online with a key, offline without one), its files stay in the run
directory, and any failure of it warns once and lets training go on.
"""

from __future__ import annotations

import json
import logging
import math
import netrc
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``; flushed after every record."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record (numbers are converted to plain floats and ints)."""
        with self.path.open("a") as f:
            f.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")

    def read(self) -> list[dict[str, Any]]:
        """All records written so far."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def has_wandb_key() -> bool:
    """True when an API key is configured (environment or ~/.netrc), without any network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc()
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
    return rc.authenticators(host) is not None


def resolve_mode(mode: str) -> str:
    """``auto`` becomes ``online`` with a key and ``offline`` without one."""
    if mode == "auto":
        return "online" if has_wandb_key() else "offline"
    return mode


class Tracker:
    """A wandb run that never stops training.

    Args:
        run_dir: the run directory; wandb's run files, cache and data go beneath it.
        mode: ``auto``, ``online``, ``offline`` or ``disabled``.
        config: the flattened configuration to record.
        project, entity, group, job_type, name, tags: wandb run fields.
        init_timeout: seconds wandb may take to start.
        run_id: continue this wandb run (a resumed training run).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        mode: str = "auto",
        config: Mapping[str, Any] | None = None,
        project: str = "cortexnet",
        entity: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        name: str | None = None,
        tags: list[str] | None = None,
        init_timeout: float = 60.0,
        run_id: str | None = None,
    ):
        self.mode = resolve_mode(mode)
        self.run = None
        self.run_path: str | None = None
        self._wandb = None
        if self.mode == "disabled":
            return
        run_dir = Path(run_dir).resolve()
        # The mode goes into the environment: an offline argument alone still lets wandb reach
        # for the network at exit, and without a key a terminal gets a login prompt that waits.
        os.environ["WANDB_MODE"] = self.mode
        os.environ.setdefault("WANDB_SILENT", "true")
        for var, sub in (
            ("WANDB_DIR", ""),
            ("WANDB_CACHE_DIR", ".wandb_cache"),
            ("WANDB_DATA_DIR", ".wandb_data"),
            ("WANDB_CONFIG_DIR", ".wandb_config"),
        ):
            path = run_dir / sub
            path.mkdir(parents=True, exist_ok=True)
            os.environ[var] = str(path)
        try:
            import wandb

            self._wandb = wandb
            self.run = wandb.init(
                project=project,
                entity=entity,
                group=group,
                job_type=job_type,
                name=name,
                tags=list(tags or []),
                config=dict(config or {}),
                dir=str(run_dir),
                mode=self.mode,
                reinit="finish_previous",
                id=run_id,
                resume="allow" if run_id else None,
                settings=wandb.Settings(init_timeout=init_timeout, console="off"),
            )
            self.run_path = str(Path(self.run.dir).parent) if self.run is not None else None
        except Exception as err:  # wandb must never stop training
            self._fail("start", err)

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def _fail(self, what: str, err: BaseException) -> None:
        warnings.warn(
            f"wandb could not {what} ({type(err).__name__}: {err}); training goes on "
            "with metrics.jsonl only",
            stacklevel=3,
        )
        self.run = None

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log scalars (namespaced keys such as ``train/loss``)."""
        if self.run is None:
            return
        try:
            self.run.log(dict(metrics), step=step)
        except Exception as err:
            self._fail("log", err)

    def log_curve(
        self,
        key: str,
        xs: list[int],
        ys: list[float],
        x_name: str,
        y_name: str,
        title: str,
        step: int | None = None,
    ) -> None:
        """Log a curve as a table and as a line plot drawn from it."""
        if self.run is None:
            return
        try:
            table = self._wandb.Table(
                data=[[x, y] for x, y in zip(xs, ys)], columns=[x_name, y_name]
            )
            plot = self._wandb.plot.line(table, x_name, y_name, title=title)
            self.run.log({f"{key}_table": table, key: plot}, step=step)
        except Exception as err:
            self._fail("log a curve", err)

    def summary(self, values: Mapping[str, Any]) -> None:
        """Set run summary values (best and final accuracy, parameters, ...)."""
        if self.run is None:
            return
        try:
            for k, v in values.items():
                self.run.summary[k] = _plain(v)
        except Exception as err:
            self._fail("write the summary", err)

    def finish(self, exit_code: int = 0) -> None:
        """Finish the run (inside the job, so every job of a sweep is its own run)."""
        if self.run is None:
            return
        began = time.perf_counter()
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as err:
            self._fail("finish", err)
        log.debug("wandb finished in %.1f s", time.perf_counter() - began)
        self.run = None


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, lists kept as values."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
