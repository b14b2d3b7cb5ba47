"""Half storage (float16, bfloat16) in the channels-last GroupNorm / InstanceNorm
(cnorm.functional.channels_last on the kernels of channels_last.pyx).

The kernels widen each load exactly. The forward does the float32 arithmetic of the
float32 kernel (torch's for half storage), rounding each output once from float32: a half
output is, bit for bit, the float32 kernel's output on the widened inputs cast to the half
type, with the same statistics. The backward does the float64 arithmetic, rounding each
output once: the float64 kernel's result on the widened inputs rounded once to the half
type (checked here with a rounding written in NumPy). Also: the float64 truth of the same half inputs
(within one half ulp of the output scale), the channels-first half results (another
summation order: within one half ulp), torch's mixed precision (float32 weight, bias and
running statistics with a half input), thread counts, both grad_output layouts."""

from __future__ import annotations

import numpy as np
import pytest

import cnorm
import cnorm.functional as F
from cnorm.functional import channels_last as CL

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
HALF = [F16, BF16]
F32 = np.dtype(np.float32)
PARAMS = ["half", "mixed", "none"]  # weight/bias: the input's dtype, float32, None


def half_id(dtype) -> str:
    return "f16" if dtype == F16 else "bf16"


def round_once(v: np.ndarray, dtype) -> np.ndarray:
    """float64 values rounded once to nearest even to ``dtype``: to float32 rounded to odd
    (keeps the sticky bit), then to the half type."""
    v = np.asarray(v, dtype=np.float64)
    f = v.astype(np.float32)
    u = f.view(np.uint32).copy()
    back = f.astype(np.float64)
    fix = (back != v) & ~np.isnan(v) & ((u & 1) == 0)
    toward = np.where(np.abs(back) > np.abs(v), u - 1, u + 1).astype(np.uint32)
    return np.where(fix, toward, u).view(np.float32).astype(dtype)


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint16)


def ulp_scale(truth: np.ndarray, dtype) -> float:
    eps = 2.0**-10 if dtype == F16 else 2.0**-7
    return eps * float(np.max(np.abs(truth)))


