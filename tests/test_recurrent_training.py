"""Progressive loss and truncated backpropagation of recurrent stages."""

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

from cortexnet.models import ResNet
from cortexnet.models.cortex import CortexNet
from cortexnet.train import recurrent
from cortexnet.train.config import ConfigError, validate
from cortexnet.train.loop import run
from cortexnet.train.recurrent import RecurrentTraining, training_loss

STEPS = 5


def _model(recall: bool = True, norm: str = "none", seed: int = 0) -> ResNet:
    torch.manual_seed(seed)
    # A feedforward first stage, then a recurrent one with a transition and STEPS steps.
    return ResNet(
        blocks_per_stage=(1, 2),
        widths=(4, 8),
        dynamics=("feedforward", "recurrent"),
        num_steps=(None, STEPS),
        norm=norm,
        in_channels=1,
        num_classes=3,
        recall=recall,
    )


def _batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 1, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g)


def _grads(model) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def _step(stage, h, h0, t):
    # One step of a recall stage written out: project [state, input], then the shared blocks.
    h = stage.recall(torch.cat([h, h0], 1))
    for block in stage.blocks:
        h = block(h, t)
    return h


def test_progressive_loss_reaches_every_parameter():
    model = _model(norm="step_batch")
    x, y = _batch()
    scheme = RecurrentTraining("progressive", 0.5)
    loss, logits = training_loss(model, x, lambda out: F.cross_entropy(out, y), scheme)
    loss.backward()
    assert logits.shape == (6, 3)
    assert torch.isfinite(loss)
    for name, grad in _grads(model).items():
        assert grad is not None and grad.abs().sum() > 0, name


def test_progressive_loss_with_alpha_zero_is_the_plain_loss():
    x, y = _batch()
    plain = _model()
    loss_plain = F.cross_entropy(plain(x), y)
    loss_plain.backward()
    prog = _model()
    loss, _ = training_loss(
        prog, x, lambda out: F.cross_entropy(out, y), RecurrentTraining("progressive", 0.0)
    )
    loss.backward()
    assert torch.equal(loss, loss_plain)
    for (name, a), b in zip(_grads(plain).items(), _grads(prog).values()):
        assert torch.allclose(a, b), name


@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_progressive_term_is_n_free_steps_then_k_steps_from_a_detached_state(alpha):
    model = _model()
    x, y = _batch()
    gen = torch.Generator().manual_seed(3)
    n, k = recurrent.progressive_steps(STEPS, torch.Generator().manual_seed(3))
    assert 0 <= n < STEPS and 1 <= k <= STEPS - n
    loss, _ = training_loss(
        model, x, lambda out: F.cross_entropy(out, y), RecurrentTraining("progressive", alpha), gen
    )

    # The same thing written out with the plain stage calls.
    stage = model.stages["stage2"]
    with torch.no_grad():
        h0 = stage.transition(model.stages["stage1"](model.stem(x)))
        h = h0
        for t in range(n):
            h = _step(stage, h, h0, t)
        for t in range(n, n + k):
            h = _step(stage, h, h0, t)
        prog = F.cross_entropy(model.forward_head(h), y)
        full = F.cross_entropy(model(x), y)
    assert torch.allclose(loss, (1 - alpha) * full + alpha * prog, atol=1e-6)


def test_progressive_term_does_not_learn_from_the_free_steps():
    # Without recall the progressive start state is the only path to the stem; detached, the
    # stem gets no gradient from the progressive term, but does from the full unroll.
    x, y = _batch()
    gen_seed = next(
        s
        for s in range(100)
        if recurrent.progressive_steps(STEPS, torch.Generator().manual_seed(s))[0] > 0
    )
    model = _model(recall=False)
    loss, _ = training_loss(
        model,
        x,
        lambda out: F.cross_entropy(out, y),
        RecurrentTraining("progressive", 1.0),
        torch.Generator().manual_seed(gen_seed),
    )
    loss.backward()
    assert model.stem.conv.weight.grad is None
    assert all(p.grad.abs().sum() > 0 for p in model.stages["stage2"].blocks.parameters())


