"""Training schemes for recurrent stages: the progressive loss and truncated backpropagation.

Both act on the last stage of a :class:`cortexnet.models.ResNet` when that stage is a
:class:`cortexnet.models.stages.RecurrentStage`; earlier stages run as usual.

- Progressive loss (Bansal et al. 2022, "End-to-end algorithm synthesis with recurrent networks"):
  ``loss = (1 - alpha) * L(full unroll) + alpha * L(progressive)``. The progressive output comes
  from n steps run without gradient (n uniform in [0, T - 1]), the state detached, then k steps
  with gradient (k uniform in [1, T - n]). The detached start teaches the block to improve any
  state it is handed rather than to count steps, which is what lets it run past T at test time.
- Truncated backpropagation through time (``tbptt=k``): the first T - k steps of the unroll run
  without autograd (nothing is stored for them), the state is detached, and only the last k steps
  carry gradient. With ``loss=last`` this is the same as detaching every k steps, because the
  only loss sits after the last window; it was chosen because it also saves the memory of the
  earlier windows. Gradient still reaches the stage input through recall in the last k steps;
  without recall, the stem and earlier stages get no gradient at all (warned).
"""

# axes: t step, b batch, c channels, h w space, k classes

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cortexnet.models.resnet import ResNet
from cortexnet.models.stages import RecurrentStage

SCHEMES_NEED = "a ResNet whose last stage has dynamics=recurrent"


@dataclass
class RecurrentTraining:
    """How the recurrent last stage is trained.

    Args:
        loss: ``last`` or ``progressive`` (``mean`` is the loop's own and is not handled here).
        progressive_weight: alpha, the weight of the progressive term.
        tbptt: gradient flows through only the last this many steps of the full unroll (None:
            through all of them).
    """

    loss: str = "last"
    progressive_weight: float = 0.5
    tbptt: int | None = None

    @property
    def active(self) -> bool:
        """Whether the plain forward pass is not enough."""
        return self.loss == "progressive" or self.tbptt is not None


def last_recurrent_stage(model: nn.Module, what: str) -> RecurrentStage:
    """The recurrent last stage of ``model``.

    Args:
        model: the model to train (a compiled wrapper is unwrapped).
        what: the setting that needs it, for the error message.

    Raises:
        ValueError: when the model is not a ResNet with a recurrent last stage.
    """
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    stage = list(model.stages.values())[-1] if isinstance(model, ResNet) else None
    if not isinstance(stage, RecurrentStage):
        raise ValueError(
            f"{what} needs {SCHEMES_NEED} (got {type(model).__name__}"
            + (f" with a {stage.dynamics} last stage" if stage is not None else "")
            + "); use model=recurrent or model=maze_recurrent, or trainer.loss=last and "
            "trainer.tbptt=null"
        )
    return stage


def check_model(model: nn.Module, scheme: RecurrentTraining, distributed: bool = False) -> None:
    """Fail early when the scheme does not fit the model, warn when it leaves parts untrained.

    Args:
        model: the model to train, before any data-parallel wrapper.
        scheme: the training scheme.
        distributed: whether training runs on several processes.

    Raises:
        ValueError: naming the trainer key and what the model must be.
        NotImplementedError: for a scheme under data-parallel training.
    """
    if not scheme.active:
        return
    what = "trainer.loss=progressive" if scheme.loss == "progressive" else "trainer.tbptt"
    stage = last_recurrent_stage(model, what)
    if distributed:
        # The pieces of the unroll call the stage directly, past DDP's forward, so gradients
        # would not be averaged over ranks.
        raise NotImplementedError(
            f"{what} is not supported under torchrun; train on one process or use "
            "trainer.loss=last with trainer.tbptt=null"
        )
    if hasattr(model, "_orig_mod"):
        warnings.warn(
            f"trainer.compile has no effect with {what}: the unroll is cut into pieces that run "
            "uncompiled",
            stacklevel=2,
        )
    if scheme.tbptt is not None and scheme.tbptt < stage.num_steps and stage.recall is None:
        warnings.warn(
            f"trainer.tbptt={scheme.tbptt} < {stage.num_steps} steps without recall: the stem "
            "and earlier stages receive no gradient (set model.recall=true)",
            stacklevel=2,
        )


