"""Validated arguments -> kernel calls, and torch's running-statistics semantics.

The one place that imports the compiled kernels. Every function takes arguments already
checked by :mod:`cnorm._validate` (C-contiguous arrays of one float dtype whose shapes
match the dims passed along) and handles what the kernels do not: empty inputs, the
checks torch makes only in training, the running-statistics update outside the
batch-norm kernel, and the reshapes of the per-parameter gradients.
"""

from __future__ import annotations

import functools
from typing import Optional, SupportsFloat, Tuple

import numpy as np

from ._kernels import batch_norm as bn_kernels
from ._kernels import channels_last as cl_kernels
from ._kernels import row_norm as row_kernels
from ._threads import get_num_threads, openmp_enabled, set_num_threads
from ._validate import FLOAT32, FLOAT64, half_kind

__all__ = [
    "get_num_threads",
    "openmp_enabled",
    "set_num_threads",
    "momentum_factor",
    "update_running_stats",
    "batch_norm_train",
    "batch_norm_eval",
    "batch_norm_backward",
    "batch_norm_stats",
    "batch_norm_elemt",
    "batch_norm_backward_reduce",
    "batch_norm_backward_elemt",
    "layer_norm_forward",
    "layer_norm_backward",
    "add_layer_norm_forward",
    "add_layer_norm_backward",
    "rms_norm_forward",
    "rms_norm_backward",
    "group_norm_forward",
    "group_norm_backward",
    "instance_norm_train",
    "update_instance_running_stats",
    "group_norm_channels_last_forward",
    "group_norm_channels_last_backward",
]

Array = np.ndarray
Stats3 = Tuple[Array, Array, Array]

# ------------------------------------------------------------------ half storage
# float16 / bfloat16 inputs: the data are stored in half precision, every sum and
# coefficient is float32 or wider. A half array is widened to float32 (exactly), the float32
# kernels run, and each output is rounded once to its dtype (to nearest even).


def widen(a):
    """A half array as a float32 copy (exact); anything else as it is."""
    kind = half_kind(a.dtype) if isinstance(a, np.ndarray) else None
    if kind is None:
        return a
    return row_kernels.widen_half(np.ascontiguousarray(a).view(np.uint16), kind)


def narrow(a: Array, dtype: np.dtype) -> Array:
    """``a`` (float32/float64) as ``dtype``, rounded once to nearest even."""
    if a.dtype == dtype:
        return a
    kind = half_kind(dtype)
    if kind is None:
        return a.astype(dtype)
    return row_kernels.narrow_half(np.ascontiguousarray(a), kind).view(dtype)


# NumPy widens float16 in software (~24 instructions an element), the kernel with F16C after
# a fixed cost of a few thousand (its parallel region): astype up to this size; bfloat16
# (ml_dtypes: a shift) always
_NUMPY_F16_MAX = 128


def _half_storage(*outputs: Optional[str], data: Tuple[int, ...] = (), params: Tuple[int, ...] = ()):
    """Run the decorated op of float32/float64 arrays on half inputs too: every half array
    argument widened, then each output rounded once to the input dtype ("x"), to the
    parameters' dtype ("p": float32 when a float32 parameter came with the half input,
    torch's mixed precision, else the input's) or left as computed (None: statistics).

    ``data``: the positions of the op's (M, D) arrays when its kernels take half storage
    themselves (``kind=``): those go as their uint16 bits (outputs "x" come back as bits,
    "p" as float64). ``params``: the positions of the other arrays (parameters, running
    and per-channel statistics; None allowed): half ones are widened exactly, a float32
    one makes "p" float32, others (float64 statistics, uint16 bits) pass as they are.
    Listed, not searched for: this wrapper runs on every half call, the small ones
    included, and a scan over all the arguments cost microseconds."""

    first = data[0] if data else 0  # the position of the input

    def decorate(op):
        @functools.wraps(op)
        def run(*args):
            # a float32/float64 input (validated parameters have its dtype): as it is
            half = args[first].dtype
            if half.itemsize > 2:
                return op(*args)
            kind = half_kind(half)
            if kind is None:
                return op(*args)
            count = len(args)
            wide = list(args)
            usable = True
            for i in data:
                a = args[i] if i < count else None
                if a is not None:
                    usable = usable and a.size > 0
                    wide[i] = a.view(_BITS)
            pdt = half  # the parameters' dtype
            for i in params:
                a = args[i] if i < count else None
                if a is not None:
                    dt = a.dtype
                    if dt == FLOAT32:
                        pdt = FLOAT32
                    elif dt == half:
                        wide[i] = a.astype(FLOAT32) if kind == 2 or a.size <= _NUMPY_F16_MAX else widen(a)
            if usable:
                out = op(*wide, kind=kind)
                if type(out) is not tuple:
                    return _rounded(out, outputs[0], half, pdt)
                return tuple([_rounded(o, how, half, pdt) for o, how in zip(out, outputs)])
            out = op(*[widen(a) for a in args])
            if type(out) is not tuple:
                return narrow(out, half if outputs[0] == "x" else pdt)
            return tuple(
                o if how is None else narrow(o, half if how == "x" else pdt) for o, how in zip(out, outputs)
            )

        return run

    return decorate


