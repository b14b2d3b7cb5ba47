r"""Channels-last inputs: batch norm, group norm and instance norm of arrays whose channel
axis is the LAST one, shape ``(N, *spatial, C)`` (NHWC images, NDHWC volumes).

The rest of :mod:`cnorm.functional` takes channels-first arrays ``(N, C, *spatial)`` and
copies any other memory layout to C order. The functions here have the same names,
arguments and results, with the channel axis last everywhere (the statistics keep their
shapes: ``(C,)`` per channel, ``(N, G)`` per group):

- a C-contiguous ``(N, *S, C)`` array runs without a copy: batch norm as the ``(N*S, C)``
  problem of BatchNorm1d (the same kernels, on a reshaped view), group norm and instance
  norm on the channels-last kernels;
- an ``np.moveaxis(a, 1, -1)`` view of a C-contiguous channels-first array runs without a
  copy too, on the channels-first kernels (the results are such views as well);
- any other array is copied to C order first.

Outputs have the input's memory layout (group norm and instance norm can write a
channels-first one instead: ``channels_first_output=True``, what torch's InstanceNorm
returns for a channels-last input). Input gradients have the input's layout; a
``grad_output`` in either layout is read without a copy by the group-norm and
instance-norm backward.

Example::

    >>> x = np.random.default_rng(0).standard_normal((2, 4, 4, 6)).astype(np.float32)
    >>> y, mean, rstd = native_group_norm(x, 3, None, None, 1e-5)
    >>> y.shape, mean.shape
    ((2, 4, 4, 6), (2, 3))
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from .. import _ops
from .._kernels import channels_last as _kernels
from .._validate import (
    Array,
    check_array,
    check_bool,
    check_param,
    check_real,
    check_spatial,
    group_dims,
)
from . import batchnorm as _bn
from . import groupnorm as _gn

__all__ = [
    "native_batch_norm",
    "batch_norm_backward",
    "native_group_norm",
    "group_norm_backward",
    "native_instance_norm",
    "instance_norm_backward",
]


def _layout(a, name: str = "input") -> Tuple[Array, bool]:
    """(the array in memory order, True) for a C-contiguous channels-last ``a``,
    (its channels-first C-contiguous base view, False) for a moveaxis view of one, else
    (a C-order copy, True). Checks the type and dtype."""
    if isinstance(a, np.ndarray) and a.ndim >= 2 and not a.flags.c_contiguous:
        first = np.moveaxis(a, -1, 1)
        if first.flags.c_contiguous and first.flags.aligned:
            return check_array(first, name), False
    a = check_array(a, name)
    if a.ndim < 2:
        raise ValueError(f"expected at least 2D input (got {a.ndim}D input)")
    return a, True


def _first(a: Array) -> Array:
    """A channels-first array as the channels-last view of it."""
    return np.moveaxis(a, 1, -1)


def _dims(x: Array, last: bool) -> Tuple[int, int, int]:
    """(N, C, S) of x in memory order (N, S, C) when last, (N, C, S) otherwise."""
    shape = x.shape
    c = shape[-1] if last else shape[1]
    spatial = shape[1:-1] if last else shape[2:]
    return shape[0], c, math.prod(spatial)


def _grad(grad_output, shape: Tuple[int, ...], dtype) -> Tuple[Array, bool]:
    """grad_output in memory order (either layout), checked against the input."""
    dy, last = _layout(grad_output, "grad_output")
    logical = dy.shape if last else _first(dy).shape
    if logical != shape:
        raise ValueError(f"grad_output has shape {logical} but the input of forward() had shape {shape}")
    if dy.dtype != dtype:
        raise TypeError(f"grad_output dtype {dy.dtype} does not match the input dtype {dtype}")
    return dy, last


# ------------------------------------------------------------------------------ batch norm


def native_batch_norm(
    input: Array,
    weight: Optional[Array],
    bias: Optional[Array],
    running_mean: Optional[Array],
    running_var: Optional[Array],
    training: bool,
    momentum: float,
    eps: float,
) -> Tuple[Array, Array, Array]:
    """:func:`cnorm.functional.native_batch_norm` of a channels-last ``(N, *S, C)``
    input: ``(output, save_mean, save_invstd)``, the output in the input's layout."""
    x, last = _layout(input)
    if not last:
        y, mean, invstd = _bn.native_batch_norm(
            x, weight, bias, running_mean, running_var, training, momentum, eps
        )
        return _first(y), mean, invstd
    rows = x.reshape(-1, x.shape[-1])
    y, mean, invstd = _bn.native_batch_norm(
        rows, weight, bias, running_mean, running_var, training, momentum, eps
    )
    return y.reshape(x.shape), mean, invstd


