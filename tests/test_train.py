import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY
from hydra.utils import instantiate

from cortexnet.train import app
from cortexnet.train.config import validate
from cortexnet.train.loop import build_model, run
from cortexnet.train.tasks import Task

CONF = Path(app.CONF_DIR)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group, option",
    [
        (g, o)
        for g in ("model", "data", "optim", "schedule", "trainer", "logger")
        for o in _options(g)
    ],
)
def test_every_config_option_composes_and_builds(compose_cfg, group, option):
    cfg = compose_cfg(f"{group}={option}")
    validate(cfg)
    if group == "model":
        pixel = option in ("maze",)
        task = Task(
            "pixel" if pixel else "classify",
            3 if pixel else 1,
            2 if pixel else 10,
            train=None,
            input_size=(3, 11, 11) if pixel else (1, 8, 8),
        )
        model = build_model(cfg.model, task)
        x = torch.randn(2, *task.input_size)
        assert torch.isfinite(model(x)).all()
    if group == "optim":
        opt = instantiate(cfg.optim)([torch.nn.Parameter(torch.zeros(2))])
        assert opt.param_groups[0]["lr"] == cfg.optim.lr


def test_every_experiment_composes(compose_cfg):
    for option in _options("experiment"):
        validate(compose_cfg(f"+experiment={option}"))


@pytest.mark.parametrize("dynamics", ["feedforward", "recurrent", "ode"])
def test_short_training_run_of_each_dynamics(compose_cfg, tmp_path, dynamics):
    cfg = compose_cfg(f"model={dynamics}", *TINY)
    summary = run(cfg, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    last = records[-1]
    assert 0.2 < last["val/acc"] <= 1.0  # well above chance (0.1) after two epochs
    assert records[-1]["train/loss"] < records[0]["train/loss"]
    assert summary["final_acc"] == last["val/acc"]
    steps = [k for k in last if k.startswith("val/acc_step/")]
    assert len(steps) == 1 if dynamics == "feedforward" else len(steps) >= 1
    if dynamics == "ode":
        assert last["ode/nfe_forward"] > 0
    assert (tmp_path / "checkpoints" / "last.pt").exists()
    assert (tmp_path / "checkpoints" / "best.pt").exists()


def test_eval_steps_extends_the_anytime_curve(compose_cfg, tmp_path):
    cfg = compose_cfg("model=recurrent", "trainer.eval_steps=4", *TINY)
    summary = run(cfg, tmp_path)
    assert len(summary["anytime"]["val"]) == 4


def test_resume_reproduces_an_uninterrupted_run(compose_cfg, tmp_path):
    overrides = ["model=recurrent", *TINY, "trainer.epochs=3"]
    full = run(compose_cfg(*overrides), tmp_path / "full")
    part = tmp_path / "part"
    first = run(compose_cfg(*overrides, "trainer.stop_after=1"), part)
    assert first["stopped_at_epoch"] == 1
    resumed = run(compose_cfg(*overrides, "trainer.resume=true"), part)
    read = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    drop = lambda r: {k: v for k, v in r.items() if "images_per_s" not in k and "epoch_s" not in k}
    assert [drop(r) for r in read(part)] == [drop(r) for r in read(tmp_path / "full")]
    assert resumed["final_acc"] == full["final_acc"]


def test_offline_wandb_run_reads_back_with_the_local_metrics(compose_cfg, tmp_path):
    cfg = compose_cfg("model=recurrent", *TINY, "logger=wandb", "logger.mode=offline")
    summary = run(cfg, tmp_path)
    assert summary["wandb_mode"] == "offline"
    run_dir = Path(summary["wandb_dir"])
    assert run_dir.is_relative_to(tmp_path)  # nothing written under the home folder
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--summary", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    remote = json.loads(out.stdout)["summary"]
    local = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert remote["val/acc"] == pytest.approx(local["val/acc"])
    assert remote["train/loss"] == pytest.approx(local["train/loss"])
    assert remote["final_acc"] == pytest.approx(local["val/acc"])
    assert remote["params"] == summary["params"]


def test_wandb_failure_warns_and_training_goes_on(compose_cfg, tmp_path, monkeypatch):
    import wandb

    def broken(*args, **kwargs):
        raise ConnectionError("service unreachable")

    monkeypatch.setattr(wandb, "init", broken)
    cfg = compose_cfg("model=feedforward", *TINY, "logger=wandb", "logger.mode=online")
    with pytest.warns(UserWarning, match="wandb could not start"):
        summary = run(cfg, tmp_path)
    assert summary["wandb_dir"] is None
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


BAD = [
    (["model.name=resnet21"], "model.name='resnet21' is not valid; valid: resnet18"),
    (["model=recurrent", "model.num_steps=-3"], "model.num_steps=-3 is not valid"),
    (["model=ode", "model.ode.solver=rk45"], "model.ode.solver='rk45' is not valid"),
    (["trainer.precision=fp8"], "trainer.precision='fp8' is not valid; valid: 32, bf16"),
    (["model.dynamics=spiking"], "model.dynamics='spiking' is not valid"),
    (["model.norm=layer"], "model.norm='layer' is not valid"),
    (["data.name=imagenet21k"], "data.name='imagenet21k' is not valid"),
    (["trainer.epochs=0"], "trainer.epochs=0 is not valid; it must be >= 1"),
    (["optim.lr=-0.1"], "optim.lr=-0.1 is not valid"),
    (["trainer.batch_size=big"], "trainer.batch_size"),
    (["optim.lrr=0.1"], "optim.lrr"),
    (["model=transformer"], "Could not find 'model/transformer'"),
    (["trainer.device=tpu"], "trainer.device='tpu' is not valid; valid: auto, cpu, cuda"),
    (["schedule.name=linear"], "schedule.name='linear' is not valid"),
    (["logger.mode=sometimes"], "logger.mode='sometimes' is not valid"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[b[0][-1] for b in BAD])
def test_bad_configuration_exits_with_one_line(overrides, message, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["cortexnet.train", *overrides])
    with pytest.raises(SystemExit) as exit_info:
        app.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert message in err
    assert "Traceback" not in err


def test_cli_bad_key_and_missing_data_give_one_line(tmp_path):
    for args, expected in (
        (["trainer.epochs=-1"], "trainer.epochs=-1"),
        (
            ["data=cifar10", f"data.root={tmp_path}", f"out_dir={tmp_path / 'run'}", "logger=none"],
            "cifar-10-python.tar.gz",
        ),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "cortexnet.train", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
