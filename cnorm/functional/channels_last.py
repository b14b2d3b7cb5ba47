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
instance-norm backward. The dtypes are those of :mod:`cnorm.functional`: float16 and
bfloat16 too (their parameters of the input's dtype or all float32, torch's mixed precision),
computed in float64 on the channels-last kernels and rounded once.

Example::

    >>> x = np.random.default_rng(0).standard_normal((2, 4, 4, 6)).astype(np.float32)
    >>> y, mean, rstd = native_group_norm(x, 3, None, None, 1e-5)
    >>> y.shape, mean.shape
    ((2, 4, 4, 6), (2, 3))
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from .. import _ops
from .. import functional as _F  # by the package's names at call time: a patched one runs
from .._kernels import channels_last as cl_kernels
from .._validate import (
    Array,
    check_array,
    check_bool,
    check_param,
    check_real,
    check_spatial,
    group_dims,
    param_dtype,
)

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


def _grad(grad_output, shape: Tuple[int, ...], dtype) -> Tuple[Array, bool]:
    """grad_output in memory order (either layout), checked against the input."""
    dy, last = _layout(grad_output, "grad_output")
    logical = dy.shape if last else _first(dy).shape
    if logical != shape:
        raise ValueError(f"grad_output has shape {logical} but the input of forward() had shape {shape}")
    if dy.dtype != dtype:
        raise TypeError(f"grad_output dtype {dy.dtype} does not match the input dtype {dtype}")
    return dy, last


def _channels_first(fn, grad_output, x: Array, *args) -> Tuple[Array, Array, Array]:
    """The channels-first backward ``fn`` of x (memory order (N, C, S)), dx back as the
    channels-last view."""
    dy, dy_last = _grad(grad_output, _first(x).shape, x.dtype)
    dx, dw, db = fn(np.moveaxis(dy, -1, 1) if dy_last else dy, x, *args)
    return _first(dx), dw, db


# ------------------------------------------------------------------------------ batch norm
# the arguments of cnorm.functional.native_batch_norm / batch_norm_backward after the
# input: weight, bias, running_mean, running_var, training, momentum, eps / weight,
# save_mean, save_invstd, training


def native_batch_norm(input: Array, *args) -> Tuple[Array, Array, Array]:
    """:func:`cnorm.functional.native_batch_norm` (same arguments) of a channels-last
    ``(N, *S, C)`` input: ``(output, save_mean, save_invstd)``, the output in the input's
    layout."""
    x, last = _layout(input)
    if not last:
        y, mean, invstd = _F.native_batch_norm(x, *args)
        return _first(y), mean, invstd
    y, mean, invstd = _F.native_batch_norm(x.reshape(-1, x.shape[-1]), *args)
    return y.reshape(x.shape), mean, invstd


def batch_norm_backward(grad_output: Array, input: Array, *args) -> Tuple[Array, Array, Array]:
    """:func:`cnorm.functional.batch_norm_backward` (same arguments) of a channels-last
    input: ``(grad_input, grad_weight, grad_bias)``, ``grad_input`` in the input's layout."""
    x, last = _layout(input)
    if not last:
        return _channels_first(_F.batch_norm_backward, grad_output, x, *args)
    dy, dy_last = _grad(grad_output, x.shape, x.dtype)
    c = x.shape[-1]
    dy = dy.reshape(-1, c) if dy_last else np.moveaxis(dy, 1, -1).reshape(-1, c)  # the latter copies
    dx, dw, db = _F.batch_norm_backward(dy, x.reshape(-1, c), *args)
    return dx.reshape(x.shape), dw, db


# ------------------------------------------------------------------------------ group norm


def _output(y: Array, shape: Tuple[int, ...], out_last: bool) -> Array:
    """The kernel's flat output as the logical (N, *S, C) array (a view when it is laid
    out channels-first)."""
    if out_last:
        return y.reshape(shape)
    return _first(y.reshape((shape[0], shape[-1]) + shape[1:-1]))


# half storage (float16, bfloat16): the kernels take the bits (kind=) and round each
# output once; _half_storage passes them and rounds dweight / dbias to the parameters'
# dtype (float32 with torch's mixed precision)


@_ops._half_storage("x", None, None, None, data=(0,), params=(2, 3))
def _cl_forward(x, dims, weight, bias, eps, out_last, kind=0):
    """_ops.group_norm_channels_last_forward, of half storage too."""
    if not kind:
        return _ops.group_norm_channels_last_forward(x, dims, weight, bias, eps, out_last)
    return cl_kernels.group_norm_forward(x, dims, weight, bias, float(eps), out_last, kind)


@_ops._half_storage("x", "p", "p", data=(0, 1), params=(3, 4, 5))
def _cl_backward(dy, x, dims, mean, rstd, weight, dy_last, kind=0):
    """_ops.group_norm_channels_last_backward, of half storage too (dweight, dbias in
    float64 then: rounded once by _half_storage)."""
    if not kind:
        return _ops.group_norm_channels_last_backward(dy, x, dims, mean, rstd, weight, dy_last)
    dx, dw, db = cl_kernels.group_norm_backward(dy, x, dims, mean, rstd, weight, dy_last, kind)
    return dx.reshape(x.shape), dw, db


