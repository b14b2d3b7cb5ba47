"""Reference group norm and instance norm (the twins of
:mod:`cnorm.functional.group_norm`), in float64 NumPy.

GroupNorm input (N, C, *spatial): the C channels are split into G groups of C/G
consecutive channels; statistics per (n, group) over (C/G) * prod(spatial) values;
weight / bias per channel. InstanceNorm is GroupNorm with G = C plus optional running
statistics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Tuple

import numpy as np

from .._twins import same_signature
from ..functional import groupnorm as F
from .batchnorm import Array, batch_norm_backward, channel_axes, f64, native_batch_norm, update_running

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = F.__all__  # the same names (and signatures: same_signature)


def grouped(x: Array, num_groups: int) -> Array:
    """x (N, C, *) viewed as (N, G, C/G * S): one row per (n, group)."""
    n, c = x.shape[0], x.shape[1]
    s = int(np.prod(x.shape[2:], dtype=np.int64))
    return x.reshape(n, num_groups, (c // num_groups) * s)


def channels_to_rows(v: ArrayLike, x_shape: Tuple[int, ...], num_groups: int) -> Array:
    """A per-channel vector (C,) broadcast to the (N, G, C/G * S) row view."""
    c = x_shape[1]
    s = int(np.prod(x_shape[2:], dtype=np.int64))
    return np.repeat(f64(v).reshape(num_groups, c // num_groups), s, axis=1)[None]


@same_signature(F.native_group_norm)
def native_group_norm(input, num_groups, weight, bias, eps):
    """``(y, mean, rstd)``, statistics of shape (N, num_groups); NaN for a group with no
    value."""
    x = f64(input)
    rows = grouped(x, num_groups)
    if rows.shape[2] == 0:
        nan = np.full(rows.shape[:2], np.nan)
        return np.zeros(x.shape), nan, nan.copy()
    mean = np.mean(rows, axis=2)
    var = np.mean((rows - mean[:, :, None]) ** 2, axis=2)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (rows - mean[:, :, None]) * rstd[:, :, None]
    if weight is not None:
        y = y * channels_to_rows(weight, x.shape, num_groups)
    if bias is not None:
        y = y + channels_to_rows(bias, x.shape, num_groups)
    return y.reshape(x.shape), mean, rstd


@same_signature(F.group_norm)
def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    return native_group_norm(input, num_groups, weight, bias, eps)[0]


@same_signature(F.group_norm_backward)
def group_norm_backward(grad_output, input, num_groups, mean, rstd, weight):
    """``(dx, dweight, dbias)``: per (n, group) row, with ``g = dy * weight``,
    ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``; ``dweight = sum dy * xhat`` and
    ``dbias = sum dy`` per channel (over N and the spatial dims)."""
    dy, x = f64(grad_output), f64(input)
    c = x.shape[1]
    if x.size == 0:
        return np.zeros(x.shape), np.zeros(c), np.zeros(c)
    axes = channel_axes(x)
    rows, drows = grouped(x, num_groups), grouped(dy, num_groups)
    rstd = f64(rstd).reshape(rows.shape[0], num_groups, 1)
    xhat = (rows - f64(mean).reshape(rstd.shape)) * rstd
    dweight = np.sum((drows * xhat).reshape(x.shape), axis=axes)
    dbias = np.sum(dy, axis=axes)
    gamma = np.ones(c) if weight is None else f64(weight)
    g = drows * channels_to_rows(gamma, x.shape, num_groups)
    dx = rstd * (g - np.mean(g, axis=2, keepdims=True) - xhat * np.mean(g * xhat, axis=2, keepdims=True))
    return dx.reshape(x.shape), dweight, dbias


# --------------------------------------------------------------------------- instance norm


@same_signature(F.native_instance_norm)
def native_instance_norm(input, weight, bias, running_mean, running_var, use_input_stats, momentum, eps):
    """``(y, save_mean, save_invstd)``. ``use_input_stats``: each (n, c) normalized with
    its own mean and biased variance, statistics (N, C); given running statistics updated
    in place as torch does, ``(1 - momentum) * running + momentum * mean_n(stat)`` with the
    instance means and UNBIASED variances (N = 0 makes them NaN; an empty spatial extent
    with N > 0 leaves them alone). Otherwise a batch-norm eval, statistics (C,)."""
    x = f64(input)
    if not use_input_stats:
        return native_batch_norm(x, weight, bias, running_mean, running_var, False, 0.0, eps)
    n, c = x.shape[0], x.shape[1]
    s = int(np.prod(x.shape[2:], dtype=np.int64))
    y, mean, rstd = native_group_norm(x, c, weight, bias, eps)
    if running_mean is not None and running_var is not None and c > 0 and (s > 0 or n == 0):
        if n:
            var = np.mean((x.reshape(n, c, s) - mean[:, :, None]) ** 2, axis=2)
            unbiased = var * s / (s - 1) if s > 1 else np.full_like(var, np.nan)
            batch_mean, batch_var = np.mean(mean, axis=0), np.mean(unbiased, axis=0)
        else:
            batch_mean = batch_var = np.full(c, np.nan)
        update_running(running_mean, running_var, batch_mean, batch_var, momentum)
    return y, mean, rstd


@same_signature(F.instance_norm)
def instance_norm(
    input,
    running_mean=None,
    running_var=None,
    weight=None,
    bias=None,
    use_input_stats=True,
    momentum=0.1,
    eps=1e-5,
):
    return native_instance_norm(
        input, weight, bias, running_mean, running_var, use_input_stats, momentum, eps
    )[0]


@same_signature(F.instance_norm_backward)
def instance_norm_backward(grad_output, input, weight, save_mean, save_invstd, use_input_stats):
    """``use_input_stats``: the group-norm backward with one group per channel; otherwise
    the running statistics were constants (the batch-norm eval backward)."""
    if use_input_stats:
        return group_norm_backward(grad_output, input, np.shape(input)[1], save_mean, save_invstd, weight)
    return batch_norm_backward(grad_output, input, weight, save_mean, save_invstd, False)
