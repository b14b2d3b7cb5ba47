"""cnorm: normalization layers for the CPU.

Cython kernels with OpenMP parallel loops under an API that behaves like ``torch.nn``,
on plain NumPy arrays (PyTorch is never needed at run time)::

    import numpy as np, cnorm
    bn = cnorm.BatchNorm2d(64)
    y = bn(np.random.rand(8, 64, 32, 32).astype(np.float32))
    dx = bn.backward(np.ones_like(y))

Layout: ``cnorm._kernels`` (Cython/OpenMP kernels), ``cnorm.functional`` (validation and
the torch.nn.functional-style API), ``cnorm.modules`` (stateful layers), ``cnorm.slow``
(the NumPy float64 reference), ``cnorm.benchmarks`` (``python -m cnorm bench``).
"""
from . import functional
from ._kernels.openmp import get_num_threads, openmp_enabled, set_num_threads
from .modules import BatchNorm1d, BatchNorm2d, BatchNorm3d, LayerNorm, Module
from .modules import (AddLayerNorm, BatchNormReLU1d, BatchNormReLU2d, BatchNormReLU3d,
                      GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, RMSNorm)

__version__ = "0.1.0"

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "LayerNorm",
    "Module",
    "functional",
    "get_num_threads",
    "openmp_enabled",
    "set_num_threads",
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
