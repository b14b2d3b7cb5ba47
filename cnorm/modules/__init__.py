"""The cnorm layers: stateful modules over :mod:`cnorm.functional`."""
from ._base import Module
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .layernorm import LayerNorm

__all__ = ["Module", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm"]
