"""BatchNorm's (N, C) path of half storage (BatchNorm1d, and channels-last BatchNorm2d/3d as
(N*H*W, C)): the tile reductions and the four-row elementwise loops read the half bits in
place (simd/half_cols.h). Their results must be the bits of the float32 kernel run on the
widened input, its outputs rounded once (what the staged design computed), at every SIMD
build and thread count, and close to a float64 reference."""

import numpy as np
import pytest

import cnorm
from cnorm import _ops
from cnorm._kernels import batch_norm as bn_kernels

ml_dtypes = pytest.importorskip("ml_dtypes")
F16 = np.dtype(np.float16)
BF16 = np.dtype(ml_dtypes.bfloat16)
KIND = {F16: 1, BF16: 2}
EPS = 1e-5

# odd C, C not a multiple of any vector width, C over COLS_PER_TILE (1024), M = 2..
SHAPES = [(2, 1), (2, 7), (3, 9), (5, 17), (4, 63), (37, 129), (1000, 3), (300, 64), (70, 1025)]
LARGE = [(20000, 64), (3000, 257)]  # many chunks of rows; two threads get work


@pytest.fixture
def restore():
    saved = (cnorm.get_num_threads(), bn_kernels._simd_build())
    yield
    cnorm.set_num_threads(saved[0])
    bn_kernels._set_simd_build(saved[1])


def _data(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    n, c = shape
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 4, c) + rng.uniform(-3, 3, c)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = rng.uniform(0.5, 2, c).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    return x, dy, w, b


def _run(x, dy, w, b, kind):
    """Every (N, C) entry point of the kernel on x (half bits when kind, else float32)."""
    n, c = x.shape
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    y, mean, invstd = bn_kernels.batch_norm_forward_train(x, n, c, 1, w, b, rm, rv, 0.1, EPS, False, kind)
    yr = bn_kernels.batch_norm_forward_train(x, n, c, 1, w, b, None, None, 0.1, EPS, True, kind)[0]
    ye = bn_kernels.batch_norm_forward_eval(x, n, c, 1, w, b, rm, rv, EPS, False, kind)[0]
    dx, sdy, sdyx = bn_kernels.batch_norm_backward(dy, x, n, c, 1, mean, invstd, w, True, None, kind)
    dxr = bn_kernels.batch_norm_backward(dy, x, n, c, 1, mean, invstd, w, True, yr, kind)[0]
    dxe = bn_kernels.batch_norm_backward(dy, x, n, c, 1, mean, invstd, w, False, None, kind)[0]
    stats = bn_kernels.batch_norm_stats(x, n, c, 1, kind)
    outputs = dict(y=y, yr=yr, ye=ye, dx=dx, dxr=dxr, dxe=dxe)
    floats = dict(mean=mean, invstd=invstd, rm=rm, rv=rv, sdy=sdy, sdyx=sdyx, smean=stats[0], svar=stats[1])
    return outputs, floats


def _staged(x, dy, w, b, dtype):
    """The float32 kernel on the widened half input, each half output rounded once."""
    outputs, floats = _run(x.astype(np.float32), dy.astype(np.float32), w, b, 0)
    return {k: _ops.narrow(v, dtype).view(np.uint16) for k, v in outputs.items()}, floats


def _check_bits(x, dy, w, b, dtype, want):
    outputs, floats = _run(x.view(np.uint16), dy.view(np.uint16), w, b, KIND[dtype])
    for k, v in outputs.items():
        np.testing.assert_array_equal(v, want[0][k], err_msg=k)
    for k, v in floats.items():
        assert v.tobytes() == want[1][k].tobytes(), k


@pytest.mark.parametrize("dtype", [F16, BF16], ids=lambda d: d.name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_half_rows_are_the_staged_bits_at_every_build_and_thread_count(restore, dtype, shape):
    x, dy, w, b = _data(shape, dtype, sum(shape))
    x[shape[0] // 2, shape[1] - 1] = np.inf if shape[0] > 2 else x[0, 0]  # a channel of inf
    want = _staged(x, dy, w, b, dtype)
    for threads in (1, 2):
        cnorm.set_num_threads(threads)
        for build in bn_kernels._simd_builds():
            assert bn_kernels._set_simd_build(build) == build
            _check_bits(x, dy, w, b, dtype, want)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=lambda d: d.name)
@pytest.mark.parametrize("shape", LARGE, ids=str)
def test_half_rows_large_batches_are_the_staged_bits_on_one_and_two_threads(restore, dtype, shape):
    x, dy, w, b = _data(shape, dtype, 7)
    want = _staged(x, dy, w, b, dtype)
    for threads in (1, 2):
        cnorm.set_num_threads(threads)
        _check_bits(x, dy, w, b, dtype, want)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=lambda d: d.name)
