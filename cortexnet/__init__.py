"""cortexnet: feedforward, recurrent and neural-ODE ResNets, side by side."""

from cortexnet.models import ResNet, count_parameters, create_model, list_models

__all__ = ["ResNet", "count_parameters", "create_model", "list_models"]
__version__ = "0.1.0"