def batch_norm_backward(
    grad_output: Array,
    input: Array,
    weight: Optional[Array],
    save_mean: Array,
    save_invstd: Array,
    training: bool,
) -> Tuple[Array, Array, Array]:
    """:func:`cnorm.functional.batch_norm_backward` of a channels-last input:
    ``(grad_input, grad_weight, grad_bias)``, ``grad_input`` in the input's layout."""
    x, last = _layout(input)
    shape = x.shape if last else _first(x).shape
    dy, dy_last = _grad(grad_output, shape, x.dtype)
    if not last:
        dy = dy if not dy_last else np.moveaxis(dy, -1, 1)
        dx, dw, db = _bn.batch_norm_backward(dy, x, weight, save_mean, save_invstd, training)
        return _first(dx), dw, db
    c = x.shape[-1]
    dy = dy.reshape(-1, c) if dy_last else np.moveaxis(dy, 1, -1).reshape(-1, c)  # the latter copies
    dx, dw, db = _bn.batch_norm_backward(dy, x.reshape(-1, c), weight, save_mean, save_invstd, training)
    return dx.reshape(x.shape), dw, db


# ------------------------------------------------------------------------------ group norm


def _output(y: Array, shape: Tuple[int, ...], out_last: bool) -> Array:
    """The kernel's flat output as the logical (N, *S, C) array (a view when it is laid
    out channels-first)."""
    if out_last:
        return y.reshape(shape)
    return _first(y.reshape((shape[0], shape[-1]) + shape[1:-1]))


def native_group_norm(
    input: Array,
    num_groups: int,
    weight: Optional[Array],
    bias: Optional[Array],
    eps: float,
    *,
    channels_first_output: bool = False,
) -> Tuple[Array, Array, Array]:
    """:func:`cnorm.functional.native_group_norm` of a channels-last ``(N, *S, C)``
    input: ``(output, mean, rstd)`` with float64 ``(N, num_groups)`` statistics."""
    x, last = _layout(input)
    if not last:
        y, mean, rstd = _gn.native_group_norm(x, num_groups, weight, bias, eps)
        return _first(y), mean, rstd
    first_shape = (x.shape[0], x.shape[-1]) + x.shape[1:-1]
    n, g, cg, s = group_dims(_first_view(x), num_groups)
    check_real(eps, "eps")
    weight = check_param(weight, "weight", (g * cg,), x.dtype, "channels", input_shape=first_shape)
    bias = check_param(bias, "bias", (g * cg,), x.dtype, "channels", input_shape=first_shape)
    out_last = not channels_first_output
    y, mean, rstd, _ = _kernels.group_norm_forward(x, n, g, cg, s, weight, bias, float(eps), out_last)
    return _output(y, x.shape, out_last), mean.reshape(n, g), rstd.reshape(n, g)


def _first_view(x: Array) -> Array:
    """The channels-first (N, C, *S) view of a channels-last array (for the shape checks)."""
    return np.moveaxis(x, -1, 1)


def group_norm_backward(
    grad_output: Array,
    input: Array,
    num_groups: int,
    mean: Array,
    rstd: Array,
    weight: Optional[Array],
) -> Tuple[Array, Array, Array]:
    """:func:`cnorm.functional.group_norm_backward` of a channels-last input:
    ``(grad_input, grad_weight, grad_bias)``, ``grad_input`` in the input's layout."""
    x, last = _layout(input)
    if not last:
        dy, dy_last = _grad(grad_output, _first(x).shape, x.dtype)
        dy = dy if not dy_last else np.moveaxis(dy, -1, 1)
        dx, dw, db = _gn.group_norm_backward(dy, x, num_groups, mean, rstd, weight)
        return _first(dx), dw, db
    n, g, cg, s = group_dims(_first_view(x), num_groups)
    return _group_backward(grad_output, x, n, g, cg, s, mean, rstd, weight)


