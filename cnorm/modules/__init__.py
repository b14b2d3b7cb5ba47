"""The cnorm layers: stateful modules over :mod:`cnorm.functional`."""

from ._base import Module
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .fused import AddLayerNorm, BatchNormReLU1d, BatchNormReLU2d, BatchNormReLU3d
from .groupnorm import GroupNorm
from .instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from .layernorm import LayerNorm
from .rmsnorm import RMSNorm

__all__ = [
    "Module",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "LayerNorm",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "RMSNorm",
    "AddLayerNorm",
    "BatchNormReLU1d",
    "BatchNormReLU2d",
    "BatchNormReLU3d",
]
