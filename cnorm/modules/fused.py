"""Fused layers: residual add + LayerNorm (ONNX Runtime's SkipLayerNormalization) and
BatchNorm + ReLU (oneDNN's fuse_norm_relu), with the API of the other cnorm modules.

Both keep a reference to an OUTPUT of their forward until ``backward()`` (the sum ``s``
for :class:`AddLayerNorm`, ``y`` for the BatchNormReLU modules), as the input is kept:
modify that array in place in between and the gradient follows the change.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .. import _ops as ops
from .._validate import check_same, layer_dims
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .layernorm import LayerNorm


class AddLayerNorm(LayerNorm):
    r"""``s = x + residual; y = LayerNorm(s)`` in one pass over memory (ONNX Runtime's
    SkipLayerNormalization): the pre-norm residual step of a transformer block.

    Same constructor, parameters and state as :class:`~cnorm.LayerNorm`.
    ``forward(x, residual)`` returns ``(y, s)``; ``backward(dy, dsum=None)`` returns the
    gradient w.r.t. ``x``, which is also the gradient w.r.t. ``residual`` (returned once):
    the layer-norm input gradient plus ``dsum``, the gradient reaching ``s`` from its other
    uses (None = 0).

    Example::

        >>> m = AddLayerNorm(768)
        >>> rng = np.random.default_rng(0)
        >>> x, r = rng.standard_normal((2, 4, 16, 768)).astype(np.float32)
        >>> y, s = m(x, r)
        >>> dx = m.backward(np.ones_like(y))    # == the gradient of r
    """

    # the override ignores: a fused layer takes the residual too and returns (y, s), by design
    def __call__(self, input: np.ndarray, residual: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        return self.forward(input, residual)

    def forward(self, input: np.ndarray, residual: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        """``(layer_norm(input + residual), input + residual)``; see
        :func:`cnorm.functional.add_layer_norm`."""
        x = self._input(input)
        r = check_same(residual, x, "residual", "the input")
        m, d = layer_dims(x, self.normalized_shape)
        y, s, mean, rstd = ops.add_layer_norm_forward(x, r, m, d, self.weight, self.bias, self.eps)
        self._saved = (s, m, d, mean, rstd)
        self._forward_seen = True
        return y, s

    def backward(self, grad_output: np.ndarray, grad_sum: Optional[np.ndarray] = None) -> np.ndarray:
        """Gradient w.r.t. ``input`` (== w.r.t. ``residual``) of the latest forward, given
        the gradients of ``y`` and (optionally) of ``s``; accumulates ``weight_grad`` and
        ``bias_grad``."""
        saved, dy = self._saved_and_grad(grad_output)
        s, m, d, mean, rstd = saved
        try:
            dsum = None if grad_sum is None else check_same(grad_sum, s, "grad_sum", "the sum")
        except Exception:
            self._saved = saved  # a bad call frees nothing
            raise
        dx, dw, db = ops.add_layer_norm_backward(
            dy, dsum, s, self.normalized_shape, m, d, mean, rstd, self.weight
        )
        self._accumulate(dw, db)
        return dx


class _BatchNormReLU:
    """Mixin over a BatchNormXd: ``relu(batch_norm(x))`` fused in the same passes (forward
    and backward), same state and semantics; the backward passes the gradient where the
    output is positive."""

    _relu = True


class BatchNormReLU1d(_BatchNormReLU, BatchNorm1d):
    r"""``relu(BatchNorm1d(x))`` in one pass: the constructor, state, ``state_dict`` and
    input shapes of :class:`~cnorm.BatchNorm1d`; ``backward`` passes the gradient only
    where the output is positive.

    Example::

        >>> m = BatchNormReLU1d(64)
        >>> y = m(np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32))
        >>> bool((y >= 0).all())
        True
    """


class BatchNormReLU2d(_BatchNormReLU, BatchNorm2d):
    r"""``relu(BatchNorm2d(x))`` in one pass; see :class:`BatchNormReLU1d`.

    Example::

        >>> m = BatchNormReLU2d(64)
        >>> y = m(np.random.default_rng(0).standard_normal((8, 64, 7, 7)).astype(np.float32))
    """


class BatchNormReLU3d(_BatchNormReLU, BatchNorm3d):
    r"""``relu(BatchNorm3d(x))`` in one pass; see :class:`BatchNormReLU1d`."""