def _stage_input(model: ResNet, x: Tensor) -> tuple[Tensor, RecurrentStage]:
    """Stem, every stage but the last, and the last stage's transition: its starting state."""
    stages = list(model.stages.values())
    h = model.stem(x)
    for stage in stages[:-1]:
        h = stage(h)
    last = stages[-1]
    if last.transition is not None:
        h = last.transition(h)
    return h, last


def _truncated(stage: RecurrentStage, h0: Tensor, num_steps: int, tbptt: int | None) -> Tensor:
    """The state after ``num_steps`` steps, with gradient through the last ``tbptt`` only."""
    if tbptt is None or tbptt >= num_steps:
        return stage.unroll(h0, h0, num_steps, keep_all=False)[-1]
    free = num_steps - tbptt
    with torch.no_grad():
        h = stage.unroll(h0, h0, free, keep_all=False)[-1]
    return stage.unroll(h.detach(), h0, tbptt, start=free, keep_all=False)[-1]


def progressive_steps(num_steps: int, generator: torch.Generator | None = None) -> tuple[int, int]:
    """Draw (n, k): n steps without gradient, uniform in [0, T - 1], then k uniform in [1, T - n].

    Args:
        num_steps: T, the trained unroll length.
        generator: torch random generator (None: the global one, which checkpoints save).
    """
    n = int(torch.randint(0, num_steps, (), generator=generator))
    k = int(torch.randint(1, num_steps - n + 1, (), generator=generator))
    return n, k


def training_loss(
    model: nn.Module,
    x: Tensor,
    loss_fn,
    scheme: RecurrentTraining,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """The training loss of a model with a recurrent last stage under ``scheme``.

    Args:
        model: a ResNet whose last stage is recurrent (a compiled wrapper is unwrapped and
            run uncompiled, since the unroll is cut into pieces here).
        x: input batch.
        loss_fn: ``loss_fn(logits) -> scalar``, the task's loss of one readout.
        scheme: loss, progressive weight and truncation.
        generator: random generator for the progressive (n, k) draw.

    Returns:
        The loss, and the logits of the full unroll's last step (for training accuracy).

    Raises:
        ValueError: when the model does not have a recurrent last stage.
    """
    what = "trainer.loss=progressive" if scheme.loss == "progressive" else "trainer.tbptt"
    stage = last_recurrent_stage(model, what)
    model = getattr(model, "_orig_mod", model)
    h0, _ = _stage_input(model, x)
    steps = stage.num_steps
    alpha = scheme.progressive_weight if scheme.loss == "progressive" else 0.0

    # With alpha = 1 the full unroll only reports training accuracy, so it needs no graph.
    with torch.set_grad_enabled(torch.is_grad_enabled() and alpha < 1):
        logits = model.forward_head(_truncated(stage, h0, steps, scheme.tbptt))
    if alpha == 0:
        return loss_fn(logits), logits

    n, k = progressive_steps(steps, generator)
    h = h0
    if n > 0:
        with torch.no_grad():
            h = stage.unroll(h0, h0, n, keep_all=False)[-1]
        h = h.detach()  # the progressive term must not learn from the steps before n
    prog = model.forward_head(stage.unroll(h, h0, k, start=n, keep_all=False)[-1])
    if alpha == 1:
        return loss_fn(prog), logits
    return (1 - alpha) * loss_fn(logits) + alpha * loss_fn(prog), logits


def trained_steps(model: nn.Module) -> int | None:
    """Steps the model runs by default: its last stage's, or a cortex model's; None if unknown."""
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, ResNet):
        return list(model.stages.values())[-1].num_steps
    steps = getattr(model, "num_steps", None)
    return steps if isinstance(steps, int) else None


__all__ = [
    "RecurrentTraining",
    "check_model",
    "last_recurrent_stage",
    "progressive_steps",
    "trained_steps",
    "training_loss",
]