def native_group_norm(input, num_groups, weight, bias, eps, *, channels_first_output=False):
    """:func:`cnorm.functional.native_group_norm` of a channels-last ``(N, *S, C)``
    input: ``(output, mean, rstd)`` with float64 ``(N, num_groups)`` statistics; the
    output channels-first in memory with ``channels_first_output``."""
    x, last = _layout(input)
    if not last:
        y, mean, rstd = _F.native_group_norm(x, num_groups, weight, bias, eps)
        return _first(y), mean, rstd
    first_shape = (x.shape[0], x.shape[-1]) + x.shape[1:-1]
    n, g, cg, s = group_dims(np.moveaxis(x, -1, 1), num_groups)
    check_real(eps, "eps")
    dtype = param_dtype(x.dtype, (weight, bias))
    weight = check_param(weight, "weight", (g * cg,), dtype, "channels", input_shape=first_shape)
    bias = check_param(bias, "bias", (g * cg,), dtype, "channels", input_shape=first_shape)
    out_last = not channels_first_output
    y, mean, rstd, _ = _cl_forward(x, (n, g, cg, s), weight, bias, eps, out_last)
    return _output(y, x.shape, out_last), mean.reshape(n, g), rstd.reshape(n, g)


def group_norm_backward(grad_output, input, num_groups, mean, rstd, weight):
    """:func:`cnorm.functional.group_norm_backward` of a channels-last input:
    ``(grad_input, grad_weight, grad_bias)``, ``grad_input`` in the input's layout."""
    x, last = _layout(input)
    if not last:
        return _channels_first(_F.group_norm_backward, grad_output, x, num_groups, mean, rstd, weight)
    return _group_backward(grad_output, x, group_dims(np.moveaxis(x, -1, 1), num_groups), mean, rstd, weight)


def _group_backward(grad_output, x: Array, dims, mean, rstd, weight) -> Tuple[Array, Array, Array]:
    """The channels-last kernel's backward of x (memory order (N, S, C)), dims (N, G, Cg, S)."""
    n, g, cg, _ = dims
    dy, dy_last = _grad(grad_output, x.shape, x.dtype)
    weight = check_param(weight, "weight", (g * cg,), param_dtype(x.dtype, (weight,)))
    mean = check_param(np.reshape(mean, -1), "mean", (n * g,), None)
    rstd = check_param(np.reshape(rstd, -1), "rstd", (n * g,), None)
    return _cl_backward(dy, x, tuple(dims), mean, rstd, weight, dy_last)


# --------------------------------------------------------------------------- instance norm


def native_instance_norm(input, *args, channels_first_output=False):
    """:func:`cnorm.functional.native_instance_norm` (same arguments: weight, bias,
    running_mean, running_var, use_input_stats, momentum, eps) of a channels-last
    ``(N, *S, C)`` input, running statistics updated in place as there: ``(output,
    save_mean, save_invstd)``, statistics ``(N, C)`` with ``use_input_stats``, ``(C,)``
    otherwise; the output channels-first in memory with ``channels_first_output``."""
    x, last = _layout(input)
    if not last:
        y, mean, invstd = _F.native_instance_norm(x, *args)
        return _first(y), mean, invstd
    weight, bias, running_mean, running_var, use_input_stats, momentum, eps = args
    check_bool(use_input_stats, "use_input_stats")
    check_real(momentum, "momentum")
    check_real(eps, "eps")
    if use_input_stats:
        check_spatial((x.shape[0], x.shape[-1]) + x.shape[1:-1])
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    if not use_input_stats and running_mean is None:
        raise ValueError("Expected running_mean and running_var to be defined when use_input_stats is false")
    n, c, s = x.shape[0], x.shape[-1], math.prod(x.shape[1:-1])
    dtype = param_dtype(x.dtype, (weight, bias, running_mean, running_var))
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
    y, mean, rstd, var = _cl_forward(x, (n, c, 1, s), weight, bias, eps, out_last)
    # the originals, not contiguous copies: the update writes them with np.copyto
    _ops.update_instance_running_stats(running_mean, running_var, mean, var, n, c, s, momentum)
    return _output(y, x.shape, out_last), mean.reshape(n, c), rstd.reshape(n, c)


def instance_norm_backward(grad_output, input, weight, save_mean, save_invstd, use_input_stats):
    """:func:`cnorm.functional.instance_norm_backward` of a channels-last input:
    ``(grad_input, grad_weight, grad_bias)``, ``grad_input`` in the input's layout."""
    x, last = _layout(input)
    check_bool(use_input_stats, "use_input_stats")
    stats = (save_mean, save_invstd)
    if not last:
        return _channels_first(_F.instance_norm_backward, grad_output, x, weight, *stats, use_input_stats)
    if use_input_stats:
        n, c, s = x.shape[0], x.shape[-1], math.prod(x.shape[1:-1])
        return _group_backward(grad_output, x, (n, c, 1, s), *stats, weight)
    return batch_norm_backward(grad_output, x, weight, *stats, False)
