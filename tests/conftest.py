"""Shared fixtures and helpers of the cnorm test suite.

The norms themselves (how to call each one, its shapes, its reference) are in norms.py;
the few private internals the tests need are in _internals.py.
"""

import contextlib
import math
import os
import re
import zlib

import numpy as np
import pytest
from _internals import KERNEL_MODULES, NEVER, set_simd, set_stream_min_bytes, simd_build, simd_builds

import cnorm

DTYPES = [np.float32, np.float64]

# Tolerances for O(1) values (elementwise results).  Reductions (dweight, dbias)
# are compared with an absolute tolerance scaled by the sum of |terms|.
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}

BN_CLASSES = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}


def dtype_id(d):
    return np.dtype(d).name


def tol_for(dtype):
    return TOL[np.dtype(dtype)]


def bn_class(ndim):
    """The cnorm BatchNorm module class for an input of ``ndim`` dimensions."""
    return getattr(cnorm, BN_CLASSES[ndim])


def bn_axes(ndim):
    return (0,) + tuple(range(2, ndim))


def channel(v, ndim):
    return np.asarray(v).reshape((1, -1) + (1,) * (ndim - 2))


def raises(exc, msg):
    """pytest.raises for an exact message."""
    return pytest.raises(exc, match=re.escape(msg))


# --------------------------------------------------------------------------- comparisons


def assert_close(actual, expected, dtype, scale=1.0, err_msg=""):
    """``actual`` (of ``dtype``) matches the float64 ``expected`` to the dtype's tolerance.

    ``scale`` multiplies the absolute tolerance (array or scalar), for sums of many terms.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape, err_msg)
    tol = tol_for(dtype)
    a = actual.astype(np.float64)
    allowed = tol * np.maximum(scale, 1.0) + tol * np.abs(expected)
    bad = ~(np.abs(a - expected) <= allowed)  # also catches nan
    same_nan = np.isnan(a) & np.isnan(expected)
    bad &= ~same_nan
    if np.any(bad):
        idx = np.argwhere(bad)[:5]
        worst = np.nanmax(np.where(bad, np.abs(a - expected) / allowed, 0.0)) if a.size else 0.0
        detail = "; ".join(
            f"at {tuple(int(j) for j in i)}: got {a[tuple(i)]!r}, expected {expected[tuple(i)]!r}"
            for i in idx
        )
        raise AssertionError(
            f"{err_msg}: {int(bad.sum())}/{a.size} elements differ (dtype {np.dtype(dtype).name}, "
            f"tol {tol:g}, worst error/allowed {worst:.3g}); {detail}"
        )


def assert_reduction_close(actual, expected, terms, axes, dtype, err_msg=""):
    """Compare a sum over ``axes`` with a tolerance relative to the sum of |terms|."""
    scale = np.sum(np.abs(np.asarray(terms, dtype=np.float64)), axis=axes)
    assert_close(actual, expected, dtype, scale=scale, err_msg=err_msg)


def max_err(actual, expected):
    """max |actual - expected| (float64); NaN anywhere counts as infinite error."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    if a.size == 0:
        return 0.0
    d = np.abs(a - e)
    return float("inf") if np.isnan(d).any() else float(d.max())


def rel_err(actual, expected):
    """max |actual - expected| / max |expected| (norm-wise relative error)."""
    scale = float(np.max(np.abs(np.asarray(expected, dtype=np.float64)), initial=0.0))
    err = max_err(actual, expected)
    return err / scale if scale > 0 else err


def assert_nested_equal(a, b, what):
    """Lists / tuples of arrays (or None) equal to the bit."""
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (u, v) in enumerate(zip(a, b)):
            assert_nested_equal(u, v, f"{what}[{i}]")
    elif a is None:
        assert b is None, what
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=what)


# --------------------------------------------------------------------------- data

# the BatchNorm module classes and an input of each (module tests)
BN = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]
BN_SHAPE = {"BatchNorm1d": (6, 4, 3), "BatchNorm2d": (3, 4, 2, 3), "BatchNorm3d": (2, 4, 2, 2, 3)}


