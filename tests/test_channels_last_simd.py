"""The channels-last GroupNorm / InstanceNorm kernel (channels_last.pyx over the loops of
simd/channels_last.h) against its naive NumPy twin, bit for bit, in every SIMD build.

The loops keep one float64 accumulator per channel and add the positions s in order, so
the twin below (sequential sums by np.cumsum, the same operations in the same order)
gives the same bits for any vector width, thread count and layout; half storage is the
twin on the widened values, rounded once (round to odd to float32, then to the half).
"""

import numpy as np
import pytest

import cnorm
from cnorm._kernels import channels_last as K

ml_dtypes = pytest.importorskip("ml_dtypes")

EPS = 1e-5
# (N, G, Cg, S): odd C, InstanceNorm (Cg = 1), G = 1, C below and not a multiple of the
# vector width, S = 1, one sample over several threads
SHAPES = [(1, 1, 1, 1), (2, 3, 1, 5), (1, 1, 37, 21), (3, 2, 5, 17), (2, 16, 1, 64)]
SHAPES += [(1, 32, 2, 49), (2, 5, 3, 1), (1, 3, 1, 2), (2, 6, 11, 13), (1, 13, 1, 300)]
HALF = {1: np.float16, 2: ml_dtypes.bfloat16}


def _seq(a, axis=0):
    """Sum along axis in index order (np.sum would pair the terms up)."""
    return np.cumsum(a, axis=axis).take(-1, axis=axis)


def _twin_forward(x, dims, w, b):
    """(y (N, S, C), mean, rstd, var) of float64 x (N, S, C): the kernel's operations."""
    N, G, Cg, S = dims
    count = float(Cg * S)
    mean, rstd, var = (np.empty((N, G)) for _ in range(3))
    y = np.empty_like(x)
    for n in range(N):
        X = x[n]
        m = _seq(_seq(X).reshape(G, Cg), axis=1) / count
        D = X - np.repeat(m, Cg)
        sd = _seq(_seq(D).reshape(G, Cg), axis=1)
        ss = _seq(_seq(D * D).reshape(G, Cg), axis=1)
        v = (ss - sd * sd / count) / count
        v = np.where(v > 0, v, np.where(np.isnan(v), v, 0.0))
        rs = 1.0 / np.sqrt(v + EPS)
        mean[n], var[n], rstd[n] = m + sd / count, v, rs
        scale = np.repeat(rs, Cg) * (w if w is not None else 1.0)
        y[n] = (X - np.repeat(mean[n], Cg)) * scale + (b if b is not None else 0.0)
    return y, mean.ravel(), rstd.ravel(), var.ravel()


def _twin_backward(dy, x, dims, mean, rstd, w):
    N, G, Cg, S = dims
    C, D = G * Cg, float(Cg * S)
    wc = w if w is not None else np.ones(C)
    dx = np.empty_like(x)
    part = np.empty((2, N, C))
    for n in range(N):
        mu = np.repeat(mean.reshape(N, G)[n], Cg)
        rs = np.repeat(rstd.reshape(N, G)[n], Cg)
        sdy, sdx = _seq(dy[n]), _seq(dy[n] * (x[n] - mu))
        part[0, n], part[1, n] = sdx * rs, sdy
        sum_g = np.repeat(_seq((wc * sdy).reshape(G, Cg), axis=1), Cg)
        sum_gd = np.repeat(_seq((wc * sdx).reshape(G, Cg), axis=1), Cg)
        beta, gamma = -rs * rs * rs * sum_gd / D, -rs * sum_g / D
        dx[n] = (rs * wc) * dy[n] + beta * (x[n] - mu) + gamma
    return dx, _seq(part[0]), _seq(part[1])


def _round_half(y, kind):
    """float64 -> the half type, rounded once: to odd to float32, then to nearest even."""
    f = y.astype(np.float32)
    u = f.view(np.uint32).copy()
    fix = (f.astype(np.float64) != y) & ~np.isnan(y) & (u % 2 == 0)
    away = np.abs(f.astype(np.float64)) > np.abs(y)
    u[fix] = np.where(away[fix], u[fix] - 1, u[fix] + 1)
    return u.view(np.float32).astype(HALF[kind])