def _group_backward(grad_output, x: Array, n: int, g: int, cg: int, s: int, mean, rstd, weight):
    """The channels-last kernel's backward of x (memory order (N, S, C))."""
    dy, dy_last = _grad(grad_output, x.shape, x.dtype)
    weight = check_param(weight, "weight", (g * cg,), x.dtype)
    mean = check_param(np.reshape(mean, -1), "mean", (n * g,), None)
    rstd = check_param(np.reshape(rstd, -1), "rstd", (n * g,), None)
    dx, dw, db = _kernels.group_norm_backward(dy, x, n, g, cg, s, mean, rstd, weight, dy_last)
    return dx.reshape(x.shape), dw.astype(x.dtype), db.astype(x.dtype)


# --------------------------------------------------------------------------- instance norm


def native_instance_norm(
    input: Array,
    weight: Optional[Array],
    bias: Optional[Array],
    running_mean: Optional[Array],
    running_var: Optional[Array],
    use_input_stats: bool,
    momentum: float,
    eps: float,
    *,
    channels_first_output: bool = False,
) -> Tuple[Array, Array, Array]:
    """:func:`cnorm.functional.native_instance_norm` of a channels-last ``(N, *S, C)``
    input (running statistics updated in place as there): ``(output, save_mean,
    save_invstd)``, statistics ``(N, C)`` with ``use_input_stats``, ``(C,)`` otherwise."""
    x, last = _layout(input)
    if not last:
        y, mean, invstd = _gn.native_instance_norm(
            x, weight, bias, running_mean, running_var, use_input_stats, momentum, eps
        )
        return _first(y), mean, invstd
    check_bool(use_input_stats, "use_input_stats")
    check_real(momentum, "momentum")
    check_real(eps, "eps")
    first_shape = (x.shape[0], x.shape[-1]) + x.shape[1:-1]
    if use_input_stats:
        check_spatial(first_shape)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    if not use_input_stats and running_mean is None:
        raise ValueError("Expected running_mean and running_var to be defined when use_input_stats is false")
    n, c, s = _dims(x, True)
    dtype = x.dtype
    weight = check_param(weight, "weight", (c,), dtype)
    bias = check_param(bias, "bias", (c,), dtype)
    rm = check_param(running_mean, "running_mean", (c,), dtype, writable=bool(use_input_stats))
    rv = check_param(running_var, "running_var", (c,), dtype, writable=bool(use_input_stats))
    if not use_input_stats:  # a batch-norm eval of the (N*S, C) rows
        assert rm is not None and rv is not None  # checked above
        y, mean, invstd = _ops.batch_norm_eval(x.reshape(-1, c), n * s, c, 1, weight, bias, rm, rv, eps)
        y = y.reshape(x.shape)
        if channels_first_output:
            y = _first(np.ascontiguousarray(np.moveaxis(y, -1, 1)))
        return y, mean, invstd
    out_last = not channels_first_output
    y, mean, rstd, var = _kernels.group_norm_forward(x, n, c, 1, s, weight, bias, float(eps), out_last)
    if running_mean is not None and running_var is not None and c > 0 and (s > 0 or n == 0):
        # as torch: the mean over the samples of the instance means / unbiased variances
        if n == 0:
            batch_mean = batch_var = np.full(c, np.nan)
        else:
            batch_mean = mean.reshape(n, c).mean(axis=0)
            batch_var = var.reshape(n, c).mean(axis=0) * (s / (s - 1.0))
        _ops.update_running_stats(running_mean, running_var, batch_mean, batch_var, float(momentum))
    return _output(y, x.shape, out_last), mean.reshape(n, c), rstd.reshape(n, c)


def instance_norm_backward(
    grad_output: Array,
    input: Array,
    weight: Optional[Array],
    save_mean: Array,
    save_invstd: Array,
    use_input_stats: bool,
) -> Tuple[Array, Array, Array]:
    """:func:`cnorm.functional.instance_norm_backward` of a channels-last input:
    ``(grad_input, grad_weight, grad_bias)``, ``grad_input`` in the input's layout."""
    x, last = _layout(input)
    check_bool(use_input_stats, "use_input_stats")
    if not last:
        dy, dy_last = _grad(grad_output, _first(x).shape, x.dtype)
        dy = dy if not dy_last else np.moveaxis(dy, -1, 1)
        dx, dw, db = _gn.instance_norm_backward(dy, x, weight, save_mean, save_invstd, use_input_stats)
        return _first(dx), dw, db
    n, c, s = _dims(x, True)
    if use_input_stats:
        return _group_backward(grad_output, x, n, c, 1, s, save_mean, save_invstd, weight)
    return batch_norm_backward(grad_output, x, weight, save_mean, save_invstd, False)
