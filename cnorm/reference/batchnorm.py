"""Reference batch norm, fused batch norm + ReLU and synchronized batch-norm blocks
(the twins of :mod:`cnorm.functional.batch_norm`), in float64 NumPy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple, overload

import numpy as np

from .._twins import same_signature
from ..functional import batchnorm as F

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = F.__all__  # the same names (and signatures: same_signature)

Array = np.ndarray


@overload
def f64(a: None) -> None: ...
@overload
def f64(a: ArrayLike) -> Array: ...
def f64(a: Optional[ArrayLike]) -> Optional[Array]:
    """A new float64 array (None stays None)."""
    return None if a is None else np.array(a, dtype=np.float64)


def channel_view(v: Array, ndim: int) -> Array:
    """A per-channel vector (C,) shaped to broadcast against (N, C, *spatial)."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def channel_axes(x: Array) -> Tuple[int, ...]:
    """The reduction axes of (N, C, *spatial): every axis but the channel one."""
    return (0,) + tuple(range(2, x.ndim))


def affine(xhat: Array, weight: Optional[Array], bias: Optional[Array], ndim: int) -> Array:
    """xhat * weight + bias per channel (None: 1 and 0)."""
    y = xhat
    if weight is not None:
        y = y * channel_view(f64(weight), ndim)
    if bias is not None:
        y = y + channel_view(f64(bias), ndim)
    return y


def update_running(
    running_mean: Array, running_var: Array, mean: Array, unbiased_var: Array, momentum: float
) -> None:
    """``running = (1 - momentum) * running + momentum * batch``, in place."""
    np.copyto(running_mean, (1.0 - momentum) * f64(running_mean) + momentum * mean, casting="same_kind")
    np.copyto(running_var, (1.0 - momentum) * f64(running_var) + momentum * unbiased_var, casting="same_kind")


def _mean_var(x: Array) -> Tuple[Array, Array]:
    """Per-channel mean and biased variance; 0 and 0 for a channel with no value."""
    c = x.shape[1]
    if x.size == 0:
        return np.zeros(c), np.zeros(c)
    axes = channel_axes(x)
    mean = np.mean(x, axis=axes)
    var = np.mean((x - channel_view(mean, x.ndim)) ** 2, axis=axes)
    return mean, var


@same_signature(F.native_batch_norm)
def native_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, *, relu=False):
    """``(y, save_mean, save_invstd)``; with ``training`` the batch statistics, and the
    running statistics (when both are given and the batch is not empty) updated in place
    with the UNBIASED batch variance; otherwise the running statistics."""
    x = f64(input)
    c = x.shape[1]
    m = x.size // c if c else int(np.prod((x.shape[0],) + x.shape[2:]))
    if training:
        if m == 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {x.shape}"
            )
        mean, var = _mean_var(x)
        if running_mean is not None and running_var is not None and m > 0:
            update_running(running_mean, running_var, mean, var * m / (m - 1), momentum)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var must be given when training=False")
        mean, var = f64(running_mean), f64(running_var)
    invstd = 1.0 / np.sqrt(var + eps)
    y = affine((x - channel_view(mean, x.ndim)) * channel_view(invstd, x.ndim), weight, bias, x.ndim)
    return (np.maximum(y, 0.0) if relu else y), mean, invstd


@same_signature(F.batch_norm)
def batch_norm(
    input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5
):
    return native_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps)[0]


@same_signature(F.batch_norm_backward)
def batch_norm_backward(grad_output, input, weight, save_mean, save_invstd, training):
    """``(dx, dweight, dbias)``: with ``training`` the statistics depended on ``x`` (the
    full formula), otherwise they were constants, ``dx = dy * weight * invstd``."""
    dy, x = f64(grad_output), f64(input)
    nd, c = x.ndim, x.shape[1]
    axes = channel_axes(x)
    gamma = np.ones(c) if weight is None else f64(weight)
    mean, invstd = f64(save_mean), f64(save_invstd)
    xhat = (x - channel_view(mean, nd)) * channel_view(invstd, nd)
    dbias = np.sum(dy, axis=axes)
    dweight = np.sum(dy * xhat, axis=axes)
    scale = channel_view(gamma * invstd, nd)
    if not training:
        return dy * scale, dweight, dbias
    m = x.size // c if c else 0
    if m == 0:
        return np.zeros(x.shape), dweight, dbias
    dx = scale * (dy - channel_view(dbias / m, nd) - xhat * channel_view(dweight / m, nd))
    return dx, dweight, dbias