def test_half_rows_redo_overflowing_float32_squares_as_staged(restore, dtype):
    # bfloat16 values near 1e30: their float32 squares overflow, the tile's channel is redone
    # in float64 from a widened column (float16 cannot overflow float32 squares: a plain run)
    x, dy, w, b = _data((67, 19), dtype, 3)
    if dtype == BF16:
        x = (x.astype(np.float32) * np.float32(1e30)).astype(dtype)
    x[5, 4] = np.nan
    want = _staged(x, dy, w, b, dtype)
    _check_bits(x, dy, w, b, dtype, want)
    cnorm.set_num_threads(2)
    _check_bits(x, dy, w, b, dtype, want)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=lambda d: d.name)
@pytest.mark.parametrize("shape", [(2, 9), (33, 65), (4096, 24)], ids=str)
def test_half_rows_against_a_float64_reference(dtype, shape):
    x, dy, w, b = _data(shape, dtype, 11)
    n, c = shape
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    mean64, var64 = x64.mean(0), x64.var(0)
    invstd64 = 1 / np.sqrt(var64 + EPS)
    xhat = (x64 - mean64) * invstd64
    y64 = xhat * w + b
    dx64 = w * invstd64 * (dy64 - dy64.mean(0) - xhat * (dy64 * xhat).mean(0))
    outputs, floats = _run(x.view(np.uint16), dy.view(np.uint16), w, b, KIND[dtype])
    np.testing.assert_allclose(floats["mean"], mean64, rtol=1e-6, atol=1e-6 * np.abs(x64).max())
    np.testing.assert_allclose(floats["invstd"], invstd64, rtol=1e-5)
    np.testing.assert_allclose(floats["sdy"], dy64.sum(0), rtol=1e-5, atol=1e-4 * n)
    np.testing.assert_allclose(floats["sdyx"], (dy64 * xhat).sum(0), rtol=1e-4, atol=1e-4 * n)
    eps = float(ml_dtypes.finfo(dtype).eps)
    for got, ref in ((outputs["y"], y64), (outputs["dx"], dx64)):
        got64 = got.view(dtype).astype(np.float64)
        # one rounding to the half type plus float32 arithmetic: within ~1 ulp of the value
        assert np.all(np.abs(got64 - ref) <= eps * np.abs(ref) + 1e-3 * np.abs(ref).max())


@pytest.mark.parametrize("x_dtype", [F16, BF16, np.dtype(np.float32)], ids=lambda d: d.name)
@pytest.mark.parametrize("stats_dtype", [F16, BF16], ids=lambda d: d.name)
@pytest.mark.parametrize("shape", [(2, 3, 1), (64, 33, 1), (4, 6, 9)], ids=str)
def test_half_running_statistics_by_the_kernel_are_the_numpy_blend(x_dtype, stats_dtype, shape):
    # plain buffers: updated by the kernel (stats_kind); strided views of the same values
    # take the NumPy blend of _ops: the same bits
    n, c, s = shape
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((n, c * s)) * 2 + 1).astype(x_dtype)
    x[:, :s] = 1.5  # a constant channel: its variance clamped to 0
    for factor, eps in ((0.1, 1e-5), (1.0, 0.5), (1 / 3, 100.0)):
        rm = rng.standard_normal(c).astype(stats_dtype)
        rv = rng.uniform(0.1, 3, c).astype(stats_dtype)
        strided = [np.repeat(a, 2)[::2] for a in (rm, rv)]
        assert not strided[0].flags.c_contiguous
        got = _ops.batch_norm_train(x, n, c, s, None, None, rm, rv, factor, eps)
        want = _ops.batch_norm_train(x, n, c, s, None, None, *strided, factor, eps)
        for a, b in zip(got + (rm, rv), want + tuple(strided)):
            assert np.asarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def test_kernel_checks_the_running_statistics_kind():
    x = np.ones((4, 3), np.float32)
    bits = np.zeros(3, np.uint16)
    with pytest.raises(ValueError, match="stats_kind"):
        bn_kernels.batch_norm_forward_train(x, 4, 3, 1, None, None, bits, bits.copy(), 0.1, EPS, False, 0, 3)
    with pytest.raises(ValueError, match="uint16"):  # float32 buffers are not half bits
        rm = np.zeros(3, np.float32)
        bn_kernels.batch_norm_forward_train(x, 4, 3, 1, None, None, rm, rm.copy(), 0.1, EPS, False, 0, 1)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=lambda d: d.name)
def test_half_rows_keep_nan_payloads_as_staged(restore, dtype):
    # NaNs of either sign and several payloads through the four-row loops (bfloat16 on
    # avx2: two vectors rounded per pack) and their row and scalar tails (C = 37)
    x, dy, w, b = _data((9, 37), dtype, 13)
    bits = x.view(np.uint16)
    nans = [0x7FC1, 0xFFC0, 0x7F81, 0xFFFF] if dtype == BF16 else [0x7E01, 0xFE00, 0x7C01, 0xFFFF]
    for k, h in enumerate(nans):
        bits[k, 3 * k] = h
        bits[8 - k, 36 - k] = h
    want = _staged(x, dy, w, b, dtype)
    for build in bn_kernels._simd_builds():
        bn_kernels._set_simd_build(build)
        _check_bits(x, dy, w, b, dtype, want)
