"""DDP under torchrun (gloo on the CPU), batch-norm conversion, and stop-on-signal with resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY
from torch import nn

from cortexnet.models import ResNet
from cortexnet.train import distributed as dist
from cortexnet.train import loop

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
SMALL = [*TINY, "trainer.threads=1", "trainer.device=cpu"]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _drop_timing(r: dict) -> dict:
    return {k: v for k, v in r.items() if "_per_s" not in k and "epoch_s" not in k}


def test_two_gloo_processes_match_one_process(compose_cfg, tmp_path):
    # Group-free norms (no batch statistics) and no augmentation: the two ranks then see the
    # same samples per step as one process, except that the odd training split (1437) makes
    # one sample repeat in each epoch's last step of the two-rank run. Tolerance: training
    # loss within 2e-3, accuracies within 2 percentage points (7 of 360 test images).
    overrides = [*SMALL, "model=feedforward", "model.norm=none", "data.augment=none"]
    one = tmp_path / "one"
    loop.run(compose_cfg(*overrides), one)
    two = tmp_path / "two"
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("torchrun")),
            "--nproc_per_node=2",
            "--master_port=29517",
            "-m",
            "cortexnet.train",
            *overrides,
            f"out_dir={two}",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _records(one), _records(two)
    assert [r["epoch"] for r in b] == [1, 2]  # rank 0 alone wrote the log, once per epoch
    for ra, rb in zip(a, b):
        assert rb["train/loss"] == pytest.approx(ra["train/loss"], abs=2e-3)
        assert rb["train/acc"] == pytest.approx(ra["train/acc"], abs=0.02)
        assert rb["val/acc"] == pytest.approx(ra["val/acc"], abs=0.02)
        assert rb["train/lr"] == pytest.approx(ra["train/lr"])  # the same number of steps
        # Hits summed over both ranks' halves of the 360 test images.
        assert abs(rb["val/acc"] * 360 - round(rb["val/acc"] * 360)) < 1e-6
    summary = json.loads((two / "summary.json").read_text())
    assert summary["final_acc"] == b[-1]["val/acc"]
    assert proc.stdout.count("run directory:") == 1  # rank 0 speaks for the job


def test_sync_batchnorm_conversion_keeps_the_model():
    torch.manual_seed(0)
    model = ResNet(
        blocks_per_stage=(2, 2),
        widths=(8, 16),
        dynamics="recurrent",
        norm="step_batch",
        in_channels=1,
        num_classes=10,
    )
    model.stem_norm_check = nn.BatchNorm2d(3)  # a plain batch norm is converted too
    x = torch.randn(4, 1, 8, 8)
    model.train()
    copy = ResNet(
        blocks_per_stage=(2, 2),
        widths=(8, 16),
        dynamics="recurrent",
        norm="step_batch",
        in_channels=1,
        num_classes=10,
    )
    copy.stem_norm_check = nn.BatchNorm2d(3)
    copy.load_state_dict(model.state_dict())
    converted = dist.convert_sync_batchnorm(copy)
    plain = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    synced = [m for m in converted.modules() if isinstance(m, nn.SyncBatchNorm)]
    assert plain and len(synced) == len(plain)
    assert not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
        for m in converted.modules()
    )
    # Without a process group SyncBatchNorm computes plain batch norm: same outputs, same
    # running statistics, in training and in evaluation.
    torch.testing.assert_close(converted(x), model(x))
    for p, q in zip(plain, synced):
        torch.testing.assert_close(q.running_mean, p.running_mean)
    model.eval(), converted.eval()
    torch.testing.assert_close(converted.forward_steps(x), model.forward_steps(x))


def test_sync_bn_on_cpu_processes_and_uneven_batches_are_refused():
    env = dist.DistEnv(rank=0, world_size=2, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="trainer.sync_bn=true is not supported on the CPU"):
        dist.check_sync_bn(True, env)
    dist.check_sync_bn(False, env)
    with pytest.raises(ValueError, match="trainer.batch_size=65 is not valid with 2 processes"):
        dist.per_rank_batch(65, env)
    assert dist.per_rank_batch(64, env) == 32


class _SignalAt:
    """A training stream that raises a signal in this process after batch ``k`` of ``epoch``."""

    def __init__(self, inner, epoch: int, k: int, signum: int):
        self.inner, self.epoch, self.k, self.signum = inner, epoch, k, signum
        self.current, self.fired = 0, False

    def __len__(self):
        return len(self.inner)

    def set_epoch(self, epoch):
        self.current = epoch
        self.inner.set_epoch(epoch)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)

    def __iter__(self):
        for i, batch in enumerate(self.inner):
            yield batch
            if self.current == self.epoch and i + 1 == self.k and not self.fired:
                self.fired = True
                signal.raise_signal(self.signum)


def test_signal_mid_epoch_checkpoints_and_a_rerun_resumes_exactly(
    compose_cfg, tmp_path, monkeypatch
):
    overrides = ["model=recurrent", *SMALL, "trainer.epochs=3"]
    full = tmp_path / "full"
    loop.run(compose_cfg(*overrides), full)

    build = loop.build_task

    def with_signal(*args, **kwargs):
        task = build(*args, **kwargs)
        task.train = _SignalAt(task.train, epoch=1, k=7, signum=signal.SIGUSR2)
        return task

    part = tmp_path / "part"
    monkeypatch.setattr(loop, "build_task", with_signal)
    with pytest.raises(SystemExit) as exit_info:
        loop.run(compose_cfg(*overrides), part)
    assert exit_info.value.code == 128 + signal.SIGUSR2
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL  # handlers put back
    marker = json.loads((part / "preempted.json").read_text())
    # Raised while batch 8 was being fetched: that batch is finished, then the run stops.
    assert marker == {"signal": "SIGUSR2", "epoch": 1, "batch": 8}
    state = torch.load(part / "checkpoints" / "last.pt", weights_only=True)
    assert state["partial"]["batch"] == 8 and state["loader"]["batch"] == 8
    assert len(_records(part)) == 1  # the interrupted epoch is not logged half done

    monkeypatch.setattr(loop, "build_task", build)
    resumed = loop.run(compose_cfg(*overrides), part)  # no resume flag: the marker says so
    assert [_drop_timing(r) for r in _records(part)] == [_drop_timing(r) for r in _records(full)]
    assert resumed["final_acc"] == json.loads((full / "summary.json").read_text())["final_acc"]
    assert not (part / "preempted.json").exists()


@pytest.mark.slow
def test_sigterm_to_a_training_process_then_a_rerun_resumes(compose_cfg, tmp_path):
    overrides = ["model=recurrent", *SMALL, "trainer.epochs=8"]
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "cortexnet.train", *overrides, f"out_dir={run_dir}",
            f"hydra.run.dir={tmp_path / 'hydra'}"]  # fmt: skip
    popen = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=ENV, cwd=REPO)  # fmt: skip
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert popen.poll() is None and time.monotonic() < deadline, popen.stderr.read()[-2000:]
        time.sleep(0.01)
    popen.send_signal(signal.SIGTERM)
    _, err = popen.communicate(timeout=300)
    assert popen.returncode == 128 + signal.SIGTERM, err[-3000:]
    marker = json.loads((run_dir / "preempted.json").read_text())
    assert marker["signal"] == "SIGTERM"
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == marker["epoch"] and 1 <= state["epoch"] < 8
    assert len(_records(run_dir)) == state["epoch"]

    again = subprocess.run(args, capture_output=True, text=True, timeout=600, env=ENV, cwd=REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr + again.stdout

    reference = tmp_path / "reference"
    loop.run(compose_cfg(*overrides), reference)
    assert [_drop_timing(r) for r in _records(run_dir)] == [
        _drop_timing(r) for r in _records(reference)
    ]