def data(dtype, params, shape=(3, 5, 7, 12), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(1.5, 3, shape).astype(dtype)
    dy = rng.normal(0, 1, shape).astype(dtype)
    c = shape[-1]
    p_dtype = dtype if params == "half" else F32
    w = rng.normal(1, 0.3, c).astype(p_dtype) if params != "none" else None
    b = rng.normal(0, 0.3, c).astype(p_dtype) if params != "none" else None
    return x, dy, w, b


def wide(a):
    return None if a is None else a.astype(np.float64)


def single(a):
    return None if a is None else a.astype(np.float32)


def truth_group_norm(x, groups, w, b, eps, dy):
    """float64 forward and backward of the half inputs (channels-last), by NumPy."""
    x = x.astype(np.float64)
    dy = dy.astype(np.float64)
    n, c = x.shape[0], x.shape[-1]
    xg = x.reshape(n, -1, groups, c // groups)
    mean = xg.mean(axis=(1, 3), keepdims=True)
    rstd = 1 / np.sqrt(xg.var(axis=(1, 3), keepdims=True) + eps)
    xhat = ((xg - mean) * rstd).reshape(x.shape)
    wv = np.ones(c) if w is None else w.astype(np.float64)
    bv = np.zeros(c) if b is None else b.astype(np.float64)
    y = xhat * wv + bv
    g = (dy * wv).reshape(xg.shape)
    xh = xhat.reshape(xg.shape)
    dx = rstd * (g - g.mean(axis=(1, 3), keepdims=True) - (g * xh).mean(axis=(1, 3), keepdims=True) * xh)
    axes = tuple(range(x.ndim - 1))
    return y, dx.reshape(x.shape), (dy * xhat).sum(axis=axes), dy.sum(axis=axes)


# ----------------------------------------------------------------------- bits and truth


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("dtype", HALF, ids=half_id)
@pytest.mark.parametrize("groups", [1, 3, 12])
def test_group_norm_forward_float32_backward_float64_rounded_once(dtype, params, groups):
    x, dy, w, b = data(dtype, params)
    y, mean, rstd = CL.native_group_norm(x, groups, w, b, 1e-5)
    y32, mean32, rstd32 = CL.native_group_norm(x.astype(np.float32), groups, single(w), single(b), 1e-5)
    assert y.dtype == dtype and y.shape == x.shape
    assert np.array_equal(bits(y), bits(y32.astype(dtype)))
    assert np.array_equal(mean, mean32) and np.array_equal(rstd, rstd32)
    dx, dw, db = CL.group_norm_backward(dy, x, groups, mean, rstd, w)
    dx64, dw64, db64 = CL.group_norm_backward(
        dy.astype(np.float64), x.astype(np.float64), groups, mean, rstd, wide(w)
    )
    assert dx.dtype == dtype and np.array_equal(bits(dx), bits(round_once(dx64, dtype)))
    p_dtype = F32 if params == "mixed" else dtype
    assert dw.dtype == p_dtype and db.dtype == p_dtype
    if p_dtype == F32:  # rounded once from float64 too
        assert np.array_equal(dw, dw64.astype(np.float32)) and np.array_equal(db, db64.astype(np.float32))
    else:
        assert np.array_equal(bits(dw), bits(round_once(dw64, dtype)))
        assert np.array_equal(bits(db), bits(round_once(db64, dtype)))
    # the float64 truth of the same half inputs: within one half ulp of the output scale
    ty, tdx, tdw, tdb = truth_group_norm(x, groups, w, b, 1e-5, dy)
    for got, want in ((y, ty), (dx, tdx), (dw, tdw), (db, tdb)):
        assert np.max(np.abs(got.astype(np.float64) - want)) <= ulp_scale(want, dtype)


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("dtype", HALF, ids=half_id)
def test_instance_norm_with_running_stats(dtype, params):
    """use_input_stats: the group norm of one channel per group, running statistics
    updated in their own dtype (float32 with mixed precision) as the channels-first
    ones; eval (running statistics): the batch-norm path."""
    x, dy, w, b = data(dtype, params, shape=(2, 4, 3, 5, 6), seed=1)
    r_dtype = F32 if params != "half" else dtype
    rm, rv = np.zeros(6, r_dtype), np.ones(6, r_dtype)
    rm_first, rv_first = rm.copy(), rv.copy()
    y, mean, invstd = CL.native_instance_norm(x, w, b, rm, rv, True, 0.1, 1e-5)
    y32, mean32, _ = CL.native_instance_norm(
        x.astype(np.float32), single(w), single(b), None, None, True, 0.1, 1e-5
    )
    assert y.dtype == dtype and np.array_equal(bits(y), bits(y32.astype(dtype)))
    assert np.array_equal(mean, mean32)
    first = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    F.native_instance_norm(first, w, b, rm_first, rv_first, True, 0.1, 1e-5)
    assert rm.dtype == r_dtype
    tol = 2.0**-10 if dtype == F16 else 2.0**-7
    np.testing.assert_allclose(rm.astype(np.float64), rm_first.astype(np.float64), rtol=tol, atol=1e-6)
    np.testing.assert_allclose(rv.astype(np.float64), rv_first.astype(np.float64), rtol=tol, atol=1e-6)
    dx, dw, db = CL.instance_norm_backward(dy, x, w, mean, invstd, True)
    dx64, _, _ = CL.instance_norm_backward(
        dy.astype(np.float64), x.astype(np.float64), wide(w), mean, invstd, True
    )
    assert dx.dtype == dtype and np.array_equal(bits(dx), bits(round_once(dx64, dtype)))
    if w is not None:
        assert dw.dtype == w.dtype and db.dtype == w.dtype
    # eval: running statistics, channels-last output, either output layout
    ye, _, _ = CL.native_instance_norm(x, w, b, rm, rv, False, 0.1, 1e-5)
    yc, _, _ = CL.native_instance_norm(x, w, b, rm, rv, False, 0.1, 1e-5, channels_first_output=True)
    assert ye.dtype == dtype and np.array_equal(bits(ye), bits(yc))


@pytest.mark.parametrize("dtype", HALF, ids=half_id)
def test_channels_first_output_and_grad_output(dtype):
    """channels_first_output=True writes the same values; a channels-first grad_output (a
    moveaxis view) gives the same dx as a channels-last one."""
    x, dy, w, b = data(dtype, "mixed", seed=2)
    y, mean, rstd = CL.native_group_norm(x, 4, w, b, 1e-5)
    yc, _, _ = CL.native_group_norm(x, 4, w, b, 1e-5, channels_first_output=True)
    assert np.moveaxis(yc, -1, 1).flags.c_contiguous and np.array_equal(bits(y), bits(yc))
    dy_first = np.moveaxis(np.ascontiguousarray(np.moveaxis(dy, -1, 1)), 1, -1)
    a = CL.group_norm_backward(dy, x, 4, mean, rstd, w)
    c = CL.group_norm_backward(dy_first, x, 4, mean, rstd, w)
    for u, v in zip(a, c):
        assert np.array_equal(
            bits(u) if u.dtype.itemsize == 2 else u, bits(v) if v.dtype.itemsize == 2 else v
        )


@pytest.mark.parametrize("params", ["half", "mixed"])
@pytest.mark.parametrize("dtype", HALF, ids=half_id)
def test_as_channels_first_half(dtype, params):
    """The channels-first half kernels (float32 block statistics, another order): the same
    results within one half ulp of the output scale; mean and rstd nearly equal."""
    x, dy, w, b = data(dtype, params, shape=(2, 9, 11, 8), seed=3)
    first = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    dy_first = np.ascontiguousarray(np.moveaxis(dy, -1, 1))
    y, mean, rstd = CL.native_group_norm(x, 2, w, b, 1e-5)
    yf, meanf, rstdf = F.native_group_norm(first, 2, w, b, 1e-5)
    np.testing.assert_allclose(mean, meanf, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rstd, rstdf, rtol=1e-6)
    outs = [(y, np.moveaxis(yf, 1, -1))]
    got = CL.group_norm_backward(dy, x, 2, mean, rstd, w)
    want = F.group_norm_backward(dy_first, first, 2, meanf, rstdf, w)
    outs += [(got[0], np.moveaxis(want[0], 1, -1)), (got[1], want[1]), (got[2], want[2])]
    for a, c in outs:
        assert a.dtype == c.dtype
        a, c = a.astype(np.float64), c.astype(np.float64)
        assert np.max(np.abs(a - c)) <= ulp_scale(c, dtype)


@pytest.mark.parametrize("dtype", HALF, ids=half_id)
def test_same_bits_at_any_thread_count(dtype):
    """Work items split across threads (samples, group blocks): 1, 2 and 3 threads."""
    x, dy, w, b = data(dtype, "mixed", shape=(2, 40, 40, 32), seed=4)
    old = cnorm.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            cnorm.set_num_threads(threads)
            y, mean, rstd = CL.native_group_norm(x, 8, w, b, 1e-5)
            dx, dw, db = CL.group_norm_backward(dy, x, 8, mean, rstd, w)
            results.append((bits(y), mean, rstd, bits(dx), dw, db))
    finally:
        cnorm.set_num_threads(old)
    for other in results[1:]:
        assert all(np.array_equal(a, c) for a, c in zip(results[0], other))


def test_mixed_dtypes_refused_as_channels_first():
    """A half input with float16 + bfloat16 (or half + float64) parameters: the
    channels-first functions' RuntimeError."""
    x, _, w, _ = data(BF16, "half")
    for bad in (w.astype(np.float16), w.astype(np.float64)):
        with pytest.raises(RuntimeError, match="mixed dtype"):
            CL.native_group_norm(x, 3, bad, None, 1e-5)
        with pytest.raises(RuntimeError, match="mixed dtype"):
            F.native_group_norm(np.ascontiguousarray(np.moveaxis(x, -1, 1)), 3, bad, None, 1e-5)


@pytest.mark.parametrize("dtype", HALF, ids=half_id)
def test_empty_and_nonfinite(dtype):
    """No values: an empty half output and NaN statistics, zero gradients; inf/NaN inputs
    give NaN rows as in float32."""
    x = np.zeros((0, 3, 3, 4), dtype)
    y, mean, _ = CL.native_group_norm(x, 2, None, None, 1e-5)
    assert y.dtype == dtype and y.shape == x.shape and mean.shape == (0, 2)
    x, dy, w, b = data(dtype, "mixed", seed=5)
    x[0, 1, 2, 3] = np.inf
    x[1, 0, 0, 0] = np.nan
    y, _, _ = CL.native_group_norm(x, 3, w, b, 1e-5)
    y32, _, _ = CL.native_group_norm(x.astype(np.float32), 3, w, b, 1e-5)
    assert np.array_equal(np.isnan(y.astype(np.float32)), np.isnan(y32))
