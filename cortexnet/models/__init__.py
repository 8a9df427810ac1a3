"""Models: blocks, stems, stages of three dynamics, the ResNet builder and the named registry."""

from cortexnet.models.blocks import BLOCKS, SHORTCUTS
from cortexnet.models.cortex import CORnetS, CortexNet
from cortexnet.models.norm import NORMS
from cortexnet.models.registry import create_model, list_models, model_defaults, register_model
from cortexnet.models.resnet import ODEOptions, ResNet, count_parameters
from cortexnet.models.stages import (
    DYNAMICS,
    SOLVERS,
    FeedforwardStage,
    NFELimitError,
    ODEFunc,
    ODEStage,
    RecurrentStage,
    Stage,
)

__all__ = [
    "BLOCKS",
    "DYNAMICS",
    "NORMS",
    "SHORTCUTS",
    "SOLVERS",
    "CORnetS",
    "CortexNet",
    "FeedforwardStage",
    "NFELimitError",
    "ODEFunc",
    "ODEOptions",
    "ODEStage",
    "RecurrentStage",
    "ResNet",
    "Stage",
    "count_parameters",
    "create_model",
    "list_models",
    "model_defaults",
    "register_model",
]
