"""Row norms over the trailing ``normalized_shape`` dims: layer norm, RMS norm, and the
fused residual add + layer norm (ONNX Runtime's SkipLayerNormalization)."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .. import _ops
from .._validate import (
    Array,
    ShapeLike,
    check_array,
    check_grad,
    check_normalized_shape,
    check_param,
    check_real,
    check_same,
    layer_dims,
    param_dtype,
    rms_dims,
)

__all__ = [
    "layer_norm",
    "native_layer_norm",
    "layer_norm_backward",
    "rms_norm",
    "native_rms_norm",
    "rms_norm_backward",
    "add_layer_norm",
    "native_add_layer_norm",
    "add_layer_norm_backward",
]


def _rows(input: Array, normalized_shape: ShapeLike, dims, name: str = "input"):
    """``(x, shape, M, D)``: the input checked, ``normalized_shape`` as a tuple, and the
    number and length of the rows (``dims``: layer_dims or rms_dims, their messages)."""
    x = check_array(input, name)
    shape = check_normalized_shape(normalized_shape)
    m, d = dims(x, shape)
    return x, shape, m, d


def native_layer_norm(
    input: Array,
    normalized_shape: ShapeLike,
    weight: Optional[Array],
    bias: Optional[Array],
    eps: float,
) -> Tuple[Array, Array, Array]:
    r"""Layer normalization over the trailing ``normalized_shape`` dims.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Returns:
        ``(output, mean, rstd)``; ``mean`` and ``rstd`` are float64 arrays of shape
        ``input.shape[:-len(normalized_shape)]``.
    """
    x, shape, m, d = _rows(input, normalized_shape, layer_dims)
    check_real(eps, "eps")
    dtype = param_dtype(x.dtype, (weight, bias))
    weight = check_param(weight, "weight", shape, dtype, "normalized_shape")
    bias = check_param(bias, "bias", shape, dtype, "normalized_shape")
    y, mean, rstd = _ops.layer_norm_forward(x, m, d, weight, bias, eps)
    lead = x.shape[: x.ndim - len(shape)]
    return y, mean.reshape(lead), rstd.reshape(lead)


def layer_norm(
    input: Array,
    normalized_shape: ShapeLike,
    weight: Optional[Array] = None,
    bias: Optional[Array] = None,
    eps: float = 1e-5,
) -> Array:
    r"""Layer normalization, as :func:`torch.nn.functional.layer_norm`.

    Example::

        >>> x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)
        >>> y = layer_norm(x, (16,))
        >>> bool(np.allclose(y.mean(-1), 0, atol=1e-6))
        True
    """
    return native_layer_norm(input, normalized_shape, weight, bias, eps)[0]


def layer_norm_backward(
    grad_output: Array,
    input: Array,
    normalized_shape: ShapeLike,
    mean: Array,
    rstd: Array,
    weight: Optional[Array],
) -> Tuple[Array, Array, Array]:
    r"""Gradients of :func:`native_layer_norm`: per row, with :math:`g = dy\,\gamma`,
    :math:`dx = \sigma^{-1}(g - \overline{g} - \hat x\,\overline{g\,\hat x})`;
    :math:`d\gamma = \sum_{rows} dy\,\hat x`, :math:`d\beta = \sum_{rows} dy`.

    Returns:
        ``(grad_input, grad_weight, grad_bias)``, the last two of shape ``normalized_shape``.
    """
    x, shape, m, d = _rows(input, normalized_shape, layer_dims)
    dy = check_grad(grad_output, x)
    weight = check_param(weight, "weight", shape, param_dtype(x.dtype, (weight,)), "normalized_shape")
    mean = check_param(np.reshape(mean, -1), "mean", (m,), None)
    rstd = check_param(np.reshape(rstd, -1), "rstd", (m,), None)
    return _ops.layer_norm_backward(dy, x, shape, m, d, mean, rstd, weight)


# ---------------------------------------------------------------------------- RMS norm


def native_rms_norm(
    input: Array,
    normalized_shape: ShapeLike,
    weight: Optional[Array],
    eps: Optional[float],
) -> Tuple[Array, Array]:
    r"""RMS normalization over the trailing ``normalized_shape`` dims:

    .. math:: y = \frac{x}{\sqrt{\mathrm{E}[x^2] + \epsilon}} \gamma

    ``eps=None`` is ``np.finfo(input.dtype).eps`` (torch's default).

    Returns:
        ``(output, rrms)``: ``rrms = 1/sqrt(mean(x**2) + eps)``, float64 of shape
        ``input.shape[:-len(normalized_shape)]``.
    """
    x, shape, m, d = _rows(input, normalized_shape, rms_dims)
    check_real(eps, "eps", optional=True)
    weight = check_param(weight, "weight", shape, param_dtype(x.dtype, (weight,)), "normalized_shape")
    y, rrms = _ops.rms_norm_forward(x, m, d, weight, eps)
    return y, rrms.reshape(x.shape[: x.ndim - len(shape)])


def rms_norm(
    input: Array,
    normalized_shape: ShapeLike,
    weight: Optional[Array] = None,
    eps: Optional[float] = None,
) -> Array:
    r"""RMS normalization, as :func:`torch.nn.functional.rms_norm`.

    Example::

        >>> x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
        >>> y = rms_norm(x, (64,))
        >>> bool(np.allclose((y * y).mean(-1), 1, atol=1e-5))
        True
    """
    return native_rms_norm(input, normalized_shape, weight, eps)[0]


def rms_norm_backward(
    grad_output: Array,
    input: Array,
    normalized_shape: ShapeLike,
    rrms: Array,
    weight: Optional[Array],
) -> Tuple[Array, Array]:
    r"""Gradients of :func:`native_rms_norm`: per row, with :math:`r` = ``rrms``,
    :math:`\hat x = x r` and :math:`g = dy\,\gamma`,
    :math:`dx = r\,(g - \hat x\,\overline{g\,\hat x})`; :math:`d\gamma = \sum_{rows} dy\,\hat x`.

    Returns:
        ``(grad_input, grad_weight)``, the latter of shape ``normalized_shape`` and the
        input dtype (computed even when ``weight`` is None).
    """
    x, shape, m, d = _rows(input, normalized_shape, rms_dims)
    dy = check_grad(grad_output, x)
    weight = check_param(weight, "weight", shape, param_dtype(x.dtype, (weight,)), "normalized_shape")
    rrms = check_param(np.reshape(rrms, -1), "rrms", (m,), None)
    return _ops.rms_norm_backward(dy, x, shape, m, d, rrms, weight)


# ------------------------------------------------------ fused residual add + layer norm


def native_add_layer_norm(
    input: Array,
    residual: Array,
    normalized_shape: ShapeLike,
    weight: Optional[Array],
    bias: Optional[Array],
    eps: float,
) -> Tuple[Array, Array, Array, Array]:
    r"""``s = input + residual`` and ``y = layer_norm(s)`` in one pass over memory.

    Returns:
        ``(output, sum, mean, rstd)``: the layer norm of the sum, the sum itself (a new
        array of the input dtype: the residual stream of a transformer block) and the
        float64 row statistics of shape ``input.shape[:-len(normalized_shape)]``.
    """
    x = check_array(input)
    r = check_same(residual, x, "residual", "the input")
    shape = check_normalized_shape(normalized_shape)
    m, d = layer_dims(x, shape)
    check_real(eps, "eps")
    dtype = param_dtype(x.dtype, (weight, bias))
    weight = check_param(weight, "weight", shape, dtype, "normalized_shape")
    bias = check_param(bias, "bias", shape, dtype, "normalized_shape")
    y, s, mean, rstd = _ops.add_layer_norm_forward(x, r, m, d, weight, bias, eps)
    lead = x.shape[: x.ndim - len(shape)]
    return y, s, mean.reshape(lead), rstd.reshape(lead)


def add_layer_norm(
    input: Array,
    residual: Array,
    normalized_shape: ShapeLike,
    weight: Optional[Array] = None,
    bias: Optional[Array] = None,
    eps: float = 1e-5,
) -> Tuple[Array, Array]:
    r"""Fused residual add + layer norm (ONNX Runtime's SkipLayerNormalization):
    returns ``(layer_norm(input + residual), input + residual)``, what
    ``s = x + r; y = torch.nn.functional.layer_norm(s, ...)`` computes, with one read of
    ``x`` and ``r`` instead of three passes.

    Example::

        >>> rng = np.random.default_rng(0)
        >>> x, r = rng.standard_normal((2, 2, 8, 16)).astype(np.float32)
        >>> y, s = add_layer_norm(x, r, (16,))
        >>> bool(np.array_equal(s, x + r)), bool(np.allclose(y, layer_norm(x + r, (16,))))
        (True, True)
    """
    y, s, _, _ = native_add_layer_norm(input, residual, normalized_shape, weight, bias, eps)
    return y, s


def add_layer_norm_backward(
    grad_output: Array,
    grad_sum: Optional[Array],
    s: Array,
    normalized_shape: ShapeLike,
    mean: Array,
    rstd: Array,
    weight: Optional[Array],
) -> Tuple[Array, Array, Array]:
    r"""Gradients of :func:`native_add_layer_norm`.

    Args:
        grad_output: gradient w.r.t. the normalized output.
        grad_sum: gradient w.r.t. the ``sum`` output (None when the sum is not used
            further, i.e. zero).
        s, mean, rstd: the ``sum``, ``mean`` and ``rstd`` returned by the forward.

    Returns:
        ``(grad_input, grad_weight, grad_bias)``: ``grad_input`` is the layer-norm input
        gradient at ``sum`` plus ``grad_sum``, and is the gradient of BOTH ``input`` and
        ``residual`` (returned once; use it for both). ``grad_weight``/``grad_bias`` have
        shape ``normalized_shape``.
    """
    s, shape, m, d = _rows(s, normalized_shape, layer_dims, "s")
    dy = check_same(grad_output, s, "grad_output", "the sum")
    dsum = None if grad_sum is None else check_same(grad_sum, s, "grad_sum", "the sum")
    weight = check_param(weight, "weight", shape, param_dtype(s.dtype, (weight,)), "normalized_shape")
    mean = check_param(np.reshape(mean, -1), "mean", (m,), None)
    rstd = check_param(np.reshape(rstd, -1), "rstd", (m,), None)
    return _ops.add_layer_norm_backward(dy, dsum, s, shape, m, d, mean, rstd, weight)
