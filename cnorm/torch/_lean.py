"""The eager drop-in's norm specs: straight to :mod:`cnorm._ops`, no validation.

The drop-in layers (:mod:`cnorm.torch._dropin`) check every argument before they call in
(plain C-contiguous CPU tensors of one float dtype, or a half input with float32
parameters; the shapes of the parameters; eps, momentum, num_groups), so these specs skip
:mod:`cnorm.functional`'s checks, which cost more than a small kernel (a LayerNorm of one
token: ~4 µs of checks around a ~2 µs kernel call). Each is a pair::

    forward(x, weight, bias, args) -> (y, stats)
    backward(dy, x, weight, stats) -> (dx, dweight, dbias)

over NumPy views (bfloat16 as ml_dtypes'). ``dy`` is what autograd passes: shaped and
typed like the output, in any memory layout (:func:`_dense` makes it C-contiguous in the
layout the kernel reads). The ``torch.ops.cnorm`` custom ops, which any caller can reach
with any tensors, run the checked specs over :mod:`cnorm.functional` instead
(:mod:`cnorm.torch._autograd`).
"""

from __future__ import annotations

import math

import numpy as np

from .. import _ops
from ..functional import channels_last as CL

__all__ = [
    "batch_norm_forward",
    "batch_norm_backward",
    "batch_norm_channels_last_forward",
    "batch_norm_channels_last_backward",
    "layer_norm_forward",
    "layer_norm_backward",
    "rms_norm_forward",
    "rms_norm_backward",
    "group_norm_forward",
    "group_norm_backward",
    "instance_norm_forward",
    "instance_norm_backward",
]

_prod = math.prod


def _dense(a):
    """``a`` C-contiguous (a copy only when autograd passed a strided gradient)."""
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _ncs(x):
    """(N, C, S) of an (N, C, *spatial) array."""
    shape = x.shape
    return shape[0], shape[1], _prod(shape[2:])


