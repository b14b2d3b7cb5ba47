r"""Functional normalization on NumPy arrays, mirroring :mod:`torch.nn.functional`.

Every function validates its arguments (type, dtype, shape) here, in Python, and then
hands C-contiguous arrays to the Cython kernels in :mod:`cnorm._kernels`, which release
the GIL and run in parallel with OpenMP. Inputs are never modified (running statistics
are, in place, as in torch); outputs are new C-contiguous arrays.

Statistics (the ``save_mean`` / ``save_invstd`` / ``mean`` / ``rstd`` returned by the
``native_*`` functions) are float64 whatever the input dtype: they are what the backward
functions need to reproduce every digit of ``x - mean`` in float32.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from ._kernels import _batch_norm, _row_norm

__all__ = [
    "batch_norm",
    "native_batch_norm",
    "batch_norm_backward",
    "batch_norm_stats",
    "merge_stats",
    "batch_norm_elemt",
    "batch_norm_backward_reduce",
    "batch_norm_backward_elemt",
    "layer_norm",
    "native_layer_norm",
    "layer_norm_backward",
]

Array = np.ndarray
ShapeLike = Union[int, Sequence[int]]

_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)
_SUPPORTED = (_FLOAT32, _FLOAT64)


# ---------------------------------------------------------------------------------------
# validation helpers (shared with cnorm.modules)
# ---------------------------------------------------------------------------------------

def _unsupported(dtype: np.dtype) -> TypeError:
    return TypeError(f"unsupported dtype {dtype}: cnorm works on float32 and float64 arrays")


def _check_array(x, name: str = "input") -> Array:
    """x as a C-contiguous float32/float64 ndarray (a copy only when x is not one)."""
    if type(x) is not np.ndarray and not isinstance(x, np.ndarray):
        raise TypeError(f"expected a NumPy array{'' if name == 'input' else ' for ' + name}, "
                        f"got {type(x).__name__}")
    dtype = x.dtype
    if dtype is not _FLOAT32 and dtype is not _FLOAT64 and dtype not in _SUPPORTED:
        if dtype.kind == "f" and dtype.itemsize in (4, 8) and not dtype.isnative:
            return np.ascontiguousarray(x, dtype=dtype.newbyteorder("="))
        raise _unsupported(dtype)
    flags = x.flags
    if not (flags.c_contiguous and flags.aligned):
        x = np.array(x, order="C", copy=True)   # ascontiguousarray keeps misalignment
    return x


def _check_dtype(x: Array, dtype: np.dtype, what: str) -> None:
    if x.dtype != dtype:
        raise TypeError(f"{what} dtype {x.dtype} does not match the input dtype {dtype}")


def _check_vector(a, name: str, n: int, dtype: np.dtype, writable: bool = False) -> Optional[Array]:
    """A per-channel parameter or running statistic: None, or a 1-D array of length n,
    returned C-contiguous and aligned (a copy when it is not: the caller writes a
    `writable` one back with np.copyto)."""
    if a is None:
        return None
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array or None, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype} but the input has dtype {dtype}")
    if a.shape != (n,):
        raise ValueError(f"{name} should contain {n} elements not {a.size} (shape {a.shape})")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name} is read-only, but it is updated in place when training")
    flags = a.flags
    if flags.c_contiguous and flags.aligned:
        return a
    return np.array(a, order="C", copy=True)


def _bn_dims(x: Array) -> Tuple[int, int, int]:
    shape = x.shape
    if len(shape) < 2:
        raise ValueError(f"expected at least 2D input (got {len(shape)}D input)")
    n, c = shape[0], shape[1]
    s = 1
    for d in shape[2:]:
        s *= d
    return n, c, s


def _check_grad(grad_output, x: Array) -> Array:
    g = _check_array(grad_output, "grad_output")
    if g.shape != x.shape:
        raise ValueError(f"grad_output has shape {g.shape} but the input of forward() "
                         f"had shape {x.shape}")
    if g.dtype != x.dtype:
        raise TypeError(f"grad_output dtype {g.dtype} does not match the input dtype {x.dtype}")
    return g


def _normalized_shape(normalized_shape: ShapeLike) -> Tuple[int, ...]:
    if isinstance(normalized_shape, (int, np.integer)):
        return (int(normalized_shape),)
    try:
        shape = tuple(int(d) for d in normalized_shape)
    except TypeError:
        raise TypeError("normalized_shape must be an int or a sequence of ints, "
                        f"got {type(normalized_shape).__name__}") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"normalized_shape must not contain negative sizes, got {shape}")
    return shape


def _ln_dims(x: Array, shape: Tuple[int, ...]) -> Tuple[int, int]:
    k = len(shape)
    if k == 0 or x.ndim < k or x.shape[x.ndim - k:] != shape:
        ns = ", ".join(map(str, shape))
        raise ValueError(f"Given normalized_shape=[{ns}], expected input with shape "
                         f"[*, {ns}], but got input of size[{', '.join(map(str, x.shape))}]")
    d = math.prod(shape)
    return (x.size // d if d else math.prod(x.shape[: x.ndim - k])), d


def _check_affine(a, name: str, shape: Tuple[int, ...], dtype: np.dtype) -> Optional[Array]:
    """LayerNorm weight/bias: None or an array of exactly normalized_shape, flattened."""
    if a is None:
        return None
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array or None, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype} but the input has dtype {dtype}")
    if a.shape != shape:
        raise ValueError(f"Expected {name} to be of same shape as normalized_shape, but got "
                         f"{name} of shape {list(a.shape)} and normalized_shape = {list(shape)}")
    return np.ascontiguousarray(a)


# ---------------------------------------------------------------------------------------
# batch norm
# ---------------------------------------------------------------------------------------

def native_batch_norm(
    input: Array,
    weight: Optional[Array],
    bias: Optional[Array],
    running_mean: Optional[Array],
    running_var: Optional[Array],
    training: bool,
    momentum: float,
    eps: float,
) -> Tuple[Array, Array, Array]:
    r"""Batch normalization that also returns the statistics it used.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    per channel (dim 1). ``training=True`` normalizes with the batch statistics and,
    when ``running_mean``/``running_var`` are given, updates them in place:
    ``running = (1 - momentum) * running + momentum * batch`` (unbiased batch variance).
    ``training=False`` normalizes with the running statistics.

    Returns:
        ``(output, save_mean, save_invstd)``: the output (shape and dtype of ``input``)
        and the float64 per-channel mean and ``1/sqrt(var + eps)`` used to normalize.
    """
    x = _check_array(input)
    n, c, s = _bn_dims(x)
    dtype = x.dtype
    weight = _check_vector(weight, "weight", c, dtype)
    bias = _check_vector(bias, "bias", c, dtype)
    rm = _check_vector(running_mean, "running_mean", c, dtype, writable=training)
    rv = _check_vector(running_var, "running_var", c, dtype, writable=training)
    if not training:
        if rm is None or rv is None:
            raise ValueError("running_mean and running_var must be given when training=False")
        return _batch_norm_eval(x, n, c, s, weight, bias, rm, rv, eps)
    if rm is None or rv is None:
        rm = rv = None      # torch updates the running statistics only when both are given
    out = _batch_norm_train(x, n, c, s, weight, bias, rm, rv, momentum, eps)
    if rm is not running_mean and rm is not None:       # worked on contiguous copies
        np.copyto(running_mean, rm)
        np.copyto(running_var, rv)
    return out


def _batch_norm_train(x, n, c, s, weight, bias, running_mean, running_var, momentum, eps):
    """Training forward on validated arguments (the modules call this directly)."""
    if not eps > 0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    m = n * s
    if m == 1:
        raise ValueError("Expected more than 1 value per channel when training, "
                         f"got input size {x.shape}")
    if m == 0 or c == 0:
        # torch: an empty batch leaves the running statistics alone
        return np.empty_like(x), np.zeros(c), np.zeros(c)
    return _batch_norm.forward_train(x, n, c, s, weight, bias, running_mean, running_var,
                                     float(momentum), float(eps))


def _batch_norm_eval(x, n, c, s, weight, bias, running_mean, running_var, eps):
    """Eval forward (running statistics) on validated arguments."""
    return _batch_norm.forward_eval(x, n, c, s, weight, bias, running_mean, running_var,
                                    float(eps))


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
    return native_batch_norm(input, weight, bias, running_mean, running_var, training,
                             momentum, eps)[0]


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
    x = _check_array(input)
    n, c, s = _bn_dims(x)
    g = _check_grad(grad_output, x)
    weight = _check_vector(weight, "weight", c, x.dtype)
    save_mean = _stats_vector(save_mean, "save_mean", c)
    save_invstd = _stats_vector(save_invstd, "save_invstd", c)
    return _batch_norm_backward(g, x, n, c, s, weight, save_mean, save_invstd, training)


def _stats_vector(a, name: str, n: int) -> Array:
    a = np.ascontiguousarray(a, dtype=np.float64)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    return a


def _batch_norm_backward(g, x, n, c, s, weight, mean, invstd, training):
    if x.size == 0:
        zeros = np.zeros(c, dtype=x.dtype)
        return np.empty_like(x), zeros, zeros.copy()
    dx, sum_dy, sum_dy_xhat = _batch_norm.backward(g, x, n, c, s, mean, invstd, weight,
                                                   bool(training))
    return dx, sum_dy_xhat.astype(x.dtype), sum_dy.astype(x.dtype)


# ---------------------------------------------------------------------------------------
# building blocks of a synchronized (distributed) batch norm, engine-free
# ---------------------------------------------------------------------------------------

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
    x = _check_array(input)
    n, c, s = _bn_dims(x)
    count = n * s
    if count == 0 or c == 0:
        return count, np.zeros(c), np.zeros(c)
    mean, var = _batch_norm.stats(x, n, c, s)
    return count, mean, var * count


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
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)
    means = np.asarray(means, dtype=np.float64).reshape(len(counts), -1)
    m2s = np.asarray(m2s, dtype=np.float64).reshape(len(counts), -1)
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
    x = _check_array(input)
    n, c, s = _bn_dims(x)
    weight = _check_vector(weight, "weight", c, x.dtype)
    bias = _check_vector(bias, "bias", c, x.dtype)
    mean = _stats_vector(mean, "mean", c)
    invstd = _stats_vector(invstd, "invstd", c)
    if x.size == 0:
        return np.empty_like(x)
    return _batch_norm.normalize(x, n, c, s, mean, invstd, weight, bias)


def batch_norm_backward_reduce(
    grad_output: Array, input: Array, mean: Array, invstd: Array
) -> Tuple[Array, Array]:
    r"""Per-channel ``(Σ dy, Σ dy·x̂)`` (float64 ``(C,)``) of this shard, with
    ``x̂ = (x - mean) * invstd``: what a synchronized batch norm all-reduces in backward
    (they are also ``grad_bias`` and ``grad_weight``)."""
    x = _check_array(input)
    n, c, s = _bn_dims(x)
    g = _check_grad(grad_output, x)
    mean = _stats_vector(mean, "mean", c)
    invstd = _stats_vector(invstd, "invstd", c)
    if x.size == 0:
        return np.zeros(c), np.zeros(c)
    return _batch_norm.backward_reduce(g, x, n, c, s, mean, invstd)


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
    x = _check_array(input)
    n, c, s = _bn_dims(x)
    g = _check_grad(grad_output, x)
    weight = _check_vector(weight, "weight", c, x.dtype)
    mean = _stats_vector(mean, "mean", c)
    invstd = _stats_vector(invstd, "invstd", c)
    sum_dy = _stats_vector(sum_dy, "sum_dy", c)
    sum_dy_xhat = _stats_vector(sum_dy_xhat, "sum_dy_xhat", c)
    if x.size == 0:
        return np.empty_like(x)
    if not count > 0:
        raise ValueError(f"count must be positive, got {count}")
    return _batch_norm.backward_input(g, x, n, c, s, mean, invstd, weight, sum_dy,
                                      sum_dy_xhat, float(count))


# ---------------------------------------------------------------------------------------
# layer norm
# ---------------------------------------------------------------------------------------

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
    x = _check_array(input)
    shape = _normalized_shape(normalized_shape)
    m, d = _ln_dims(x, shape)
    weight = _check_affine(weight, "weight", shape, x.dtype)
    bias = _check_affine(bias, "bias", shape, x.dtype)
    y, mean, rstd = _layer_norm(x, m, d, weight, bias, eps)
    lead = x.shape[: x.ndim - len(shape)]
    return y, mean.reshape(lead), rstd.reshape(lead)


def _layer_norm(x, m, d, weight, bias, eps):
    """Forward on validated arguments: (y, mean (m,), rstd (m,)); weight and bias may have
    any shape of d contiguous elements."""
    if m == 0 or d == 0:
        # an empty row has no mean (torch gives nan)
        return np.empty_like(x), np.full(m, np.nan), np.full(m, np.nan)
    return _row_norm.forward(x, m, d, weight, bias, float(eps))


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
    x = _check_array(input)
    shape = _normalized_shape(normalized_shape)
    m, d = _ln_dims(x, shape)
    g = _check_grad(grad_output, x)
    weight = _check_affine(weight, "weight", shape, x.dtype)
    mean = _stats_vector(np.reshape(mean, -1), "mean", m)
    rstd = _stats_vector(np.reshape(rstd, -1), "rstd", m)
    return _layer_norm_backward(g, x, shape, m, d, mean, rstd, weight)


def _layer_norm_backward(g, x, shape, m, d, mean, rstd, weight):
    if m == 0 or d == 0:
        zeros = np.zeros(shape, dtype=x.dtype)
        return np.empty_like(x), zeros, zeros.copy()
    dx, dw, db = _row_norm.backward(g, x, m, d, mean, rstd, weight)
    return dx, dw.reshape(shape), db.reshape(shape)