def bn(name, C=4, **kw):
    """The BatchNorm module ``name`` with C channels."""
    return getattr(cnorm, name)(C, **kw)


def sample(rng, shape, dtype=np.float32):
    """x = N(0.5, 2) of ``shape``."""
    return rng.normal(0.5, 2.0, shape).astype(dtype)


def make_bn_data(rng, shape, dtype, loc=0.5, scale=2.0):
    """x, dy, weight, bias, running_mean, running_var for a (N, C, *) shape."""
    C = shape[1]
    # per-channel offsets so that the channel means differ
    offs = channel(rng.normal(loc, 1.0, C), len(shape))
    x = (rng.normal(0.0, scale, shape) + offs).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    w = rng.normal(1.0, 0.5, C).astype(dtype)
    b = rng.normal(0.0, 0.5, C).astype(dtype)
    rm = rng.normal(0.0, 1.0, C).astype(dtype)
    rv = rng.uniform(0.5, 2.0, C).astype(dtype)
    return x, dy, w, b, rm, rv


def make_ln_data(rng, shape, normalized_shape, dtype, loc=0.5, scale=2.0):
    x = rng.normal(loc, scale, shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    w = rng.normal(1.0, 0.5, normalized_shape).astype(dtype)
    b = rng.normal(0.0, 0.5, normalized_shape).astype(dtype)
    return x, dy, w, b


def data(rng, shape, dtype, loc=0.5, scale=2.0):
    """x = N(loc, scale) and dy = N(0, 1) of ``shape``."""
    x = rng.normal(loc, scale, shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    return x, dy


def params(rng, shape, dtype, loc=(1.0, 0.0)):
    """weight ~ N(1, 0.5), bias ~ N(0, 0.5) of ``shape``."""
    w = rng.normal(loc[0], 0.5, shape).astype(dtype)
    b = rng.normal(loc[1], 0.5, shape).astype(dtype)
    return w, b


def offset_data(rng, shape, offset, scale=1.0, dtype=np.float32):
    """x = offset + scale * N(0, 1) (in float64, then rounded once to dtype)."""
    return (offset + scale * rng.standard_normal(shape)).astype(dtype)


def affine_params(rng, C, dtype=np.float32):
    """weight of |w| in [0.5, 1.5] with random signs, bias in [-1, 1]."""
    w = rng.uniform(0.5, 1.5, C).astype(dtype) * rng.choice([-1, 1], C).astype(dtype)
    b = rng.uniform(-1.0, 1.0, C).astype(dtype)
    return w, b


def ln_dx_scale(ns, rstd):
    """Rows of one element have rstd = 1/sqrt(eps) (~316): dx is O(ulp * rstd) there."""
    return np.max(rstd, initial=1.0) * 0.1 if math.prod(ns) == 1 else 1.0


def ln_xhat(x, ns, mean, rstd):
    expand = (1,) * len(ns)
    return (x.astype(np.float64) - mean.reshape(mean.shape + expand)) * rstd.reshape(rstd.shape + expand)


# --------------------------------------------------------------------------- module state

_MODULE_ATTRS = [
    "weight",
    "bias",
    "weight_grad",
    "bias_grad",
    "running_mean",
    "running_var",
    "num_batches_tracked",
    "training",
    "eps",
    "momentum",
    "dtype",
    "affine",
    "track_running_stats",
    "num_features",
    "normalized_shape",
    "elementwise_affine",
    "num_groups",
    "num_channels",
]


def module_state(m):
    """Every piece of state and hyperparameter of a cnorm module."""
    return {n: getattr(m, n) for n in _MODULE_ATTRS if hasattr(m, n)}


def assert_same_module_state(a, b):
    """The same state (to the bit), hyperparameters, state_dict, repr and type."""
    sa, sb = module_state(a), module_state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        if isinstance(sa[k], np.ndarray):
            assert isinstance(sb[k], np.ndarray), k
            assert sa[k].dtype == sb[k].dtype, k
            np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
        else:
            assert sa[k] == sb[k], k
    da, db = a.state_dict(), b.state_dict()
    assert list(da) == list(db)
    for k in da:
        np.testing.assert_array_equal(db[k], da[k], err_msg=k)
    assert repr(a) == repr(b)
    assert type(a) is type(b)


# --------------------------------------------------------------------------- finite differences

FD_EPS = 1e-3  # a larger eps keeps the finite differences well conditioned
FD_H = 1e-6
FD_RTOL, FD_ATOL = 1e-6, 1e-7


def numeric_grad(f, a, h=FD_H):
    """Central-difference gradient of the scalar f() with respect to array a (perturbed in place)."""
    g = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + h
        fp = f()
        a[i] = old - h
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


def check_grad(analytic, numeric, what):
    np.testing.assert_allclose(analytic, numeric, rtol=FD_RTOL, atol=FD_ATOL, err_msg=what)


# --------------------------------------------------------------------------- threads


@contextlib.contextmanager
def threads(n):
    """cnorm.set_num_threads(n) inside the block; the previous count afterwards."""
    old = cnorm.get_num_threads()
    cnorm.set_num_threads(n)
    try:
        yield
    finally:
        cnorm.set_num_threads(old)


THREAD_RTOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-13}


def assert_threads_agree(one, two, dtype):
    """Outputs with 1 and 2 threads: equal to THREAD_RTOL (relative to each output's scale)."""
    rtol = THREAD_RTOL[np.dtype(dtype)]
    for i, (a, b) in enumerate(zip(one, two)):
        scale = np.abs(a).max(initial=1.0)
        np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * scale, err_msg=f"output {i}")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def rng(request):
    """A default_rng seeded from the test's name (stable, different per test case)."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def num_threads(request):
    """Run the test with cnorm.set_num_threads(1) and (2); restores the previous value."""
    with threads(request.param):
        yield request.param


@pytest.fixture
def restore_threads():
    """Restore cnorm's thread count after the test."""
    old = cnorm.get_num_threads()
    yield old
    cnorm.set_num_threads(old)


