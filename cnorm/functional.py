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

from ._kernels import batch_norm as _batch_norm
from ._kernels import row_norm as _row_norm

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
        normalized_shape = (normalized_shape,)
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
        return _batch_norm_eval(x, n, c, s, weight, bias, rm, rv, eps, relu)
    if rm is None or rv is None:
        rm = rv = None      # torch updates the running statistics only when both are given
    out = _batch_norm_train(x, n, c, s, weight, bias, rm, rv, momentum, eps, relu)
    if rm is not running_mean and rm is not None:       # worked on contiguous copies
        np.copyto(running_mean, rm)
        np.copyto(running_var, rv)
    return out


def _batch_norm_train(x, n, c, s, weight, bias, running_mean, running_var, momentum, eps,
                      relu=False):
    """Training forward on validated arguments (the modules call this directly); relu:
    the fused ``max(0, batch_norm(x))``."""
    if not eps > 0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    m = n * s
    if m == 1:
        raise ValueError("Expected more than 1 value per channel when training, "
                         f"got input size {x.shape}")
    if m == 0 or c == 0:
        # torch: an empty batch leaves the running statistics alone
        return np.empty_like(x), np.zeros(c), np.zeros(c)
    return _batch_norm.batch_norm_forward_train(x, n, c, s, weight, bias, running_mean,
                                                running_var, float(momentum), float(eps), relu)


def _batch_norm_eval(x, n, c, s, weight, bias, running_mean, running_var, eps, relu=False):
    """Eval forward (running statistics) on validated arguments."""
    return _batch_norm.batch_norm_forward_eval(x, n, c, s, weight, bias, running_mean,
                                               running_var, float(eps), relu)


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


def _batch_norm_backward(g, x, n, c, s, weight, mean, invstd, training, y=None):
    """Backward on validated arguments; y: the output of a fused BN + ReLU (the gradient
    passes where y > 0)."""
    if x.size == 0:
        zeros = np.zeros(c, dtype=x.dtype)
        return np.empty_like(x), zeros, zeros.copy()
    dx, sum_dy, sum_dy_xhat = _batch_norm.batch_norm_backward(g, x, n, c, s, mean, invstd,
                                                              weight, bool(training), y)
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
    mean, var = _batch_norm.batch_norm_stats(x, n, c, s)
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
    return _batch_norm.batch_norm_elemt(x, n, c, s, mean, invstd, weight, bias)


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
    return _batch_norm.batch_norm_backward_reduce(g, x, n, c, s, mean, invstd)


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
    return _batch_norm.batch_norm_backward_elemt(g, x, n, c, s, mean, invstd, weight, sum_dy,
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
    return _row_norm.layer_norm_forward(x, m, d, weight, bias, float(eps))


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
    dx, dw, db = _row_norm.layer_norm_backward(g, x, m, d, mean, rstd, weight)
    return dx, dw.reshape(shape), db.reshape(shape)


# =======================================================================================
# group norm, instance norm, RMS norm, fused add + layer norm, fused batch norm + ReLU
# =======================================================================================
#
# Group norm splits the C channels of an (N, C, *) input into G groups of Cg = C/G
# consecutive channels and normalizes each (n, group) row of Cg*S values; weight and bias
# are per channel.  Instance norm is group norm with G = C (optionally with running
# statistics, then an eval forward is a batch-norm eval).  All of them run on the row
# kernels of cnorm._kernels.row_norm (group_norm_*, rms_norm_*, add_layer_norm_forward);
# batch norm + ReLU on the batch-norm kernels with relu=True / y=.

__all__ += [
    "group_norm",
    "native_group_norm",
    "group_norm_backward",
    "instance_norm",
    "native_instance_norm",
    "instance_norm_backward",
    "rms_norm",
    "native_rms_norm",
    "rms_norm_backward",
    "add_layer_norm",
    "native_add_layer_norm",
    "add_layer_norm_backward",
    "batch_norm_relu",
    "native_batch_norm_relu",
    "batch_norm_relu_backward",
]


def _torch_shape(shape) -> str:
    """A shape as torch's C++ messages print it: ``[2, 4, 3]``."""
    return "[" + ", ".join(map(str, shape)) + "]"


def _check_same(a, x: Array, name: str, what: str) -> Array:
    """Another array of the same shape and dtype as ``x`` (grad_sum, output, residual)."""
    a = _check_array(a, name)
    if a.shape != x.shape:
        raise ValueError(f"{name} has shape {a.shape} but {what} has shape {x.shape}")
    if a.dtype != x.dtype:
        raise TypeError(f"{name} dtype {a.dtype} does not match the input dtype {x.dtype}")
    return a


# ---------------------------------------------------------------------------------------
# group norm
# ---------------------------------------------------------------------------------------

def _num_groups(num_groups) -> int:
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)):
        raise TypeError("group_norm(): argument 'num_groups' (position 2) must be int, "
                        f"not {type(num_groups).__name__}")
    if num_groups <= 0:
        raise ValueError(f"Expected num groups to be greater than 0, got {int(num_groups)}")
    return int(num_groups)


