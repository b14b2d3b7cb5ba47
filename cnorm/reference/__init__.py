"""Slow, obviously-correct float64 NumPy twins of :mod:`cnorm.functional`.

Same names, signatures and semantics (statistics returned, running statistics updated in
place, empty inputs) as the functional API, computed with plain ``np.mean`` / ``np.sum``
over axes in float64: the reference the kernels are tested against, and the "numpy"
column of the benchmarks. Clarity over speed; no argument checks beyond what the
arithmetic needs. Every returned array is a new float64 array (``weight``/``bias`` None
mean 1 / 0; their gradients are computed anyway).
"""

from .. import functional
from .batchnorm import (  # noqa: F401  (re-exported: __all__ below)
    batch_norm,
    batch_norm_backward,
    batch_norm_backward_elemt,
    batch_norm_backward_reduce,
    batch_norm_elemt,
    batch_norm_relu,
    batch_norm_relu_backward,
    batch_norm_stats,
    merge_stats,
    native_batch_norm,
    native_batch_norm_relu,
)
from .groupnorm import (  # noqa: F401  (re-exported: __all__ below)
    group_norm,
    group_norm_backward,
    instance_norm,
    instance_norm_backward,
    native_group_norm,
    native_instance_norm,
)
from .layernorm import (  # noqa: F401  (re-exported: __all__ below)
    add_layer_norm,
    add_layer_norm_backward,
    layer_norm,
    layer_norm_backward,
    native_add_layer_norm,
    native_layer_norm,
    native_rms_norm,
    rms_norm,
    rms_norm_backward,
)

__all__ = functional.__all__  # the same names (and signatures: cnorm._twins.same_signature)
