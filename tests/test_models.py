import math

import pytest
import torch
from torch import nn

from cortexnet import count_parameters, create_model, list_models
from cortexnet.analysis.profile import profile_model
from cortexnet.models import (
    FeedforwardStage,
    NFELimitError,
    ODEFunc,
    ODEStage,
    RecurrentStage,
    ResNet,
)
from cortexnet.models.blocks import BasicBlock, PreActBasicBlock

torch.set_num_threads(2)


def _input(name: str) -> torch.Tensor:
    # ImageNet-stem models downsample 32x; 32x32 leaves a 1x1 map, enough to run everything.
    size = 32 if create_model_defaults(name)["stem"] == "imagenet" else 8
    return torch.randn(2, 3, size, size)


def create_model_defaults(name):
    from cortexnet.models import model_defaults

    return model_defaults(name)


@pytest.mark.parametrize("name", list_models())
def test_registered_model_runs_and_trains(name):
    torch.manual_seed(0)
    model = create_model(name)
    x = _input(name)
    logits = model(x)
    assert logits.shape == (2, create_model_defaults(name)["num_classes"])
    assert torch.isfinite(logits).all()
    logits.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# torchvision's counts for the ImageNet family; He et al. 2015 (Table 6) and 2016 round the CIFAR
# counts to two or three digits, which the exact counts must reproduce.
PUBLISHED = {
    "resnet18": (11_689_512, None),
    "resnet34": (21_797_672, None),
    "resnet50": (25_557_032, None),
    "resnet101": (44_549_160, None),
    "resnet152": (60_192_808, None),
    "resnet20": (269_722, 0.27e6),
    "resnet32": (464_154, 0.46e6),
    "resnet44": (658_586, 0.66e6),
    "resnet56": (853_018, 0.85e6),
    "resnet110": (1_727_962, 1.7e6),
    "resnet1202": (19_421_274, 19.4e6),
    "preact_resnet164": (1_703_258, 1.7e6),
    # He et al. 2016 print 10.2M; the standard layout (projection on each stage's first block)
    # has 10.33M, as do the public re-implementations.
    "preact_resnet1001": (10_327_706, 10.3e6),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_parameter_counts(name):
    exact, rounded = PUBLISHED[name]
    n = count_parameters(create_model(name))
    assert n == exact
    if rounded is not None:
        digits = 2 if rounded < 1e6 else 1
        assert round(n / 1e6, digits) == pytest.approx(rounded / 1e6)


@pytest.mark.parametrize("norm", ["batch", "step_batch", "group", "none"])
def test_recurrent_parameters_do_not_grow_with_steps(norm):
    counts = {
        t: count_parameters(ResNet((2, 2), (8, 16), dynamics="recurrent", num_steps=t, norm=norm))
        for t in (1, 4, 16)
    }
    assert len(set(counts.values())) == 1, counts


def test_twins_have_equal_flops():
    ff, rec = (
        profile_model(create_model(n), (3, 32, 32)) for n in ("resnet56", "recurrent_resnet56")
    )
    assert ff["flops"] == rec["flops"]
    assert rec["params"] < ff["params"] / 4


@pytest.mark.parametrize("block", ["basic", "preact_bottleneck"])
def test_recurrent_one_step_equals_feedforward(block):
    torch.manual_seed(0)
    kw = dict(blocks_per_stage=(2, 3), widths=(8, 16), block=block, stem_width=8, in_channels=1)
    ff = ResNet(dynamics="feedforward", **kw)
    rec = ResNet(dynamics="recurrent", shared_blocks=2, num_steps=1, **kw)
    rec.load_state_dict(ff.state_dict())  # same parameter names, same weights
    x = torch.randn(4, 1, 8, 8)
    for mode in (True, False):
        ff.train(mode), rec.train(mode)
        torch.testing.assert_close(rec(x), ff(x))


def test_stage_classes_share_the_transition_contract():
    torch.manual_seed(0)
    blocks = [BasicBlock(8, 8) for _ in range(2)]
    transition = BasicBlock(4, 8, stride=2, shortcut="A")
    x = torch.randn(2, 4, 8, 8)
    ff = FeedforwardStage(transition, blocks)
    rec = RecurrentStage(transition, blocks, num_steps=1)
    torch.testing.assert_close(ff(x), rec(x))
    assert ff.forward_states(x).shape == (2, 2, 8, 4, 4)


class Linear(nn.Module):
    """dh/dt = a h, solved exactly by h(t) = h(0) exp(a t)."""

    def __init__(self, a: float):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))

    def forward(self, t, h):
        return self.a * h


