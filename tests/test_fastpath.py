"""The fast path: each setting keeps the model's results and its options are validated."""

import pytest
import torch

from cortexnet.models import ResNet
from cortexnet.train.fastpath import FastPath

torch.set_num_threads(2)


def _model(dynamics: str = "feedforward") -> ResNet:
    torch.manual_seed(0)
    return ResNet((2, 2), (8, 16), dynamics=dynamics, in_channels=3, num_classes=5)


def _grads(model, x, y, fast: FastPath) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = fast.apply_model(model, "cpu")
    with fast.autocast_context("cpu"):
        logits = model(fast.prepare_input(x))
        loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("dynamics", ["feedforward", "recurrent"])
def test_channels_last_keeps_outputs_and_gradients(dynamics):
    x, y = torch.randn(4, 3, 12, 12), torch.randint(0, 5, (4,))
    ref_out, ref_grads = _grads(_model(dynamics), x, y, FastPath())
    fast = FastPath(channels_last=True)
    out, grads = _grads(_model(dynamics), x, y, fast)
    conv = _model(dynamics)
    conv = fast.apply_model(conv, "cpu")
    assert conv.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.prepare_input(x).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-3, atol=1e-5, msg=name)


def test_bf16_autocast_runs_in_bfloat16_on_cpu():
    model = _model()
    with FastPath(autocast="bf16").autocast_context("cpu"):
        out = model(torch.randn(2, 3, 8, 8))
    assert out.dtype == torch.bfloat16
    with FastPath().autocast_context("cpu"):
        assert model(torch.randn(2, 3, 8, 8)).dtype == torch.float32


@pytest.mark.parametrize("opt", [torch.optim.SGD, torch.optim.AdamW, torch.optim.Adam])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_optimizer_kwargs_are_accepted(opt, device):
    model = _model()
    kwargs = FastPath().optimizer_kwargs(device, opt)
    assert kwargs == ({"fused": True} if device == "cuda" else {"foreach": True})
    if device == "cuda" and not torch.cuda.is_available():
        # The constructor checks fused parameters' device; build it only where one exists.
        pytest.skip("no CUDA device to build a fused optimizer on")
    optimizer = opt(model.to(device).parameters(), lr=0.01, **kwargs)
    model(torch.randn(2, 3, 8, 8, device=device)).sum().backward()
    optimizer.step()
    assert FastPath(fused_optimizer=False).optimizer_kwargs(device, opt) == {}


def test_foreach_sgd_matches_the_default_step():
    results = []
    for kwargs in ({}, FastPath().optimizer_kwargs("cpu")):
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, **kwargs)
        for _ in range(2):
            opt.zero_grad()
            model(torch.ones(2, 3, 8, 8)).square().mean().backward()
            opt.step()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(results[1], results[0])


def test_configure_backends_sets_cudnn_only_for_cuda():
    before = torch.backends.cudnn.benchmark
    FastPath(cudnn_benchmark=not before).configure_backends("cpu")
    assert torch.backends.cudnn.benchmark == before
    try:
        FastPath(cudnn_benchmark=True).configure_backends("cuda")
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = before


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(autocast="fp16"), "unknown autocast 'fp16'; valid: none, bf16"),
        (dict(compile_mode="fastest"), "unknown compile_mode 'fastest'; valid: default"),
        (dict(channels_last="yes"), "channels_last must be true or false"),
        (dict(compile=1), "compile must be true or false"),
    ],
)
def test_bad_settings_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FastPath(**kwargs)


# Compiling takes over a minute cold on two cores, so it runs only with: pytest -m slow
@pytest.mark.slow
def test_compiled_model_matches_eager(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    x, y = torch.randn(4, 3, 12, 12), torch.randint(0, 5, (4,))
    ref_out, ref_grads = _grads(_model(), x, y, FastPath())
    out, grads = _grads(_model(), x, y, FastPath(compile=True))
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    grads = {n.removeprefix("_orig_mod."): g for n, g in grads.items()}
    assert grads.keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-3, atol=1e-5, msg=name)
