"""GroupNorm on NumPy arrays with torch.nn semantics."""

from __future__ import annotations

import numpy as np

from .. import _ops as ops
from .._validate import check_flag, check_num_groups, check_param, check_real, check_size, group_dims
from ._base import Module


class GroupNorm(Module):
    r"""Group normalization, as :class:`torch.nn.GroupNorm`.

    The ``num_channels`` channels are split into ``num_groups`` groups of
    ``num_channels / num_groups`` consecutive channels; every sample's group is normalized
    with its own mean and (biased) variance over its channels and spatial positions:

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    ``weight`` (:math:`\gamma`, ones) and ``bias`` (:math:`\beta`, zeros) are per channel
    (``affine=True``). The same in training and eval.

    Shape: input ``(N, C, *)``, output the same.

    Example::

        >>> m = GroupNorm(32, 256)
        >>> x = np.random.default_rng(0).standard_normal((4, 256, 14, 14)).astype(np.float32)
        >>> y = m(x)
        >>> bool(np.allclose(y.reshape(4, 32, -1).mean(-1), 0, atol=1e-5))  # per (sample, group)
        True
    """

    _param_names = ("weight", "bias")
    _repr_format = "{num_groups}, {num_channels}, eps={eps}, affine={affine}, bias={has_bias}"

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        dtype=np.float32,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(dtype)
        num_channels = check_size(num_channels, "num_channels")
        groups = check_num_groups(num_groups)
        if num_channels % groups != 0:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        self.num_groups = groups
        self.num_channels = num_channels
        self.eps = check_real(eps, "eps")
        self.affine = affine = check_flag(affine, "affine")
        bias = check_flag(bias, "bias")
        self._init_params((num_channels,), affine, bias)

    def forward(self, input: np.ndarray) -> np.ndarray:
        """Normalize ``input`` ``(N, C, *)``; see :func:`cnorm.functional.group_norm`."""
        x = self._input(input)
        n, g, cg, s = group_dims(x, self.num_groups)
        # like torch, the channel count is only checked through weight / bias
        weight = check_param(self.weight, "weight", (g * cg,), x.dtype, "channels", input_shape=x.shape)
        bias = check_param(self.bias, "bias", (g * cg,), x.dtype, "channels", input_shape=x.shape)
        y, mean, rstd, _ = ops.group_norm_forward(x, n, g, cg, s, weight, bias, self.eps)
        self._saved = (x, n, g, cg, s, mean, rstd)
        self._forward_seen = True
        return y

    def _backward(self, dy, saved):
        x, n, g, cg, s, mean, rstd = saved
        return ops.group_norm_backward(dy, x, n, g, cg, s, mean, rstd, self.weight)
