"""Model profile: parameters, forward FLOPs and, for ODE stages, function evaluations."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def profile_model(
    model: nn.Module, input_size: Sequence[int], batch_size: int = 1, num_steps=None
) -> dict[str, float]:
    """Count parameters and the FLOPs of one forward pass.

    FLOPs are torch's count (a multiply-add is two FLOPs); ``macs`` is half of it, the unit that
    ResNet papers quote as "FLOPs". The pass runs in eval mode without gradients, on the model's
    device, and leaves the model's training mode as it was.

    Args:
        model: the network.
        input_size: (channels, height, width) of one input.
        batch_size: inputs per pass; FLOPs are reported per input.
        num_steps: passed to the model's forward when not None.

    Returns:
        ``params``, ``flops``, ``macs`` (per input), and ``nfe_forward`` when the model has ODE
        stages.
    """
    param = next(model.parameters())
    x = torch.zeros(batch_size, *input_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(x) if num_steps is None else model(x, num_steps=num_steps)
    finally:
        model.train(was_training)
    flops = counter.get_total_flops() / batch_size
    out = {
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "flops": flops,
        "macs": flops / 2,
    }
    if hasattr(model, "nfe") and any(d == "ode" for d in getattr(model, "dynamics", [])):
        out["nfe_forward"] = model.nfe()["nfe_forward"]
    return out
