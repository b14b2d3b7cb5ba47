"""The cnorm layers: stateful modules over :mod:`cnorm.functional`."""

from ._base import Module
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .fused import AddLayerNorm, BatchNormReLU1d, BatchNormReLU2d, BatchNormReLU3d
from .groupnorm import GroupNorm
from .instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from .layernorm import LayerNorm
from .rmsnorm import RMSNorm

# the layers that have a torch.nn class of the same name (cnorm.torch: a drop-in for each)
TORCH_NN_TWINS = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "LayerNorm",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "RMSNorm",
]

__all__ = [
    "Module",
    *TORCH_NN_TWINS,
    "AddLayerNorm",
    "BatchNormReLU1d",
    "BatchNormReLU2d",
    "BatchNormReLU3d",
]