@pytest.mark.parametrize("solver, step_size", [("rk4", 0.01), ("dopri5", None)])
def test_ode_stage_matches_analytic_linear_ode(solver, step_size):
    stage = ODEStage(
        None,
        Linear(-0.7),
        num_steps=4,
        t_end=2.0,
        solver=solver,
        step_size=step_size,
        rtol=1e-7,
        atol=1e-9,
    )
    h0 = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    states = stage.forward_states(h0)
    times = torch.arange(1, 5, dtype=torch.float64) * 0.5
    expected = h0[None] * torch.exp(-0.7 * times)[:, None, None, None, None]
    torch.testing.assert_close(states, expected, rtol=1e-5, atol=1e-6)


def test_ode_stage_gradcheck_float64():
    torch.manual_seed(0)
    block = PreActBasicBlock(2, 2, norm="none", time_conditioned=True).double()
    stage = ODEStage(None, ODEFunc(block), num_steps=2, t_end=0.5, solver="rk4")
    h0 = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h: stage(h), (h0,))


@pytest.mark.parametrize("adjoint", [False, True])
def test_ode_nfe_counted(adjoint):
    model = ResNet(
        (2,),
        (8,),
        dynamics="ode",
        num_steps=3,
        in_channels=1,
        ode={"solver": "euler", "adjoint": adjoint},
    )
    model(torch.randn(2, 1, 6, 6)).sum().backward()
    nfe = model.nfe()
    assert nfe["nfe_forward"] == 3  # one evaluation per Euler step
    assert nfe["nfe_backward"] == (3 if adjoint else 0)


def test_ode_nfe_cap_raises_naming_the_setting():
    model = ResNet(
        (2,),
        (8,),
        dynamics="ode",
        in_channels=1,
        ode={"solver": "dopri5", "rtol": 1e-12, "atol": 1e-12, "max_nfe": 20},
    )
    with pytest.raises(NFELimitError, match="max_nfe=20"):
        model(torch.randn(2, 1, 6, 6))


def test_ode_more_steps_integrates_further_with_same_spacing():
    model = ResNet((2,), (8,), dynamics="ode", num_steps=2, in_channels=1)
    stage = model.stages["stage1"]
    x = torch.randn(2, 1, 6, 6)
    model.eval()
    short, long = model.forward_steps(x), model.forward_steps(x, num_steps=5)
    assert long.shape[0] == 5
    torch.testing.assert_close(long[:2], short, rtol=1e-4, atol=1e-5)
    model.set_num_steps(5)
    assert stage.num_steps == 5 and stage.t_end == pytest.approx(2.5)


def test_recurrent_runs_past_trained_steps_with_step_norm():
    model = ResNet((3,), (8,), dynamics="recurrent", norm="step_batch", in_channels=1)
    model.train()
    model(torch.randn(4, 1, 6, 6))
    model.eval()
    with pytest.warns(UserWarning, match="reuse the last step's statistics"):
        out = model.forward_steps(torch.randn(4, 1, 6, 6), num_steps=7)
    assert out.shape == (7, 4, 10) and torch.isfinite(out).all()


