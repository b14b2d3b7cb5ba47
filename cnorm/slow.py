"""The float64 NumPy reference under its first names and signatures (kept for existing
code; new code uses :mod:`cnorm.reference`, whose functions have the names and
signatures of :mod:`cnorm.functional`).

Differences from :mod:`cnorm.reference`: forwards return the UPDATED running statistics
as new arrays (``(y, new_running_mean, new_running_var)``, inputs never modified)
instead of updating them in place; backwards recompute the statistics from ``x`` and
``eps`` instead of taking them; ``batch_norm_stats`` returns ``(mean, biased_var)``;
empty inputs give 0 statistics (group norm: ``rstd = 1/sqrt(eps)``) instead of NaN.
"""

from __future__ import annotations

import numpy as np

from . import reference as R
from .reference.batchnorm import f64

__all__ = [
    "batch_norm_stats",
    "batch_norm_forward",
    "batch_norm_backward",
    "layer_norm_forward",
    "layer_norm_backward",
    "group_norm_forward",
    "group_norm_backward",
    "instance_norm_forward",
    "instance_norm_backward",
    "rms_norm_forward",
    "rms_norm_backward",
    "add_layer_norm_forward",
    "add_layer_norm_backward",
    "batch_norm_relu_forward",
    "batch_norm_relu_backward",
]

batch_norm_backward = R.batch_norm_backward  # the same signature


def batch_norm_stats(x):
    """Per-channel ``(mean, biased_var)``; 0 and 0 for a channel with no value."""
    count, mean, m2 = R.batch_norm_stats(x)
    return mean, (m2 / count if count else m2)


def batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum, eps, relu=False):
    """``(y, new_running_mean, new_running_var)``: batch statistics when ``training`` or
    when no running statistics are given (updated only when training and given)."""
    new_rm, new_rv = f64(running_mean), f64(running_var)
    batch = training or new_rm is None or new_rv is None
    rm, rv = (new_rm, new_rv) if training or not batch else (None, None)
    y = R.native_batch_norm(x, weight, bias, rm, rv, batch, momentum, eps, relu=relu)[0]
    return y, new_rm, new_rv


def batch_norm_relu_forward(x, weight, bias, running_mean, running_var, training, momentum, eps):
    return batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum, eps, relu=True)


def batch_norm_relu_backward(dy, x, weight, bias, mean, invstd, training, output=None):
    """The batch-norm backward of ``dy * (y > 0)``; ``y`` recomputed from ``x`` and the
    statistics, or ``output`` when given (to share the mask of a float32 forward)."""
    if output is None:
        output = R.batch_norm_elemt(x, mean, invstd, weight, bias)
    return R.batch_norm_relu_backward(dy, x, weight, mean, invstd, training, output)


def _zero_stats(stats):
    return [np.zeros(np.shape(s)) for s in stats]


def layer_norm_forward(x, normalized_shape, weight, bias, eps):
    y, mean, rstd = R.native_layer_norm(x, normalized_shape, weight, bias, eps)
    if y.size == 0:
        mean, rstd = _zero_stats((mean, rstd))
    return y, mean, rstd


def layer_norm_backward(dy, x, normalized_shape, weight, eps):
    _, mean, rstd = R.native_layer_norm(x, normalized_shape, None, None, eps)
    return R.layer_norm_backward(dy, x, normalized_shape, mean, rstd, weight)


def group_norm_forward(x, num_groups, weight, bias, eps):
    y, mean, rstd = R.native_group_norm(x, num_groups, weight, bias, eps)
    if y.size == 0:
        mean = np.zeros(mean.shape)
        rstd = np.full(rstd.shape, 1.0 / np.sqrt(eps))
    return y, mean, rstd


def group_norm_backward(dy, x, num_groups, weight, eps):
    _, mean, rstd = R.native_group_norm(x, num_groups, None, None, eps)
    return R.group_norm_backward(dy, x, num_groups, mean, rstd, weight)


def instance_norm_forward(x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps):
    """``(y, new_running_mean, new_running_var)`` (see
    :func:`cnorm.reference.native_instance_norm`)."""
    new_rm, new_rv = f64(running_mean), f64(running_var)
    y = R.native_instance_norm(x, weight, bias, new_rm, new_rv, use_input_stats, momentum, eps)[0]
    return y, new_rm, new_rv


def instance_norm_backward(dy, x, weight, eps, running_mean=None, running_var=None, use_input_stats=True):
    if use_input_stats:
        return group_norm_backward(dy, x, np.shape(x)[1], weight, eps)
    invstd = 1.0 / np.sqrt(f64(running_var) + eps)
    return R.batch_norm_backward(dy, x, weight, running_mean, invstd, False)


def rms_norm_forward(x, normalized_shape, weight, eps):
    y, rrms = R.native_rms_norm(x, normalized_shape, weight, eps)
    if y.size == 0:
        (rrms,) = _zero_stats((rrms,))
    return y, rrms


def rms_norm_backward(dy, x, normalized_shape, weight, eps):
    _, rrms = R.native_rms_norm(x, normalized_shape, None, eps)
    return R.rms_norm_backward(dy, x, normalized_shape, rrms, weight)


def add_layer_norm_forward(x, residual, normalized_shape, weight, bias, eps):
    y, s, mean, rstd = R.native_add_layer_norm(x, residual, normalized_shape, weight, bias, eps)
    if y.size == 0:
        mean, rstd = _zero_stats((mean, rstd))
    return y, s, mean, rstd


def add_layer_norm_backward(dy, dsum, s, normalized_shape, weight, eps):
    _, mean, rstd = R.native_layer_norm(s, normalized_shape, None, None, eps)
    return R.add_layer_norm_backward(dy, dsum, s, normalized_shape, mean, rstd, weight)
