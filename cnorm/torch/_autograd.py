"""One :class:`torch.autograd.Function` factory for every cnorm norm.

A norm is two small NumPy-level functions, its spec::

    forward(x, weight, bias, args) -> (y, stats)        # stats: what backward needs
    backward(dy, x, weight, stats) -> (dx, dweight, dbias)   # any of them may be None

and :func:`norm_function` makes its autograd Function (``apply(input, weight, bias,
args, arrays)``: saves the input and the weight, keeps ``stats``; once-differentiable)
and a ``call`` that runs the Function when a gradient is needed and the bare forward
otherwise. The drop-in's specs (:mod:`cnorm.torch._lean`) go straight to the kernels:
the drop-in has checked every argument. The checked specs below, over
:mod:`cnorm.functional`, are the kernels of the ``torch.ops.cnorm`` custom ops that
torch.compile and torch.export see (:mod:`cnorm.torch._library`: one
``register_norm_op`` call per spec), which any caller can reach with any tensors.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple, Type, cast

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .. import functional as CF
from .._validate import LAZY_BFLOAT16, bfloat16_available
from . import _lean

__all__ = [
    "as_numpy",
    "numpy_view",
    "as_tensor",
    "HALF",
    "needs_grad",
    "norm_function",
    "BatchNormFunction",
    "batch_norm",
    "LayerNormFunction",
    "layer_norm",
]

Forward = Callable[[np.ndarray, Optional[np.ndarray], Optional[np.ndarray], Any], Tuple[np.ndarray, Any]]
Backward = Callable[
    [np.ndarray, np.ndarray, Optional[np.ndarray], Any],
    Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]],
]
Call = Callable[..., torch.Tensor]  # (input, weight, bias, args, grad=None) -> output

_from_numpy = torch.from_numpy
_grad_enabled = torch.is_grad_enabled
_BFLOAT16 = torch.bfloat16
_UINT16 = torch.uint16
_BITS = np.dtype(np.uint16)

# NumPy has no bfloat16: ml_dtypes' is the one cnorm's kernels take, imported with the first
# bfloat16 tensor (importing it costs a second); without ml_dtypes bfloat16 runs torch's kernels
_np_bfloat16: Any = LAZY_BFLOAT16 if bfloat16_available() else None

_DTYPE = np.dtype


def _bfloat16_dtype() -> np.dtype:
    """ml_dtypes' bfloat16 dtype, resolved (and ml_dtypes imported) with the first bfloat16
    tensor: a view by the lazy stand-in costs NumPy a dtype conversion on every call."""
    global _np_bfloat16
    _np_bfloat16 = np.dtype(_np_bfloat16)
    return _np_bfloat16


#: the half-precision input dtypes the cnorm kernels take (bfloat16: with ml_dtypes)
HALF: Tuple[torch.dtype, ...] = (torch.float16,) + ((_BFLOAT16,) if _np_bfloat16 is not None else ())


def numpy_view(t: torch.Tensor, dtype: torch.dtype) -> Optional[np.ndarray]:
    """A NumPy view of the CPU tensor ``t`` of ``dtype`` (bfloat16: an ``ml_dtypes``
    view of the same memory), or None where NumPy has no view of it (another device or
    layout, the neg / conj bit)."""
    try:
        # bfloat16 by its dtype, not by numpy()'s TypeError: a C++ exception costs ~0.75M
        # instructions (callgrind) to unwind
        if dtype is _BFLOAT16:  # through its bits: uint16 (one view fewer than int16)
            bits = (t.data if t.requires_grad else t).view(_UINT16).numpy()
            return bits.view(_np_bfloat16 if isinstance(_np_bfloat16, _DTYPE) else _bfloat16_dtype())
        # .data: a view that does not require grad (cheaper than numpy(force=True))
        return (t.data if t.requires_grad else t).numpy()
    except (TypeError, RuntimeError):
        return None


def as_numpy(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    """A NumPy view of a CPU tensor (no copy), None for None; bfloat16 as an
    ``ml_dtypes.bfloat16`` view of the same memory; a tensor with the neg / conj bit
    resolved into a copy."""
    if t is None:
        return None
    a = numpy_view(t, t.dtype)
    return t.numpy(force=True) if a is None else a


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor on the memory of a NumPy array (no copy); ml_dtypes.bfloat16 arrays too
    (NumPy kind "V": torch reads them as their uint16 bits)."""
    if a.dtype.kind == "f":
        return _from_numpy(a)
    return _from_numpy(a.view(_BITS)).view(_BFLOAT16)


def needs_grad(input, weight, bias) -> bool:
    """Whether the call records a gradient: what torch.nn's norms decide with autograd."""
    return _grad_enabled() and (
        input.requires_grad
        or (weight is not None and weight.requires_grad)
        or (bias is not None and bias.requires_grad)
    )