def _data(dims, kind, rng):
    N, G, Cg, S = dims
    x = rng.standard_normal((N, S, G * Cg)) * 3 + 1.5
    dy = rng.standard_normal((N, S, G * Cg))
    if kind:  # the kernel sees the half values: the twin starts from them too
        x, dy = (a.astype(HALF[kind]).astype(np.float64) for a in (x, dy))
    return x, dy


def _bits(a, kind):
    return a.view(np.uint16) if kind else a


@pytest.fixture(params=K._simd_builds())
def build(request):
    saved = K._simd_build()
    assert K._set_simd_build(request.param) == request.param
    yield request.param
    K._set_simd_build(saved)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", [0, 1, 2])
@pytest.mark.parametrize("dims", SHAPES)
def test_kernel_is_its_twin_bit_for_bit(build, dims, kind, threads):
    rng = np.random.default_rng(sum(dims) + kind)
    N, G, Cg, S = dims
    C = G * Cg
    x, dy = _data(dims, kind, rng)
    w = rng.standard_normal(C).astype(np.float32).astype(np.float64)
    b = rng.standard_normal(C).astype(np.float32).astype(np.float64)
    store = HALF[kind] if kind else np.float64
    cdt = np.float32 if kind else np.float64
    old = cnorm.get_num_threads()
    cnorm.set_num_threads(threads)
    try:
        for params in ((w, b), (None, None)):
            wk, bk = (None if p is None else p.astype(cdt) for p in params)
            ref = _twin_forward(x, dims, *params)
            for last in (True, False):
                xs = _bits(x.astype(store).ravel(), kind)
                y, mean, rstd, var = K.group_norm_forward(xs, dims, wk, bk, EPS, last, kind)
                want = ref[0] if last else np.moveaxis(ref[0], 1, 2)
                want = _round_half(want, kind) if kind else want
                assert np.array_equal(_bits(want.ravel(), kind), y)
                for got, exp in zip((mean, rstd, var), ref[1:]):
                    assert np.array_equal(got, exp)
                dys = dy if last else np.moveaxis(dy, 1, 2)
                dys = _bits(dys.astype(store).ravel(), kind)
                dx, dw, db = K.group_norm_backward(dys, xs, dims, mean, rstd, wk, last, kind)
                rdx, rdw, rdb = _twin_backward(dy, x, dims, mean, rstd, params[0])
                rdx = _round_half(rdx, kind) if kind else rdx
                assert np.array_equal(_bits(rdx.ravel(), kind), dx)
                assert np.array_equal(rdw, dw) and np.array_equal(rdb, db)
    finally:
        cnorm.set_num_threads(old)


