"""The fast path: memory format, compilation, mixed precision, fused optimizers, cuDNN tuning.

Each setting is independent and off or harmless by default, so a run is fast only when asked and
every speed-up can be measured on its own (``benchmarks/throughput.py``). The training loop calls,
in order::

    fast = FastPath(channels_last=True, autocast="bf16")
    fast.configure_backends(device)
    model = fast.apply_model(model, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, **fast.optimizer_kwargs(device))
    with fast.autocast_context(device):
        loss = criterion(model(fast.prepare_input(x)), y)

Known limits: ``torch.compile`` takes tens of seconds cold on a CPU (it writes its caches under
``$TMPDIR``) and recompiles when an ODE solver's step count or a recurrent stage's ``num_steps``
changes; bf16 autocast on a CPU runs, but is usually slower than float32 there.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

AUTOCAST = ("none", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _device_type(device: torch.device | str) -> str:
    return torch.device(device).type


@dataclass
class FastPath:
    """Speed settings of a training run, each a separate switch.

    Attributes:
        channels_last: store the model's 4-D weights and the inputs as NHWC, which the oneDNN
            (CPU) and cuDNN convolution kernels prefer.
        compile: wrap the model in ``torch.compile``.
        compile_mode: ``torch.compile`` mode: default, reduce-overhead, max-autotune or
            max-autotune-no-cudagraphs.
        autocast: ``none`` (float32) or ``bf16`` (bfloat16 autocast for forward and loss).
        fused_optimizer: ask for the fused optimizer kernel on CUDA, the foreach one elsewhere.
        cudnn_benchmark: let cuDNN time its convolution algorithms (CUDA only; input shapes
            must stay fixed for it to pay off).
    """

    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"
    autocast: str = "none"
    fused_optimizer: bool = True
    cudnn_benchmark: bool = True

    def __post_init__(self) -> None:
        for name in ("channels_last", "compile", "fused_optimizer", "cudnn_benchmark"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.autocast not in AUTOCAST:
            raise ValueError(f"unknown autocast {self.autocast!r}; valid: {', '.join(AUTOCAST)}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"unknown compile_mode {self.compile_mode!r}; valid: {', '.join(COMPILE_MODES)}"
            )

    def configure_backends(self, device: torch.device | str) -> None:
        """Set process-wide backend flags (cuDNN autotuning) for ``device``."""
        if _device_type(device) == "cuda":
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
            # TF32 matmuls keep float32 training at tensor-core speed on Ampere and later.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def apply_model(self, model: nn.Module, device: torch.device | str) -> nn.Module:
        """Move the model to ``device`` in the chosen memory format, compiled if asked.

        Returns:
            The model to call. With ``compile`` it is a compiled wrapper that shares parameters
            with ``model``; save and load the state dict of ``model`` itself.
        """
        model = model.to(device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.compile:
            log.info(
                "compiling the model (mode=%s); the first steps will be slow", self.compile_mode
            )
            model = torch.compile(model, mode=self.compile_mode)
        return model

    def prepare_input(self, x: Tensor) -> Tensor:
        """Put a 4-D input batch in the chosen memory format (other tensors pass unchanged)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast_context(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        """The mixed-precision context for forward pass and loss (a no-op for ``none``)."""
        if self.autocast == "none":
            return contextlib.nullcontext()
        kind = _device_type(device)
        if kind == "cpu":
            log.info("bf16 autocast on the CPU: supported, but usually slower than float32")
        return torch.autocast(device_type=kind, dtype=torch.bfloat16)

    def optimizer_kwargs(
        self, device: torch.device | str, optimizer: type[torch.optim.Optimizer] = torch.optim.SGD
    ) -> dict[str, Any]:
        """Keyword arguments that select the fastest implementation of ``optimizer``.

        ``fused=True`` on CUDA when the optimizer offers it, else ``foreach=True`` (one kernel
        per group of tensors rather than one per tensor); nothing when ``fused_optimizer`` is off
        or the optimizer takes neither.
        """
        if not self.fused_optimizer:
            return {}
        params = inspect.signature(optimizer.__init__).parameters
        if _device_type(device) == "cuda" and "fused" in params:
            return {"fused": True}
        if "foreach" in params:
            return {"foreach": True}
        return {}


__all__ = ["AUTOCAST", "COMPILE_MODES", "FastPath"]