def _fast_apply(fn: type) -> Callable[..., Any]:
    """``fn.apply`` without the Python layer of :meth:`torch.autograd.Function.apply`
    (default-argument binding, functorch checks: the callers run only outside functorch
    transforms), which costs several microseconds per call."""
    try:
        return super(torch.autograd.Function, fn).apply  # type: ignore[misc]
    except AttributeError:  # pragma: no cover - other torch versions
        return fn.apply  # type: ignore[attr-defined]


def norm_function(
    name: str, forward: Forward, backward: Backward, doc: str
) -> Tuple[Type[torch.autograd.Function], Call]:
    """(the autograd Function class ``name``, ``call(input, weight, bias, args, grad,
    arrays)``); ``arrays``: the NumPy views of (input, weight, bias) the caller made
    when it checked them (None: made here)."""

    def function_forward(ctx, input, weight, bias, args, arrays):
        x, w, b = arrays
        y, stats = forward(x, w, b, args)
        ctx.save_for_backward(input, weight)  # torch's check of in-place changes before backward
        ctx.weight = w  # a parameter's view: not converted again in backward
        ctx.stats = stats
        return as_tensor(y)

    def backward_arrays(ctx, grad_output):
        input = ctx.saved_tensors[0]
        dx, dw, db = backward(as_numpy(grad_output), as_numpy(input), ctx.weight, ctx.stats)
        need = ctx.needs_input_grad
        return (
            as_tensor(dx) if need[0] and dx is not None else None,
            as_tensor(dw) if need[1] and dw is not None else None,
            as_tensor(db) if need[2] and db is not None else None,
            None,
            None,
        )

    once = once_differentiable(backward_arrays)

    def function_backward(ctx, grad_output):
        # create_graph (grad mode on in backward): once_differentiable's double-backward
        # error; else the same without its no_grad context (nothing here records a graph)
        return once(ctx, grad_output) if _grad_enabled() else backward_arrays(ctx, grad_output)

    function = cast(
        Type[torch.autograd.Function],
        type(
            name,
            (torch.autograd.Function,),
            {
                "__doc__": doc,
                "__module__": __name__,
                "forward": staticmethod(function_forward),
                "backward": staticmethod(function_backward),
            },
        ),
    )
    apply = _fast_apply(function)

    def call(input, weight, bias, args, grad=None, arrays=None):
        # grad: needs_grad(input, weight, bias) if the caller has it already
        if grad is None:
            grad = needs_grad(input, weight, bias)
        if arrays is None:
            arrays = (as_numpy(input), as_numpy(weight), as_numpy(bias))
        if grad:
            return apply(input, weight, bias, args, arrays)
        y = forward(*arrays, args)[0]
        # inline as_tensor: no Python call more on the float32 path
        return _from_numpy(y) if y.dtype.kind == "f" else as_tensor(y)

    return function, call


# ------------------------------------------------------------------------------- norms


def _batch_norm_forward(x, weight, bias, args):
    running_mean, running_var, training, momentum, eps = args
    y, mean, invstd = CF.native_batch_norm(
        x, weight, bias, running_mean, running_var, training, momentum, eps
    )
    return y, (mean, invstd, training)


def _batch_norm_backward(dy, x, weight, stats):
    mean, invstd, training = stats
    return CF.batch_norm_backward(dy, x, weight, mean, invstd, training)


BatchNormFunction, batch_norm = norm_function(
    "BatchNormFunction",
    _lean.batch_norm_forward,
    _lean.batch_norm_backward,
    """``y = batch_norm(x)`` on the cnorm kernels: ``apply(input, weight, bias, args)``
    with CPU tensors of one float dtype, contiguous (weight/bias may be None), and
    ``args = (running_mean, running_var, training, momentum, eps)`` where the running
    statistics are NumPy views of the buffers (updated in place when ``training``) or
    None. Saves the input, the weight and the float64 mean/invstd; the backward is
    once-differentiable.""",
)


def _layer_norm_forward(x, weight, bias, args):
    normalized_shape, eps = args
    y, mean, rstd = CF.native_layer_norm(x, normalized_shape, weight, bias, eps)
    return y, (normalized_shape, mean, rstd)


def _layer_norm_backward(dy, x, weight, stats):
    normalized_shape, mean, rstd = stats
    return CF.layer_norm_backward(dy, x, normalized_shape, mean, rstd, weight)


LayerNormFunction, layer_norm = norm_function(
    "LayerNormFunction",
    _lean.layer_norm_forward,
    _lean.layer_norm_backward,
    """``y = layer_norm(x, normalized_shape, weight, bias, eps)`` on the cnorm kernels:
    ``apply(input, weight, bias, (normalized_shape, eps))`` with CPU tensors of one float
    dtype, contiguous. Saves the input, the weight and the float64 per-row mean/rstd;
    the backward is once-differentiable.""",
)


