import itertools
import json
import math

import pytest
import torch
from conftest import TINY
from torch import nn

from cortexnet.analysis import lesion, paths, unroll
from cortexnet.analysis.common import load_source, make_plain, mark_plain_checkpoints
from cortexnet.analysis.lesion import Unit, lesioned, shortened, swapped, units
from cortexnet.analysis.paths import (
    gradient_by_path_length,
    mass_range,
    path_length_distribution,
    routed,
)
from cortexnet.models import FeedforwardStage, ResNet
from cortexnet.models.blocks import ResidualBlock


def _tiny(dynamics: str) -> ResNet:
    torch.manual_seed(0)
    model = ResNet(
        blocks_per_stage=(2, 3),
        widths=(8, 16),
        dynamics=dynamics,
        norm="step_batch" if dynamics == "recurrent" else "batch",
        in_channels=1,
        num_classes=10,
        ode={"solver": "rk4"},
    )
    return model.eval()


@pytest.mark.parametrize(
    "dynamics, unit",
    [
        ("feedforward", Unit("stage1", 1, "block")),
        ("feedforward", Unit("stage2", -1, "transition")),
        ("recurrent", Unit("stage1", 0, "step")),
        ("recurrent", Unit("stage2", 1, "step")),
    ],
)
def test_a_lesion_changes_outputs_keeps_shapes_and_restores_exactly(dynamics, unit):
    model = _tiny(dynamics)
    assert unit in units(model)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        before = model(x)
        with lesioned(model, [unit]):
            hurt = model(x)
        after = model(x)
    assert hurt.shape == before.shape
    assert not torch.allclose(hurt, before)
    assert torch.equal(after, before)
    assert all(m.branch_enabled for m in model.modules() if isinstance(m, ResidualBlock))


def test_skipping_a_step_differs_from_skipping_another():
    model = _tiny("recurrent")
    # Untrained per-step statistics are all equal, which makes every step the same function;
    # distinct statistics make the order of steps matter, as training does.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and not m.affine:
            m.running_mean.normal_(0, 0.5)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad(), lesioned(model, [Unit("stage2", 0, "step")]):
        a = model(x)
    with torch.no_grad(), lesioned(model, [Unit("stage2", 1, "step")]):
        b = model(x)
    assert not torch.allclose(a, b)


def test_shortening_t_end_and_swapping_blocks_change_outputs_and_restore():
    x = torch.randn(4, 1, 8, 8)
    ode = _tiny("ode")
    with torch.no_grad():
        before = ode(x)
        with shortened(ode, "stage1", 0.5):
            assert ode.stages["stage1"].t_end == pytest.approx(0.5)
            short = ode(x)
        assert not torch.allclose(short, before)
        assert torch.equal(ode(x), before)
    ff = _tiny("feedforward")
    with torch.no_grad():
        before = ff(x)
        with swapped(ff, "stage2", 0):
            swap = ff(x)
        assert not torch.allclose(swap, before)
        assert torch.equal(ff(x), before)


def test_plain_chain_has_no_bypass_and_deletion_passes_the_input():
    model = _tiny("feedforward")
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        residual = model(x)
        make_plain(model)
        plain = model(x)
        block = model.stages["stage1"].blocks[0]
        h = torch.randn(2, 8, 8, 8)
        assert torch.allclose(block(h), torch.relu(block.branch(h)))
        block.branch_enabled = False
        assert torch.equal(block(h), h)
    assert not torch.allclose(residual, plain)


def test_path_length_distribution_is_binomial():
    dist = path_length_distribution(5)
    assert sum(dist) == pytest.approx(1.0)
    assert dist == pytest.approx([c / 32 for c in (1, 5, 10, 10, 5, 1)])
    # ResNet-110 has 54 blocks: the shortest range holding 95% of its paths (it holds 96%).
    assert mass_range(path_length_distribution(54), 0.95) == (20, 34)
    assert mass_range([0, 1, 8, 1, 0], 0.8) == (2, 2)


class _LinearBlock(ResidualBlock):
    """h <- h + W h: a residual block with a linear branch and no activation."""

    preact = True  # no ReLU after the sum

    def __init__(self, width: int):
        super().__init__(width, width, 1, "A", "none", 1)
        self.w = nn.Conv2d(width, width, 1, bias=False)
        nn.init.normal_(self.w.weight, std=0.4)

    def branch(self, x, t=0):
        return self.w(x)


class _LinearNet(nn.Module):
    """A stack of linear residual blocks read out by a fixed vector c: output c^T h."""

    def __init__(self, n: int, width: int):
        super().__init__()
        self.stem = nn.Identity()
        self.stages = nn.ModuleDict(
            {"stage1": FeedforwardStage(None, [_LinearBlock(width) for _ in range(n)])}
        )
        self.register_buffer("c", torch.randn(width))

    def forward_head(self, h):
        return (h.flatten(1) @ self.c)[:, None]


def _exact_path_gradient(net: _LinearNet, subset: set[int]) -> torch.Tensor:
    """d(c^T P_S h)/dh = P_S^T c, with P_S the ordered product of W_i (i in S) or I."""
    blocks = net.stages["stage1"].blocks
    width = net.c.numel()
    prod = torch.eye(width, dtype=torch.float64)
    for i, block in enumerate(blocks):
        w = block.w.weight[:, :, 0, 0].double()
        prod = (w if i in subset else torch.eye(width, dtype=torch.float64)) @ prod
    return prod.T @ net.c.double()