def test_tbptt_cuts_the_gradient_to_the_stage_input():
    x, y = _batch()
    for tbptt, reaches in ((2, False), (STEPS, True)):
        model = _model(recall=False)
        loss, _ = training_loss(
            model, x, lambda out: F.cross_entropy(out, y), RecurrentTraining("last", tbptt=tbptt)
        )
        loss.backward()
        assert torch.equal(loss, F.cross_entropy(model(x), y))  # same forward value
        stem_grad = model.stem.conv.weight.grad
        assert (stem_grad is not None and stem_grad.abs().sum() > 0) == reaches, tbptt


def test_tbptt_of_one_step_equals_backprop_through_the_last_step_alone():
    x, y = _batch()
    model = _model()
    loss, _ = training_loss(
        model, x, lambda out: F.cross_entropy(out, y), RecurrentTraining("last", tbptt=1)
    )
    loss.backward()
    got = _grads(model)

    ref = _model()
    stage = ref.stages["stage2"]
    h0 = stage.transition(ref.stages["stage1"](ref.stem(x)))
    h_prev = stage.forward_states(ref.stages["stage1"](ref.stem(x)))[-2].detach()  # after T-1
    h = _step(stage, h_prev, h0, STEPS - 1)
    F.cross_entropy(ref.forward_head(h), y).backward()
    for (name, a), b in zip(_grads(ref).items(), got.values()):
        if a is None:
            assert b is None, name
        else:
            assert torch.allclose(a, b, atol=1e-6), name


@pytest.mark.parametrize(
    "model",
    [
        ResNet(blocks_per_stage=(1, 2), widths=(4, 8), in_channels=1, num_classes=3),
        CortexNet(widths=(4, 4, 4, 4), in_channels=1, num_classes=3, num_steps=2),
    ],
    ids=["feedforward", "cortex"],
)
@pytest.mark.parametrize("scheme", [RecurrentTraining("progressive"), RecurrentTraining(tbptt=2)])
def test_schemes_need_a_recurrent_last_stage(model, scheme):
    with pytest.raises(ValueError, match="trainer.(loss=progressive|tbptt).*recurrent"):
        recurrent.check_model(model, scheme)


def test_schemes_are_refused_under_data_parallel_training():
    with pytest.raises(NotImplementedError, match="torchrun"):
        recurrent.check_model(_model(), RecurrentTraining("progressive"), distributed=True)


def test_tbptt_without_recall_warns_that_earlier_layers_get_no_gradient():
    with pytest.warns(UserWarning, match="no gradient"):
        recurrent.check_model(_model(recall=False), RecurrentTraining(tbptt=2))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["trainer.loss=bogus"], "trainer.loss=.*progressive"),
        (["trainer.tbptt=0"], "trainer.tbptt"),
        (["trainer.tbptt=2", "trainer.loss=mean"], "trainer.tbptt.*loss=mean"),
        (["trainer.progressive_weight=1.5"], "trainer.progressive_weight"),
    ],
)
def test_bad_settings_name_the_key(compose_cfg, overrides, match):
    with pytest.raises(ConfigError, match=match):
        validate(compose_cfg(*overrides))


@pytest.mark.parametrize("overrides", [["trainer.loss=progressive"], ["trainer.tbptt=1"]])
def test_training_runs_with_each_scheme(compose_cfg, tmp_path, overrides):
    cfg = compose_cfg("model=recurrent", "model.recall=true", *TINY, *overrides)
    summary = run(cfg, tmp_path)
    assert 0.0 <= summary["final_acc"] <= 1.0
    assert summary["epochs"] == 2


def test_a_scheme_on_a_feedforward_model_fails_before_training(compose_cfg, tmp_path):
    cfg = compose_cfg("model=feedforward", *TINY, "trainer.loss=progressive")
    with pytest.raises(ValueError, match="trainer.loss=progressive"):
        run(cfg, tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()