_BITS = np.dtype(np.uint16)


def _rounded(o, how, half, pdt):
    """An output of a half call: "x" bits as the input dtype, "p" (float64) rounded to the
    parameters' dtype ``pdt``, None as it is."""
    if how == "x":
        return o.view(half)
    return o if how is None else narrow(o, pdt)


def default_eps(dtype: np.dtype) -> float:
    """The machine epsilon of ``dtype`` (torch's RMSNorm default)."""
    if half_kind(dtype) == 2:  # bfloat16
        return 2.0**-7
    return float(np.finfo(dtype).eps)


# ------------------------------------------------------------------- running statistics


def momentum_factor(momentum: Optional[float], num_batches_tracked: Optional[SupportsFloat] = None) -> float:
    """torch's ``exponential_average_factor``: ``momentum``, or with ``momentum=None`` the
    cumulative average ``1 / num_batches_tracked`` (the count including this batch);
    0.0 (running statistics left as they are) when there is no count, as torch passes."""
    if momentum is not None:
        return momentum
    return 0.0 if num_batches_tracked is None else 1.0 / float(num_batches_tracked)


def update_running_stats(
    running_mean: Array, running_var: Array, mean: Array, unbiased_var: Array, factor: float
) -> None:
    """``running = (1 - factor) * running + factor * batch`` in place, in float64 and
    rounded once to the buffers' dtype, as the batch-norm kernel does it in its fused
    training pass (which is why BatchNorm itself does not come here)."""
    if running_mean.dtype == running_var.dtype and mean.dtype == unbiased_var.dtype == FLOAT64:
        _blend_running(running_mean, running_var, np.array((mean, unbiased_var)), factor)
        return
    new_mean = (1.0 - factor) * running_mean.astype(np.float64) + factor * mean
    new_var = (1.0 - factor) * running_var.astype(np.float64) + factor * unbiased_var
    np.copyto(running_mean, narrow(new_mean, running_mean.dtype), casting="same_kind")
    np.copyto(running_var, narrow(new_var, running_var.dtype), casting="same_kind")


def _blend_running(running_mean: Array, running_var: Array, batch: Array, factor: float) -> None:
    """update_running_stats of buffers of one dtype, the batch (mean, unbiased var) as one
    float64 (2, C) array (overwritten): both statistics in each NumPy call."""
    running = np.array((running_mean, running_var), dtype=np.float64)  # exact
    running *= 1.0 - factor
    batch *= factor
    running += batch
    new_mean, new_var = narrow(running, running_mean.dtype)
    np.copyto(running_mean, new_mean)
    np.copyto(running_var, new_var)


# ----------------------------------------------------------------------------- batch norm


def batch_norm_train(
    x: Array,
    n: int,
    c: int,
    s: int,
    weight: Optional[Array],
    bias: Optional[Array],
    running_mean: Optional[Array],
    running_var: Optional[Array],
    factor: float,
    eps: float,
    relu: bool = False,
) -> Stats3:
    """(y, mean, invstd) with the batch statistics; the running statistics (both or
    neither) updated in place by the kernel; relu: the fused ``max(0, batch_norm(x))``.
    Half running statistics are blended in float64 and rounded once: by the kernel (as
    their bits) when they are plain buffers of one dtype, else here."""
    if (
        running_mean is None
        or running_mean.dtype.itemsize != 2  # float32/float64: no dtype hash
        or half_kind(running_mean.dtype) is None
        or not eps > 0
        or n * s * c == 0
    ):
        return _batch_norm_train(x, n, c, s, weight, bias, running_mean, running_var, factor, eps, relu)
    assert running_var is not None
    if (
        running_var.dtype == running_mean.dtype
        and _plain_buffer(running_mean)
        and _plain_buffer(running_var)
        and not np.may_share_memory(running_mean, running_var)
    ):
        bits = (running_mean.view(np.uint16), running_var.view(np.uint16))
        return _batch_norm_train(
            x, n, c, s, weight, bias, *bits, factor, eps, relu, half_kind(running_mean.dtype)
        )
    y, mean, invstd = _batch_norm_train(x, n, c, s, weight, bias, None, None, factor, eps, relu)
    batch = np.empty((2, c))  # float64, as the kernel's statistics
    batch[0] = mean
    var = batch[1]  # max(1 / invstd**2 - eps, 0), unbiased: as the kernel's float32 update
    np.multiply(invstd, invstd, out=var)
    np.divide(1.0, var, out=var)
    np.subtract(var, eps, out=var)
    np.maximum(var, 0.0, out=var)
    var *= n * s / (n * s - 1.0)
    _blend_running(running_mean, running_var, batch, factor)
    return y, mean, invstd


