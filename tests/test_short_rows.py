"""Rows shorter than 512 elements run several per C call (row_norm.pyx: ln_rows,
ln_grad_rows), and a run stops before a row whose statistics need the slow path
(float32 block sums redone in float64, float64 squares that over- or underflow), which
the one-row path does before the run goes on. A row's results must not depend on
that: each row's output, mean and rstd (and input gradient) are bitwise those of the row
alone, whatever rows surround it, and the batched reductions (dweight, dbias) match a
float64 reference."""

import numpy as np
import pytest

import cnorm
import cnorm.functional as F

DTYPES = [np.float32, np.float64]
WIDTHS = [1, 3, 17, 64, 100, 511]


def _rows(dtype, m, d, seed):
    """(m, d) rows of mixed scales, with slow-path rows among them."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((m, d)) * 3 + 1).astype(dtype)
    big, tiny = (1e30, 1e-200) if dtype == np.float64 else (1e18, 1e-30)
    x[1] *= big  # float32: squares overflow; float64 (1e30 is fine): normal
    x[2] *= tiny  # squares underflow: redone in float64 / scaled
    x[3] = 2.5  # a constant row: variance exactly 0
    if dtype == np.float64:
        x[4] *= 1e170  # squares overflow float64: redone scaled
    x[m - 1] *= big  # the last row of the run on the slow path
    return x


def _params(dtype, d, seed):
    rng = np.random.default_rng(seed + 1)
    return rng.standard_normal(d).astype(dtype), rng.standard_normal(d).astype(dtype)


def _row_results(norm, x, dy, w, b):
    """(y, statistics..., dx) of a LayerNorm or RMSNorm forward and backward."""
    d = x.shape[1]
    if norm == "layer":
        y, mean, rstd = F.native_layer_norm(x, (d,), w, b, 1e-5)
        return y, mean, rstd, F.layer_norm_backward(dy, x, (d,), mean, rstd, w)[0]
    y, rrms = F.native_rms_norm(x, (d,), w, 1e-6)
    return y, rrms, F.rms_norm_backward(dy, x, (d,), rrms, w)[0]


@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", WIDTHS)
def test_rows_do_not_depend_on_their_neighbours(norm, dtype, d):
    m = 9
    x = _rows(dtype, m, d, d)
    w, b = _params(dtype, d, d)
    dy = np.random.default_rng(d + 2).standard_normal((m, d)).astype(dtype)
    together = _row_results(norm, x, dy, w, b)
    for r in range(m):
        alone = _row_results(norm, x[r : r + 1], dy[r : r + 1], w, b)
        for a, a_r in zip(together, alone):
            np.testing.assert_array_equal(a[r : r + 1], a_r, strict=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 2, 31, 33, 64, 65, 1000])
def test_short_row_weight_gradients_match_float64(dtype, m):
    """dweight, dbias of many short rows (pairs, a lone last row, flushes of the
    input-precision partials) against a float64 reference."""
    d = 24
    rng = np.random.default_rng(m)
    x = (rng.standard_normal((m, d)) * 2 + 0.5).astype(dtype)
    dy = rng.standard_normal((m, d)).astype(dtype)
    w, b = _params(dtype, d, m)
    _, mean, rstd = F.native_layer_norm(x, (d,), w, b, 1e-5)
    dx, dw, db = F.layer_norm_backward(dy, x, (d,), mean, rstd, w)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    mu = x64.mean(1, keepdims=True)
    xhat = (x64 - mu) / np.sqrt(x64.var(1, keepdims=True) + 1e-5)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    scale = np.abs(dy64).sum(0) * (np.abs(xhat).max() + 1)
    assert np.all(np.abs(dw - (dy64 * xhat).sum(0)) <= tol * scale)
    assert np.all(np.abs(db - dy64.sum(0)) <= tol * scale)
    g = dy64 * w.astype(np.float64)
    rs = 1 / np.sqrt(x64.var(1, keepdims=True) + 1e-5)
    ref = rs * (g - g.mean(1, keepdims=True) - xhat * (g * xhat).mean(1, keepdims=True))
    np.testing.assert_allclose(dx, ref, rtol=tol * 10, atol=tol * np.abs(ref).max())


@pytest.mark.skipif(not cnorm.openmp_enabled(), reason="serial build")
@pytest.mark.parametrize("dtype", DTYPES)
def test_short_rows_same_bits_at_any_thread_count(dtype):
    m, d = 4099, 48
    x = _rows(dtype, m, d, 7)
    w, b = _params(dtype, d, 7)
    dy = np.random.default_rng(8).standard_normal((m, d)).astype(dtype)
    results = []
    before = cnorm.get_num_threads()
    try:
        for threads in (1, 2, 5):
            cnorm.set_num_threads(threads)
            y, mean, rstd = F.native_layer_norm(x, (d,), w, b, 1e-5)
            results.append((y, mean, rstd, *F.layer_norm_backward(dy, x, (d,), mean, rstd, w)))
    finally:
        cnorm.set_num_threads(before)
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            np.testing.assert_array_equal(a, b_, strict=True)