# ------------------------------------------- RMS, group and instance norm; channels-last
# a channels-last tensor reaches NumPy as an (N, C, *S) view with NHWC strides: its
# np.moveaxis(x, 1, -1) is the C-contiguous (N, *S, C) array cnorm.functional.channels_last
# takes, and moving the result back gives torch the channels-last output it expects

from ..functional import channels_last as CL  # noqa: E402
from ._lean import _first, _last  # noqa: E402


def _rms_norm_forward(x, weight, bias, args):
    normalized_shape, eps = args
    y, rrms = CF.native_rms_norm(x, normalized_shape, weight, eps)
    return y, (normalized_shape, rrms)


def _rms_norm_backward(dy, x, weight, stats):
    normalized_shape, rrms = stats
    dx, dw = CF.rms_norm_backward(dy, x, normalized_shape, rrms, weight)
    return dx, dw, None


RMSNormFunction, rms_norm = norm_function(
    "RMSNormFunction",
    _lean.rms_norm_forward,
    _lean.rms_norm_backward,
    """``y = rms_norm(x, normalized_shape, weight, eps)`` on the cnorm kernels:
    ``apply(input, weight, None, (normalized_shape, eps))`` with contiguous CPU tensors
    of one float dtype (``eps`` a number: the caller resolves torch's None). Saves the
    input, the weight and the float64 per-row 1/rms; once-differentiable.""",
)


def _on(x, channels_last):
    """(the functional module, the array it takes) for an input of either layout."""
    return (CL, _last(x)) if channels_last else (CF, x)


def _back(a, channels_last):
    return _first(a) if channels_last else a


def _group_norm_forward(x, weight, bias, args):
    num_groups, eps, channels_last = args
    api, xa = _on(x, channels_last)
    y, mean, rstd = api.native_group_norm(xa, num_groups, weight, bias, eps)
    return _back(y, channels_last), (num_groups, mean, rstd, channels_last)


def _group_norm_backward(dy, x, weight, stats):
    num_groups, mean, rstd, channels_last = stats
    api, xa = _on(x, channels_last)
    dx, dw, db = api.group_norm_backward(_on(dy, channels_last)[1], xa, num_groups, mean, rstd, weight)
    return _back(dx, channels_last), dw, db


GroupNormFunction, group_norm = norm_function(
    "GroupNormFunction",
    _lean.group_norm_forward,
    _lean.group_norm_backward,
    """``y = group_norm(x, num_groups, weight, bias, eps)`` on the cnorm kernels:
    ``apply(input, weight, bias, (num_groups, eps, channels_last))`` with CPU tensors of
    one float dtype, the input contiguous or (``channels_last=True``) channels_last /
    channels_last_3d; the output and the input gradient have the input's layout, as
    torch's. Saves the input, the weight and the float64 (N, G) mean/rstd.""",
)


def _instance_norm_forward(x, weight, bias, args):
    *inorm_args, channels_last = args  # running_mean, running_var, use_input_stats, momentum, eps
    api, xa = _on(x, channels_last)
    # channels_last: a contiguous output, as torch's (the input gradient is channels_last)
    layout = {"channels_first_output": True} if channels_last else {}
    y, mean, invstd = api.native_instance_norm(xa, weight, bias, *inorm_args, **layout)
    return _back(y, channels_last), (mean, invstd, inorm_args[2], channels_last)


def _instance_norm_backward(dy, x, weight, stats):
    mean, invstd, use_input_stats, channels_last = stats
    api, xa = _on(x, channels_last)
    dx, dw, db = api.instance_norm_backward(
        _on(dy, channels_last)[1], xa, weight, mean, invstd, use_input_stats
    )
    return _back(dx, channels_last), dw, db


InstanceNormFunction, instance_norm = norm_function(
    "InstanceNormFunction",
    _lean.instance_norm_forward,
    _lean.instance_norm_backward,
    """``y = instance_norm(x, ...)`` on the cnorm kernels: ``apply(input, weight, bias,
    (running_mean, running_var, use_input_stats, momentum, eps, channels_last))``, the
    running statistics NumPy views of the buffers (updated in place) or None. A
    channels_last input gives a contiguous output and a channels_last input gradient,
    as torch's. Saves the input, the weight and the float64 statistics.""",
)


BatchNormChannelsLastFunction, batch_norm_channels_last = norm_function(
    "BatchNormChannelsLastFunction",
    _lean.batch_norm_channels_last_forward,
    _lean.batch_norm_channels_last_backward,
    """:class:`BatchNormFunction` of a channels_last / channels_last_3d input: the
    (N*H*W, C) per-channel problem of BatchNorm1d on the input's memory, no copy; the
    output and the input gradient are channels_last, as torch's.""",
)

__all__ += [
    "RMSNormFunction",
    "rms_norm",
    "GroupNormFunction",
    "group_norm",
    "InstanceNormFunction",
    "instance_norm",
    "BatchNormChannelsLastFunction",
    "batch_norm_channels_last",
]
