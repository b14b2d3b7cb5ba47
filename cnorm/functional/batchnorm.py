"""Batch norm (per channel, dim 1 of ``(N, C, *)``), fused batch norm + ReLU, and the
building blocks of a synchronized (distributed) batch norm."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .. import _ops
from .._validate import (
    Array,
    batch_dims,
    check_array,
    check_bool,
    check_eval_eps,
    check_grad,
    check_param,
    check_real,
    check_same,
    param_dtype,
    refuse_masked,
)

__all__ = [
    "batch_norm",
    "native_batch_norm",
    "batch_norm_backward",
    "batch_norm_stats",
    "merge_stats",
    "batch_norm_elemt",
    "batch_norm_backward_reduce",
    "batch_norm_backward_elemt",
    "batch_norm_relu",
    "native_batch_norm_relu",
    "batch_norm_relu_backward",
]


def native_batch_norm(
    input: Array,
    weight: Optional[Array],
    bias: Optional[Array],
    running_mean: Optional[Array],
    running_var: Optional[Array],
    training: bool,
    momentum: float,
    eps: float,
    *,
    relu: bool = False,
) -> Tuple[Array, Array, Array]:
    r"""Batch normalization that also returns the statistics it used.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    per channel (dim 1). ``training=True`` normalizes with the batch statistics and,
    when ``running_mean``/``running_var`` are given, updates them in place:
    ``running = (1 - momentum) * running + momentum * batch`` (unbiased batch variance).
    ``training=False`` normalizes with the running statistics.

    ``relu=True`` returns ``max(0, output)`` computed in the same pass (see
    :func:`native_batch_norm_relu`).

    Returns:
        ``(output, save_mean, save_invstd)``: the output (shape and dtype of ``input``)
        and the float64 per-channel mean and ``1/sqrt(var + eps)`` used to normalize.
    """
    x = check_array(input)
    check_bool(training, "training")
    check_real(momentum, "momentum")
    check_real(eps, "eps")
    n, c, s = batch_dims(x)
    dtype = param_dtype(x.dtype, (weight, bias, running_mean, running_var), wording="strict")
    weight = check_param(weight, "weight", (c,), dtype)
    bias = check_param(bias, "bias", (c,), dtype)
    rm = check_param(running_mean, "running_mean", (c,), dtype, writable=training)
    rv = check_param(running_var, "running_var", (c,), dtype, writable=training)
    if not training:
        if rm is None or rv is None:
            raise ValueError("running_mean and running_var must be given when training=False")
        check_eval_eps(eps)
        return _ops.batch_norm_eval(x, n, c, s, weight, bias, rm, rv, eps, relu)
    if rm is None or rv is None:
        rm = rv = None  # torch updates the running statistics only when both are given
    out = _ops.batch_norm_train(x, n, c, s, weight, bias, rm, rv, momentum, eps, relu)
    if rm is not running_mean and rm is not None:  # worked on contiguous copies
        # rm, rv are not None only when both buffers were given
        assert running_mean is not None and running_var is not None and rv is not None
        np.copyto(running_mean, rm)
        np.copyto(running_var, rv)
    return out


def batch_norm(
    input: Array,
    running_mean: Optional[Array],
    running_var: Optional[Array],
    weight: Optional[Array] = None,
    bias: Optional[Array] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Array:
    r"""Batch normalization over dim 1 of ``input`` of shape ``(N, C, *)``, as
    :func:`torch.nn.functional.batch_norm`.

    Example::

        >>> x = np.random.default_rng(0).standard_normal((8, 3, 4, 4)).astype(np.float32)
        >>> rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
        >>> y = batch_norm(x, rm, rv, training=True)   # rm, rv updated in place
    """
    return native_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps)[0]


def _backward(
    grad_output, input, weight, save_mean, save_invstd, training, output=None
) -> Tuple[Array, Array, Array]:
    """batch_norm_backward and batch_norm_relu_backward (with the forward's output)."""
    x = check_array(input)
    check_bool(training, "training")
    n, c, s = batch_dims(x)
    dy = check_grad(grad_output, x)
    y = None if output is None else check_same(output, x, "output", "the input")
    weight = check_param(weight, "weight", (c,), param_dtype(x.dtype, (weight,)))
    mean = check_param(save_mean, "save_mean", (c,), None)
    invstd = check_param(save_invstd, "save_invstd", (c,), None)
    return _ops.batch_norm_backward(dy, x, n, c, s, weight, mean, invstd, training, y)


def batch_norm_backward(
    grad_output: Array,
    input: Array,
    weight: Optional[Array],
    save_mean: Array,
    save_invstd: Array,
    training: bool,
) -> Tuple[Array, Array, Array]:
    r"""Gradients of :func:`native_batch_norm`.

    With ``training=True`` (statistics of this batch)
    :math:`dx = \gamma\,\sigma^{-1}\,(dy - \overline{dy} - \hat x\,\overline{dy\,\hat x})`,
    with ``training=False`` (running statistics) :math:`dx = dy\,\gamma\,\sigma^{-1}`;
    :math:`d\gamma = \sum dy\,\hat x`, :math:`d\beta = \sum dy` over all but dim 1.

    Returns:
        ``(grad_input, grad_weight, grad_bias)``; the last two have shape ``(C,)`` and the
        input dtype (computed even when ``weight`` is None, i.e. :math:`\gamma = 1`).
    """
    return _backward(grad_output, input, weight, save_mean, save_invstd, training)


# ------------------------------------------------------------ fused batch norm + ReLU
# oneDNN's fuse_norm_relu: the batch-norm kernels with relu=True / y=


def native_batch_norm_relu(
    input: Array,
    weight: Optional[Array],
    bias: Optional[Array],
    running_mean: Optional[Array],
    running_var: Optional[Array],
    training: bool,
    momentum: float,
    eps: float,
) -> Tuple[Array, Array, Array]:
    r"""``max(0, batch_norm(input))`` in one pass (oneDNN's ``fuse_norm_relu``): same
    arguments, checks, running-statistics update and returned statistics as
    :func:`native_batch_norm`.

    Returns:
        ``(output, save_mean, save_invstd)``; keep ``output`` for the backward (its
        positive entries are where the ReLU passes the gradient).
    """
    return native_batch_norm(
        input, weight, bias, running_mean, running_var, training, momentum, eps, relu=True
    )


def batch_norm_relu(
    input: Array,
    running_mean: Optional[Array],
    running_var: Optional[Array],
    weight: Optional[Array] = None,
    bias: Optional[Array] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Array:
    r"""``relu(batch_norm(...))`` fused: the arguments of :func:`batch_norm`.

    Example::

        >>> x = np.random.default_rng(0).standard_normal((8, 3, 4, 4)).astype(np.float32)
        >>> y = batch_norm_relu(x, None, None, training=True)
        >>> bool(np.array_equal(y, np.maximum(batch_norm(x, None, None, training=True), 0)))
        True
    """
    return native_batch_norm(
        input, weight, bias, running_mean, running_var, training, momentum, eps, relu=True
    )[0]


def batch_norm_relu_backward(
    grad_output: Array,
    input: Array,
    weight: Optional[Array],
    save_mean: Array,
    save_invstd: Array,
    training: bool,
    output: Array,
) -> Tuple[Array, Array, Array]:
    r"""Gradients of :func:`native_batch_norm_relu`: :func:`batch_norm_backward` of
    ``grad_output * (output > 0)`` (the mask is applied inside the kernel, no temporary).
    Arguments as :func:`batch_norm_backward`, plus the forward's ``output``.

    Returns:
        ``(grad_input, grad_weight, grad_bias)``.
    """
    return _backward(grad_output, input, weight, save_mean, save_invstd, training, output)


# --------------------------------------------------------- synchronized batch norm blocks
# engine-free: the caller moves the statistics between processes (all-gather, all-reduce)


def batch_norm_stats(input: Array) -> Tuple[int, Array, Array]:
    r"""Per-channel ``(count, mean, m2)`` of ``input`` ``(N, C, *)`` in one pass:
    ``count = N * prod(spatial)`` (an int), ``mean`` and ``m2 = Σ(x - mean)²`` float64
    arrays ``(C,)``. Partial statistics of several shards merge exactly with
    :func:`merge_stats` (Chan's formula), e.g. after an all-gather across processes.

    Example::

        >>> rng = np.random.default_rng(0)
        >>> a, b = rng.standard_normal((3, 4, 5)), rng.standard_normal((2, 4, 5))
        >>> n, mean, m2 = merge_stats(*zip(batch_norm_stats(a), batch_norm_stats(b)))
        >>> bool(np.allclose(mean, np.concatenate([a, b]).mean(axis=(0, 2))))
        True
    """
    x = check_array(input)
    n, c, s = batch_dims(x)
    return _ops.batch_norm_stats(x, n, c, s)


def merge_stats(counts, means, m2s) -> Tuple[int, Array, Array]:
    r"""Merge per-shard ``(count, mean, m2)`` statistics (as returned by
    :func:`batch_norm_stats`) into those of the union, in shard order (deterministic).

    Args:
        counts: ``(R,)`` element counts per shard (shards with 0 elements are skipped).
        means, m2s: ``(R, C)`` per-shard means and sums of squared deviations.

    Returns:
        ``(count, mean, m2)``: the total count and float64 ``(C,)`` arrays;
        the biased variance is ``m2 / count``, the unbiased one ``m2 / (count - 1)``.
    """
    for name, a in (("counts", counts), ("means", means), ("m2s", m2s)):
        refuse_masked(a, name)
    counts = np.asarray(counts, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    m2s = np.asarray(m2s, dtype=np.float64)
    if counts.ndim != 1 or means.ndim != 2 or means.shape[0] != counts.shape[0] or m2s.shape != means.shape:
        raise ValueError(
            "merge_stats expects counts (R,) and means, m2s (R, C) for R shards, "
            f"got counts {counts.shape}, means {means.shape}, m2s {m2s.shape}"
        )
    if not (counts >= 0).all():  # NaN fails too
        raise ValueError(f"merge_stats counts must be non-negative, got {counts.tolist()}")
    total = 0.0
    mean = np.zeros(means.shape[1])
    m2 = np.zeros(means.shape[1])
    for n_b, mean_b, m2_b in zip(counts, means, m2s):
        if n_b == 0:
            continue
        n = total + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / n)
        m2 = m2 + m2_b + delta * delta * (total * n_b / n)
        total = n
    return int(total), mean, m2


def batch_norm_elemt(
    input: Array,
    mean: Array,
    invstd: Array,
    weight: Optional[Array] = None,
    bias: Optional[Array] = None,
) -> Array:
    r"""``(input - mean) * invstd * weight + bias`` per channel, with given (e.g. global)
    float64 statistics ``mean`` and ``invstd = 1/sqrt(var + eps)`` of shape ``(C,)``."""
    x = check_array(input)
    n, c, s = batch_dims(x)
    dtype = param_dtype(x.dtype, (weight, bias))
    weight = check_param(weight, "weight", (c,), dtype)
    bias = check_param(bias, "bias", (c,), dtype)
    mean = check_param(mean, "mean", (c,), None)
    invstd = check_param(invstd, "invstd", (c,), None)
    return _ops.batch_norm_elemt(x, n, c, s, mean, invstd, weight, bias)


def batch_norm_backward_reduce(
    grad_output: Array, input: Array, mean: Array, invstd: Array
) -> Tuple[Array, Array]:
    r"""Per-channel ``(Σ dy, Σ dy·x̂)`` (float64 ``(C,)``) of this shard, with
    ``x̂ = (x - mean) * invstd``: what a synchronized batch norm all-reduces in backward
    (they are also ``grad_bias`` and ``grad_weight``)."""
    x = check_array(input)
    n, c, s = batch_dims(x)
    dy = check_grad(grad_output, x)
    mean = check_param(mean, "mean", (c,), None)
    invstd = check_param(invstd, "invstd", (c,), None)
    return _ops.batch_norm_backward_reduce(dy, x, n, c, s, mean, invstd)


def batch_norm_backward_elemt(
    grad_output: Array,
    input: Array,
    mean: Array,
    invstd: Array,
    weight: Optional[Array],
    sum_dy: Array,
    sum_dy_xhat: Array,
    count: int,
) -> Array:
    r"""Input gradient of a training-mode batch norm whose statistics came from
    ``count`` elements per channel (all shards):
    :math:`dx = \gamma\,\sigma^{-1}(dy - Σdy/count - \hat x\,Σ(dy\,\hat x)/count)`, with the
    all-reduced sums of :func:`batch_norm_backward_reduce`."""
    x = check_array(input)
    n, c, s = batch_dims(x)
    dy = check_grad(grad_output, x)
    weight = check_param(weight, "weight", (c,), param_dtype(x.dtype, (weight,)))
    mean = check_param(mean, "mean", (c,), None)
    invstd = check_param(invstd, "invstd", (c,), None)
    sum_dy = check_param(sum_dy, "sum_dy", (c,), None)
    sum_dy_xhat = check_param(sum_dy_xhat, "sum_dy_xhat", (c,), None)
    return _ops.batch_norm_backward_elemt(dy, x, n, c, s, mean, invstd, weight, sum_dy, sum_dy_xhat, count)