def _plain_buffer(a: Array) -> bool:
    """A C-contiguous writeable 1-D array: the kernel can update its bits in place."""
    return a.ndim == 1 and a.flags.c_contiguous and a.flags.writeable


@_half_storage("x", None, None, data=(0,), params=(4, 5, 6, 7))
def _batch_norm_train(
    x, n, c, s, weight, bias, running_mean, running_var, factor, eps, relu, stats_kind=0, kind=0
) -> Stats3:
    """stats_kind: the running statistics are float16 (1) / bfloat16 (2) bits, uint16."""
    if not eps > 0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    m = n * s
    if m == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
    if m == 0 or c == 0:
        # torch: an empty batch leaves the running statistics alone
        return np.empty_like(x), np.zeros(c), np.zeros(c)
    return bn_kernels.batch_norm_forward_train(
        x, n, c, s, weight, bias, running_mean, running_var, float(factor), float(eps), relu, kind, stats_kind
    )


@_half_storage("x", None, None, data=(0,), params=(4, 5, 6, 7))
def batch_norm_eval(
    x: Array,
    n: int,
    c: int,
    s: int,
    weight: Optional[Array],
    bias: Optional[Array],
    running_mean: Array,
    running_var: Array,
    eps: float,
    relu: bool = False,
    kind: int = 0,
) -> Stats3:
    """(y, mean, invstd) with the running statistics."""
    return bn_kernels.batch_norm_forward_eval(
        x, n, c, s, weight, bias, running_mean, running_var, float(eps), relu, kind
    )


@_half_storage("x", "p", "p", data=(0, 1, 9), params=(5, 6, 7))
def batch_norm_backward(
    dy: Array,
    x: Array,
    n: int,
    c: int,
    s: int,
    weight: Optional[Array],
    mean: Array,
    invstd: Array,
    training: bool,
    y: Optional[Array] = None,
    kind: int = 0,
) -> Stats3:
    """(dx, dweight, dbias); y: the output of a fused BN + ReLU (the gradient passes where
    y > 0)."""
    if x.size == 0:
        zeros = np.zeros(c, dtype=x.dtype)
        return np.empty_like(x), zeros, zeros.copy()
    dx, sum_dy, sum_dy_xhat = bn_kernels.batch_norm_backward(
        dy, x, n, c, s, mean, invstd, weight, bool(training), y, kind
    )
    if kind:  # float64, rounded once to the parameters' dtype by _half_storage
        return dx, sum_dy_xhat, sum_dy
    return dx, sum_dy_xhat.astype(x.dtype), sum_dy.astype(x.dtype)


@_half_storage(None, None, None, data=(0,))
def batch_norm_stats(x: Array, n: int, c: int, s: int, kind: int = 0) -> Tuple[int, Array, Array]:
    """(count, mean, m2) per channel, float64."""
    count = n * s
    if count == 0 or c == 0:
        return count, np.zeros(c), np.zeros(c)
    mean, var = bn_kernels.batch_norm_stats(x, n, c, s, kind)
    return count, mean, var * count


@_half_storage("x", data=(0,), params=(4, 5, 6, 7))
def batch_norm_elemt(
    x: Array,
    n: int,
    c: int,
    s: int,
    mean: Array,
    invstd: Array,
    weight: Optional[Array],
    bias: Optional[Array],
    kind: int = 0,
) -> Array:
    if x.size == 0:
        return np.empty_like(x)
    return bn_kernels.batch_norm_elemt(x, n, c, s, mean, invstd, weight, bias, False, kind)


