import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from cortexnet import count_parameters, create_model, list_models
from cortexnet.models import CORnetS, CortexNet
from cortexnet.models.cortex import CONNECTIONS

AREAS = ["V1", "V2", "V4", "IT"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These models are tiny: threads gain nothing, and on a busy machine their barriers cost
    # seconds per pass.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(connections="BLT", **kw) -> CortexNet:
    torch.manual_seed(0)
    args = dict(widths=(4, 8, 8, 8), in_channels=1, num_classes=5, num_steps=3)
    return CortexNet(connections=connections, **{**args, **kw})


def _x(size=8, seed=1) -> torch.Tensor:
    return torch.randn(2, 1, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("connections", CONNECTIONS)
def test_shapes_and_a_gradient_on_every_parameter(connections):
    model = _tiny(connections)
    x = _x()
    logits = model(x)
    assert logits.shape == (2, 5)
    logits.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())

    model.eval()
    steps = model.forward_steps(x)
    assert steps.shape == (3, 2, 5)
    torch.testing.assert_close(steps[-1], model(x))
    feats = model.forward_features(x)
    assert feats.shape == (2, 8, 1, 1)
    torch.testing.assert_close(model.forward_head(feats), model(x))
    states = model.stage_states(x, num_steps=2)
    assert list(states) == AREAS
    sizes = {"V1": (4, 8), "V2": (8, 4), "V4": (8, 2), "IT": (8, 1)}
    for name, (c, s) in sizes.items():
        assert states[name].shape == (2, 2, c, s, s)


def _perturbed(model, scope: str, scale: float = 0.0):
    """A copy whose parameters named ``scope`` are set to zero (scale 0) or jittered."""
    other = copy.deepcopy(model)
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in other.named_parameters():
            if scope in name:
                p.copy_(p + scale * torch.randn_like(p) if scale else torch.zeros_like(p))
    return other


@pytest.mark.parametrize("scope, connections", [("top_down", "BLT"), ("lateral", "BL")])
def test_feedback_and_lateral_weights_act_from_step_one(scope, connections):
    model = _tiny(connections).eval()
    zeroed = _perturbed(model, scope)
    x = _x()
    a, b = model.forward_steps(x), zeroed.forward_steps(x)
    # Step 0 is a feedforward pass: previous states are zero, so these weights have no input.
    torch.testing.assert_close(a[0], b[0])
    for t in range(1, a.shape[0]):
        assert not torch.allclose(a[t], b[t], atol=1e-5), f"{scope} had no effect at step {t}"


@pytest.mark.parametrize("connections", CONNECTIONS)
def test_top_area_reaches_lower_areas_only_through_top_down(connections):
    # With four steps, a change in IT reaches V4 at step 1, V2 at step 2 and V1 at step 3.
    model = _tiny(connections, num_steps=4).eval()
    changed = _perturbed(model, "areas.IT.", scale=0.5)
    x = _x()
    before, after = model.stage_states(x), changed.stage_states(x)
    assert not torch.allclose(before["IT"], after["IT"])
    for name in ("V1", "V2", "V4"):
        torch.testing.assert_close(before[name][0], after[name][0])
        same = torch.allclose(before[name][-1], after[name][-1], atol=1e-6)
        assert same == ("T" not in connections), f"{name} in {connections}"


def test_bottom_up_only_keeps_no_memory():
    model = _tiny("B", norm="batch").eval()
    steps = model.forward_steps(_x(), num_steps=4)
    for t in range(1, 4):
        torch.testing.assert_close(steps[t], steps[0])


def test_top_down_projection_commutes_with_resizing():
    # The model projects at the upper area's resolution, then resizes; the claim is that this
    # equals resizing first, for both modes.
    model = _tiny("BLT", upsample="bilinear").eval()
    area = model.areas["V4"]
    above = torch.randn(2, 8, 3, 3)
    for mode in ("nearest", "bilinear"):
        align = False if mode == "bilinear" else None
        first = F.interpolate(area.top_down(above), size=(5, 5), mode=mode, align_corners=align)
        later = area.top_down(F.interpolate(above, size=(5, 5), mode=mode, align_corners=align))
        torch.testing.assert_close(first, later)


@pytest.mark.parametrize("upsample", ["nearest", "bilinear"])
@pytest.mark.parametrize("size, strides", [(7, (1, 2, 2, 2)), (8, (2, 2, 2, 2)), (5, (1, 3, 1, 2))])
def test_odd_sizes_and_strides_never_go_below_one_pixel(upsample, size, strides):
    model = _tiny(strides=strides, upsample=upsample)
    states = model.stage_states(_x(size))
    assert all(s.shape[-1] >= 1 and s.shape[-2] >= 1 for s in states.values())
    assert states["IT"].shape[-2:] == (1, 1)
    assert torch.isfinite(model.forward_steps(_x(size))).all()


def test_more_steps_than_trained_reuse_last_statistics_and_warn_once():
    model = _tiny(norm="step_batch", num_steps=2)
    model(torch.randn(8, 1, 8, 8))  # fill the running statistics of both steps
    model.eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model.forward_steps(_x(), num_steps=5)
        first = len(caught)
        model.forward_steps(_x(), num_steps=5)
    assert first >= 1 and len(caught) == first, "each per-step norm warns on its first overrun"
    assert all("reuse the last step's statistics" in str(w.message) for w in caught)
    assert out.shape == (5, 2, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("norm", ["step_batch", "batch", "group", "none"])
def test_parameter_count_does_not_grow_with_steps(norm):
    counts = {t: count_parameters(_tiny(norm=norm, num_steps=t)) for t in (1, 3, 9)}
    assert len(set(counts.values())) == 1, counts


def test_interface_matches_resnet():
    model = _tiny("BT", norm="batch")  # one set of statistics, so no warning at 5 steps
    assert model.dynamics == ["recurrent"] * 4
    assert model.nfe() == {"nfe_forward": 0, "nfe_backward": 0}
    model.set_num_steps(5)
    assert model.forward_steps(_x()).shape == (5, 2, 5)
    calls = {name: 0 for name in AREAS}
    for name in AREAS:
        hook = lambda m, i, o, name=name: calls.__setitem__(name, calls[name] + 1)
        model.areas[name].output.register_forward_hook(hook)
    model(_x())
    assert calls == {name: 5 for name in AREAS}  # one call per area per step


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"connections": "LT"}, "unknown connections 'LT'; valid: B, BL, BT, BLT"),
        ({"norm": "layer"}, "unknown norm 'layer'; valid: batch"),
        ({"stem": "huge"}, "unknown stem 'huge'; valid: cifar"),
        ({"upsample": "cubic"}, "unknown upsample 'cubic'; valid: nearest, bilinear"),
        ({"widths": (4, 8)}, "widths must be 4 integers"),
        ({"strides": (1, 2, 0, 2)}, "strides must all be >= 1"),
        ({"strides": 2}, "strides must be a sequence"),
        ({"num_steps": 0}, "num_steps must be an integer >= 1"),
        ({"area_names": ("V1", "V1", "V4", "IT")}, "area_names must be distinct"),
        ({"in_channels": 0}, "in_channels must be an integer >= 1"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _tiny(**kwargs)


def test_bad_step_override_raises():
    with pytest.raises(ValueError, match="num_steps must be an integer >= 1, got -1"):
        _tiny()(_x(), num_steps=-1)
    with pytest.raises(ValueError, match="area_names has 3 entries but the model has 4 stages"):
        create_model("cornet_s", area_names=("V1", "V2", "IT"))


def test_named_cortex_models():
    assert {"cortexnet", "cortexnet_b", "cortexnet_bl", "cortexnet_bt", "cornet_s"} <= set(
        list_models()
    )
    assert create_model("cortexnet").connections == "BLT"
    assert create_model("cortexnet_b").connections == "B"


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (2, 1, 8, 8)])
def test_cornet_s_runs_on_cifar_and_digits_sizes(shape):
    torch.manual_seed(0)
    model = create_model("cornet_s", num_classes=10, in_channels=shape[1])
    assert isinstance(model, CORnetS)
    x = torch.randn(*shape)
    logits = model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    logits.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    states = model.stage_states(x)
    assert list(states) == AREAS
    assert [s.shape[0] for s in states.values()] == [1, 2, 4, 2]  # CORnet-S's steps per area
    assert states["IT"].shape[1:3] == (2, 512)
    assert model.forward_steps(x).shape == (2, 2, 10)  # the readout at each of IT's steps