# ------------------------------------------------------------ fused batch norm + ReLU


@same_signature(F.native_batch_norm_relu)
def native_batch_norm_relu(input, weight, bias, running_mean, running_var, training, momentum, eps):
    return native_batch_norm(
        input, weight, bias, running_mean, running_var, training, momentum, eps, relu=True
    )


@same_signature(F.batch_norm_relu)
def batch_norm_relu(
    input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5
):
    return native_batch_norm(
        input, weight, bias, running_mean, running_var, training, momentum, eps, relu=True
    )[0]


@same_signature(F.batch_norm_relu_backward)
def batch_norm_relu_backward(grad_output, input, weight, save_mean, save_invstd, training, output):
    """The batch-norm backward of ``dy * (output > 0)``: the ReLU passes no gradient
    where its output is 0."""
    return batch_norm_backward(
        f64(grad_output) * (f64(output) > 0), input, weight, save_mean, save_invstd, training
    )


# --------------------------------------------------------- synchronized batch norm blocks


@same_signature(F.batch_norm_stats)
def batch_norm_stats(input):
    """``(count, mean, m2)`` per channel: m2 = sum of squared deviations."""
    x = f64(input)
    count = int(np.prod((x.shape[0],) + x.shape[2:]))
    mean, var = _mean_var(x)
    return count, mean, var * count


@same_signature(F.merge_stats)
def merge_stats(counts, means, m2s):
    """The statistics of the union of shards: the total count, the count-weighted mean,
    and m2 = sum of the shards' m2 plus their spread around that mean."""
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)
    means = np.asarray(means, dtype=np.float64).reshape(len(counts), -1)
    m2s = np.asarray(m2s, dtype=np.float64).reshape(len(counts), -1)
    total = counts.sum()
    if total == 0:
        return 0, np.zeros(means.shape[1]), np.zeros(means.shape[1])
    mean = (counts[:, None] * means).sum(axis=0) / total
    m2 = (m2s + counts[:, None] * (means - mean) ** 2).sum(axis=0)
    return int(total), mean, m2


@same_signature(F.batch_norm_elemt)
def batch_norm_elemt(input, mean, invstd, weight=None, bias=None):
    x = f64(input)
    return affine(
        (x - channel_view(f64(mean), x.ndim)) * channel_view(f64(invstd), x.ndim), weight, bias, x.ndim
    )


@same_signature(F.batch_norm_backward_reduce)
def batch_norm_backward_reduce(grad_output, input, mean, invstd):
    """``(sum dy, sum dy * xhat)`` per channel."""
    dy, x = f64(grad_output), f64(input)
    xhat = (x - channel_view(f64(mean), x.ndim)) * channel_view(f64(invstd), x.ndim)
    axes = channel_axes(x)
    return np.sum(dy, axis=axes), np.sum(dy * xhat, axis=axes)


@same_signature(F.batch_norm_backward_elemt)
def batch_norm_backward_elemt(grad_output, input, mean, invstd, weight, sum_dy, sum_dy_xhat, count):
    """``dx = weight * invstd * (dy - sum_dy / count - xhat * sum_dy_xhat / count)``."""
    dy, x = f64(grad_output), f64(input)
    nd, c = x.ndim, x.shape[1]
    invstd = f64(invstd)
    gamma = np.ones(c) if weight is None else f64(weight)
    xhat = (x - channel_view(f64(mean), nd)) * channel_view(invstd, nd)
    return channel_view(gamma * invstd, nd) * (
        dy - channel_view(f64(sum_dy) / count, nd) - xhat * channel_view(f64(sum_dy_xhat) / count, nd)
    )
