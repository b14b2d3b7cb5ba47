"""RMSNorm on NumPy arrays with torch.nn semantics."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from .. import _ops as ops
from .._validate import check_flag, check_normalized_shape, check_real, rms_dims
from ._base import Module


class RMSNorm(Module):
    r"""Root-mean-square layer normalization over the trailing ``normalized_shape`` dims,
    as :class:`torch.nn.RMSNorm`.

    .. math:: y = \frac{x}{\sqrt{\mathrm{E}[x^2] + \epsilon}} \gamma

    per row of ``D = prod(normalized_shape)`` elements; ``weight`` (:math:`\gamma`, ones)
    has shape ``normalized_shape``; there is no bias. ``eps=None`` (the default) means
    ``np.finfo(dtype).eps``, as in torch.

    Shape: input ``(*, *normalized_shape)``, output the same.

    Example::

        >>> m = RMSNorm(1024)
        >>> x = np.random.default_rng(0).standard_normal((2, 16, 1024)).astype(np.float32)
        >>> y = m(x)
        >>> bool(np.allclose((y * y).mean(-1), 1, atol=1e-4))  # unit mean square per row
        True
    """

    _param_names = ("weight",)
    _repr_format = "{normalized_shape}, eps={eps}, elementwise_affine={elementwise_affine}"

    def __init__(
        self,
        normalized_shape: Union[int, Sequence[int]],
        eps: Optional[float] = None,
        elementwise_affine: bool = True,
        dtype=np.float32,
    ) -> None:
        super().__init__(dtype)
        self.normalized_shape = check_normalized_shape(normalized_shape)
        self.eps = check_real(eps, "eps", optional=True)
        self.elementwise_affine = elementwise_affine = check_flag(elementwise_affine, "elementwise_affine")
        self._init_params(self.normalized_shape, elementwise_affine)

    def forward(self, input: np.ndarray) -> np.ndarray:
        """Normalize ``input``; see :func:`cnorm.functional.rms_norm`."""
        x = self._input(input)
        m, d = rms_dims(x, self.normalized_shape)
        y, rrms = ops.rms_norm_forward(x, m, d, self.weight, self.eps)
        self._saved = (x, m, d, rrms)
        self._forward_seen = True
        return y

    def _backward(self, dy, saved):
        x, m, d, rrms = saved
        dx, dw = ops.rms_norm_backward(dy, x, self.normalized_shape, m, d, rrms, self.weight)
        return dx, dw, None  # no bias
