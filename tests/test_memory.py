"""Memory: no leaks over many calls, and no hidden temporaries.

* 10,000 forward + backward calls on small inputs of every norm grow the resident set size
  by < 5 MB (after a warm-up);
* tracemalloc (NumPy reports its data buffers to it): the peak traced memory of a forward
  on an 8 MB input is the output plus O(C) (BatchNorm) / O(M) (LayerNorm) statistics, and a
  backward the input gradient plus O(C) / O(D): no hidden copy of the input or the output.
"""

import gc
import os
import resource
import tracemalloc

import numpy as np
import pytest
from norms import BY_NAME, NORMS

import cnorm
import cnorm.functional as F

N_CALLS = 10_000
RSS_LIMIT = 5 * 2**20  # bytes
SLACK = 64 * 1024  # O(C) / O(M) statistics and Python objects


def rss_bytes():
    """Resident set size now (Linux /proc/self/statm; elsewhere the peak from resource)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # pragma: no cover - non-Linux
        scale = 1 if os.uname().sysname == "Darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _loop(step, n):
    for _ in range(n):
        step()


def _rss_growth(step):
    _loop(step, 1000)  # warm-up: caches, allocator pools, first-call work
    gc.collect()
    before = rss_bytes()
    _loop(step, N_CALLS)
    gc.collect()
    return rss_bytes() - before


# name: (norm, module factory, input shape)
CASES = {
    "bn1d_train": ("BatchNorm1d", lambda: cnorm.BatchNorm1d(8), (16, 8)),
    "bn2d_train": ("BatchNorm2d", lambda: cnorm.BatchNorm2d(4), (4, 4, 5, 5)),
    "bn2d_eval": ("BatchNorm2d", lambda: cnorm.BatchNorm2d(4).eval(), (4, 4, 5, 5)),
    "bn2d_cumulative_f64": (
        "BatchNorm2d",
        lambda: cnorm.BatchNorm2d(4, momentum=None, dtype=np.float64),
        (4, 4, 5, 5),
    ),
    "bn3d_untracked": (
        "BatchNorm3d",
        lambda: cnorm.BatchNorm3d(3, track_running_stats=False),
        (2, 3, 2, 3, 4),
    ),
    "ln": ("LayerNorm", lambda: cnorm.LayerNorm(32), (8, 32)),
    "ln_2d_no_affine": ("LayerNorm", lambda: cnorm.LayerNorm((4, 8), elementwise_affine=False), (3, 4, 8)),
}
# one norm of every other family (the others share its kernels): its module with every
# optional part, on its small input
_FAMILIES = {BY_NAME[c[0]].family for c in CASES.values()}
for _n in NORMS:
    if _n.family not in _FAMILIES:
        _FAMILIES.add(_n.family)
        CASES[_n.name] = (_n.name, lambda n=_n: n.make(n.small, **n.full_kw), _n.small.shape)


@pytest.mark.parametrize("case", list(CASES))
def test_module_forward_backward_rss(case):
    name, make, shape = CASES[case]
    norm = BY_NAME[name]
    m = make()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(m.dtype)
    r = rng.standard_normal(shape).astype(m.dtype)
    douts = tuple(rng.standard_normal(shape).astype(m.dtype) for _ in range(norm.n_outputs()))

    def step():
        norm.call(m, x, r)
        norm.module_backward(m, douts)
        m.zero_grad()

    growth = _rss_growth(step)
    assert growth < RSS_LIMIT, f"RSS grew by {growth / 2**20:.2f} MB over {N_CALLS} calls"


def test_functional_and_error_paths_rss():
    """Functional calls, including ones that raise, and non-contiguous inputs (copied)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3, 10)).astype(np.float32)
    xf = np.asfortranarray(x)
    dy = rng.standard_normal((6, 3, 10)).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    bad = np.ones((6, 3, 10), np.int32)

    def step():
        _y, mean, invstd = F.native_batch_norm(xf, None, None, rm, rv, True, 0.1, 1e-5)
        F.batch_norm_backward(dy, x, None, mean, invstd, True)
        _yl, ml, rl = F.native_layer_norm(x, (3, 10), None, None, 1e-5)
        F.layer_norm_backward(dy, xf, (3, 10), ml, rl, None)
        try:
            F.batch_norm(bad, None, None, training=True)
        except TypeError:
            pass
        try:
            F.layer_norm(x, (4,))
        except ValueError:
            pass

    growth = _rss_growth(step)
    assert growth < RSS_LIMIT, f"RSS grew by {growth / 2**20:.2f} MB over {N_CALLS} calls"


