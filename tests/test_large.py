"""Large inputs, marked ``slow`` (CI runs ``-m "not slow"``):

* millions of values per channel / row in float32 (accumulation precision);
* arrays beyond 2**31 elements (64-bit indexing everywhere), skipped unless the machine has
  at least 20 GB of available memory (/proc/meminfo MemAvailable): each of those tests holds
  a float32 input of 2**31 + k elements (8.6 GB) and its output (8.6 GB).

    python -X faulthandler -m pytest tests/test_large.py -m slow -q -s
"""

import gc

import numpy as np
import pytest
from conftest import assert_close, make_bn_data, make_ln_data
from norms import reference

import cnorm
import cnorm.functional as F

NEED_BYTES = 20 * 10**9
BN_S = (1 << 30) + 7  # BN input (1, 2, BN_S): 2**31 + 14 elements
LN_D = (1 << 30) + 3  # LN input (2, LN_D): 2**31 + 6 elements
CHUNK = 1 << 24  # elements per chunk of the float64 reference passes
EPS = 1e-5


def mem_available():
    """MemAvailable from /proc/meminfo in bytes (0 when it cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


pytestmark = pytest.mark.slow
needs_memory = pytest.mark.skipif(
    mem_available() < NEED_BYTES,
    reason=f"needs {NEED_BYTES / 1e9:.0f} GB of available memory "
    f"(MemAvailable {mem_available() / 1e9:.1f} GB)",
)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_large_float32(num_threads, rng, training):
    """Millions of values per channel in float32 (accumulation precision)."""
    shape = (32, 4, 256, 256)
    x, dy, w, b, rm, rv = make_bn_data(rng, shape, np.float32)
    y, mean, invstd = F.native_batch_norm(x, w, b, rm.copy(), rv.copy(), training, 0.1, EPS)
    y_ref, _, _ = reference.batch_norm_forward(x, w, b, rm, rv, training, 0.1, EPS)
    assert_close(y, y_ref, np.float32)
    dx, dw, db = F.batch_norm_backward(dy, x, w, mean, invstd, training)
    dx_ref, dw_ref, db_ref = reference.batch_norm_backward(dy, x, w, mean, invstd, training)
    assert_close(dx, dx_ref, np.float32)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-3 * np.sqrt(dy.size / 4))
    np.testing.assert_allclose(db, db_ref, rtol=1e-4, atol=1e-3 * np.sqrt(dy.size / 4))


def test_layer_norm_large_float32(num_threads, rng):
    shape, ns = (4096, 4096), (4096,)
    x, dy, w, b = make_ln_data(rng, shape, ns, np.float32)
    y, mean, rstd = F.native_layer_norm(x, ns, w, b, EPS)
    y_ref, _, _ = reference.layer_norm_forward(x, ns, w, b, EPS)
    assert_close(y, y_ref, np.float32)
    dx, dw, db = F.layer_norm_backward(dy, x, ns, mean, rstd, w)
    dx_ref, dw_ref, db_ref = reference.layer_norm_backward(dy, x, ns, w, EPS)
    assert_close(dx, dx_ref, np.float32)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-3 * np.sqrt(shape[0]))
    np.testing.assert_allclose(db, db_ref, rtol=1e-4, atol=1e-3 * np.sqrt(shape[0]))


@pytest.fixture(autouse=True)
def _release_memory():
    """Two 8.6 GB arrays per test: make sure the previous test's are gone first."""
    gc.collect()
    yield
    gc.collect()


def fill(row, loc, scale, seed):
    """row[...] = loc + scale * N(0, 1) in float32, chunk by chunk (no float64 temporary of
    the whole row); a tiled 2**20-value block keeps it fast."""
    rng = np.random.default_rng(seed)
    block = (loc + scale * rng.standard_normal(1 << 20)).astype(np.float32)
    n = row.shape[0]
    for i in range(0, n, block.size):
        j = min(i + block.size, n)
        row[i:j] = block[: j - i]
    # a few distinct values at the far end (beyond 2**31 in the flat array)
    row[-5:] = np.float32(loc) + np.float32(scale) * np.arange(-2, 3, dtype=np.float32)


def stats64(row):
    """Exact-enough float64 mean and biased variance of a 1-D float32 array, two passes."""
    n = row.shape[0]
    s = 0.0
    for i in range(0, n, CHUNK):
        s += float(np.sum(row[i : i + CHUNK], dtype=np.float64))
    mean = s / n
    m2 = 0.0
    for i in range(0, n, CHUNK):
        d = row[i : i + CHUNK].astype(np.float64) - mean
        m2 += float(np.dot(d, d))
    return mean, m2 / n


