"""InstanceNorm1d/2d/3d on NumPy arrays with torch.nn semantics.

The state (weight, bias, running statistics) is that of the batch norms (torch's
``_NormBase``); the arithmetic is group norm with one group per channel
(:func:`cnorm.functional.instance_norm`), or a batch-norm eval when the running
statistics are used.
"""

from __future__ import annotations

import warnings
from typing import Any, List, Mapping, Tuple, cast

import numpy as np

from .. import _ops as ops
from .._twins import same_signature
from .._validate import batch_dims, check_array, check_param, check_spatial
from .batchnorm import _BatchNorm


class _InstanceNorm(_BatchNorm):
    _no_batch_dim = 0  # input dims of an unbatched input: (C, *spatial)

    # BatchNorm's arguments; torch's InstanceNorm defaults: no affine, no running statistics
    @same_signature(_BatchNorm.__init__, affine=False, track_running_stats=False)
    def __init__(
        self,
        num_features,
        eps=1e-5,
        momentum=0.1,
        affine=False,
        track_running_stats=False,
        dtype=np.float32,
        *,
        bias=True,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype, bias=bias)

    def _check_input_dim(self, ndim: int) -> None:
        nb = self._no_batch_dim
        if ndim != nb and ndim != nb + 1:
            raise ValueError(f"expected {nb}D or {nb + 1}D input (got {ndim}D input)")

    def forward(self, input: np.ndarray) -> np.ndarray:
        r"""Normalize ``input`` ``(N, C, *)`` or unbatched ``(C, *)``; see
        :func:`cnorm.functional.instance_norm`."""
        x = check_array(input)
        self._check_input_dim(x.ndim)
        if x.dtype != self.dtype:
            raise TypeError(f"input dtype {x.dtype} does not match the module dtype {self.dtype}")
        feature_dim = x.ndim - self._no_batch_dim
        if x.shape[feature_dim] != self.num_features:
            if self.affine:
                raise ValueError(
                    f"expected input's size at dim={feature_dim} to match "
                    f"num_features ({self.num_features}), but got: "
                    f"{x.shape[feature_dim]}."
                )
            warnings.warn(
                f"input's size at dim={feature_dim} does not match num_features. "
                "You can silence this warning by not passing in num_features, "
                "which is not used because affine=False",
                stacklevel=3,
            )  # the caller of m(x) (through Module.__call__)
        x_in = x
        if x.ndim == self._no_batch_dim:  # unbatched: a batch of one, like torch
            x = x[None]
        n, c, s = batch_dims(x)
        dt = self.dtype
        use_input_stats = self.training or not self.track_running_stats
        if use_input_stats:
            check_spatial(x.shape)
            rm = rv = None
            if self.training and self.track_running_stats:
                rm = check_param(self.running_mean, "running_mean", (c,), dt)
                rv = check_param(self.running_var, "running_var", (c,), dt)
            # torch: momentum=None is passed on as 0.0 (the running statistics stay put)
            y, mean, invstd = ops.instance_norm_train(
                x, n, c, s, self.weight, self.bias, rm, rv, ops.momentum_factor(self.momentum), self.eps
            )
        else:
            rm = check_param(self.running_mean, "running_mean", (c,), dt)
            rv = check_param(self.running_var, "running_var", (c,), dt)
            # not None with track_running_stats (else the kernel's ValueError says so)
            rm, rv = cast(np.ndarray, rm), cast(np.ndarray, rv)
            y, mean, invstd = ops.batch_norm_eval(x, n, c, s, self.weight, self.bias, rm, rv, self.eps)
        self._saved = (x_in, x, n, c, s, mean, invstd, use_input_stats)
        self._forward_seen = True
        return y.reshape(x_in.shape)

    def _backward(self, dy, saved):
        x_in, x, n, c, s, mean, invstd, use_input_stats = saved
        dy = dy.reshape(x.shape)
        if use_input_stats:  # the instance statistics: a group norm with one group per channel
            dx, dw, db = ops.group_norm_backward(dy, x, n, c, 1, s, mean, invstd, self.weight)
        else:  # the running statistics, constants
            dx, dw, db = ops.batch_norm_backward(dy, x, n, c, s, self.weight, mean, invstd, False)
        return dx.reshape(x_in.shape), dw, db

    def _checkpoint_errors(self, state_dict: Mapping[str, Any]) -> Tuple[List[str], Tuple[str, ...]]:
        """Like torch, a checkpoint without version metadata (a plain dict) holding running
        statistics for a module that does not track them is an error with torch's
        explanation (checkpoints from before torch 0.4); those keys are then not also
        reported as unexpected."""
        version = None
        metadata = getattr(state_dict, "_metadata", None)
        if metadata is not None:
            version = metadata.get("", {}).get("version", None)
        if version is not None or self.track_running_stats:
            return [], ()
        keys = tuple(k for k in ("running_mean", "running_var") if k in state_dict)
        if not keys:
            return [], ()
        klass = type(self).__name__
        return [
            "Unexpected running stats buffer(s) {names} for {klass} "
            "with track_running_stats=False. If state_dict is a "
            "checkpoint saved before 0.4.0, this may be expected "
            "because {klass} does not track running stats by default "
            "since 0.4.0. Please remove these keys from state_dict. If "
            "the running stats are actually needed, instead set "
            "track_running_stats=True in {klass} to enable them. See "
            "the documentation of {klass} for details.".format(
                names=" and ".join(f'"{k}"' for k in keys), klass=klass
            )
        ], keys


class InstanceNorm1d(_InstanceNorm):
    r"""Instance normalization over a 3D ``(N, C, L)`` or unbatched 2D ``(C, L)`` input, as
    :class:`torch.nn.InstanceNorm1d`.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Mean and (biased) variance per sample and channel over ``L``. ``affine=False`` and
    ``track_running_stats=False`` by default. With ``track_running_stats=True``, training
    updates ``running = (1 - momentum) * running + momentum * mean_N(instance statistic)``
    (instance means, UNBIASED instance variances; ``num_batches_tracked`` stays 0 and
    ``momentum=None`` leaves the running statistics unchanged, as in torch), and eval
    normalizes every instance with the running statistics.

    Example::

        >>> m = InstanceNorm1d(16, affine=True)
        >>> x = np.random.default_rng(0).standard_normal((4, 16, 100)).astype(np.float32)
        >>> y = m(x)
        >>> dx = m.backward(np.ones_like(y))
    """

    _no_batch_dim = 2


class InstanceNorm2d(_InstanceNorm):
    r"""Instance normalization over a 4D ``(N, C, H, W)`` or unbatched 3D ``(C, H, W)``
    input, as :class:`torch.nn.InstanceNorm2d`; see :class:`InstanceNorm1d`.

    Example::

        >>> m = InstanceNorm2d(64)
        >>> y = m(np.random.default_rng(0).standard_normal((2, 64, 32, 32)).astype(np.float32))
    """

    _no_batch_dim = 3


class InstanceNorm3d(_InstanceNorm):
    r"""Instance normalization over a 5D ``(N, C, D, H, W)`` or unbatched 4D
    ``(C, D, H, W)`` input, as :class:`torch.nn.InstanceNorm3d`; see :class:`InstanceNorm1d`.

    Example::

        >>> m = InstanceNorm3d(8, dtype=np.float64)
        >>> y = m(np.random.default_rng(0).standard_normal((2, 8, 4, 8, 8)))
    """

    _no_batch_dim = 4