def test_kernels_with_two_threads_rss(restore_threads):
    """The parallel path: per-thread scratch buffers (O(threads * C) / O(threads * D), here
    100-400 KB per call) are freed. Few calls: a leak of them would show at once."""
    cnorm.set_num_threads(2)
    rng = np.random.default_rng(2)
    bn = cnorm.BatchNorm1d(4096)  # (N, C) path, C = 4096
    x = rng.standard_normal((32, 4096)).astype(np.float32)
    bn2 = cnorm.BatchNorm2d(2048)  # rows path, C = 2048
    x2 = rng.standard_normal((8, 2048, 2, 4)).astype(np.float32)
    ln = cnorm.LayerNorm(8192)
    xl = rng.standard_normal((16, 8192)).astype(np.float32)

    def step():
        for m, a in ((bn, x), (bn2, x2), (ln, xl)):
            m(a)
            m.backward(a)
            m.zero_grad()

    _loop(step, 30)
    gc.collect()
    before = rss_bytes()
    _loop(step, 200)
    gc.collect()
    growth = rss_bytes() - before
    assert growth < RSS_LIMIT, f"RSS grew by {growth / 2**20:.2f} MB"


# ---------------------------------------------------------------------------------------
# tracemalloc: peaks
# ---------------------------------------------------------------------------------------


def _traced_peak(fn):
    """(result, peak traced bytes above the level before the call)."""
    gc.collect()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    result = fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    return result, peak


@pytest.fixture
def traced():
    if tracemalloc.is_tracing():  # pragma: no cover - e.g. python -X tracemalloc
        yield
        return
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


BIG_BN = [
    ("bn2d", lambda: cnorm.BatchNorm2d(8), (16, 8, 128, 128)),  # 8 MB
    ("bn1d_NC", lambda: cnorm.BatchNorm1d(1024), (2048, 1024)),  # 8 MB, (N, C) path
    ("bn3d", lambda: cnorm.BatchNorm3d(16), (4, 16, 8, 64, 32)),
]  # 8 MB


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name, make, shape", BIG_BN, ids=[b[0] for b in BIG_BN])
def test_bn_peak_memory(traced, name, make, shape, training):
    m = make().train(training)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    m(x)
    m.backward(dy)  # first calls out of the way
    C = shape[1]
    slack = SLACK + 64 * C  # a few (C,) float64 arrays
    y, peak = _traced_peak(lambda: m(x))
    assert peak < y.nbytes + slack, (
        f"forward peak {peak} B for an output of {y.nbytes} B (+{peak - y.nbytes} B)"
    )
    del y
    dx, peak = _traced_peak(lambda: m.backward(dy))
    assert peak < dx.nbytes + slack, f"backward peak {peak} B for dx of {dx.nbytes} B (+{peak - dx.nbytes} B)"


@pytest.mark.parametrize(
    "name, shape, ns",
    [
        ("ln_1024", (2048, 1024), (1024,)),
        ("ln_rows", (16384, 128), (128,)),
        ("ln_2d", (64, 32, 1024), (32, 1024)),
    ],
    ids=["ln_1024", "ln_rows", "ln_2d"],
)
def test_ln_peak_memory(traced, name, shape, ns):
    m = cnorm.LayerNorm(ns)
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    m(x)
    m.backward(dy)
    M = x.size // int(np.prod(ns))
    D = int(np.prod(ns))
    y, peak = _traced_peak(lambda: m(x))
    stats = 2 * 8 * M  # mean and rstd, float64 (M,)
    assert peak < y.nbytes + stats + SLACK, (
        f"forward peak {peak} B for an output of {y.nbytes} B (+{peak - y.nbytes} B)"
    )
    del y
    dx, peak = _traced_peak(lambda: m.backward(dy))
    grads = 4 * 4 * D  # dweight, dbias and their accumulation (D,)
    assert peak < dx.nbytes + grads + SLACK, (
        f"backward peak {peak} B for dx of {dx.nbytes} B (+{peak - dx.nbytes} B)"
    )


def test_functional_peak_memory(traced):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 8, 128, 128)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    rm, rv = np.zeros(8, np.float32), np.ones(8, np.float32)
    F.native_batch_norm(x, None, None, rm, rv, True, 0.1, 1e-5)
    (y, mean, invstd), peak = _traced_peak(
        lambda: F.native_batch_norm(x, None, None, rm, rv, True, 0.1, 1e-5)
    )
    assert peak < y.nbytes + SLACK
    del y
    (dx, _dw, _db), peak = _traced_peak(lambda: F.batch_norm_backward(dy, x, None, mean, invstd, True))
    assert peak < dx.nbytes + SLACK
