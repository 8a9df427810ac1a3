"""Activation checkpointing: same results as plain backprop, and memory that really shrinks."""

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from cortexnet.models import ResNet
from cortexnet.models.blocks import BasicBlock
from cortexnet.models.stages import FeedforwardStage, RecurrentStage

torch.set_num_threads(2)


def _twins(dynamics: str, norm: str, every: int = 2) -> tuple[ResNet, ResNet]:
    torch.manual_seed(0)
    kw = dict(blocks_per_stage=(5, 3), widths=(8, 12), dynamics=dynamics, in_channels=1, norm=norm)
    plain, ckpt = ResNet(**kw), ResNet(checkpoint_every=every, **kw)
    ckpt.load_state_dict(plain.state_dict())
    return plain, ckpt


def _train_step(model: ResNet, x: torch.Tensor, y: torch.Tensor) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("dynamics", ["feedforward", "recurrent"])
@pytest.mark.parametrize("norm", ["batch", "step_batch"])
def test_recompute_does_not_touch_batch_norm_statistics(dynamics, norm):
    plain, ckpt = _twins(dynamics, norm)
    x, y = torch.randn(4, 1, 6, 6), torch.randint(0, 10, (4,))
    for model in (plain, ckpt):
        _train_step(model, x, y)
    buffers = dict(plain.named_buffers())
    assert any("running_mean" in n for n in buffers)
    for name, value in ckpt.named_buffers():
        assert torch.equal(value, buffers[name]), name  # bit for bit, counts included
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(q, p, msg=name)


@pytest.mark.parametrize("dynamics", ["feedforward", "recurrent"])
def test_checkpointed_states_and_gradients_match(dynamics):
    plain, ckpt = _twins(dynamics, "batch", every=3)
    x = torch.randn(4, 1, 6, 6)
    for model in (plain, ckpt):
        model.stage_states(x)["stage1"].square().mean().backward()
    torch.testing.assert_close(ckpt.stage_states(x)["stage1"], plain.stage_states(x)["stage1"])
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        if p.grad is not None or q.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_checkpointing_works_on_an_input_without_grad():
    # A stage used on its own: the input needs no grad but the shared weights do.
    torch.manual_seed(0)
    stage = RecurrentStage(None, [BasicBlock(4, 4)], num_steps=6, checkpoint_every=2)
    stage(torch.randn(2, 4, 5, 5)).sum().backward()
    assert all(p.grad is not None for p in stage.parameters())


def _saved_bytes(fn) -> int:
    """Bytes of distinct storages that autograd saves for backward while ``fn`` runs."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def test_plain_forward_keeps_only_the_last_state():
    torch.manual_seed(0)
    stage = RecurrentStage(None, [BasicBlock(4, 4)], num_steps=16, checkpoint_every=4)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = stage(x)
    # Not a view into a stack of all 16 states, which would keep them all alive.
    assert out.untyped_storage().nbytes() == out.numel() * out.element_size()
    stored_bytes, _ = _saved_bytes(lambda: stage(x))
    stage.store_last_segment = False
    ckpt_bytes, _ = _saved_bytes(lambda: stage(x))
    stage.checkpoint_every = 0
    plain_bytes, _ = _saved_bytes(lambda: stage(x))
    segment_bytes, _ = _saved_bytes(lambda: stage(x, 4))
    state = x.numel() * x.element_size()
    assert ckpt_bytes <= 5 * state  # the input and the 4 segment boundaries
    assert ckpt_bytes < plain_bytes / 10
    # Keeping the last segment adds what plain backprop keeps for its 4 steps, nothing more.
    assert ckpt_bytes < stored_bytes <= ckpt_bytes + segment_bytes


def _block_calls(block, run) -> tuple[int, int]:
    """Calls of ``block`` during ``run()``'s forward pass and during its backward pass."""
    calls = []
    hook = block.register_forward_pre_hook(lambda *_: calls.append(1))
    out = run()
    forward_calls = len(calls)
    out.sum().backward()
    hook.remove()
    return forward_calls, len(calls) - forward_calls


def _recomputed_steps(stage, num_steps: int) -> int:
    """Steps that checkpointing recomputed in backward."""
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    forward_calls, recomputed = _block_calls(stage.blocks[0], lambda: stage(x))
    assert forward_calls == num_steps
    return recomputed


def test_the_last_segment_is_stored_and_a_short_one_comes_first():
    torch.manual_seed(0)
    stage = RecurrentStage(None, [BasicBlock(4, 4)], num_steps=10, checkpoint_every=4)
    # Segments of 2, 4 and 4 steps: the last (4 steps) is kept, the first 6 are recomputed.
    assert _recomputed_steps(stage, 10) == 6
    stage.store_last_segment = False
    assert _recomputed_steps(stage, 10) == 10


def test_a_network_stores_the_last_segment_of_its_final_stage_only():
    plain, ckpt = _twins("recurrent", "batch", every=2)
    flags = [stage.store_last_segment for stage in ckpt.stages.values()]
    assert flags == [False] * (len(flags) - 1) + [True]
    # An earlier stage's kept activations would stay alive through every later stage.
    stage1 = ckpt.stages["stage1"]
    x = torch.randn(4, 1, 6, 6)
    forward_calls, recomputed = _block_calls(stage1.blocks[0], lambda: ckpt(x))
    steps = stage1.num_steps
    assert forward_calls + recomputed == 2 * steps  # every step of stage1 recomputed once


def test_feedforward_checkpoint_segment_longer_than_stage():
    torch.manual_seed(0)
    blocks = [BasicBlock(4, 4) for _ in range(3)]
    stage = FeedforwardStage(None, blocks, checkpoint_every=8)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    out = stage(x)
    stage.checkpoint_every = 0
    torch.testing.assert_close(out, stage(x))
