"""Multiruns for real: the basic launcher, submitit's local executor and the Optuna sweeper."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY

REPO = Path(__file__).resolve().parents[1]
# One thread per process: the jobs of a sweep share two cores with everything else.
SMALL = [o for o in TINY if not o.startswith("logger=")] + ["trainer.threads=1"]
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}


def train(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m cortexnet.train ARGS`` in the repository, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "cortexnet.train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        cwd=REPO,
    )


def wandb_run_record(run_dir: Path) -> dict:
    """The run record (group, job type, id) of an offline wandb run, read from its log."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    runs = [r for r in records if r.get("type") == "run"]
    assert runs, out.stdout[:2000]
    return runs[0]


_SWEEPS: dict[Path, tuple[Path, subprocess.CompletedProcess]] = {}


@pytest.fixture(scope="session")
def basic_sweep(tmp_path_factory):
    """Six jobs with the basic launcher: two models, seeds 0 and 1, and a bad seed (-1).

    Run once per pytest run, also for the modules that import this fixture (whose copies of it
    would otherwise run the sweep again).
    """
    root = tmp_path_factory.getbasetemp()
    if root not in _SWEEPS:
        _SWEEPS[root] = _run_basic_sweep(root / "sweeps" / "basic")
    return _SWEEPS[root]


def _run_basic_sweep(sweep: Path) -> tuple[Path, subprocess.CompletedProcess]:
    proc = train(
        "-m",
        "model=feedforward,recurrent",
        "seed=0,1,-1",
        *SMALL,
        "logger=wandb",
        "logger.mode=offline",
        f"hydra.sweep.dir={sweep}",
    )
    return sweep, proc


def test_basic_multirun_runs_every_job_as_its_own_wandb_run(basic_sweep):
    sweep, proc = basic_sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {}
    for job in sorted(sweep.iterdir()):
        if (job / ".hydra" / "overrides.yaml").exists():
            jobs[job.name] = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    assert len(jobs) == 6
    ids = set()
    for name, overrides in jobs.items():
        job = sweep / name
        model = next(o.split("=")[1] for o in overrides if o.startswith("model="))
        if "seed=-1" in overrides:
            # The bad job is on record and the other jobs went on.
            failure = json.loads((job / "failed.json").read_text())["error"]
            assert "seed=-1 is not valid" in failure
            assert not (job / "summary.json").exists()
            continue
        records = [json.loads(x) for x in (job / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in records] == [1, 2]
        summary = json.loads((job / "summary.json").read_text())
        assert summary["final_acc"] == records[-1]["val/acc"]
        assert summary["wandb_mode"] == "offline"
        run = wandb_run_record(Path(summary["wandb_dir"]))["run"]
        assert Path(summary["wandb_dir"]).is_relative_to(job)
        assert run["run_group"] == sweep.name  # the sweep's folder name groups its runs
        assert run["job_type"] == model  # the model choice
        ids.add(run["run_id"])
    assert len(ids) == 4  # one wandb run per job, none shared


def test_submitit_local_launcher_runs_two_jobs(tmp_path):
    sweep = tmp_path / "local"
    proc = train(
        "-m",
        "hydra/launcher=local",
        "model=feedforward,recurrent",
        *SMALL,
        "logger=none",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in (0, 1)]
    assert all(0.1 < s["final_acc"] <= 1 for s in summaries)
    choices = [
        yaml.safe_load((sweep / str(i) / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"][
            "choices"
        ]["model"]
        for i in (0, 1)
    ]
    assert choices == ["feedforward", "recurrent"]
    # Each job ran in its own submitit process, which left its log and its result pickle.
    job_dirs = [d for d in (sweep / ".submitit").iterdir() if d.name.isdigit()]  # job ids
    assert len(job_dirs) == 2
    for d in job_dirs:
        assert list(d.glob("*_result.pkl")), list(d.iterdir())
        assert list(d.glob("*_log.out"))


def test_optuna_search_runs_two_trials_and_keeps_the_best(tmp_path):
    sweep = tmp_path / "search"
    proc = train(
        "-m",
        "+experiment=search",
        *[o for o in SMALL if not o.startswith("model.widths=")],  # searched below
        "logger=none",
        "hydra.sweeper.n_trials=2",
        "model.widths=choice('[4,8]','[8,16]')",  # replaces the preset's (larger) choices
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in (0, 1)]
    assert results["best_value"] == max(t["best_acc"] for t in trials)
    best = results["best_params"]
    assert 0.01 <= best["optim.lr"] <= 0.3
    assert best["model.widths"] in ("[4,8]", "[8,16]")
    assert 1 <= best["model.num_steps"] <= 5
    for i in (0, 1):
        overrides = yaml.safe_load((sweep / str(i) / ".hydra" / "overrides.yaml").read_text())
        assert any(o.startswith("optim.lr=") for o in overrides)


def _job_pid(sweep: Path) -> int | None:
    """The pid of the submitit job process working in ``sweep``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in cmd and any(str(sweep).encode() in c for c in cmd):
            return int(proc.name)
    return None


@pytest.mark.slow
def test_submitit_requeues_a_preempted_job_which_resumes(tmp_path, compose_cfg):
    from cortexnet.train.loop import run

    overrides = ["model=recurrent", *SMALL, "logger=none", "trainer.epochs=12"]
    sweep = tmp_path / "preempt"
    popen = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cortexnet.train",
            "-m",
            "hydra/launcher=local",
            *overrides,
            "seed=0",
            f"hydra.sweep.dir={sweep}",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
        cwd=REPO,
    )
    metrics = sweep / "0" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert popen.poll() is None and time.monotonic() < deadline, "the job did not start"
        time.sleep(0.02)
    pid = _job_pid(sweep)
    assert pid is not None
    os.kill(pid, signal.SIGUSR2)  # what SLURM sends before a time limit or a preemption
    out, _ = popen.communicate(timeout=300)
    assert popen.returncode == 0, out[-3000:]
    # A requeued local job rewrites submitit's own log files; the job's app.log keeps both runs.
    logs = (sweep / "0" / "app.log").read_text()
    assert "Requeued job" in logs
    assert "resuming it" in logs
    assert not (sweep / "0" / "preempted.json").exists()  # removed when the run completed

    reference = tmp_path / "reference"
    run(compose_cfg(*overrides), reference)
    read = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    drop = lambda r: {k: v for k, v in r.items() if "_per_s" not in k and "epoch_s" not in k}
    assert [drop(r) for r in read(sweep / "0")] == [drop(r) for r in read(reference)]
