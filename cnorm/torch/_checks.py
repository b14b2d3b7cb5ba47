"""What the drop-in layers check before a call runs on cnorm, once per call: the input
(:func:`_route`: dtype, device, layout, dynamo / jit-trace / functorch state, and its one
NumPy view) and the parameters and buffers (:func:`_params`: dtype, shape, contiguity,
with their NumPy views cached in the module, :class:`_ViewCache`)."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn

from ._autograd import HALF, numpy_view

__all__ = ["FLOATS"]

# the input dtypes the drop-in layers run on cnorm: the half ones (HALF: float16, and
# bfloat16 with ml_dtypes) with parameters of their dtype or all float32 (torch's mixed
# precision, see _param_dtype)
FLOATS = (torch.float32, torch.float64, *HALF)
_F32 = torch.float32
# exact types whose .numpy() is a plain view of the data (subclasses with
# __torch_function__ / __torch_dispatch__, e.g. FakeTensor or DTensor, go to torch)
_PLAIN = (torch.Tensor, nn.Parameter)
_STRIDED = torch.strided
_is_compiling = torch.compiler.is_compiling  # torch.compile (dynamo) and torch.export
_is_tracing = torch._C._is_tracing  # torch.jit.trace (scripting: see _script_forward)
_functorch_active = torch._C._are_functorch_transforms_active


# (N, C, *S) -> (N, *S, C): the axes of a channels_last / channels_last_3d array
_LAST_AXES = {4: (0, 2, 3, 1), 5: (0, 2, 3, 4, 1)}


def _route(input, dtype) -> Tuple[int, Optional[np.ndarray]]:
    """(layout, the input's NumPy view) of a call cnorm takes: layout 1 for a
    C-contiguous input, 2 for a channels_last (4-D) / channels_last_3d (5-D) one, whose
    (N, *S, C) view is C-contiguous and runs without a copy; ``(0, None)``: torch's.

    Eager: a plain dense CPU tensor of a dtype in FLOATS, outside of torch.jit tracing
    and torch.func transforms (which go to torch). CPU autocast does not come in: its
    policy casts no norm (torch 2.13's lists name none of them, each runs in its input's
    dtype there), so the call is the one without autocast. Under torch.compile /
    torch.export (dynamo traces this; the checks become guards) the view is None: the
    cnorm custom ops take the tensor (:mod:`cnorm.torch._library`); fake and functional
    tensors pass. ``dtype``: the input's."""
    if dtype not in FLOATS:
        return 0, None
    if _is_compiling():
        if input.is_cpu and input.layout == _STRIDED:
            if input.is_contiguous():
                return 1, None
            if input.dim() in (4, 5) and input.movedim(1, -1).is_contiguous():
                return 2, None
        return 0, None
    if type(input) not in _PLAIN or _is_tracing() or _functorch_active():
        return 0, None
    x = numpy_view(input, dtype)
    if x is None:  # another device or layout, the neg / conj bit
        return 0, None
    if x.flags.c_contiguous:
        return 1, x
    axes = _LAST_AXES.get(x.ndim)
    if axes is not None and x.transpose(axes).flags.c_contiguous:
        return 2, x
    return 0, None


class _ViewCache:
    """A module's NumPy views of the parameters and buffers one call checked, and what
    they were checked as (dtype, shape): a call with the same tensor objects at the same
    addresses and shapes reuses them (the views follow in-place changes, so only a
    replaced tensor, ``.data =``, ``.to()`` or a resize makes new ones). Not copied or
    pickled with the module: a copy starts empty."""

    __slots__ = ("key", "tensors", "stamps", "views")

    def __init__(self, key=None, tensors=(), stamps=(), views=None) -> None:
        self.key = key
        self.tensors = tensors
        self.stamps = stamps
        self.views = views

    def __reduce__(self):
        return (_ViewCache, ())


def _stamp(t):
    """What tells a tensor's memory from another's: its address and size (a shape change
    at the same address keeps the elements in the same order)."""
    return None if t is None else (t.data_ptr(), t.numel())


def _views(module, dtype, shape, tensors) -> Optional[list]:
    """NumPy views of ``module``'s ``tensors`` (None stays None) for an input of
    ``dtype`` if each is a plain C-contiguous CPU tensor of the parameter dtype
    (:func:`_param_dtype` of the first one that is not None) and ``shape``, else None
    (torch's forward takes the call); cached in the module (:class:`_ViewCache`, whose
    hits :func:`_params` finds without this call)."""
    pdt = _param_dtype(dtype, next((t for t in tensors if t is not None), None))
    views: list = []
    for t in tensors:
        if t is None:
            views.append(None)
            continue
        if type(t) not in _PLAIN or t.dtype is not pdt:
            return None
        a = numpy_view(t, pdt)
        if a is None or a.shape != shape or not a.flags.c_contiguous:
            return None
        views.append(a)
    stamps = tuple(map(_stamp, tensors))
    module.__dict__["_cnorm_views"] = _ViewCache((dtype, shape), tuple(tensors), stamps, views)
    return views


def _param_dtype(dtype, first) -> torch.dtype:
    """The dtype all parameters (weight, bias, running stats) of an input of ``dtype``
    need for cnorm: its own, or float32 if a half input's first parameter ``first`` is
    (torch's mixed precision); any other mix goes to torch, which computes or raises it."""
    if first is not None and first.dtype is _F32 and dtype in HALF:
        return _F32
    return dtype


def _traced_ok(t, dtype, shape) -> bool:
    """Under torch.compile / torch.export: ``t`` is None or a dense C-contiguous CPU
    tensor of ``dtype`` and ``shape`` (the tensors traced are fake ones)."""
    return t is None or (
        t.dtype == dtype and t.is_cpu and t.layout == _STRIDED and t.is_contiguous() and t.shape == shape
    )


def _params(module, x, dtype, shape, tensors):
    """The NumPy views of a call's parameter tensors (eager, ``x`` the input's view), or
    True under torch.compile (``x`` None) when they suit the custom ops; None: torch's.
    ``dtype``: the input's (the parameters': :func:`_param_dtype`)."""
    if x is not None:
        cache = module.__dict__.get("_cnorm_views")  # _views' cache hit, inlined
        if cache is not None and cache.key == (dtype, shape):
            for t, c, stamp in zip(tensors, cache.tensors, cache.stamps):
                if t is not c or (t is not None and (t.data_ptr() != stamp[0] or t.numel() != stamp[1])):
                    break
            else:
                return cache.views
        return _views(module, dtype, shape, tensors)
    pdt = _param_dtype(dtype, next((t for t in tensors if t is not None), None))
    return all(_traced_ok(t, pdt, shape) for t in tensors) or None
