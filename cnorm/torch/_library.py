"""The cnorm norms as :mod:`torch.library` custom ops, for torch.compile and torch.export.

Every norm spec of :mod:`cnorm.torch._autograd` (``forward(x, weight, bias, args) ->
(y, stats)`` and ``backward(dy, x, weight, stats) -> (dx, dweight, dbias)`` over
:mod:`cnorm.functional`) becomes two operators in the ``cnorm`` namespace::

    cnorm::<name>(Tensor input, Tensor? weight, Tensor? bias, <params>)
        -> (Tensor output, Tensor <stat>, ...)                 # stats: float64
    cnorm::<name>_backward(Tensor grad_output, Tensor input, Tensor? weight,
        Tensor? bias, Tensor[] stats, <the non-Tensor params>, bool[3] output_mask)
        -> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)

with a CPU kernel (the spec on zero-copy NumPy views), a fake (meta) kernel for
tracing, and an Autograd kernel (an autograd Function that calls the forward op below
autograd and the backward op in its once-differentiable backward). The forward op may
mutate Tensor params declared ``Tensor(a!)`` (the running statistics): torch's
``register_autograd`` refuses mutable ops, hence the Autograd kernel registered by hand,
the way aten's ``_native_batch_norm_legit`` has one. A gradient not asked for in
``output_mask`` (or a parameter that is None) comes back as an empty tensor.

A new spec gets its ops with one :func:`register_norm_op` call at the end of this file:
its name, its two spec functions, the schema of its params (the spec's ``args`` in the
same order; Tensor params reach the spec as NumPy views, ``int[]`` as tuples), the names
and the shape of its float64 stats arrays (for the fake kernel), and ``unpack`` rebuilding the spec's
``stats`` from those arrays and the non-Tensor params. The eager path of the drop-in does
not go through these ops (the dispatcher costs ~10 µs per call); torch.compile and
torch.export (see ``_dropin.py``) do.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, List, Sequence, Tuple

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from ._autograd import (
    Backward,
    Forward,
    _batch_norm_backward,
    _batch_norm_forward,
    _first,
    _group_norm_backward,
    _group_norm_forward,
    _instance_norm_backward,
    _instance_norm_forward,
    _last,
    _layer_norm_backward,
    _layer_norm_forward,
    _rms_norm_backward,
    _rms_norm_forward,
    as_numpy,
    as_tensor,
)

__all__ = ["NormOp", "register_norm_op", "NORM_OPS", "per_row"]

LIBRARY = torch.library.Library("cnorm", "DEF")
NAMESPACE = "cnorm"

Shape = Callable[..., Sequence[int]]  # (input, *params) -> the shape of every stats array
Unpack = Callable[[Tuple[np.ndarray, ...], Tuple[Any, ...]], Any]  # (arrays, scalars) -> stats


@dataclass(frozen=True)
class NormOp:
    """The two operators of one norm spec (``torch.ops.cnorm.<name>`` and its backward)."""

    name: str
    forward: Any  # torch._ops.OpOverload
    backward: Any


NORM_OPS: dict = {}


def _array(t):
    """A NumPy view of a CPU tensor (C-contiguous: a copy only if it is not), or None;
    bfloat16 as ml_dtypes' (see as_numpy)."""
    if t is None:
        return None
    return as_numpy(t.contiguous())


def _param(p):
    """An op param as the spec's ``args`` hold it: Tensors as views (updated in place
    when mutated, so never copied), ``int[]`` as tuples."""
    if isinstance(p, torch.Tensor):
        return as_numpy(p)
    if isinstance(p, list):
        return tuple(p)
    return p


def _grad(g, need: bool, like, input):
    """A gradient the op returns: empty when not asked for (or its tensor is None, as the
    fake kernel has it), zeros when the spec has none."""
    if not need or like is None:
        return input.new_empty((0,))
    return as_tensor(g) if g is not None else torch.zeros_like(like)


def _param_names(params: str) -> Tuple[List[int], str]:
    """(indices of the Tensor params, the schema of the non-Tensor ones)."""
    decls = [d.strip() for d in params.split(",") if d.strip()]
    tensors = [i for i, d in enumerate(decls) if d.startswith("Tensor")]
    scalars = ", ".join(d for i, d in enumerate(decls) if i not in tensors)
    return tensors, scalars


