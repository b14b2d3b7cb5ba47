"""LayerNorm on NumPy arrays with torch.nn semantics."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from .. import _ops as ops
from .._validate import check_flag, check_normalized_shape, check_real, layer_dims
from ._base import Module


class LayerNorm(Module):
    r"""Layer normalization over the trailing ``normalized_shape`` dims, as
    :class:`torch.nn.LayerNorm`.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Mean and (biased) variance per row of ``D = prod(normalized_shape)`` elements;
    ``weight`` (:math:`\gamma`, ones) and ``bias`` (:math:`\beta`, zeros) have shape
    ``normalized_shape``. The same in training and eval.

    Shape: input ``(*, *normalized_shape)``, output the same.

    Example::

        >>> m = LayerNorm(768)
        >>> x = np.random.default_rng(0).standard_normal((4, 128, 768)).astype(np.float32)
        >>> y = m(x)
        >>> dx = m.backward(np.ones_like(y))
    """

    _param_names = ("weight", "bias")
    _repr_format = "{normalized_shape}, eps={eps}, elementwise_affine={elementwise_affine}, bias={has_bias}"

    def __init__(
        self,
        normalized_shape: Union[int, Sequence[int]],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        dtype=np.float32,
    ) -> None:
        super().__init__(dtype)
        self.normalized_shape = check_normalized_shape(normalized_shape)
        self.eps = check_real(eps, "eps")
        self.elementwise_affine = elementwise_affine = check_flag(elementwise_affine, "elementwise_affine")
        bias = check_flag(bias, "bias")
        self._init_params(self.normalized_shape, elementwise_affine, bias)

    def forward(self, input: np.ndarray) -> np.ndarray:
        """Normalize ``input``; see :func:`cnorm.functional.layer_norm`."""
        x = self._input(input)
        m, d = layer_dims(x, self.normalized_shape)
        y, mean, rstd = ops.layer_norm_forward(x, m, d, self.weight, self.bias, self.eps)
        self._saved = (x, m, d, mean, rstd)
        self._forward_seen = True
        return y

    def _backward(self, dy, saved):
        x, m, d, mean, rstd = saved
        return ops.layer_norm_backward(dy, x, self.normalized_shape, m, d, mean, rstd, self.weight)
