"""Named models: the published ResNet families and their recurrent and ODE twins.

``create_model(name, **overrides)`` builds a registered model; any :class:`ResNet` argument can be
overridden (``num_classes``, ``in_channels``, ``norm``, ``num_steps``, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from cortexnet.models.resnet import ResNet

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DEFAULTS: dict[str, dict[str, Any]] = {}


def register_model(name: str, builder: Callable[..., nn.Module], **defaults: Any) -> None:
    """Register ``builder(**defaults, **overrides)`` under ``name``."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = builder
    _DEFAULTS[name] = defaults


def list_models() -> list[str]:
    """Names of all registered models, in registration order."""
    return list(_REGISTRY)


def model_defaults(name: str) -> dict[str, Any]:
    """The constructor arguments a registered model is built with (before overrides)."""
    _check_name(name)
    return dict(_DEFAULTS[name])


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
        **overrides: constructor arguments that replace the registered ones.

    Returns:
        The model, freshly initialized.

    Raises:
        ValueError: for an unknown name or a bad argument.
    """
    _check_name(name)
    kwargs = {**_DEFAULTS[name], **overrides}
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as err:  # an override the constructor does not take
        raise ValueError(f"bad argument for model {name!r}: {err}") from None


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(_REGISTRY)}")


# ImageNet family: torchvision's layout (7x7 stem and max-pool, projection shortcuts on shape
# changes, stride on the 3x3 of the bottleneck), so the parameter counts equal torchvision's.
_IMAGENET = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
for _depth, (_block, _blocks) in _IMAGENET.items():
    _scale = 4 if _block == "bottleneck" else 1
    register_model(
        f"resnet{_depth}",
        ResNet,
        blocks_per_stage=_blocks,
        block=_block,
        widths=tuple(w * _scale for w in (64, 128, 256, 512)),
        stem="imagenet",
        stem_width=64,
        shortcut="B",
        in_channels=3,
        num_classes=1000,
    )

# CIFAR family (He et al. 2015, section 4.2): 6n+2 layers, widths 16/32/64, option-A shortcuts.
# The recurrent twin shares one block per stage; its unroll plus the transition block gives each
# stage the same depth (and FLOPs) as the feedforward net. The ODE twin integrates with Euler
# steps of size 1/N, which is exactly a weight-tied ResNet of the same depth; pass
# ode={"solver": "dopri5"} for an adaptive solve.
for _depth in (20, 32, 44, 56, 110, 1202):
    _n = (_depth - 2) // 6
    _cifar = dict(
        blocks_per_stage=(_n, _n, _n),
        widths=(16, 32, 64),
        block="basic",
        stem="cifar",
        shortcut="A",
        in_channels=3,
        num_classes=10,
    )
    register_model(f"resnet{_depth}", ResNet, **_cifar)
    register_model(f"recurrent_resnet{_depth}", ResNet, dynamics="recurrent", **_cifar)
    register_model(f"ode_resnet{_depth}", ResNet, dynamics="ode", ode={"solver": "euler"}, **_cifar)

# Pre-activation bottleneck nets (He et al. 2016): 9n+2 layers, output widths 64/128/256.
for _depth in (164, 1001):
    _n = (_depth - 2) // 9
    register_model(
        f"preact_resnet{_depth}",
        ResNet,
        blocks_per_stage=(_n, _n, _n),
        widths=(64, 128, 256),
        block="preact_bottleneck",
        stem="cifar",
        stem_width=16,
        shortcut="B",
        in_channels=3,
        num_classes=10,
    )