@pytest.fixture
def kernel_switches():
    """Yields the vector SIMD builds (names) that every kernel module has and the CPU runs
    (base, avx2, avx512: the scalar one is the tests' C99 twin elsewhere); restores each
    module's build and non-temporal-store threshold afterwards."""
    common = [b for b in simd_builds(KERNEL_MODULES[0]) if b != "scalar"]
    common = [b for b in common if all(b in simd_builds(mod) for mod in KERNEL_MODULES)]
    saved = [(simd_build(mod), set_stream_min_bytes(mod, NEVER)) for mod in KERNEL_MODULES]
    for mod, (_, old) in zip(KERNEL_MODULES, saved):
        set_stream_min_bytes(mod, old)
    try:
        yield common
    finally:
        for mod, (build, old) in zip(KERNEL_MODULES, saved):
            set_simd(mod, build)
            set_stream_min_bytes(mod, old)


# ----------------------------------------------------------- known-open issue-14 items
_PENDING = os.path.join(os.path.dirname(__file__), "pending_issue14.txt")


def pytest_collection_modifyitems(config, items):
    """Mark the tests of pending_issue14.txt xfail(strict=True): known failures of open
    work that must start failing CI (XPASS) the moment the work lands."""
    with open(_PENDING) as fh:
        pending = {line.strip() for line in fh if line.strip() and not line.startswith("#")}
    for item in items:
        if item.nodeid in pending:
            item.add_marker(pytest.mark.xfail(strict=True, reason="issue 14: open kernel work"))


@pytest.fixture
def no_size_threshold(monkeypatch):
    """cnorm.torch.TORCH_BELOW at 0: tiny inputs run on cnorm too (tests of the cnorm path
    with small inputs; test_torch_threshold checks the path below the threshold)."""
    import cnorm.torch as ct

    for norm in ct.TORCH_BELOW:
        monkeypatch.setitem(ct.TORCH_BELOW, norm, (0, 0))
