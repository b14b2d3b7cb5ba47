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


# ---------------------------------------------------------------------------------------
# group norm, instance norm, RMS norm, fused add + layer norm, batch norm + ReLU
# ---------------------------------------------------------------------------------------
#
# GroupNorm input (N, C, *spatial): the C channels are split into G groups of C/G
# consecutive channels; statistics per (n, group) over (C/G) * prod(spatial) values;
# weight / bias per channel.  InstanceNorm is GroupNorm with G = C (statistics per
# (n, c) over the spatial values) plus optional running statistics.  RMSNorm divides the
# trailing normalized_shape dims by their root mean square (no centering, no bias).

__all__ += [
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


def _grouped(x, num_groups):
    """x (N, C, *) viewed as (N, G, C/G * S): one row per (n, group)."""
    N, C = x.shape[0], x.shape[1]
    return x.reshape(N, num_groups, (C // num_groups) * int(np.prod(x.shape[2:], dtype=np.int64)))


def _per_channel_to_rows(v, x_shape, num_groups):
    """A per-channel vector (C,) broadcast to the (N, G, C/G * S) row view."""
    C = x_shape[1]
    S = int(np.prod(x_shape[2:], dtype=np.int64))
    return np.repeat(_f64(v).reshape(num_groups, C // num_groups), S, axis=1)[None]


def group_norm_forward(x, num_groups, weight, bias, eps):
    """Group normalization forward.  Returns float64 ``(y, mean, rstd)`` with ``mean`` and
    ``rstd = 1/sqrt(biased_var + eps)`` of shape ``(N, num_groups)``.  Groups with no values
    get mean 0 and rstd ``1/sqrt(eps)``."""
    x = _f64(x)
    N = x.shape[0]
    rows = _grouped(x, num_groups)
    if rows.shape[2] == 0:
        mean = np.zeros((N, num_groups))
        var = np.zeros((N, num_groups))
    else:
        mean = np.mean(rows, axis=2)
        var = np.mean((rows - mean[:, :, None]) ** 2, axis=2)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (rows - mean[:, :, None]) * rstd[:, :, None]
    if weight is not None:
        y = y * _per_channel_to_rows(weight, x.shape, num_groups)
    if bias is not None:
        y = y + _per_channel_to_rows(bias, x.shape, num_groups)
    return y.reshape(x.shape), mean, rstd


def group_norm_backward(dy, x, num_groups, weight, eps):
    """Gradients ``(dx, dweight, dbias)`` of group norm, all float64 (statistics recomputed
    from ``x``).  Per (n, group) row of D values, with ``g = dy * weight``:
    ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``; ``dweight = sum dy * xhat`` and
    ``dbias = sum dy`` per channel (over N and the spatial dims)."""
    dy, x = _f64(dy), _f64(x)
    C = x.shape[1]
    axes = _bn_axes(x)
    rows = _grouped(x, num_groups)
    drows = _grouped(dy, num_groups)
    if x.size == 0:
        return np.zeros(x.shape), np.zeros(C), np.zeros(C)
    mean = np.mean(rows, axis=2, keepdims=True)
    var = np.mean((rows - mean) ** 2, axis=2, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = (rows - mean) * rstd
    dweight = np.sum((drows * xhat).reshape(x.shape), axis=axes)
    dbias = np.sum(dy, axis=axes)
    gamma = np.ones(C) if weight is None else _f64(weight)
    g = drows * _per_channel_to_rows(gamma, x.shape, num_groups)
    dx = rstd * (g - np.mean(g, axis=2, keepdims=True)
                 - xhat * np.mean(g * xhat, axis=2, keepdims=True))
    return dx.reshape(x.shape), dweight, dbias


def instance_norm_forward(x, running_mean, running_var, weight, bias, use_input_stats,
                          momentum, eps):
    """Instance normalization forward, torch semantics, on ``x`` of shape (N, C, *).

    ``use_input_stats``: normalize each (n, c) with its own mean and biased variance over
    the spatial values and, when running statistics are given, return them updated as
    torch does: ``(1 - momentum) * running + momentum * mean_n(stat)`` where ``stat`` is the
    per-instance mean and the per-instance UNBIASED variance (an empty batch N = 0 gives
    NaN running statistics like torch; an empty spatial extent with N > 0 leaves them
    unchanged).
    Otherwise normalize every instance with the running statistics (a batch-norm eval).
    Returns ``(y, new_running_mean, new_running_var)`` (float64, or None when not given).
    """
    x = _f64(x)
    new_rm, new_rv = _f64(running_mean), _f64(running_var)
    if not use_input_stats:
        y, _, _ = batch_norm_forward(x, weight, bias, new_rm, new_rv, False, 0.0, eps)
        return y, new_rm, new_rv
    N, C = x.shape[0], x.shape[1]
    S = int(np.prod(x.shape[2:], dtype=np.int64))
    y, mean, rstd = group_norm_forward(x, C, weight, bias, eps)
    if new_rm is not None and new_rv is not None and C > 0 and (S > 0 or N == 0):
        rows = x.reshape(N, C, S)
        var = np.mean((rows - mean[:, :, None]) ** 2, axis=2) if N else np.zeros((0, C))
        unbiased = var * S / (S - 1) if S > 1 else np.full_like(var, np.nan)
        with np.errstate(invalid="ignore"):
            batch_mean = np.mean(mean, axis=0) if N else np.full(C, np.nan)
            batch_var = np.mean(unbiased, axis=0) if N else np.full(C, np.nan)
        new_rm = (1.0 - momentum) * new_rm + momentum * batch_mean
        new_rv = (1.0 - momentum) * new_rv + momentum * batch_var
    return y, new_rm, new_rv


def instance_norm_backward(dy, x, weight, eps, running_mean=None, running_var=None,
                           use_input_stats=True):
    """Gradients ``(dx, dweight, dbias)`` of instance norm, all float64.

    ``use_input_stats``: group norm with one group per channel (statistics recomputed from
    ``x``).  Otherwise the running statistics were constants: the batch-norm eval
    backward ``dx = dy * weight / sqrt(running_var + eps)``."""
    if use_input_stats:
        x = _f64(x)
        return group_norm_backward(dy, x, x.shape[1], weight, eps)
    rm, rv = _f64(running_mean), _f64(running_var)
    return batch_norm_backward(dy, x, weight, rm, 1.0 / np.sqrt(rv + eps), False)


def _rms_eps(eps, dtype):
    return float(np.finfo(dtype).eps) if eps is None else float(eps)


def rms_norm_forward(x, normalized_shape, weight, eps):
    """RMS normalization over the trailing ``normalized_shape`` dims:
    ``y = x / sqrt(mean(x**2) + eps) * weight``.  ``eps=None`` means
    ``np.finfo(x.dtype).eps`` of the INPUT dtype (torch's default).  Returns float64
    ``(y, rrms)``, ``rrms = 1/sqrt(mean(x**2) + eps)`` of shape ``x.shape[:-k]``."""
    eps = _rms_eps(eps, np.asarray(x).dtype)
    x = _f64(x)
    axes = _ln_axes(x, normalized_shape)
    lead = x.shape[: x.ndim - len(axes)]
    if x.size == 0:
        return np.zeros(x.shape), np.zeros(lead)
    rrms = 1.0 / np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + eps)
    y = x * rrms
    if weight is not None:
        y = y * _f64(weight)
    return y, rrms.reshape(lead)


def rms_norm_backward(dy, x, normalized_shape, weight, eps):
    """Gradients ``(dx, dweight)`` of RMS norm, float64 (``eps=None`` as in the forward).
    Per row, with ``r = rrms``, ``xhat = x * r`` and ``g = dy * weight``:
    ``dx = r * (g - xhat * mean(g * xhat))``; ``dweight = sum_rows dy * xhat``."""
    eps = _rms_eps(eps, np.asarray(x).dtype)
    dy, x = _f64(dy), _f64(x)
    shape = _ln_shape(normalized_shape)
    axes = _ln_axes(x, shape)
    lead_axes = tuple(range(x.ndim - len(axes)))
    if x.size == 0:
        return np.zeros(x.shape), np.zeros(shape)
    gamma = np.ones(shape) if weight is None else _f64(weight)
    r = 1.0 / np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + eps)
    xhat = x * r
    dweight = np.sum(dy * xhat, axis=lead_axes)
    g = dy * gamma
    dx = r * (g - xhat * np.mean(g * xhat, axis=axes, keepdims=True))
    return dx, dweight


def add_layer_norm_forward(x, residual, normalized_shape, weight, bias, eps):
    """Fused residual add + layer norm (ONNX Runtime's SkipLayerNormalization).

    ``s = x + residual`` is formed IN THE INPUT DTYPE (it is an output of the fused op,
    stored in that dtype; a float32 sum is rounded once, as ``x + residual`` in torch),
    then ``y = layer_norm(s)`` in float64.  Returns ``(y, s, mean, rstd)``, float64."""
    x = np.asarray(x)
    residual = np.asarray(residual)
    s = _f64(x + residual)
    y, mean, rstd = layer_norm_forward(s, normalized_shape, weight, bias, eps)
    return y, s, mean, rstd


def add_layer_norm_backward(dy, dsum, s, normalized_shape, weight, eps):
    """Gradients ``(ds, dweight, dbias)`` of :func:`add_layer_norm_forward`, float64:
    ``ds`` = layer-norm input gradient at ``s`` plus ``dsum`` (the gradient reaching the
    sum output; None = 0).  ``ds`` is the gradient of BOTH ``x`` and ``residual``."""
    ds, dweight, dbias = layer_norm_backward(dy, s, normalized_shape, weight, eps)
    if dsum is not None:
        ds = ds + _f64(dsum)
    return ds, dweight, dbias


def batch_norm_relu_forward(x, weight, bias, running_mean, running_var, training, momentum,
                            eps):
    """``relu(batch_norm(x))``; same arguments and returned running statistics as
    :func:`batch_norm_forward`."""
    y, new_rm, new_rv = batch_norm_forward(x, weight, bias, running_mean, running_var,
                                           training, momentum, eps)
    return np.maximum(y, 0.0), new_rm, new_rv


def batch_norm_relu_backward(dy, x, weight, bias, mean, invstd, training, output=None):
    """Gradients ``(dx, dweight, dbias)`` of :func:`batch_norm_relu_forward`, float64:
    the batch-norm backward of ``dy * (y > 0)`` (the ReLU passes no gradient where its
    output is 0).  ``y`` is recomputed from ``x`` and the statistics, or taken from
    ``output`` when given (to share the mask of a float32 forward exactly)."""
    dy, x = _f64(dy), _f64(x)
    if output is None:
        nd = x.ndim
        mean, invstd = _f64(mean), _f64(invstd)
        y = (x - _channel_view(mean, nd)) * _channel_view(invstd, nd)
        if weight is not None:
            y = y * _channel_view(_f64(weight), nd)
        if bias is not None:
            y = y + _channel_view(_f64(bias), nd)
    else:
        y = _f64(output)
    return batch_norm_backward(dy * (y > 0), x, weight, mean, invstd, training)