def register_norm_op(
    name: str,
    forward: Forward,
    backward: Backward,
    *,
    params: str,
    stats: Sequence[str],
    stats_shape: Shape,
    unpack: Unpack,
) -> NormOp:
    """Define ``cnorm::<name>`` and ``cnorm::<name>_backward`` for a norm spec (see the
    module docstring), register their CPU, fake and Autograd kernels, and return them.

    ``params``: the schema of the op's arguments after ``input, weight, bias``, e.g.
    ``"int[] normalized_shape, float eps"``; ``stats``: names of the float64 arrays in
    the spec's ``stats``, in order, and ``stats_shape(input, *params)`` their shape;
    ``unpack(arrays, scalars)``: the spec's ``stats`` from those arrays and the tuple
    of the non-Tensor params."""
    tensor_params, scalar_schema = _param_names(params)
    sep = ", " if scalar_schema else ""
    outputs = ", ".join(f"Tensor {s}" for s in ("output", *stats))
    LIBRARY.define(f"{name}(Tensor input, Tensor? weight, Tensor? bias, {params}) -> ({outputs})")
    LIBRARY.define(
        f"{name}_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, "
        f"Tensor[] stats, {scalar_schema}{sep}bool[3] output_mask) -> (Tensor, Tensor, Tensor)"
    )
    packet = getattr(torch.ops, NAMESPACE)
    forward_op = getattr(packet, name).default
    backward_op = getattr(packet, f"{name}_backward").default

    def forward_cpu(input, weight, bias, *op_params):
        x, w, b = _array(input), _array(weight), _array(bias)
        y, spec_stats = forward(x, w, b, tuple(map(_param, op_params)))
        arrays = [s for s in spec_stats if isinstance(s, np.ndarray)]
        # an output may not alias an input (a spec returning a buffer as its stats)
        arrays = [a.copy() if any(np.may_share_memory(a, t) for t in (x, w, b)) else a for a in arrays]
        return (as_tensor(y), *map(torch.from_numpy, arrays))

    def forward_fake(input, weight, bias, *op_params):
        y = torch.empty_like(input, memory_format=torch.contiguous_format)
        shape = tuple(stats_shape(input, *op_params))
        return (y, *(input.new_empty(shape, dtype=torch.float64) for _ in stats))

    def backward_cpu(grad_output, input, weight, bias, stat_tensors, *rest):
        *scalars, mask = rest
        arrays = tuple(_array(s) for s in stat_tensors)
        spec_stats = unpack(arrays, tuple(map(_param, scalars)))
        dx, dw, db = backward(_array(grad_output), _array(input), _array(weight), spec_stats)
        return (
            _grad(dx, mask[0], input, input),
            _grad(dw, mask[1], weight, input),
            _grad(db, mask[2], bias, input),
        )

    def backward_fake(grad_output, input, weight, bias, stat_tensors, *rest):
        mask = rest[-1]
        dx = torch.empty_like(input, memory_format=torch.contiguous_format)
        return (
            dx if mask[0] else input.new_empty((0,)),
            torch.empty_like(weight) if mask[1] and weight is not None else input.new_empty((0,)),
            torch.empty_like(bias) if mask[2] and bias is not None else input.new_empty((0,)),
        )

    n_params = len([d for d in params.split(",") if d.strip()])
    scalar_index = [i for i in range(n_params) if i not in tensor_params]

    class Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, input, weight, bias, *op_params):
            with torch._C._AutoDispatchBelowAutograd():
                out = forward_op(input, weight, bias, *op_params)
            ctx.mark_non_differentiable(*out[1:])
            ctx.save_for_backward(input, weight, bias, *out[1:])
            ctx.scalars = [op_params[i] for i in scalar_index]
            return out

        @staticmethod
        @once_differentiable
        def backward(ctx, grad_output, *_stats_grads):
            input, weight, bias, *stat_tensors = ctx.saved_tensors
            need = ctx.needs_input_grad
            grads = backward_op(grad_output, input, weight, bias, stat_tensors, *ctx.scalars, list(need[:3]))
            return (*(g if n else None for g, n in zip(grads, need)), *([None] * n_params))

    Function.__name__ = Function.__qualname__ = f"{name}_op_function"

    def forward_autograd(input, weight, bias, *op_params):
        return Function.apply(input, weight, bias, *op_params)

    qualname = f"{NAMESPACE}::{name}"
    LIBRARY.impl(name, forward_cpu, "CPU")
    LIBRARY.impl(name, forward_autograd, "Autograd")
    torch.library.register_fake(qualname, forward_fake, lib=LIBRARY)
    LIBRARY.impl(f"{name}_backward", backward_cpu, "CPU")
    torch.library.register_fake(f"{qualname}_backward", backward_fake, lib=LIBRARY)
    op = NormOp(name, forward_op, backward_op)
    NORM_OPS[name] = op
    return op


# ------------------------------------------------------------------------------- norms