@_half_storage(None, None, data=(0, 1), params=(5, 6))
def batch_norm_backward_reduce(
    dy: Array, x: Array, n: int, c: int, s: int, mean: Array, invstd: Array, kind: int = 0
) -> Tuple[Array, Array]:
    if x.size == 0:
        return np.zeros(c), np.zeros(c)
    return bn_kernels.batch_norm_backward_reduce(dy, x, n, c, s, mean, invstd, kind)


@_half_storage("x", data=(0, 1), params=(5, 6, 7, 8, 9))
def batch_norm_backward_elemt(
    dy: Array,
    x: Array,
    n: int,
    c: int,
    s: int,
    mean: Array,
    invstd: Array,
    weight: Optional[Array],
    sum_dy: Array,
    sum_dy_xhat: Array,
    count: float,
    kind: int = 0,
) -> Array:
    if x.size == 0:
        return np.empty_like(x)
    if not count > 0:
        raise ValueError(f"count must be positive, got {count}")
    return bn_kernels.batch_norm_backward_elemt(
        dy, x, n, c, s, mean, invstd, weight, sum_dy, sum_dy_xhat, float(count), kind
    )


# ------------------------------------------------------------------------------ row norms
# an empty row has no statistics: NaN, as torch gives


@_half_storage("x", None, None, data=(0,), params=(3, 4))
def layer_norm_forward(
    x: Array, m: int, d: int, weight: Optional[Array], bias: Optional[Array], eps: float, kind: int = 0
) -> Stats3:
    """(y, mean (m,), rstd (m,)); weight and bias: any shape of d contiguous elements."""
    if m == 0 or d == 0:
        return np.empty_like(x), np.full(m, np.nan), np.full(m, np.nan)
    return row_kernels.layer_norm_forward(x, m, d, weight, bias, float(eps), kind)


@_half_storage("x", "p", "p", data=(0, 1), params=(5, 6, 7))
def layer_norm_backward(
    dy: Array,
    x: Array,
    shape: Tuple[int, ...],
    m: int,
    d: int,
    mean: Array,
    rstd: Array,
    weight: Optional[Array],
    kind: int = 0,
) -> Stats3:
    """(dx, dweight, dbias), the last two of ``shape``."""
    if m == 0 or d == 0:
        zeros = np.zeros(shape, dtype=x.dtype)
        return np.empty_like(x), zeros, zeros.copy()
    dx, dw, db = row_kernels.layer_norm_backward(dy, x, m, d, mean, rstd, weight, kind)
    return dx, dw.reshape(shape), db.reshape(shape)


@_half_storage("x", "x", None, None, data=(0, 1), params=(4, 5))
def add_layer_norm_forward(
    x: Array,
    r: Array,
    m: int,
    d: int,
    weight: Optional[Array],
    bias: Optional[Array],
    eps: float,
    kind: int = 0,
) -> Tuple[Array, Array, Array, Array]:
    """(y, s = x + r, mean, rstd)."""
    if m == 0 or d == 0:
        nan = np.full(m, np.nan)
        return np.empty_like(x), x + r, nan, nan.copy()
    return row_kernels.add_layer_norm_forward(x, r, m, d, weight, bias, float(eps), kind)


def add_layer_norm_backward(
    dy: Array,
    dsum: Optional[Array],
    s: Array,
    shape: Tuple[int, ...],
    m: int,
    d: int,
    mean: Array,
    rstd: Array,
    weight: Optional[Array],
) -> Stats3:
    """(ds, dweight, dbias): the layer-norm backward at s, plus dsum (None: 0)."""
    ds, dw, db = layer_norm_backward(dy, s, shape, m, d, mean, rstd, weight)
    if dsum is not None:
        np.add(ds, dsum, out=ds)
    return ds, dw, db


def rms_norm_forward(
    x: Array, m: int, d: int, weight: Optional[Array], eps: Optional[float]
) -> Tuple[Array, Array]:
    """(y, rrms (m,)); eps=None: the machine epsilon of the input dtype (torch's default)."""
    return _rms_norm_forward(x, m, d, weight, default_eps(x.dtype) if eps is None else float(eps))


@_half_storage("x", None, data=(0,), params=(3,))
def _rms_norm_forward(x: Array, m: int, d: int, weight: Optional[Array], eps: float, kind: int = 0):
    if m == 0 or d == 0:
        return np.empty_like(x), np.full(m, np.nan)
    return row_kernels.rms_norm_forward(x, m, d, weight, eps, kind)


