"""Group norm and instance norm: per-(sample, group) rows of an ``(N, C, *)`` input.

Group norm splits the C channels into G groups of Cg = C/G consecutive channels and
normalizes each (n, group) row of Cg*S values; weight and bias are per channel. Instance
norm is group norm with G = C, with optional running statistics (then an eval forward is
a batch-norm eval).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .. import _ops
from .._validate import (
    Array,
    batch_dims,
    check_array,
    check_bool,
    check_grad,
    check_param,
    check_real,
    check_spatial,
    group_dims,
    param_dtype,
)

__all__ = [
    "group_norm",
    "native_group_norm",
    "group_norm_backward",
    "instance_norm",
    "native_instance_norm",
    "instance_norm_backward",
]


def native_group_norm(
    input: Array,
    num_groups: int,
    weight: Optional[Array],
    bias: Optional[Array],
    eps: float,
) -> Tuple[Array, Array, Array]:
    r"""Group normalization that also returns the statistics it used.

    The ``C`` channels of ``input`` ``(N, C, *)`` are split into ``num_groups`` groups of
    ``C / num_groups`` consecutive channels; every ``(n, group)`` is normalized with its
    own mean and biased variance over its ``C/G * prod(spatial)`` values:

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma_c + \beta_c

    Returns:
        ``(output, mean, rstd)``: ``mean`` and ``rstd = 1/sqrt(var + eps)`` are float64
        arrays of shape ``(N, num_groups)``.
    """
    x = check_array(input)
    n, g, cg, s = group_dims(x, num_groups)
    check_real(eps, "eps")
    dtype = param_dtype(x.dtype, (weight, bias))
    weight = check_param(weight, "weight", (g * cg,), dtype, "channels", input_shape=x.shape)
    bias = check_param(bias, "bias", (g * cg,), dtype, "channels", input_shape=x.shape)
    y, mean, rstd, _ = _ops.group_norm_forward(x, n, g, cg, s, weight, bias, eps)
    return y, mean.reshape(n, g), rstd.reshape(n, g)


def group_norm(
    input: Array,
    num_groups: int,
    weight: Optional[Array] = None,
    bias: Optional[Array] = None,
    eps: float = 1e-5,
) -> Array:
    r"""Group normalization, as :func:`torch.nn.functional.group_norm`.

    Example::

        >>> x = np.random.default_rng(0).standard_normal((2, 6, 4, 4)).astype(np.float32)
        >>> y = group_norm(x, 3)
        >>> bool(np.allclose(y.reshape(2, 3, -1).mean(-1), 0, atol=1e-6))
        True
    """
    return native_group_norm(input, num_groups, weight, bias, eps)[0]


def group_norm_backward(
    grad_output: Array,
    input: Array,
    num_groups: int,
    mean: Array,
    rstd: Array,
    weight: Optional[Array],
) -> Tuple[Array, Array, Array]:
    r"""Gradients of :func:`native_group_norm` (``mean``/``rstd`` as it returned them):
    per ``(n, group)`` row, with :math:`g = dy\,\gamma_c`,
    :math:`dx = \sigma^{-1}(g - \overline{g} - \hat x\,\overline{g\,\hat x})`;
    :math:`d\gamma_c = \sum dy\,\hat x`, :math:`d\beta_c = \sum dy` over ``N`` and the
    spatial dims.

    Returns:
        ``(grad_input, grad_weight, grad_bias)``; the last two have shape ``(C,)`` and
        the input dtype (computed even when ``weight`` is None, i.e. :math:`\gamma = 1`).
    """
    x = check_array(input)
    n, g, cg, s = group_dims(x, num_groups)
    dy = check_grad(grad_output, x)
    weight = check_param(
        weight, "weight", (g * cg,), param_dtype(x.dtype, (weight,)), "channels", input_shape=x.shape
    )
    mean = check_param(np.reshape(mean, -1), "mean", (n * g,), None)
    rstd = check_param(np.reshape(rstd, -1), "rstd", (n * g,), None)
    return _ops.group_norm_backward(dy, x, n, g, cg, s, mean, rstd, weight)


# --------------------------------------------------------------------------- instance norm


def native_instance_norm(
    input: Array,
    weight: Optional[Array],
    bias: Optional[Array],
    running_mean: Optional[Array],
    running_var: Optional[Array],
    use_input_stats: bool,
    momentum: float,
    eps: float,
) -> Tuple[Array, Array, Array]:
    r"""Instance normalization that also returns the statistics it used.

    ``use_input_stats=True``: every ``(n, c)`` of ``input`` ``(N, C, *)`` is normalized with
    its own mean and biased variance over the spatial dims; given running statistics are
    updated in place, as torch does:
    ``running = (1 - momentum) * running + momentum * mean_n(instance statistic)`` with the
    instance means and UNBIASED instance variances (an empty batch, N = 0, makes them NaN
    as in torch; an empty spatial extent leaves them unchanged).
    ``use_input_stats=False``: every instance is normalized with the running statistics
    (a batch-norm eval).

    Returns:
        ``(output, save_mean, save_invstd)``: float64 statistics of shape ``(N, C)`` with
        ``use_input_stats=True``, ``(C,)`` (the running ones) otherwise, with
        ``save_invstd = 1/sqrt(var + eps)``.
    """
    x = check_array(input)
    check_bool(use_input_stats, "use_input_stats")
    check_real(momentum, "momentum")
    check_real(eps, "eps")
    if use_input_stats:
        check_spatial(x.shape)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    if not use_input_stats and running_mean is None:
        raise ValueError("Expected running_mean and running_var to be defined when use_input_stats is false")
    n, c, s = batch_dims(x)
    dtype = param_dtype(x.dtype, (weight, bias, running_mean, running_var))
    weight = check_param(weight, "weight", (c,), dtype)
    bias = check_param(bias, "bias", (c,), dtype)
    writable = bool(use_input_stats)
    rm = check_param(running_mean, "running_mean", (c,), dtype, writable=writable)
    rv = check_param(running_var, "running_var", (c,), dtype, writable=writable)
    if not use_input_stats:
        assert rm is not None and rv is not None  # checked above
        return _ops.batch_norm_eval(x, n, c, s, weight, bias, rm, rv, eps)
    # the originals, not contiguous copies: the update writes them with np.copyto
    y, mean, rstd = _ops.instance_norm_train(
        x, n, c, s, weight, bias, running_mean, running_var, momentum, eps
    )
    return y, mean.reshape(n, c), rstd.reshape(n, c)


def instance_norm(
    input: Array,
    running_mean: Optional[Array] = None,
    running_var: Optional[Array] = None,
    weight: Optional[Array] = None,
    bias: Optional[Array] = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Array:
    r"""Instance normalization over each channel of each sample of ``input`` ``(N, C, *)``,
    as :func:`torch.nn.functional.instance_norm` (running statistics updated in place
    when given and ``use_input_stats``).

    Example::

        >>> x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
        >>> y = instance_norm(x)
        >>> bool(np.allclose(y.mean(axis=(2, 3)), 0, atol=1e-6))
        True
    """
    return native_instance_norm(
        input, weight, bias, running_mean, running_var, use_input_stats, momentum, eps
    )[0]


def instance_norm_backward(
    grad_output: Array,
    input: Array,
    weight: Optional[Array],
    save_mean: Array,
    save_invstd: Array,
    use_input_stats: bool,
) -> Tuple[Array, Array, Array]:
    r"""Gradients of :func:`native_instance_norm` (with the statistics it returned).

    ``use_input_stats=True`` (statistics ``(N, C)``): the group-norm backward with one
    group per channel. ``use_input_stats=False`` (running statistics ``(C,)``):
    :math:`dx = dy\,\gamma\,\sigma^{-1}` (the batch-norm eval backward).

    Returns:
        ``(grad_input, grad_weight, grad_bias)``; the last two have shape ``(C,)`` and the
        input dtype.
    """
    x = check_array(input)
    check_bool(use_input_stats, "use_input_stats")
    n, c, s = batch_dims(x)
    dy = check_grad(grad_output, x)
    weight = check_param(weight, "weight", (c,), param_dtype(x.dtype, (weight,)))
    if use_input_stats:
        mean = check_param(np.reshape(save_mean, -1), "save_mean", (n * c,), None)
        invstd = check_param(np.reshape(save_invstd, -1), "save_invstd", (n * c,), None)
        return _ops.group_norm_backward(dy, x, n, c, 1, s, mean, invstd, weight)
    mean = check_param(save_mean, "save_mean", (c,), None)
    invstd = check_param(save_invstd, "save_invstd", (c,), None)
    return _ops.batch_norm_backward(dy, x, n, c, s, weight, mean, invstd, False)
