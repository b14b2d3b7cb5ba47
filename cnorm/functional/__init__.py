r"""Functional normalization on NumPy arrays, mirroring :mod:`torch.nn.functional`.

Every function validates its arguments (type, dtype, shape; :mod:`cnorm._validate`) and
hands C-contiguous arrays to the Cython kernels (through :mod:`cnorm._ops`), which
release the GIL and run in parallel with OpenMP. Inputs are never modified (running
statistics are, in place, as in torch); outputs are new C-contiguous arrays.

Statistics (the ``save_mean`` / ``save_invstd`` / ``mean`` / ``rstd`` returned by the
``native_*`` functions) are float64 whatever the input dtype: they are what the backward
functions need to reproduce every digit of ``x - mean`` in float32.

One file per family: :mod:`.batchnorm` (batch norm, fused batch norm + ReLU, the
synchronized batch-norm building blocks), :mod:`.layernorm` (layer norm, RMS norm, fused
add + layer norm), :mod:`.groupnorm` (group norm, instance norm); :mod:`.channels_last` has
batch norm, group norm and instance norm of channels-last ``(N, *spatial, C)`` arrays.
"""

from .._validate import Array, ShapeLike  # noqa: F401  (the type aliases of the signatures)
from . import batchnorm, channels_last, groupnorm, layernorm  # noqa: F401  (channels_last: by module)
from .batchnorm import *  # noqa: F403
from .groupnorm import *  # noqa: F403
from .layernorm import *  # noqa: F403

__all__ = batchnorm.__all__ + layernorm.__all__ + groupnorm.__all__
