"""Slow, obviously-correct NumPy reference implementations of the cnorm layers.

Everything is computed in float64 with plain ``np.mean`` / ``np.var`` / ``np.sum``
over axes.  This module is the reference the compiled kernels are tested
against, and the "numpy" column of the benchmarks.  Clarity over speed.

Conventions
-----------
* BatchNorm input has shape ``(N, C, *spatial)``; statistics are per channel
  ``C`` over the ``N * prod(spatial)`` values of that channel.
* LayerNorm normalizes over the trailing ``len(normalized_shape)`` dimensions.
* ``weight`` / ``bias`` may be ``None`` (meaning 1 / 0); gradients with respect
  to them are computed anyway (as if they were 1 / 0).
* All returned arrays are new float64 arrays.
"""

import numpy as np

__all__ = [
    "batch_norm_stats",
    "batch_norm_forward",
    "batch_norm_backward",
    "layer_norm_forward",
    "layer_norm_backward",
]


def _f64(a):
    return None if a is None else np.array(a, dtype=np.float64)


def _channel_view(v, ndim):
    """Reshape a per-channel vector (C,) to broadcast against (N, C, *spatial)."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _bn_axes(x):
    """Reduction axes of a (N, C, *spatial) array: every axis but the channel one."""
    return (0,) + tuple(range(2, x.ndim))


def batch_norm_stats(x):
    """Per-channel ``(mean, biased_var)`` of ``x`` of shape (N, C, *), as float64 (C,).

    A channel with no values (N * S == 0) gets mean 0 and variance 0.
    """
    x = _f64(x)
    C = x.shape[1]
    if x.size == 0:
        return np.zeros(C), np.zeros(C)
    axes = _bn_axes(x)
    mean = np.mean(x, axis=axes)
    var = np.mean((x - _channel_view(mean, x.ndim)) ** 2, axis=axes)
    return mean, var


def batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum, eps):
    """Batch normalization forward, torch semantics.

    Batch statistics are used when ``training`` is true or when no running
    statistics are given; otherwise the running statistics are used.
    Returns ``(y, new_running_mean, new_running_var)``: the running stats are
    updated (``(1 - momentum) * old + momentum * batch``, with the UNBIASED
    batch variance) only when training and given, and left unchanged when the
    batch holds no value per channel (N * S == 0).  They are returned as new
    float64 arrays (or None when not given); the inputs are never modified.
    """
    x = _f64(x)
    C = x.shape[1]
    M = x.size // C if C else int(np.prod((x.shape[0],) + x.shape[2:]))
    new_rm, new_rv = _f64(running_mean), _f64(running_var)

    if training or running_mean is None or running_var is None:
        if M == 1:
            raise ValueError("Expected more than 1 value per channel when training")
        mean, var = batch_norm_stats(x)
        if training and new_rm is not None and M > 0:
            unbiased_var = var * M / (M - 1)
            new_rm = (1.0 - momentum) * new_rm + momentum * mean
            new_rv = (1.0 - momentum) * new_rv + momentum * unbiased_var
    else:
        mean, var = new_rm, new_rv

    invstd = 1.0 / np.sqrt(var + eps)
    y = (x - _channel_view(mean, x.ndim)) * _channel_view(invstd, x.ndim)
    if weight is not None:
        y = y * _channel_view(_f64(weight), x.ndim)
    if bias is not None:
        y = y + _channel_view(_f64(bias), x.ndim)
    return y, new_rm, new_rv


def batch_norm_backward(dy, x, weight, mean, invstd, training):
    """Gradients ``(dx, dweight, dbias)`` of batch norm, all float64.

    ``mean`` / ``invstd`` are the per-channel statistics used by the forward.
    training=True: the statistics depended on ``x`` (full formula);
    training=False: they were constants, ``dx = dy * weight * invstd``.
    """
    dy, x = _f64(dy), _f64(x)
    nd = x.ndim
    C = x.shape[1]
    axes = _bn_axes(x)
    gamma = np.ones(C) if weight is None else _f64(weight)
    mean, invstd = _f64(mean), _f64(invstd)

    xhat = (x - _channel_view(mean, nd)) * _channel_view(invstd, nd)
    dbias = np.sum(dy, axis=axes)
    dweight = np.sum(dy * xhat, axis=axes)

    scale = _channel_view(gamma * invstd, nd)
    if not training:
        return dy * scale, dweight, dbias
    M = x.size // C if C else 0
    if M == 0:
        return np.zeros(x.shape), dweight, dbias
    dx = scale * (dy - _channel_view(dbias / M, nd) - xhat * _channel_view(dweight / M, nd))
    return dx, dweight, dbias


def _ln_shape(normalized_shape):
    if isinstance(normalized_shape, (int, np.integer)):
        return (int(normalized_shape),)
    return tuple(int(d) for d in normalized_shape)


def _ln_axes(x, normalized_shape):
    k = len(_ln_shape(normalized_shape))
    return tuple(range(x.ndim - k, x.ndim))


def layer_norm_forward(x, normalized_shape, weight, bias, eps):
    """Layer normalization forward over the trailing ``normalized_shape`` dims.

    Returns ``(y, mean, rstd)`` as float64; ``mean`` and ``rstd`` have shape
    ``x.shape[:x.ndim - len(normalized_shape)]``.
    """
    x = _f64(x)
    axes = _ln_axes(x, normalized_shape)
    lead = x.shape[: x.ndim - len(axes)]
    if x.size == 0:
        return np.zeros(x.shape), np.zeros(lead), np.zeros(lead)
    mean = np.mean(x, axis=axes, keepdims=True)
    var = np.mean((x - mean) ** 2, axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean) * rstd
    if weight is not None:
        y = y * _f64(weight)
    if bias is not None:
        y = y + _f64(bias)
    return y, mean.reshape(lead), rstd.reshape(lead)


def layer_norm_backward(dy, x, normalized_shape, weight, eps):
    """Gradients ``(dx, dweight, dbias)`` of layer norm, all float64.

    The row statistics are recomputed from ``x``; ``dweight`` / ``dbias`` have
    shape ``normalized_shape``.
    """
    dy, x = _f64(dy), _f64(x)
    shape = _ln_shape(normalized_shape)
    axes = _ln_axes(x, shape)
    lead_axes = tuple(range(x.ndim - len(axes)))
    if x.size == 0:
        return np.zeros(x.shape), np.zeros(shape), np.zeros(shape)
    gamma = np.ones(shape) if weight is None else _f64(weight)

    mean = np.mean(x, axis=axes, keepdims=True)
    var = np.mean((x - mean) ** 2, axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * rstd

    dweight = np.sum(dy * xhat, axis=lead_axes)
    dbias = np.sum(dy, axis=lead_axes)
    g = dy * gamma
    dx = rstd * (
        g - np.mean(g, axis=axes, keepdims=True) - xhat * np.mean(g * xhat, axis=axes, keepdims=True)
    )
    return dx, dweight, dbias