def test_gradient_by_path_length_matches_the_expanded_product():
    torch.manual_seed(1)
    n, width = 5, 3
    net = _LinearNet(n, width).double().eval()
    x = torch.randn(2, width, 1, 1, dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.long)
    summed = lambda out, y: out.sum()  # noqa: E731

    # Every subset's routed gradient is that subset's path; all of them add up to the full one.
    total = torch.zeros(width, dtype=torch.float64)
    for k in range(n + 1):
        for subset in itertools.combinations(range(n), k):
            with routed(net, [Unit("stage1", i, "block") for i in subset]):
                h0 = x.clone().requires_grad_(True)
                out = net.forward_head(net.stages["stage1"](h0))
                (g,) = torch.autograd.grad(summed(out, y), h0)
            expected = _exact_path_gradient(net, set(subset))
            assert torch.allclose(g[0, :, 0, 0], expected)
            total += expected
    full = torch.eye(width, dtype=torch.float64)
    for block in net.stages["stage1"].blocks:
        full = (torch.eye(width, dtype=torch.float64) + block.w.weight[:, :, 0, 0].double()) @ full
    assert torch.allclose(total, full.T @ net.c.double())

    # The estimator, enumerating every subset, gives the exact mean norm per length.
    result = gradient_by_path_length(net, [(x, y)], samples=math.comb(n, n // 2), loss=summed)
    for k in range(n + 1):
        norms = [
            _exact_path_gradient(net, set(s)).norm().item()
            for s in itertools.combinations(range(n), k)
        ]
        assert result["enumerated"][k]
        assert result["per_path"][k] == pytest.approx(sum(norms) / len(norms), rel=1e-9)
        assert result["total"][k] == pytest.approx(sum(norms), rel=1e-9)
    assert result["distribution"] == pytest.approx(path_length_distribution(n))


def test_path_analysis_refuses_ode_stages():
    with pytest.raises(NotImplementedError, match="ODE"):
        gradient_by_path_length(_tiny("ode"), [(torch.randn(2, 1, 8, 8), torch.zeros(2).long())])


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """Tiny one-epoch training runs of a feedforward and a recurrent model."""
    from hydra import compose, initialize_config_dir

    from cortexnet.train.app import CONF_DIR
    from cortexnet.train.loop import run

    out = {}
    for dynamics in ("feedforward", "recurrent"):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=[f"model={dynamics}", *TINY, "trainer.epochs=1"])
        run_dir = tmp_path_factory.mktemp(dynamics)
        run(cfg, run_dir)
        out[dynamics] = run_dir
    return out


def test_lesion_and_paths_cli_end_to_end(trained_runs, capsys):
    run_dir = trained_runs["feedforward"]
    lesion.main([str(run_dir), "--logger", "disabled", "--draws", "2", "--max-eval", "64"])
    result = json.loads((run_dir / "analysis" / "lesion.json").read_text())
    assert len(result["single"]) == len(result["random_k"]) + 1  # the transition is not drawn
    assert (run_dir / "analysis" / "lesion.png").stat().st_size > 0
    paths.main([str(run_dir / "checkpoints" / "last.pt"), "--logger", "disabled", "--samples", "2"])
    result = json.loads((run_dir / "analysis" / "paths.json").read_text())
    assert result["n"] == 3 and len(result["total"]) == 4
    assert (run_dir / "analysis" / "paths.png").stat().st_size > 0
    assert "effective_range" in result
    assert "of the total gradient" in capsys.readouterr().out


def test_unroll_cli_runs_past_training_and_logs_to_wandb(trained_runs, tmp_path):
    run_dir = trained_runs["recurrent"]
    unroll.main([str(run_dir), "--logger", "offline", "--steps", "4", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "unroll.json").read_text())
    assert result["trained_steps"] == 1 and len(result["curves"]["val"]) == 4
    summary = json.loads((run_dir / "summary.json").read_text())
    assert result["trained_curves"]["val"] == pytest.approx([summary["val/acc"]])
    assert result["acc"]["val"] == pytest.approx(summary["val/acc"])
    assert (tmp_path / "unroll.png").exists()
    assert result["wandb"] and list((tmp_path / "wandb").glob("offline-run-*"))


def test_plain_mark_survives_loading(trained_runs, tmp_path):
    import shutil

    run_dir = tmp_path / "plain"
    shutil.copytree(trained_runs["feedforward"], run_dir)
    mark_plain_checkpoints(run_dir)
    source = load_source(run_dir)
    assert source.plain_chain
    assert type(source.model.stages["stage2"].blocks[0]).__name__.startswith("Plain")


@pytest.mark.parametrize(
    "argv, words",
    [
        (["/no/such/run"], ["/no/such/run", "checkpoints/last.pt"]),
        (["RUN", "--bogus"], ["--bogus", "valid options", "--draws"]),
        (["RUN", "--logger", "loud"], ["loud", "offline"]),
    ],
)
def test_bad_input_is_one_line(trained_runs, capsys, argv, words):
    argv = [str(trained_runs["feedforward"]) if a == "RUN" else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        lesion.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    for word in words:
        assert word in err


def test_unroll_refuses_more_steps_of_a_feedforward_model(trained_runs, capsys):
    with pytest.raises(SystemExit):
        unroll.main([str(trained_runs["feedforward"]), "--logger", "disabled", "--steps", "9"])
    assert "feedforward" in capsys.readouterr().err
