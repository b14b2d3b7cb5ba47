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

from . import functional, modules
from ._config import show_config
from ._memory import set_output_pool_bytes
from ._threads import MAX_THREADS, get_num_threads, openmp_enabled, set_num_threads
from .modules import *  # noqa: F403  (the layers, listed in modules.__all__)

__version__ = "0.1.0"

__all__ = [
    "MAX_THREADS",
    "functional",
    "get_num_threads",
    "openmp_enabled",
    "set_num_threads",
    "set_output_pool_bytes",
    "show_config",
] + modules.__all__