batch_norm_op = register_norm_op(
    "batch_norm",
    _batch_norm_forward,
    _batch_norm_backward,
    # running stats: updated in place when training (None: not tracked)
    params="Tensor(a!)? running_mean, Tensor(b!)? running_var, bool training, float momentum, float eps",
    stats=("mean", "invstd"),
    stats_shape=lambda x, *params: x.shape[1:2],  # per channel
    unpack=lambda arrays, scalars: (*arrays, scalars[0]),  # (mean, invstd, training)
)


# a channels_last BatchNorm2d/3d input is the op above on its (N*H*W, C) view: the drop-in
# passes input.movedim(1, -1).reshape(-1, C), as the eager path (the same kernels)


def per_row(x, ns, *params):
    """The shape of per-row stats over the trailing ``ns`` dims."""
    return x.shape[: x.dim() - len(ns)]


layer_norm_op = register_norm_op(
    "layer_norm",
    _layer_norm_forward,
    _layer_norm_backward,
    params="int[] normalized_shape, float eps",
    stats=("mean", "rstd"),
    stats_shape=per_row,
    unpack=lambda arrays, scalars: (scalars[0], *arrays),  # (normalized_shape, mean, rstd)
)

rms_norm_op = register_norm_op(
    "rms_norm",
    _rms_norm_forward,
    _rms_norm_backward,
    params="int[] normalized_shape, float eps",  # eps: a number (the drop-in resolves None)
    stats=("rrms",),
    stats_shape=per_row,
    unpack=lambda arrays, scalars: (scalars[0], *arrays),  # (normalized_shape, rrms)
)

# ------------------------------------------- group and instance norm, both layouts


def _with_layout(forward: Forward, backward: Backward, last: bool) -> Tuple[Forward, Backward]:
    """The op's spec functions from the drop-in's, whose args end with ``channels_last``.
    The channels_last op takes the C-contiguous (N, *S, C) view of the input
    (``input.movedim(1, -1)``: every op sees contiguous tensors) and returns (N, *S, C)
    arrays; the drop-in's spec takes their (N, C, *S) views."""
    if not last:

        def first_forward(x, weight, bias, args):
            return forward(x, weight, bias, (*args, False))

        return first_forward, backward

    def last_forward(x, weight, bias, args):
        y, stats = forward(_first(x), weight, bias, (*args, True))
        # no copy but for instance norm, whose output is channels-first there (torch's)
        return np.ascontiguousarray(_last(y)), stats

    def last_backward(dy, x, weight, stats):
        dx, dw, db = backward(_first(dy), _first(x), weight, stats)
        return _last(dx), dw, db

    return last_forward, last_backward


def _unpack_layout(unpack: Unpack, last: bool, arrays, scalars):
    return (*unpack(arrays, scalars), last)  # the spec's stats end with channels_last


def _register_layouts(name: str, forward: Forward, backward: Backward, *, stats_shape, unpack, **op):
    """``cnorm::<name>`` on (N, C, *S) inputs and ``cnorm::<name>_channels_last`` on the
    (N, *S, C) views of channels_last ones, for a spec whose args and stats end with
    ``channels_last``; ``stats_shape(input, *params, channel=)``."""
    ops = []
    for last in (False, True):
        ops.append(
            register_norm_op(
                name + "_channels_last" * last,
                *_with_layout(forward, backward, last),
                stats_shape=functools.partial(stats_shape, channel=-1 if last else 1),
                unpack=functools.partial(_unpack_layout, unpack, last),
                **op,
            )
        )
    return ops


group_norm_op, group_norm_channels_last_op = _register_layouts(
    "group_norm",
    _group_norm_forward,
    _group_norm_backward,
    params="int num_groups, float eps",
    stats=("mean", "rstd"),  # (N, G)
    stats_shape=lambda x, g, eps, channel: (x.shape[0], g),
    unpack=lambda arrays, scalars: (scalars[0], *arrays),  # (num_groups, mean, rstd)
)


def _instance_stats_shape(x, rm, rv, use_input_stats, *scalars, channel):
    """(N, C) with the input statistics, (C,) with the running ones."""
    c = x.shape[channel]
    return (x.shape[0], c) if use_input_stats else (c,)


instance_norm_op, instance_norm_channels_last_op = _register_layouts(
    "instance_norm",
    _instance_norm_forward,
    _instance_norm_backward,
    params="Tensor(a!)? running_mean, Tensor(b!)? running_var, bool use_input_stats, float momentum, float eps",
    stats=("mean", "invstd"),  # (N, C), or (C,) from the running statistics
    stats_shape=_instance_stats_shape,
    unpack=lambda arrays, scalars: (*arrays, scalars[0]),  # (mean, invstd, use_input_stats)
)
