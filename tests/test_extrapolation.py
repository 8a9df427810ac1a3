"""Running recurrent, ODE and cortex models for more steps at evaluation than in training."""

import json
import math
import warnings

import pytest
import torch
from conftest import TINY

from cortexnet.analysis.curves import plot_anytime
from cortexnet.models import count_parameters
from cortexnet.train.config import validate
from cortexnet.train.loop import build_model, run
from cortexnet.train.tasks import Task

PNG = b"\x89PNG\r\n\x1a\n"

# A maze run shrunk to seconds: 3x3-cell mazes in training, 3x3 and 4x4 at test.
TINY_MAZE = [
    "data=mazes",
    "data.train_size=3",
    "data.test_sizes=[3,4]",
    "data.num_test=8",
    "data.batches_per_epoch=2",
    "model=maze_recurrent",
    "model.widths=[8]",
    "model.blocks_per_stage=[4]",
    "model.num_steps=2",
    "optim=adamw",
    "trainer.epochs=1",
    "trainer.batch_size=8",
    "trainer.eval_steps=5",
    "trainer.grad_clip=1",
    "schedule.warmup_epochs=0",
    "trainer.progress=false",
    "logger=none",
]


def test_a_tiny_maze_run_gives_a_curve_per_size_and_draws_it(compose_cfg, tmp_path):
    summary = run(compose_cfg(*TINY_MAZE), tmp_path)
    assert set(summary["anytime"]) == {"maze3", "maze4"}
    for curve in summary["anytime"].values():
        assert len(curve) == 5  # eval_steps, past the 2 trained steps
        assert all(0.0 <= a <= 1.0 for a in curve)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"maze3/acc", "maze4/acc", "maze4/acc_step/5"} <= set(record)
    png = (tmp_path / "anytime.png").read_bytes()
    assert png.startswith(PNG) and len(png) > 5000


def test_the_feedforward_twin_reports_its_own_depth(compose_cfg, tmp_path):
    overrides = [o for o in TINY_MAZE if not o.startswith(("model=", "model.num_steps"))]
    summary = run(compose_cfg(*overrides, "model=maze_feedforward"), tmp_path)
    # A feedforward stage has no weights past its blocks: the curve stops at its depth.
    assert all(len(curve) == 4 for curve in summary["anytime"].values())
    assert (tmp_path / "anytime.png").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=recurrent", "model.norm=step_batch"],
        ["model=ode", "model.ode.solver=euler"],
        [
            "model=cortex",
            "model.widths=[4,4,4,4]",
            "model.num_steps=2",
            "model.blocks_per_stage=null",
        ],
    ],
    ids=["recurrent_step_batch", "ode", "cortex"],
)
def test_evaluation_past_the_trained_steps(compose_cfg, tmp_path, overrides):
    cfg = compose_cfg(*TINY, *overrides, "trainer.eval_steps=5", "trainer.epochs=1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run(cfg, tmp_path)
    curve = summary["anytime"]["val"]
    assert len(curve) == 5
    assert all(math.isfinite(a) and 0.0 <= a <= 1.0 for a in curve)
    if "step_batch" in " ".join(overrides) or "cortex" in " ".join(overrides):
        # Per-step norms have no statistics past the trained steps: the reuse is announced.
        assert any("per-step norm" in str(w.message) for w in caught)
    assert (tmp_path / "anytime.png").read_bytes().startswith(PNG)


def test_maze_presets_are_twins_of_equal_depth(compose_cfg):
    task = Task("pixel", 3, 2, train=None, input_size=(3, 11, 11))
    models = {}
    for name in ("maze_recurrent", "maze_feedforward"):
        cfg = compose_cfg(f"+experiment={name}")
        validate(cfg)
        models[name] = build_model(cfg.model, task)
    rec, ff = models["maze_recurrent"], models["maze_feedforward"]
    stage = rec.stages["stage1"]
    assert stage.recall is not None and len(stage.blocks) == 2 and stage.num_steps == 15
    assert len(ff.stages["stage1"].blocks) == 2 * stage.num_steps
    assert 55_000 < count_parameters(rec) < 65_000
    x = torch.rand(2, 3, 11, 11)
    assert rec(x).shape == ff(x).shape == (2, 2, 11, 11)
    assert rec.forward_steps(x, 20).shape == (20, 2, 2, 11, 11)


def test_cortex_presets_differ_only_in_connections(compose_cfg):
    b, blt = (compose_cfg(f"+experiment=cortex_{c}") for c in ("b", "blt"))
    assert (b.model.connections, blt.model.connections) == ("B", "BLT")
    assert b.model.name == blt.model.name == "cortexnet"
    b.model.connections = "BLT"
    assert b == blt


def test_plot_anytime_refuses_empty_curves(tmp_path):
    with pytest.raises(ValueError, match="non-empty"):
        plot_anytime({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="non-empty"):
        plot_anytime({"val": []}, tmp_path / "x.png")