def test_every_build_gives_the_same_bits_with_inf_and_nan():
    """NaN and inf inputs (NaN payloads included): the same bits from every build."""
    saved = K._simd_build()
    outs = {}
    try:
        for build in K._simd_builds():
            K._set_simd_build(build)
            rng = np.random.default_rng(5)  # the same data for every build
            got = []
            for dims in SHAPES:
                for kind in (0, 1, 2):
                    x, dy = _data(dims, kind, rng)
                    x.ravel()[:: max(1, x.size // 3)] = np.inf
                    x.ravel()[1 :: max(2, x.size // 2)] = np.nan
                    store = HALF[kind] if kind else np.float32
                    xs, dys = (_bits(a.astype(store).ravel(), kind) for a in (x, dy))
                    C = dims[1] * dims[2]
                    w = np.linspace(0.5, 1.5, C).astype(np.float32)
                    fwd = K.group_norm_forward(xs, dims, w, w, EPS, kind != 1, kind)
                    bwd = K.group_norm_backward(dys, xs, dims, fwd[1], fwd[2], w, kind != 2, kind)
                    got += [a.tobytes() for a in (*fwd, *bwd)]
            outs[build] = got
    finally:
        K._set_simd_build(saved)
    ref = outs.pop("scalar")
    for build, got in outs.items():
        assert got == ref, build


# float32 storage: the backward in float32 lanes (the sums in blocks of ROWS rows, added in
# float64), x - mean as x - hi with hi = (float)mean, lo = mean - hi folded in by the pyx
ROWS = 64


def _seq_blocks32(p):
    """(S, C) float32 terms: each block of ROWS rows summed in float32 in order, the
    block sums added in float64 in order."""
    out = np.zeros(p.shape[1])
    for r0 in range(0, p.shape[0], ROWS):
        out += _seq(p[r0 : r0 + ROWS]).astype(np.float64)
    return out


def _twin_backward32(dy, x, dims, mean, rstd, w):
    N, G, Cg, S = dims
    C, D = G * Cg, float(Cg * S)
    wc = w.astype(np.float64) if w is not None else np.ones(C)
    dx = np.empty_like(x)
    part = np.empty((2, N, C))
    for n in range(N):
        mu = np.repeat(mean.reshape(N, G)[n], Cg)
        rs = np.repeat(rstd.reshape(N, G)[n], Cg)
        hi = mu.astype(np.float32)
        lo = mu - hi.astype(np.float64)
        t = x[n] - hi
        sdy = _seq_blocks32(dy[n])
        sdx = _seq_blocks32(dy[n] * t) - lo * sdy
        part[0, n], part[1, n] = sdx * rs, sdy
        sum_g = np.repeat(_seq((wc * sdy).reshape(G, Cg), axis=1), Cg)
        sum_gd = np.repeat(_seq((wc * sdx).reshape(G, Cg), axis=1), Cg)
        beta, gamma = -rs * rs * rs * sum_gd / D, -rs * sum_g / D
        k = gamma - beta * lo
        a, b, k = ((rs * wc).astype(np.float32), beta.astype(np.float32), k.astype(np.float32))
        dx[n] = (a * dy[n] + b * t) + k
    return dx, _seq(part[0]), _seq(part[1])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dims", SHAPES + [(2, 4, 8, 150), (1, 3, 24, 70)])
def test_float32_backward_is_its_twin_bit_for_bit(build, dims, threads):
    rng = np.random.default_rng(sum(dims) + 7)
    N, G, Cg, S = dims
    C = G * Cg
    x = (rng.standard_normal((N, S, C)) * 3 + 1e4).astype(np.float32)
    dy = rng.standard_normal((N, S, C)).astype(np.float32)
    old = cnorm.get_num_threads()
    cnorm.set_num_threads(threads)
    try:
        for w in (rng.standard_normal(C).astype(np.float32), None):
            _, mean, rstd, _ = K.group_norm_forward(x.ravel(), dims, w, w, EPS, True)
            want = _twin_backward32(dy, x, dims, mean, rstd, w)
            for last in (True, False):
                dys = dy if last else np.ascontiguousarray(np.moveaxis(dy, 1, 2))
                got = K.group_norm_backward(dys.ravel(), x.ravel(), dims, mean, rstd, w, last)
                assert np.array_equal(want[0].ravel(), got[0])
                assert np.array_equal(want[1], got[1]) and np.array_equal(want[2], got[2])
    finally:
        cnorm.set_num_threads(old)


@pytest.mark.parametrize("case", ["nan", "eps0_tiny", "huge"])
def test_float32_backward_falls_back_to_float64_arithmetic(case):
    """A sample whose float32 sums or coefficients would not fit (a NaN, std < 1e-12 with
    eps = 0, |x - mean| near FLT_MAX) runs the float64 loops: the twin of float64 arithmetic."""
    dims = (2, 3, 4, 40)
    N, G, Cg, S = dims
    rng = np.random.default_rng(11)
    x = rng.standard_normal((N, S, G * Cg)).astype(np.float32)
    eps = EPS
    if case == "nan":
        x[:, 5, 2] = np.nan  # in every sample: the fallback is per sample
    elif case == "eps0_tiny":
        x *= np.float32(1e-25)
        eps = 0.0
    else:
        x *= np.float32(1.5e38)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w = np.linspace(0.5, 1.5, G * Cg).astype(np.float32)
    with np.errstate(all="ignore"):
        _, mean, rstd, _ = K.group_norm_forward(x.ravel(), dims, w, w, eps, True)
        got = K.group_norm_backward(dy.ravel(), x.ravel(), dims, mean, rstd, w, True)
        x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
        want = _twin_backward(dy64, x64, dims, mean, rstd, w.astype(np.float64))
    assert np.array_equal(want[0].astype(np.float32).ravel(), got[0], equal_nan=True)
    assert np.array_equal(want[1], got[1], equal_nan=True)
    assert np.array_equal(want[2], got[2], equal_nan=True)
