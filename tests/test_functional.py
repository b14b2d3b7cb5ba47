"""cnorm.functional: return types and shapes, in-place running stats, backward conventions."""

import numpy as np
import pytest

import cnorm.functional as F
from cnorm import slow

from conftest import DTYPES, assert_close, make_bn_data, make_ln_data

EPS = 1e-5
dtype_ids = lambda d: np.dtype(d).name  # noqa: E731


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5), (2, 4, 3, 3), (2, 4, 1, 2, 3)], ids=str)
def test_native_batch_norm_returns(rng, shape, training, dtype):
    x, _, w, b, rm, rv = make_bn_data(rng, shape, dtype)
    out = F.native_batch_norm(x, w, b, rm, rv, training, 0.1, EPS)
    assert isinstance(out, tuple) and len(out) == 3
    y, save_mean, save_invstd = out
    assert type(y) is np.ndarray and y.shape == shape and y.dtype == dtype and y.flags.c_contiguous
    for s in (save_mean, save_invstd):
        assert type(s) is np.ndarray and s.shape == (4,) and s.dtype == np.float64
    assert np.all(save_invstd > 0)
    # the output is exactly what the returned statistics give (up to rounding)
    nd = len(shape)
    c = (1, -1) + (1,) * (nd - 2)
    expect = (x.astype(np.float64) - save_mean.reshape(c)) * save_invstd.reshape(c) * w.reshape(c) + b.reshape(c)
    assert_close(y, expect, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_native_batch_norm_eval_statistics_are_the_running_ones(rng, dtype):
    x, _, w, b, rm, rv = make_bn_data(rng, (5, 3, 4), dtype)
    _, mean, invstd = F.native_batch_norm(x, w, b, rm, rv, False, 0.1, 1e-3)
    np.testing.assert_array_equal(mean, rm.astype(np.float64))
    np.testing.assert_allclose(invstd, 1 / np.sqrt(rv.astype(np.float64) + 1e-3), rtol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_batch_norm_equals_native_output(rng, dtype):
    x, _, w, b, rm, rv = make_bn_data(rng, (5, 3, 4), dtype)
    for training in (False, True):
        y1 = F.batch_norm(x, rm.copy(), rv.copy(), w, b, training=training, momentum=0.2, eps=EPS)
        y2 = F.native_batch_norm(x, w, b, rm.copy(), rv.copy(), training, 0.2, EPS)[0]
        assert type(y1) is np.ndarray and y1.dtype == dtype
        np.testing.assert_array_equal(y1, y2)


def test_batch_norm_defaults(rng):
    """Defaults: weight=None, bias=None, training=False, momentum=0.1, eps=1e-5."""
    x = rng.normal(size=(6, 3)).astype(np.float64)
    rm, rv = rng.normal(size=3), rng.uniform(0.5, 2.0, 3)
    y = F.batch_norm(x, rm, rv)
    np.testing.assert_allclose(y, (x - rm) / np.sqrt(rv + 1e-5), rtol=1e-13, atol=1e-14)
    rm0, rv0 = rm.copy(), rv.copy()
    F.batch_norm(x, rm, rv, training=True)
    np.testing.assert_allclose(rm, 0.9 * rm0 + 0.1 * x.mean(axis=0), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(rv, 0.9 * rv0 + 0.1 * x.var(axis=0, ddof=1), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_batch_norm_training_without_running_stats(rng, dtype):
    x = make_bn_data(rng, (6, 3, 5), dtype)[0]
    y = F.batch_norm(x, None, None, training=True)
    assert_close(y, slow.batch_norm_forward(x, None, None, None, None, True, 0.1, EPS)[0], dtype)


def test_batch_norm_momentum_is_a_float_factor(rng):
    x = rng.normal(size=(6, 2))
    rm, rv = np.zeros(2), np.ones(2)
    F.batch_norm(x, rm, rv, training=True, momentum=1.0)
    np.testing.assert_allclose(rm, x.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(rv, x.var(axis=0, ddof=1), rtol=1e-14)
    rm2, rv2 = rm.copy(), rv.copy()
    F.batch_norm(rng.normal(size=(6, 2)), rm, rv, training=True, momentum=0.0)
    np.testing.assert_array_equal(rm, rm2)
    np.testing.assert_array_equal(rv, rv2)


def test_batch_norm_empty_batch_keeps_running_stats():
    rm, rv = np.array([0.5, -0.5], np.float32), np.array([2.0, 3.0], np.float32)
    y = F.batch_norm(np.zeros((0, 2, 3), np.float32), rm, rv, training=True)
    assert y.shape == (0, 2, 3) and y.dtype == np.float32
    np.testing.assert_array_equal(rm, [0.5, -0.5])
    np.testing.assert_array_equal(rv, [2.0, 3.0])


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_backward_weight_none_means_ones(rng, dtype, training):
    x, dy, _, _, rm, rv = make_bn_data(rng, (5, 3, 4), dtype)
    _, mean, invstd = F.native_batch_norm(x, None, None, rm, rv, training, 0.1, EPS)
    a = F.batch_norm_backward(dy, x, None, mean, invstd, training)
    b = F.batch_norm_backward(dy, x, np.ones(3, dtype), mean, invstd, training)
    for u, v in zip(a, b):
        assert u.dtype == dtype
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_batch_norm_backward_eval_formula(rng, dtype):
    x, dy, w, _, rm, rv = make_bn_data(rng, (5, 3, 4), dtype)
    mean = rm.astype(np.float64)
    invstd = 1 / np.sqrt(rv.astype(np.float64) + EPS)
    dx, dw, db = F.batch_norm_backward(dy, x, w, mean, invstd, False)
    c = (1, -1, 1)
    assert_close(dx, dy * (w.astype(np.float64) * invstd).reshape(c), dtype)
    xhat = (x - mean.reshape(c)) * invstd.reshape(c)
    assert_close(dw, np.sum(dy * xhat, axis=(0, 2)), dtype, scale=20)
    assert_close(db, np.sum(dy.astype(np.float64), axis=(0, 2)), dtype, scale=20)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_batch_norm_backward_train_dx_sums_to_zero(rng, dtype):
    """With batch statistics, sum(dx) = 0 and sum(dx * xhat) = w * invstd * sum(dy * xhat) * (1 - mean(xhat^2))
    per channel (mean(xhat^2) = var / (var + eps), just below 1)."""
    x, dy, w, b, _, _ = make_bn_data(rng, (8, 3, 6), dtype)
    _, mean, invstd = F.native_batch_norm(x, w, b, None, None, True, 0.1, EPS)
    dx, _, _ = F.batch_norm_backward(dy, x, w, mean, invstd, True)
    xhat = (x - mean.reshape(1, -1, 1)) * invstd.reshape(1, -1, 1)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dx.astype(np.float64).sum(axis=(0, 2)), 0, atol=tol * 50)
    expect = w * invstd * (dy * xhat).sum(axis=(0, 2)) * (1 - (xhat**2).mean(axis=(0, 2)))
    assert np.all(np.abs(expect) > 1e-9)  # the eps term is visible: a real check
    np.testing.assert_allclose((dx * xhat).sum(axis=(0, 2)), expect, rtol=1e-3, atol=tol * 50)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("ns", [4, (4,), [3, 4], (2, 3, 4)], ids=str)
def test_native_layer_norm_returns(rng, dtype, ns):
    shape = (2, 5, 2, 3, 4)
    nst = (ns,) if isinstance(ns, int) else tuple(ns)
    x, _, w, b = make_ln_data(rng, shape, nst, dtype)
    y, mean, rstd = F.native_layer_norm(x, ns, w, b, EPS)
    lead = shape[: len(shape) - len(nst)]
    assert type(y) is np.ndarray and y.shape == shape and y.dtype == dtype and y.flags.c_contiguous
    for s in (mean, rstd):
        assert type(s) is np.ndarray and s.shape == lead and s.dtype == np.float64
    np.testing.assert_array_equal(F.layer_norm(x, ns, w, b, EPS), y)
    axes = tuple(range(len(lead), len(shape)))
    x64 = x.astype(np.float64)
    assert_close(mean, x64.mean(axis=axes), dtype)
    assert_close(rstd, 1 / np.sqrt(x64.var(axis=axes) + EPS), dtype)


def test_layer_norm_defaults(rng):
    x = rng.normal(size=(3, 6))
    y = F.layer_norm(x, (6,))
    np.testing.assert_allclose(y, (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5),
                               rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_layer_norm_backward_returns(rng, dtype):
    shape, ns = (4, 3, 5), (3, 5)
    x, dy, w, _ = make_ln_data(rng, shape, ns, dtype)
    _, mean, rstd = F.native_layer_norm(x, ns, w, None, EPS)
    dx, dw, db = F.layer_norm_backward(dy, x, ns, mean, rstd, w)
    assert dx.shape == shape and dw.shape == db.shape == ns
    assert dx.dtype == dw.dtype == db.dtype == dtype
    dx1, dw1, db1 = F.layer_norm_backward(dy, x, ns, mean, rstd, None)
    dx2, dw2, db2 = F.layer_norm_backward(dy, x, ns, mean, rstd, np.ones(ns, dtype))
    np.testing.assert_array_equal(dx1, dx2)
    np.testing.assert_array_equal(dw1, dw2)
    np.testing.assert_array_equal(db1, db2)
    assert_close(dw1, dw, dtype, scale=10)  # dweight does not depend on the weight
    assert_close(db, dy.astype(np.float64).sum(axis=0), dtype, scale=10)
