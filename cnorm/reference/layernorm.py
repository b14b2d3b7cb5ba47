"""Reference row norms over the trailing ``normalized_shape`` dims (the twins of
:mod:`cnorm.functional.layer_norm`), in float64 NumPy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np

from .._twins import same_signature
from ..functional import layernorm as F
from .batchnorm import Array, f64

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, DTypeLike

    from .._validate import ShapeLike

__all__ = F.__all__  # the same names (and signatures: same_signature)


def shape_tuple(normalized_shape: ShapeLike) -> Tuple[int, ...]:
    if isinstance(normalized_shape, (int, np.integer)):
        return (int(normalized_shape),)
    return tuple(int(d) for d in normalized_shape)


def row_axes(x: Array, normalized_shape: ShapeLike) -> Tuple[int, ...]:
    """The trailing axes a row norm reduces over."""
    k = len(shape_tuple(normalized_shape))
    return tuple(range(x.ndim - k, x.ndim))


def _rows(stat: ArrayLike, x: Array, axes: Tuple[int, ...]) -> Array:
    """A per-row statistic (shape x.shape[:-k]) shaped to broadcast against x."""
    return f64(stat).reshape(x.shape[: x.ndim - len(axes)] + (1,) * len(axes))


@same_signature(F.native_layer_norm)
def native_layer_norm(input, normalized_shape, weight, bias, eps):
    """``(y, mean, rstd)``; an empty row has NaN statistics."""
    x = f64(input)
    axes = row_axes(x, normalized_shape)
    lead = x.shape[: x.ndim - len(axes)]
    if x.size == 0:
        return np.zeros(x.shape), np.full(lead, np.nan), np.full(lead, np.nan)
    mean = np.mean(x, axis=axes, keepdims=True)
    var = np.mean((x - mean) ** 2, axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean) * rstd
    if weight is not None:
        y = y * f64(weight)
    if bias is not None:
        y = y + f64(bias)
    return y, mean.reshape(lead), rstd.reshape(lead)


@same_signature(F.layer_norm)
def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    return native_layer_norm(input, normalized_shape, weight, bias, eps)[0]


@same_signature(F.layer_norm_backward)
def layer_norm_backward(grad_output, input, normalized_shape, mean, rstd, weight):
    """``(dx, dweight, dbias)``: per row, with ``g = dy * weight``,
    ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``."""
    dy, x = f64(grad_output), f64(input)
    shape = shape_tuple(normalized_shape)
    axes = row_axes(x, shape)
    lead_axes = tuple(range(x.ndim - len(axes)))
    if x.size == 0:
        return np.zeros(x.shape), np.zeros(shape), np.zeros(shape)
    rstd = _rows(rstd, x, axes)
    xhat = (x - _rows(mean, x, axes)) * rstd
    dweight = np.sum(dy * xhat, axis=lead_axes)
    dbias = np.sum(dy, axis=lead_axes)
    g = dy * (np.ones(shape) if weight is None else f64(weight))
    dx = rstd * (
        g - np.mean(g, axis=axes, keepdims=True) - xhat * np.mean(g * xhat, axis=axes, keepdims=True)
    )
    return dx, dweight, dbias


# ---------------------------------------------------------------------------- RMS norm


def rms_eps(eps: Optional[float], dtype: DTypeLike) -> float:
    """eps=None: the machine epsilon of the INPUT dtype (torch's default)."""
    return float(np.finfo(dtype).eps) if eps is None else float(eps)


@same_signature(F.native_rms_norm)
def native_rms_norm(input, normalized_shape, weight, eps):
    """``(y, rrms)``: ``y = x * rrms * weight``, ``rrms = 1/sqrt(mean(x**2) + eps)``."""
    eps = rms_eps(eps, np.asarray(input).dtype)
    x = f64(input)
    axes = row_axes(x, normalized_shape)
    lead = x.shape[: x.ndim - len(axes)]
    if x.size == 0:
        return np.zeros(x.shape), np.full(lead, np.nan)
    rrms = 1.0 / np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + eps)
    y = x * rrms
    if weight is not None:
        y = y * f64(weight)
    return y, rrms.reshape(lead)


@same_signature(F.rms_norm)
def rms_norm(input, normalized_shape, weight=None, eps=None):
    return native_rms_norm(input, normalized_shape, weight, eps)[0]


@same_signature(F.rms_norm_backward)
def rms_norm_backward(grad_output, input, normalized_shape, rrms, weight):
    """``(dx, dweight)``: per row, with ``r = rrms``, ``xhat = x * r`` and
    ``g = dy * weight``: ``dx = r * (g - xhat * mean(g * xhat))``."""
    dy, x = f64(grad_output), f64(input)
    shape = shape_tuple(normalized_shape)
    axes = row_axes(x, shape)
    lead_axes = tuple(range(x.ndim - len(axes)))
    if x.size == 0:
        return np.zeros(x.shape), np.zeros(shape)
    r = _rows(rrms, x, axes)
    xhat = x * r
    dweight = np.sum(dy * xhat, axis=lead_axes)
    g = dy * (np.ones(shape) if weight is None else f64(weight))
    dx = r * (g - xhat * np.mean(g * xhat, axis=axes, keepdims=True))
    return dx, dweight


# ------------------------------------------------------ fused residual add + layer norm


@same_signature(F.native_add_layer_norm)
def native_add_layer_norm(input, residual, normalized_shape, weight, bias, eps):
    """``(y, s, mean, rstd)``: ``s = input + residual`` is formed IN THE INPUT DTYPE (it
    is an output of the fused op, stored in that dtype, as ``x + r`` in torch), then
    ``y = layer_norm(s)`` in float64."""
    s = f64(np.asarray(input) + np.asarray(residual))
    y, mean, rstd = native_layer_norm(s, normalized_shape, weight, bias, eps)
    return y, s, mean, rstd


@same_signature(F.add_layer_norm)
def add_layer_norm(input, residual, normalized_shape, weight=None, bias=None, eps=1e-5):
    y, s, _, _ = native_add_layer_norm(input, residual, normalized_shape, weight, bias, eps)
    return y, s


@same_signature(F.add_layer_norm_backward)
def add_layer_norm_backward(grad_output, grad_sum, s, normalized_shape, mean, rstd, weight):
    """``(ds, dweight, dbias)``: the layer-norm backward at ``s`` plus ``grad_sum``
    (None: 0); ``ds`` is the gradient of both the input and the residual."""
    ds, dweight, dbias = layer_norm_backward(grad_output, s, normalized_shape, mean, rstd, weight)
    if grad_sum is not None:
        ds = ds + f64(grad_sum)
    return ds, dweight, dbias