def _gn_dims(x: Array, num_groups) -> Tuple[int, int, int, int]:
    """(N, G, Cg, S) of a group-norm input, with torch's checks in torch's order."""
    if x.ndim < 2:
        raise ValueError(f"Expected at least 2 dimensions for input tensor but received {x.ndim}")
    g = _num_groups(num_groups)
    n, c, s = _bn_dims(x)
    # torch's F.group_norm: _verify_batch_size([N * C // G, G, *spatial])
    if (n * c // g) * s == 1:
        size = [n * c // g, g] + list(x.shape[2:])
        raise ValueError("Expected more than 1 value per channel when training, "
                         f"got input size {size}")
    if c % g:
        raise ValueError("Expected number of channels in input to be divisible by num_groups, "
                         f"but got input of shape {_torch_shape(x.shape)} and num_groups={g}")
    return n, g, c // g, s


def _check_channel_param(a, name: str, c: int, x: Array) -> Optional[Array]:
    """GroupNorm weight/bias: None or a (C,) array of the input dtype (torch's message)."""
    if a is None:
        return None
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array or None, got {type(a).__name__}")
    if a.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {a.dtype} but the input has dtype {x.dtype}")
    if a.shape != (c,):
        raise ValueError(f"Expected {name} to be a vector of size equal to the number of "
                         f"channels in input, but got {name} of shape {_torch_shape(a.shape)} "
                         f"and input of shape {_torch_shape(x.shape)}")
    flags = a.flags
    if flags.c_contiguous and flags.aligned:
        return a
    return np.array(a, order="C", copy=True)


def _group_norm(x, n, g, cg, s, weight, bias, eps):
    """Forward on validated arguments: (y, mean, rstd, var), float64 statistics (n*g,).
    A group with no value (Cg*S == 0) has NaN statistics."""
    if x.size == 0:
        nan = np.full(n * g, np.nan)
        return np.empty_like(x), nan, nan.copy(), nan.copy()
    return _row_norm.group_norm_forward(x, n, g, cg, s, weight, bias, float(eps))


def _group_norm_backward(dy, x, n, g, cg, s, mean, rstd, weight):
    if x.size == 0:
        zeros = np.zeros(g * cg, dtype=x.dtype)
        return np.empty_like(x), zeros, zeros.copy()
    return _row_norm.group_norm_backward(dy, x, n, g, cg, s, mean, rstd, weight)


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
    x = _check_array(input)
    n, g, cg, s = _gn_dims(x, num_groups)
    weight = _check_channel_param(weight, "weight", g * cg, x)
    bias = _check_channel_param(bias, "bias", g * cg, x)
    y, mean, rstd, _ = _group_norm(x, n, g, cg, s, weight, bias, eps)
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
    x = _check_array(input)
    n, g, cg, s = _gn_dims(x, num_groups)
    dy = _check_grad(grad_output, x)
    weight = _check_channel_param(weight, "weight", g * cg, x)
    mean = _stats_vector(np.reshape(mean, -1), "mean", n * g)
    rstd = _stats_vector(np.reshape(rstd, -1), "rstd", n * g)
    return _group_norm_backward(dy, x, n, g, cg, s, mean, rstd, weight)


# ---------------------------------------------------------------------------------------
# instance norm
# ---------------------------------------------------------------------------------------

def _check_spatial(shape) -> None:
    """torch's F.instance_norm check when the input's own statistics are used."""
    if math.prod(shape[2:]) == 1:
        raise ValueError("Expected more than 1 spatial element when training, "
                         f"got input size {tuple(shape)}")


def _instance_norm_train(x, n, c, s, weight, bias, running_mean, running_var, momentum, eps):
    """Forward with the per-(n, c) statistics on validated arguments; updates the running
    statistics in place when given (torch: momentum * the mean over n of the instance
    means / UNBIASED variances; N = 0 makes them NaN -- a mean over no instance -- and
    S = 0 with N > 0 leaves them alone). Returns (y, mean, rstd), float64 (n*c,)."""
    y, mean, rstd, var = _group_norm(x, n, c, 1, s, weight, bias, eps)
    if running_mean is not None and running_var is not None and c > 0 and (s > 0 or n == 0):
        m = float(momentum)
        if n == 0:
            batch_mean = batch_var = np.full(c, np.nan)
        else:
            batch_mean = mean.reshape(n, c).mean(axis=0)
            batch_var = var.reshape(n, c).mean(axis=0) * (s / (s - 1.0))
        new_mean = (1.0 - m) * running_mean.astype(np.float64) + m * batch_mean
        new_var = (1.0 - m) * running_var.astype(np.float64) + m * batch_var
        np.copyto(running_mean, new_mean, casting="same_kind")
        np.copyto(running_var, new_var, casting="same_kind")
    return y, mean, rstd


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
    x = _check_array(input)
    if use_input_stats:
        _check_spatial(x.shape)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither "
                         "be None")
    if not use_input_stats and running_mean is None:
        raise ValueError("Expected running_mean and running_var to be defined when "
                         "use_input_stats is false")
    n, c, s = _bn_dims(x)
    dtype = x.dtype
    weight = _check_vector(weight, "weight", c, dtype)
    bias = _check_vector(bias, "bias", c, dtype)
    rm = _check_vector(running_mean, "running_mean", c, dtype, writable=bool(use_input_stats))
    rv = _check_vector(running_var, "running_var", c, dtype, writable=bool(use_input_stats))
    if not use_input_stats:
        return _batch_norm_eval(x, n, c, s, weight, bias, rm, rv, eps)
    y, mean, rstd = _instance_norm_train(x, n, c, s, weight, bias, running_mean, running_var,
                                         momentum, eps)
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
    return native_instance_norm(input, weight, bias, running_mean, running_var,
                                use_input_stats, momentum, eps)[0]


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
    x = _check_array(input)
    n, c, s = _bn_dims(x)
    dy = _check_grad(grad_output, x)
    weight = _check_vector(weight, "weight", c, x.dtype)
    if use_input_stats:
        mean = _stats_vector(np.reshape(save_mean, -1), "save_mean", n * c)
        invstd = _stats_vector(np.reshape(save_invstd, -1), "save_invstd", n * c)
        return _group_norm_backward(dy, x, n, c, 1, s, mean, invstd, weight)
    mean = _stats_vector(save_mean, "save_mean", c)
    invstd = _stats_vector(save_invstd, "save_invstd", c)
    return _batch_norm_backward(dy, x, n, c, s, weight, mean, invstd, False)


# ---------------------------------------------------------------------------------------
# RMS norm
# ---------------------------------------------------------------------------------------

def _rms_dims(x: Array, shape: Tuple[int, ...]) -> Tuple[int, int]:
    k = len(shape)
    if k == 0:
        raise ValueError("Expected normalized_shape to be at least 1-dimensional, i.e., "
                         "containing at least one element, but got normalized_shape = []")
    if x.ndim < k:
        raise ValueError(f"Input tensor must have at least {k} dimensions, but got {x.ndim}")
    if x.shape[x.ndim - k:] != shape:
        ns = ", ".join(map(str, shape))
        raise ValueError(f"Given normalized_shape=[{ns}], expected input with shape [*{ns}], "
                         f"but got input of size{_torch_shape(x.shape)}")
    d = math.prod(shape)
    return math.prod(x.shape[: x.ndim - k]), d


def _rms_eps(eps, dtype: np.dtype) -> float:
    """eps=None: the machine epsilon of the input dtype (torch's default)."""
    return float(np.finfo(dtype).eps) if eps is None else float(eps)


def _rms_norm(x, m, d, weight, eps):
    """Forward on validated arguments: (y, rrms (m,)); rrms is NaN for empty rows."""
    if m == 0 or d == 0:
        return np.empty_like(x), np.full(m, np.nan)
    return _row_norm.rms_norm_forward(x, m, d, weight, _rms_eps(eps, x.dtype))


def _rms_norm_backward(dy, x, shape, m, d, rrms, weight):
    if m == 0 or d == 0:
        return np.empty_like(x), np.zeros(shape, dtype=x.dtype)
    dx, dw = _row_norm.rms_norm_backward(dy, x, m, d, rrms, weight)
    return dx, dw.reshape(shape)


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
    x = _check_array(input)
    shape = _normalized_shape(normalized_shape)
    m, d = _rms_dims(x, shape)
    weight = _check_affine(weight, "weight", shape, x.dtype)
    y, rrms = _rms_norm(x, m, d, weight, eps)
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
    x = _check_array(input)
    shape = _normalized_shape(normalized_shape)
    m, d = _rms_dims(x, shape)
    dy = _check_grad(grad_output, x)
    weight = _check_affine(weight, "weight", shape, x.dtype)
    rrms = _stats_vector(np.reshape(rrms, -1), "rrms", m)
    return _rms_norm_backward(dy, x, shape, m, d, rrms, weight)


# ---------------------------------------------------------------------------------------
# fused residual add + layer norm (ONNX Runtime's SkipLayerNormalization)
# ---------------------------------------------------------------------------------------

def _add_layer_norm(x, r, m, d, weight, bias, eps):
    """(y, s, mean, rstd) on validated arguments (x, r: same shape, dtype, C-contiguous)."""
    if m == 0 or d == 0:
        nan = np.full(m, np.nan)
        return np.empty_like(x), x + r, nan, nan.copy()
    return _row_norm.add_layer_norm_forward(x, r, m, d, weight, bias, float(eps))


def _add_layer_norm_backward(dy, dsum, s, shape, m, d, mean, rstd, weight):
    ds, dw, db = _layer_norm_backward(dy, s, shape, m, d, mean, rstd, weight)
    if dsum is not None:
        np.add(ds, dsum, out=ds)
    return ds, dw, db


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
    x = _check_array(input)
    r = _check_same(residual, x, "residual", "the input")
    shape = _normalized_shape(normalized_shape)
    m, d = _ln_dims(x, shape)
    weight = _check_affine(weight, "weight", shape, x.dtype)
    bias = _check_affine(bias, "bias", shape, x.dtype)
    y, s, mean, rstd = _add_layer_norm(x, r, m, d, weight, bias, eps)
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
    return native_add_layer_norm(input, residual, normalized_shape, weight, bias, eps)[:2]


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
    s = _check_array(s, "s")
    shape = _normalized_shape(normalized_shape)
    m, d = _ln_dims(s, shape)
    dy = _check_same(grad_output, s, "grad_output", "the sum")
    dsum = None if grad_sum is None else _check_same(grad_sum, s, "grad_sum", "the sum")
    weight = _check_affine(weight, "weight", shape, s.dtype)
    mean = _stats_vector(np.reshape(mean, -1), "mean", m)
    rstd = _stats_vector(np.reshape(rstd, -1), "rstd", m)
    return _add_layer_norm_backward(dy, dsum, s, shape, m, d, mean, rstd, weight)


# ---------------------------------------------------------------------------------------
# fused batch norm + ReLU (oneDNN's fuse_norm_relu)
# ---------------------------------------------------------------------------------------

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
    return native_batch_norm(input, weight, bias, running_mean, running_var, training,
                             momentum, eps, relu=True)


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
    return native_batch_norm_relu(input, weight, bias, running_mean, running_var, training,
                                  momentum, eps)[0]


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
    x = _check_array(input)
    n, c, s = _bn_dims(x)
    dy = _check_grad(grad_output, x)
    y = _check_same(output, x, "output", "the input")
    weight = _check_vector(weight, "weight", c, x.dtype)
    save_mean = _stats_vector(save_mean, "save_mean", c)
    save_invstd = _stats_vector(save_invstd, "save_invstd", c)
    return _batch_norm_backward(dy, x, n, c, s, weight, save_mean, save_invstd, training, y)
