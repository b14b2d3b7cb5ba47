"""cnorm: normalization layers for the CPU.

Cython kernels with OpenMP parallel loops under an API that behaves like ``torch.nn``,
on plain NumPy arrays (PyTorch is never needed at run time)::

    import numpy as np, cnorm
    bn = cnorm.BatchNorm2d(64)
    y = bn(np.random.rand(8, 64, 32, 32).astype(np.float32))
    dx = bn.backward(np.ones_like(y))

Layers, each importing only those below it: ``cnorm.modules`` (stateful layers) and
``cnorm.torch`` (torch.nn drop-ins) -> ``cnorm.functional`` (the torch.nn.functional-style
API) -> ``cnorm._ops`` (kernel calls, running statistics) -> ``cnorm._validate``
(argument checks), ``cnorm._threads`` (thread count, fork safety) and ``cnorm._kernels``
(Cython/OpenMP). ``cnorm.reference``: the float64 NumPy twin of ``cnorm.functional``;
``cnorm.benchmarks``: ``python -m cnorm bench``.
"""

from . import functional
from ._config import show_config
from ._threads import MAX_THREADS, get_num_threads, openmp_enabled, set_num_threads
from .modules import (
    AddLayerNorm,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    BatchNormReLU1d,
    BatchNormReLU2d,
    BatchNormReLU3d,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
    Module,
    RMSNorm,
)

__version__ = "0.1.0"

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "LayerNorm",
    "MAX_THREADS",
    "Module",
    "functional",
    "get_num_threads",
    "openmp_enabled",
    "set_num_threads",
    "show_config",
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
