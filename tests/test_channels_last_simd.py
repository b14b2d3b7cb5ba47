"""The channels-last GroupNorm / InstanceNorm kernel (channels_last.pyx over the loops of
simd/channels_last.h) against its naive NumPy twin, bit for bit, in every SIMD build.

The loops keep one float64 accumulator per channel and add the positions s in order, so
the twin below (sequential sums by np.cumsum, the same operations in the same order)
gives the same bits for any vector width, thread count and layout; half storage is the
twin on the widened values, rounded once (round to odd to float32, then to the half),
but for its forward: the float32 twin's (float32 lanes, rounded once from float32).
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
            if kind:  # half storage: the float32 forward, rounded once to the half type
                r32 = _twin_forward32(x.astype(np.float32), dims, wk, bk)
                narrow = r32[6][:, None, None]
                last_y = np.where(narrow, r32[0].astype(HALF[kind]), _round_half(r32[5], kind))
                ref = (last_y, *r32[1:4])
            for last in (True, False):
                xs = _bits(x.astype(store).ravel(), kind)
                y, mean, rstd, var = K.group_norm_forward(xs, dims, wk, bk, EPS, last, kind)
                want = ref[0] if last else np.moveaxis(ref[0], 1, 2)
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


# float32 storage: the forward's statistics in float32 lanes too (channels_last_f32.h):
# pass 1 sums x in blocks of ROWS rows, the group mean m is rounded to a float hi, pass 2
# sums d = x - hi and d * d (float32) in blocks; mean = hi + sum(d) / count. A sample whose
# float32 sums of x are not finite runs both passes in float64 (shift m); one whose sums of
# pass 2 are not finite or whose variance is below 2**-100 runs pass 2 in float64 (shift hi)
VAR_MIN = 2.0**-100


def _group(a, G, Cg):
    return _seq(a.reshape(G, Cg), axis=1)


def _twin_forward32(x, dims, w, b, eps=EPS):
    """(y (N, S, C) float32, mean, rstd, var, y_f64, y_wide, narrow) of float32 x (N, S,
    C): y in either output layout (float32 lanes: (x - hi) * scale + (b - lo * scale), the
    factors floats, unless a factor does not fit: the float64 loop's, y_f64); y_wide:
    the float64 loop's values unrounded, narrow[n]: sample n's y came from the float32
    lanes (half storage rounds those from float32, the others once from float64)."""
    N, G, Cg, S = dims
    count = float(Cg * S)
    mean, rstd, var = (np.empty((N, G)) for _ in range(3))
    y = np.empty(x.shape, np.float32)
    yf = np.empty(x.shape, np.float32)
    yw = np.empty(x.shape)
    narrow = np.zeros(N, bool)
    x64 = x.astype(np.float64)
    with np.errstate(all="ignore"):
        for n in range(N):
            X = x[n]
            s = _seq_blocks32(X)
            wide = wide1 = not np.all(np.isfinite(s))  # wide1: pass 3 in float64 too
            if wide:
                s = _seq(x64[n])
            m = _group(s, G, Cg) / count
            if not wide:
                m = m.astype(np.float32).astype(np.float64)
            shift = np.repeat(m, Cg)
            if not wide:
                D = X - shift.astype(np.float32)
                sd, ss = _seq_blocks32(D), _seq_blocks32(D * D)
                sdg, ssg = _group(sd, G, Cg), _group(ss, G, Cg)
                v = (ssg - sdg * sdg / count) / count
                wide = not (np.all(np.isfinite(sd)) and np.all(np.isfinite(ss)) and np.all(v >= VAR_MIN))
            if wide:
                D = x64[n] - shift
                sdg, ssg = _group(_seq(D), G, Cg), _group(_seq(D * D), G, Cg)
                v = (ssg - sdg * sdg / count) / count
            v = np.where(v > 0, v, np.where(np.isnan(v), v, 0.0))
            rs = 1.0 / np.sqrt(v + eps)
            mean[n], var[n], rstd[n] = m + sdg / count, v, rs
            scale = np.repeat(rs, Cg) * (w.astype(np.float64) if w is not None else 1.0)
            bias = b.astype(np.float64) if b is not None else 0.0
            mu = np.repeat(mean[n], Cg)
            yw[n] = (x64[n] - mu) * scale + bias
            yf[n] = yw[n].astype(np.float32)
            y[n] = yf[n]
            hi = mu.astype(np.float32)
            lo = mu - hi.astype(np.float64)
            scale = scale * np.ones(G * Cg)
            be = bias - lo * scale
            f = scale.astype(np.float32)
            dev = np.repeat(np.sqrt(np.maximum(v, 0) * count), Cg) + np.abs(lo)
            fits = np.all(np.isfinite(f) & ((scale == 0) | (np.abs(f) >= np.finfo(np.float32).tiny)))
            if (
                not wide1
                and fits
                and np.all(np.abs(be) <= 2.0**100)
                and np.all(dev * np.abs(scale) <= 2.0**100)
            ):
                y[n] = (X + (-hi)) * f + be.astype(np.float32)
                narrow[n] = True
    return y, mean.ravel(), rstd.ravel(), var.ravel(), yf, yw, narrow


def _ref_stats(x, dims):
    """float64 NumPy mean and biased variance per (n, g) of x (N, S, C)."""
    N, G, Cg, S = dims
    r = x.astype(np.float64).reshape(N, S, G, Cg).transpose(0, 2, 1, 3).reshape(N * G, -1)
    m = r.mean(axis=1)
    return m, ((r - m[:, None]) ** 2).mean(axis=1)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dims", SHAPES + [(2, 4, 8, 150), (1, 3, 24, 70), (3, 2, 40, 129)])
def test_float32_forward_is_its_twin_bit_for_bit(build, dims, threads):
    rng = np.random.default_rng(sum(dims) + 3)
    N, G, Cg, S = dims
    C = G * Cg
    x = (rng.standard_normal((N, S, C)) * 3 + 1e3).astype(np.float32)
    old = cnorm.get_num_threads()
    cnorm.set_num_threads(threads)
    try:
        for w, b in ((rng.standard_normal(C).astype(np.float32),) * 2, (None, None)):
            want = _twin_forward32(x, dims, w, b)
            for last in (True, False):
                y, mean, rstd, var = K.group_norm_forward(x.ravel(), dims, w, b, EPS, last)
                wy = want[0] if last else np.moveaxis(want[0], 1, 2)
                assert np.array_equal(wy.ravel(), y)
                for got, exp in zip((mean, rstd, var), want[1:4]):
                    assert np.array_equal(got, exp)
            # and far more accurate than float32 arithmetic: against float64 NumPy
            m, v = _ref_stats(x, dims)
            assert np.allclose(mean, m, rtol=0, atol=1e-7 * np.sqrt(v).max())
            assert np.allclose(var, v, rtol=1e-6, atol=0)
    finally:
        cnorm.set_num_threads(old)


@pytest.mark.parametrize("case", ["huge", "big_dev", "tiny", "constant", "nan", "inf", "normal"])
def test_float32_forward_falls_back_to_float64_arithmetic(case):
    """Samples whose float32 statistics would over- or underflow run the float64 loops:
    the statistics agree with float64 NumPy to float64 accuracy, as does the twin."""
    dims = (3, 2, 5, 90)
    N, G, Cg, S = dims
    rng = np.random.default_rng(13)
    x = (rng.standard_normal((N, S, G * Cg)) * 2 + 1).astype(np.float32)
    scale = {"huge": 1e37, "big_dev": 1e20, "tiny": 1e-25, "constant": 1.0}.get(case, 1.0)
    x[1] *= np.float32(scale)  # sample 1 only: the others stay on the float32 loops
    if case == "constant":
        x[1] = np.float32(0.1)
    elif case == "nan":
        x[1, 7, 3] = np.nan
    elif case == "inf":
        x[1, 7, 3] = np.inf
    w = np.linspace(0.5, 1.5, G * Cg).astype(np.float32)
    for eps in (EPS, 0.0):
        with np.errstate(all="ignore"):
            got = K.group_norm_forward(x.ravel(), dims, w, w, eps, True)
            want = _twin_forward32(x, dims, w, w, eps)
        assert np.array_equal(want[0].ravel(), got[0], equal_nan=True)
        for g, e in zip(got[1:], want[1:4]):
            assert np.array_equal(g, e, equal_nan=True)
        # the output: within 2 float32 ulps of |y| + |b| of the float64 twin's (correctly
        # rounded) output
        yf = want[4].astype(np.float64)
        ok = np.isfinite(yf)
        ulp = np.spacing((np.abs(want[4]) + np.abs(w))[ok]).astype(np.float64)
        assert np.all(np.abs(got[0].reshape(yf.shape)[ok] - yf[ok]) <= 2 * ulp)
        m, v = _ref_stats(x, dims)
        mean, var = got[1].reshape(N, G), got[3].reshape(N, G)
        for n in range(N):
            mm, vv = m.reshape(N, G)[n], v.reshape(N, G)[n]
            if case in ("nan", "inf") and n == 1:
                assert not np.all(np.isfinite(var[n]))
                continue
            if n == 1 and case != "normal":  # the float64 loops
                assert np.allclose(mean[n], mm, rtol=1e-12, atol=0)
                assert np.allclose(var[n], vv, rtol=1e-12, atol=0)
            else:  # float32 sums of 64 rows: well below a float32 ulp of the std
                assert np.allclose(mean[n], mm, rtol=0, atol=1e-7 * np.sqrt(vv).max())
                assert np.allclose(var[n], vv, rtol=1e-6, atol=0)


# outputs of 256 KiB and more come from the output pool, 64-byte aligned: rows of 32 and 64
# channels stream (the avx2 and avx512 builds), rows of 20 (80 bytes: not whole cache
# lines) never
STREAM_SHAPES = [(2, 8, 4, 1100), (3, 4, 16, 400), (3, 2, 10, 1200), (1, 32, 2, 1100)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dims", STREAM_SHAPES)
def test_streamed_outputs_give_the_same_bits(build, dims, threads):
    """The float32 loops write y and dx by non-temporal stores when the output is large
    (cn_stream_min_bytes) and its rows are aligned to cache lines: the same bits as the
    plain stores, in every build, and the same as the twin."""
    rng = np.random.default_rng(sum(dims))
    N, G, Cg, S = dims
    C = G * Cg
    x = (rng.standard_normal((N, S, C)) * 3 + 10).astype(np.float32).ravel()
    dy = rng.standard_normal((N, S, C)).astype(np.float32).ravel()
    w = rng.standard_normal(C).astype(np.float32)
    old, saved = cnorm.get_num_threads(), K._set_stream_min_bytes(1 << 62)
    cnorm.set_num_threads(threads)
    try:
        got = {}
        for stream_min in (1 << 62, 0):
            K._set_stream_min_bytes(stream_min)
            fwd = K.group_norm_forward(x, dims, w, w, EPS, True)
            bwd = K.group_norm_backward(dy, x, dims, fwd[1], fwd[2], w, True)
            got[stream_min] = [a.tobytes() for a in (*fwd, *bwd)]
        assert got[0] == got[1 << 62]
        x3 = x.reshape(N, S, C)
        want_y = _twin_forward32(x3, dims, w, w)[0]
        assert np.frombuffer(got[0][0], np.float32).tobytes() == want_y.tobytes()
        want_dx = _twin_backward32(dy.reshape(N, S, C), x3, dims, fwd[1], fwd[2], w)[0]
        assert got[0][4] == want_dx.astype(np.float32).tobytes()
    finally:
        cnorm.set_num_threads(old)
        K._set_stream_min_bytes(saved)