def sample_indices(n, rng):
    """Indices spread over the row, including both ends (for the second channel / row the
    last ones lie beyond 2**31 in the flat array) and around 2**30."""
    idx = np.concatenate(
        [np.arange(5), n - 1 - np.arange(5), rng.integers(0, n, 200), (1 << 30) - 3 + np.arange(6)]
    )
    return np.unique(idx[(idx >= 0) & (idx < n)])


def check_normalized(y_row, x_row, mean, var, w, b, what):
    n = y_row.shape[0]
    rng = np.random.default_rng(0)
    idx = sample_indices(n, rng)
    expected = (x_row[idx].astype(np.float64) - mean) / np.sqrt(var + EPS) * w + b
    np.testing.assert_allclose(
        y_row[idx],
        expected,
        rtol=0,
        atol=2e-6 * max(1.0, abs(w)) + 1e-7,
        err_msg=f"{what}: selected elements",
    )
    # mean ~ 0 and var ~ 1 (before the affine map) on a strided sample of the output
    step = max(1, n // 400_000) | 1
    s = (y_row[::step].astype(np.float64) - b) / w
    assert abs(s.mean()) < 0.01, f"{what}: sample mean {s.mean()}"
    assert abs(s.var() - 1) < 0.015, f"{what}: sample variance {s.var()}"
    assert np.isfinite(y_row[-(1 << 20) :]).all(), f"{what}: non-finite values at the end"


@needs_memory
def test_batch_norm_beyond_2_31_elements():
    C, S = 2, BN_S
    assert C * S > 2**31 or BN_S < 2**30  # (smaller only in a smoke run)
    x = np.empty((1, C, S), np.float32)
    params = [(1000.0, 2.0, 0.5, -1.0), (-3.0, 0.25, 2.0, 0.5)]  # loc, scale, w, b per channel
    for c, (loc, scale, _, _) in enumerate(params):
        fill(x[0, c], loc, scale, seed=c)
    ref = [stats64(x[0, c]) for c in range(C)]
    m = cnorm.BatchNorm1d(C)
    m.weight[...] = [p[2] for p in params]
    m.bias[...] = [p[3] for p in params]
    y = m(x)
    assert y.shape == x.shape and y.dtype == np.float32
    M = S
    for c, (_loc, _scale, w, b) in enumerate(params):
        mean, var = ref[c]
        check_normalized(y[0, c], x[0, c], mean, var, w, b, f"BN channel {c}")
        np.testing.assert_allclose(m.running_mean[c], 0.1 * mean, rtol=1e-6)
        np.testing.assert_allclose(m.running_var[c], 0.9 + 0.1 * var * M / (M - 1), rtol=1e-6)
    assert m.num_batches_tracked == 1
    del y
    gc.collect()
    # eval with the exact statistics: the same output
    m.eval()
    m.running_mean[...] = [r[0] for r in ref]
    m.running_var[...] = [r[1] for r in ref]
    y = m(x)
    for c, (_loc, _scale, w, b) in enumerate(params):
        check_normalized(
            y[0, c], x[0, c], float(m.running_mean[c]), float(m.running_var[c]), w, b, f"BN eval channel {c}"
        )
    del m, x, y


@needs_memory
def test_layer_norm_beyond_2_31_elements():
    M, D = 2, LN_D
    assert M * D > 2**31 or LN_D < 2**30
    x = np.empty((M, D), np.float32)
    params = [(1e4, 1.0), (0.0, 3.0)]
    for r, (loc, scale) in enumerate(params):
        fill(x[r], loc, scale, seed=10 + r)
    ref = [stats64(x[r]) for r in range(M)]
    y, mean, rstd = F.native_layer_norm(x, (D,), None, None, EPS)
    assert y.shape == x.shape and mean.shape == (M,)
    for r, (_loc, scale) in enumerate(params):
        np.testing.assert_allclose(mean[r], ref[r][0], rtol=1e-9, atol=1e-7 * scale)
        np.testing.assert_allclose(rstd[r], 1 / np.sqrt(ref[r][1] + EPS), rtol=1e-6)
        check_normalized(y[r], x[r], ref[r][0], ref[r][1], 1.0, 0.0, f"LN row {r}")
