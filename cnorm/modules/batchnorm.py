"""BatchNorm1d/2d/3d on NumPy arrays with torch.nn semantics.

``_BatchNorm`` owns the state; the subclasses only check the input's number of dims;
the arithmetic is in the kernels beneath :mod:`cnorm._ops`.
"""

from __future__ import annotations

from typing import Optional, cast

import numpy as np

from .. import _ops as ops
from .._validate import batch_dims, check_array, check_eval_eps, check_flag, check_real, check_size
from ._base import Module


class _BatchNorm(Module):
    _param_names = ("weight", "bias")
    _buffer_names = ("running_mean", "running_var", "num_batches_tracked")
    _relu = False  # True in the fused BatchNormReLU subclasses: y = max(0, batch_norm(x))
    _repr_format = (
        "{num_features}, eps={eps}, momentum={momentum}, affine={affine}, bias={has_bias}, "
        "track_running_stats={track_running_stats}"
    )

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        dtype=np.float32,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(dtype)
        self.num_features = check_size(num_features, "num_features")
        self.eps = check_real(eps, "eps")
        self.momentum = check_real(momentum, "momentum", optional=True)
        self.affine = affine = check_flag(affine, "affine")
        self.track_running_stats = track_running_stats = check_flag(
            track_running_stats, "track_running_stats"
        )
        bias = check_flag(bias, "bias")
        c, dt = self.num_features, self.dtype
        self._init_params((c,), affine, bias)
        if track_running_stats:
            self.running_mean: Optional[np.ndarray] = np.zeros(c, dt)
            self.running_var: Optional[np.ndarray] = np.ones(c, dt)
            self.num_batches_tracked: Optional[int] = 0
        else:
            self.running_mean = self.running_var = None
            self.num_batches_tracked = None

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            cast(np.ndarray, self.running_mean).fill(0)  # arrays with track_running_stats
            cast(np.ndarray, self.running_var).fill(1)
            self.num_batches_tracked = 0

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        super().reset_parameters()

    def _check_input_dim(self, ndim: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, input: np.ndarray) -> np.ndarray:
        r"""Normalize ``input`` of shape ``(N, C, *)`` per channel; see :func:`cnorm.functional.batch_norm`."""
        x = check_array(input)
        self._check_input_dim(x.ndim)
        if x.dtype != self.dtype:
            raise TypeError(f"input dtype {x.dtype} does not match the module dtype {self.dtype}")
        n, c, s = batch_dims(x)
        if c != self.num_features:
            raise ValueError(
                f"expected input with {self.num_features} channels (num_features), "
                f"got input of shape {x.shape}"
            )
        batch_stats = self.training or self.running_mean is None
        if self.training and self.track_running_stats:
            nbt = cast(int, self.num_batches_tracked) + 1  # an int with track_running_stats
            y, mean, invstd = ops.batch_norm_train(
                x,
                n,
                c,
                s,
                self.weight,
                self.bias,
                self.running_mean,
                self.running_var,
                ops.momentum_factor(self.momentum, nbt),
                self.eps,
                self._relu,
            )
            self.num_batches_tracked = nbt
        elif batch_stats:
            # no running statistics to update (or, in eval, to use: the batch's own, as torch)
            y, mean, invstd = ops.batch_norm_train(
                x, n, c, s, self.weight, self.bias, None, None, 0.0, self.eps, self._relu
            )
        else:
            check_eval_eps(self.eps)
            # running_mean is not None here; a None running_var gets the kernel's ValueError
            rm, rv = cast(np.ndarray, self.running_mean), cast(np.ndarray, self.running_var)
            y, mean, invstd = ops.batch_norm_eval(
                x, n, c, s, self.weight, self.bias, rm, rv, self.eps, self._relu
            )
        # the fused ReLU's backward needs its output (a reference, no copy)
        self._saved = (x, y if self._relu else None, n, c, s, mean, invstd, batch_stats)
        self._forward_seen = True
        return y

    def _backward(self, dy, saved):
        x, y, n, c, s, mean, invstd, batch_stats = saved
        # the batch statistics (their gradient terms) or the running ones (constants)
        return ops.batch_norm_backward(dy, x, n, c, s, self.weight, mean, invstd, batch_stats, y)


class BatchNorm1d(_BatchNorm):
    r"""Batch normalization over a 2D ``(N, C)`` or 3D ``(N, C, L)`` input, as
    :class:`torch.nn.BatchNorm1d`.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Mean and variance are per channel over ``N`` (and ``L``); the variance is the biased
    one for normalizing and the unbiased one for ``running_var``. Running statistics:
    ``running = (1 - momentum) * running + momentum * batch``; ``momentum=None`` is a
    cumulative average.

    Example::

        >>> m = BatchNorm1d(100)
        >>> x = np.random.default_rng(0).standard_normal((20, 100)).astype(np.float32)
        >>> y = m(x)
        >>> dx = m.backward(np.ones_like(y))
    """

    def _check_input_dim(self, ndim: int) -> None:
        if ndim != 2 and ndim != 3:
            raise ValueError(f"expected 2D or 3D input (got {ndim}D input)")


class BatchNorm2d(_BatchNorm):
    r"""Batch normalization over a 4D ``(N, C, H, W)`` input, as :class:`torch.nn.BatchNorm2d`.

    Same formula and running statistics as :class:`BatchNorm1d`; statistics per channel
    over ``(N, H, W)``.

    Example::

        >>> m = BatchNorm2d(64)
        >>> y = m(np.zeros((8, 64, 7, 7), np.float32))
    """

    def _check_input_dim(self, ndim: int) -> None:
        if ndim != 4:
            raise ValueError(f"expected 4D input (got {ndim}D input)")


class BatchNorm3d(_BatchNorm):
    r"""Batch normalization over a 5D ``(N, C, D, H, W)`` input, as :class:`torch.nn.BatchNorm3d`.

    Example::

        >>> m = BatchNorm3d(16, dtype=np.float64)
        >>> y = m(np.zeros((2, 16, 4, 8, 8)))
    """

    def _check_input_dim(self, ndim: int) -> None:
        if ndim != 5:
            raise ValueError(f"expected 5D input (got {ndim}D input)")