def test_steps_readout_and_stage_states():
    model = create_model("recurrent_resnet20", in_channels=1, num_classes=5).eval()
    x = torch.randn(2, 1, 8, 8)
    steps = model.forward_steps(x)
    torch.testing.assert_close(steps[-1], model(x))
    states = model.stage_states(x, num_steps=4)
    assert list(states) == ["stage1", "stage2", "stage3"]
    assert states["stage3"].shape == (4, 2, 64, 2, 2)
    assert model.forward_steps(x, num_steps=6).shape == (6, 2, 5)


@pytest.mark.parametrize("dynamics", ["feedforward", "recurrent"])
def test_checkpointing_keeps_gradients(dynamics):
    torch.manual_seed(0)
    kw = dict(blocks_per_stage=(5,), widths=(8,), dynamics=dynamics, in_channels=1, norm="none")
    plain, ckpt = ResNet(**kw), ResNet(checkpoint_every=2, **kw)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 6, 6)
    for m in (plain, ckpt):
        m(x).sum().backward()
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


def test_builds_from_arguments():
    model = ResNet(
        blocks_per_stage=(2, 4),
        widths=(12, 24),
        block="preact_basic",
        dynamics=("feedforward", "recurrent"),
        num_steps=(None, 6),
        norm="group",
        shortcut="B",
        in_channels=1,
        num_classes=7,
    )
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 7)
    assert model.stages["stage2"].num_steps == 6


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: create_model("resnet21"), "unknown model 'resnet21'; valid: resnet18"),
        (lambda: ResNet(dynamics="spiking"), "unknown dynamics 'spiking'; valid: feedforward"),
        (lambda: ResNet(norm="layer"), "unknown norm 'layer'; valid: batch"),
        (lambda: ResNet(block="wide"), "unknown block 'wide'; valid: basic"),
        (lambda: ResNet(shortcut="C"), "unknown shortcut 'C'; valid: A, B"),
        (lambda: ResNet(stem="huge"), "unknown stem 'huge'; valid: cifar"),
        (lambda: ResNet(dynamics="ode", ode={"solver": "rk5"}), "unknown solver 'rk5'; valid:"),
        (lambda: ResNet(dynamics="recurrent", num_steps=0), "num_steps must be an integer >= 1"),
        (lambda: ResNet(dynamics="ode", ode={"t_end": -1.0}), "t_end must be > 0"),
        (lambda: ResNet(blocks_per_stage=(3, 0), widths=(8, 16)), "blocks_per_stage must all"),
        (lambda: create_model("resnet20", colour=True), "bad argument for model 'resnet20'"),
    ],
)
def test_bad_arguments_raise_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_recurrent_steps_override_must_be_positive():
    model = ResNet((2,), (8,), dynamics="recurrent", in_channels=1)
    with pytest.raises(ValueError, match="num_steps must be an integer >= 1, got -2"):
        model(torch.randn(1, 1, 4, 4), num_steps=-2)


def test_profile_reports_flops_of_a_known_conv():
    model = ResNet((1,), (4,), norm="none", in_channels=1, num_classes=2)
    prof = profile_model(model, (1, 6, 6))
    convs = 2 * (1 * 4 * 9 + 4 * 4 * 9 * 2) * 36  # stem + one basic block, 2 FLOPs per MAC
    assert prof["flops"] == convs + 2 * 4 * 2
    assert prof["params"] == count_parameters(model)
    assert math.isclose(prof["macs"], prof["flops"] / 2)


def test_ode_stage_output_reaches_a_pooled_head():
    # With one channel per group the branch would have zero spatial mean and the average-pool
    # head could not see how long the stage integrated.
    torch.manual_seed(0)
    model = ResNet((2,), (16,), dynamics="ode", num_steps=2, in_channels=1).eval()
    x = torch.randn(2, 1, 6, 6)
    short = model(x)
    model.stages["stage1"].t_end = 4.0
    assert not torch.allclose(short, model(x), atol=1e-4)
