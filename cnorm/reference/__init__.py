"""Slow, obviously-correct float64 NumPy twins of :mod:`cnorm.functional`.

Same names, signatures and semantics (statistics returned, running statistics updated in
place, empty inputs) as the functional API, computed with plain ``np.mean`` / ``np.sum``
over axes in float64: the reference the kernels are tested against, and the "numpy"
column of the benchmarks. Clarity over speed; no argument checks beyond what the
arithmetic needs. Every returned array is a new float64 array (``weight``/``bias`` None
mean 1 / 0; their gradients are computed anyway).
"""

from . import batchnorm, groupnorm, layernorm
from .batchnorm import *  # noqa: F403
from .groupnorm import *  # noqa: F403
from .layernorm import *  # noqa: F403

__all__ = batchnorm.__all__ + layernorm.__all__ + groupnorm.__all__