def _rows(x, normalized_shape):
    """(M rows, D values a row) over the trailing ``normalized_shape`` dims."""
    d = _prod(normalized_shape)
    return (x.size // d if d else _prod(x.shape[: x.ndim - len(normalized_shape)])), d


def _last(a):
    """(N, C, *S) -> the (N, *S, C) view (np.moveaxis, without its Python cost)."""
    return a.transpose((0, *range(2, a.ndim), 1))


def _first(a):
    """(N, *S, C) -> the (N, C, *S) view."""
    return a.transpose((0, a.ndim - 1, *range(1, a.ndim - 1)))


# ------------------------------------------------------------------------------ batch norm
# args: (running_mean, running_var, training, momentum, eps); the running statistics are
# NumPy views of the buffers (updated in place when training) or None


def _batch_norm(x, n, c, s, weight, bias, args):
    running_mean, running_var, training, momentum, eps = args
    if training:
        return _ops.batch_norm_train(x, n, c, s, weight, bias, running_mean, running_var, momentum, eps)
    return _ops.batch_norm_eval(x, n, c, s, weight, bias, running_mean, running_var, eps)


def batch_norm_forward(x, weight, bias, args):
    y, mean, invstd = _batch_norm(x, *_ncs(x), weight, bias, args)
    return y, (mean, invstd, args[2])


def batch_norm_backward(dy, x, weight, stats):
    mean, invstd, training = stats
    return _ops.batch_norm_backward(_dense(dy), x, *_ncs(x), weight, mean, invstd, training)


def batch_norm_channels_last_forward(x, weight, bias, args):
    """x: a channels_last (N, C, *S) view, i.e. the (N*S, C) problem of BatchNorm1d."""
    last = _last(x)
    m, c = _prod(last.shape[:-1]), last.shape[-1]
    y, mean, invstd = _batch_norm(last.reshape(m, c), m, c, 1, weight, bias, args)
    return _first(y.reshape(last.shape)), (mean, invstd, args[2])


def batch_norm_channels_last_backward(dy, x, weight, stats):
    mean, invstd, training = stats
    last = _last(x)
    m, c = _prod(last.shape[:-1]), last.shape[-1]
    dx, dw, db = _ops.batch_norm_backward(
        _dense(_last(dy)).reshape(m, c), last.reshape(m, c), m, c, 1, weight, mean, invstd, training
    )
    return _first(dx.reshape(last.shape)), dw, db


# ------------------------------------------------------------------------------ row norms
# args: (normalized_shape as a tuple, eps); the statistics stay flat (M,)


def layer_norm_forward(x, weight, bias, args):
    normalized_shape, eps = args
    m, d = _rows(x, normalized_shape)
    y, mean, rstd = _ops.layer_norm_forward(x, m, d, weight, bias, eps)
    return y, (normalized_shape, mean, rstd)


def layer_norm_backward(dy, x, weight, stats):
    normalized_shape, mean, rstd = stats
    m, d = _rows(x, normalized_shape)
    return _ops.layer_norm_backward(_dense(dy), x, normalized_shape, m, d, mean, rstd, weight)


def rms_norm_forward(x, weight, bias, args):
    normalized_shape, eps = args  # eps: a number (the drop-in resolves torch's None)
    m, d = _rows(x, normalized_shape)
    y, rrms = _ops.rms_norm_forward(x, m, d, weight, eps)
    return y, (normalized_shape, rrms)


def rms_norm_backward(dy, x, weight, stats):
    normalized_shape, rrms = stats
    m, d = _rows(x, normalized_shape)
    dx, dw = _ops.rms_norm_backward(_dense(dy), x, normalized_shape, m, d, rrms, weight)
    return dx, dw, None


# ------------------------------------------------------------- group and instance norm
# channels-last inputs (the last item of args): cnorm.functional.channels_last on the
# (N, *S, C) view, which also takes a gradient of either layout


def _channels_last_backward(backward, dy, x, *args):
    """A backward of cnorm.functional.channels_last on the (N, *S, C) views of dy and x
    (dy in either layout); the input gradient back as the (N, C, *S) view."""
    dx, dw, db = backward(_last(dy), _last(x), *args)
    return _first(dx), dw, db


def group_norm_forward(x, weight, bias, args):
    num_groups, eps, channels_last = args
    if channels_last:
        y, mean, rstd = CL.native_group_norm(_last(x), num_groups, weight, bias, eps)
        return _first(y), (num_groups, mean, rstd, True)
    n, c, s = _ncs(x)
    y, mean, rstd, _ = _ops.group_norm_forward(x, n, num_groups, c // num_groups, s, weight, bias, eps)
    return y, (num_groups, mean, rstd, False)


def group_norm_backward(dy, x, weight, stats):
    num_groups, mean, rstd, channels_last = stats
    if channels_last:
        return _channels_last_backward(CL.group_norm_backward, dy, x, num_groups, mean, rstd, weight)
    n, c, s = _ncs(x)
    return _ops.group_norm_backward(_dense(dy), x, n, num_groups, c // num_groups, s, mean, rstd, weight)


def instance_norm_forward(x, weight, bias, args):
    running_mean, running_var, use_input_stats, momentum, eps, channels_last = args
    if channels_last:  # a contiguous output, as torch's (the input gradient is channels_last)
        y, mean, invstd = CL.native_instance_norm(
            _last(x), weight, bias, *args[:5], channels_first_output=True
        )
        return _first(y), (mean, invstd, use_input_stats, True)
    n, c, s = _ncs(x)
    if use_input_stats:
        y, mean, invstd = _ops.instance_norm_train(
            x, n, c, s, weight, bias, running_mean, running_var, momentum, eps
        )
    else:
        y, mean, invstd = _ops.batch_norm_eval(x, n, c, s, weight, bias, running_mean, running_var, eps)
    return y, (mean, invstd, use_input_stats, False)


def instance_norm_backward(dy, x, weight, stats):
    mean, invstd, use_input_stats, channels_last = stats
    if channels_last:
        return _channels_last_backward(
            CL.instance_norm_backward, dy, x, weight, mean, invstd, use_input_stats
        )
    n, c, s = _ncs(x)
    if use_input_stats:
        return _ops.group_norm_backward(_dense(dy), x, n, c, 1, s, mean, invstd, weight)
    return _ops.batch_norm_backward(_dense(dy), x, n, c, s, weight, mean, invstd, False)
