"""Shared fixtures and helpers of the cnorm test suite."""

import zlib

import numpy as np
import pytest

import cnorm
from cnorm import slow

DTYPES = [np.float32, np.float64]

# Tolerances for O(1) values (elementwise results).  Reductions (dweight, dbias)
# are compared with an absolute tolerance scaled by the sum of |terms|.
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}

BN_CLASSES = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}


def tol_for(dtype):
    return TOL[np.dtype(dtype)]


def bn_class(ndim):
    """The cnorm BatchNorm module class for an input of ``ndim`` dimensions."""
    return getattr(cnorm, BN_CLASSES[ndim])


def bn_axes(ndim):
    return (0,) + tuple(range(2, ndim))


def channel(v, ndim):
    return np.asarray(v).reshape((1, -1) + (1,) * (ndim - 2))


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
            f"at {tuple(int(j) for j in i)}: got {a[tuple(i)]!r}, expected {expected[tuple(i)]!r}" for i in idx)
        raise AssertionError(
            f"{err_msg}: {int(bad.sum())}/{a.size} elements differ (dtype {np.dtype(dtype).name}, "
            f"tol {tol:g}, worst error/allowed {worst:.3g}); {detail}")


def assert_reduction_close(actual, expected, terms, axes, dtype, err_msg=""):
    """Compare a sum over ``axes`` with a tolerance relative to the sum of |terms|."""
    scale = np.sum(np.abs(np.asarray(terms, dtype=np.float64)), axis=axes)
    assert_close(actual, expected, dtype, scale=scale, err_msg=err_msg)


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


class RefBatchNorm:
    """Pure-NumPy model of a torch BatchNorm module's state machine (built on cnorm.slow)."""

    def __init__(self, C, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 bias=True, weight=None, bias_value=None):
        self.eps, self.momentum = eps, momentum
        self.training = True
        self.weight = (np.ones(C) if weight is None else np.array(weight, np.float64)) if affine else None
        self.bias = None
        if affine and bias:
            self.bias = np.zeros(C) if bias_value is None else np.array(bias_value, np.float64)
        self.track = track_running_stats
        self.running_mean = np.zeros(C) if track_running_stats else None
        self.running_var = np.ones(C) if track_running_stats else None
        self.num_batches_tracked = 0 if track_running_stats else None
        self.weight_grad = self.bias_grad = None

    def forward(self, x):
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track:
            self.num_batches_tracked += 1
            if self.momentum is None:
                factor = 1.0 / self.num_batches_tracked
        use_batch = self.training or self.running_mean is None
        rm = self.running_mean if (not self.training or self.track) else None
        rv = self.running_var if (not self.training or self.track) else None
        y, nrm, nrv = slow.batch_norm_forward(x, self.weight, self.bias, rm, rv, use_batch, factor, self.eps)
        if use_batch:
            mean, var = slow.batch_norm_stats(x)
        else:
            mean, var = self.running_mean, self.running_var
        if self.training and self.track:
            self.running_mean, self.running_var = nrm, nrv
        self._saved = (x, mean, 1.0 / np.sqrt(var + self.eps), use_batch)
        return y

    def backward(self, dy):
        x, mean, invstd, use_batch = self._saved
        dx, dw, db = slow.batch_norm_backward(dy, x, self.weight, mean, invstd, use_batch)
        if self.weight is not None:
            self.weight_grad = dw if self.weight_grad is None else self.weight_grad + dw
        if self.bias is not None:
            self.bias_grad = db if self.bias_grad is None else self.bias_grad + db
        return dx


@pytest.fixture
def rng(request):
    """A default_rng seeded from the test's name (stable, different per test case)."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def num_threads(request):
    """Run the test with cnorm.set_num_threads(1) and (2); restores the previous value."""
    old = cnorm.get_num_threads()
    cnorm.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        cnorm.set_num_threads(old)


@pytest.fixture
def restore_threads():
    """Restore cnorm's thread count after the test."""
    old = cnorm.get_num_threads()
    yield old
    cnorm.set_num_threads(old)