@_half_storage("x", "p", data=(0, 1), params=(5, 6))
def rms_norm_backward(
    dy: Array,
    x: Array,
    shape: Tuple[int, ...],
    m: int,
    d: int,
    rrms: Array,
    weight: Optional[Array],
    kind: int = 0,
) -> Tuple[Array, Array]:
    """(dx, dweight of ``shape``)."""
    if m == 0 or d == 0:
        return np.empty_like(x), np.zeros(shape, dtype=x.dtype)
    dx, dw = row_kernels.rms_norm_backward(dy, x, m, d, rrms, weight, kind)
    return dx, dw.reshape(shape)


@_half_storage("x", None, None, None, data=(0,), params=(5, 6))
def group_norm_forward(
    x: Array,
    n: int,
    g: int,
    cg: int,
    s: int,
    weight: Optional[Array],
    bias: Optional[Array],
    eps: float,
    kind: int = 0,
) -> Tuple[Array, Array, Array, Array]:
    """(y, mean, rstd, biased var), float64 statistics (n*g,)."""
    if x.size == 0:
        nan = np.full(n * g, np.nan)
        return np.empty_like(x), nan, nan.copy(), nan.copy()
    return row_kernels.group_norm_forward(x, n, g, cg, s, weight, bias, float(eps), kind)


@_half_storage("x", "p", "p", data=(0, 1), params=(6, 7, 8))
def group_norm_backward(
    dy: Array,
    x: Array,
    n: int,
    g: int,
    cg: int,
    s: int,
    mean: Array,
    rstd: Array,
    weight: Optional[Array],
    kind: int = 0,
) -> Stats3:
    """(dx, dweight (C,), dbias (C,))."""
    if x.size == 0:
        zeros = np.zeros(g * cg, dtype=x.dtype)
        return np.empty_like(x), zeros, zeros.copy()
    return row_kernels.group_norm_backward(dy, x, n, g, cg, s, mean, rstd, weight, kind)


def instance_norm_train(
    x: Array,
    n: int,
    c: int,
    s: int,
    weight: Optional[Array],
    bias: Optional[Array],
    running_mean: Optional[Array],
    running_var: Optional[Array],
    factor: float,
    eps: float,
) -> Stats3:
    """(y, mean, rstd), float64 (n*c,), with the per-(n, c) statistics (a group norm with
    one group per channel). Given running statistics are updated as torch does: with the
    mean over n of the instance means / UNBIASED variances; N = 0 makes them NaN (a mean
    over no instance) and S = 0 with N > 0 leaves them alone."""
    y, mean, rstd, var = group_norm_forward(x, n, c, 1, s, weight, bias, eps)
    update_instance_running_stats(running_mean, running_var, mean, var, n, c, s, factor)
    return y, mean, rstd


def update_instance_running_stats(
    running_mean: Optional[Array],
    running_var: Optional[Array],
    mean: Array,
    var: Array,
    n: int,
    c: int,
    s: int,
    factor: float,
) -> None:
    """The instance-norm update of given running statistics from the (n*c,) instance
    means and biased variances of s values each (see instance_norm_train)."""
    if running_mean is not None and running_var is not None and c > 0 and (s > 0 or n == 0):
        if n == 0:
            batch_mean = batch_var = np.full(c, np.nan)
        else:
            batch_mean = mean.reshape(n, c).mean(axis=0)
            batch_var = var.reshape(n, c).mean(axis=0) * (s / (s - 1.0))
        update_running_stats(running_mean, running_var, batch_mean, batch_var, float(factor))


# ------------------------------------------------------------------- channels-last memory


def group_norm_channels_last_forward(
    x: Array,
    dims: Tuple[int, int, int, int],
    weight: Optional[Array],
    bias: Optional[Array],
    eps: float,
    out_last: bool,
) -> Tuple[Array, Array, Array, Array]:
    """(y flat, mean, rstd, biased var) of x C-contiguous (N, S, C), dims (N, G, Cg, S); y laid
    out (N, S, C) when out_last, else (N, C, S); empty inputs give NaN statistics."""
    return cl_kernels.group_norm_forward(x, dims, weight, bias, float(eps), out_last)


def group_norm_channels_last_backward(
    dy: Array,
    x: Array,
    dims: Tuple[int, int, int, int],
    mean: Array,
    rstd: Array,
    weight: Optional[Array],
    dy_last: bool,
) -> Stats3:
    """(dx like x, dweight, dbias in x's dtype); dy laid out (N, S, C) when dy_last."""
    dx, dw, db = cl_kernels.group_norm_backward(dy, x, dims, mean, rstd, weight, dy_last)
    return dx.reshape(x.shape), dw.astype(x.dtype), db.astype(x.dtype)
