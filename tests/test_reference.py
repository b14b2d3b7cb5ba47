"""The float64 NumPy reference (cnorm.slow) itself: basic invariants and agreement with torch
(the other norms' reference against torch: test_torch_parity.py)."""

import numpy as np
import pytest
from norms import reference

EPS = 1e-5
BN_SHAPES = [(5, 3), (7, 3, 5, 11), (2, 4, 3, 1, 5), (3, 1, 6), (4, 2, 1, 1)]
LN_CASES = [((4, 5), (5,)), ((2, 3, 4, 5), (4, 5)), ((3, 1), (1,)), ((7,), (7,))]


def _x(rng, shape):
    return rng.normal(0.5, 2.0, shape)


@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_bn_stats_invariants(rng, shape):
    x = _x(rng, shape)
    mean, var = reference.batch_norm_stats(x)
    axes = (0,) + tuple(range(2, len(shape)))
    C = shape[1]
    xs = np.moveaxis(x, 1, 0).reshape(C, -1)
    np.testing.assert_allclose(mean, xs.mean(axis=1), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(var, xs.var(axis=1), rtol=1e-12, atol=1e-13)
    y, _, _ = reference.batch_norm_forward(x, None, None, None, None, True, 0.1, 0.0)
    np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=axes), 1.0, rtol=1e-12)


def test_bn_running_update_unbiased(rng):
    x = _x(rng, (6, 2, 5))
    rm, rv = np.array([1.0, -1.0]), np.array([2.0, 0.5])
    _, nrm, nrv = reference.batch_norm_forward(x, None, None, rm, rv, True, 0.25, 1e-5)
    xs = np.moveaxis(x, 1, 0).reshape(2, -1)
    np.testing.assert_allclose(nrm, 0.75 * rm + 0.25 * xs.mean(axis=1), rtol=1e-14)
    np.testing.assert_allclose(nrv, 0.75 * rv + 0.25 * xs.var(axis=1, ddof=1), rtol=1e-14)
    # inputs untouched
    assert rm.tolist() == [1.0, -1.0] and rv.tolist() == [2.0, 0.5]


def test_bn_eval_uses_running(rng):
    x = _x(rng, (4, 3))
    w, b = rng.normal(size=3), rng.normal(size=3)
    rm, rv = rng.normal(size=3), rng.uniform(0.5, 2, 3)
    y, nrm, nrv = reference.batch_norm_forward(x, w, b, rm, rv, False, 0.1, 1e-3)
    np.testing.assert_allclose(y, (x - rm) / np.sqrt(rv + 1e-3) * w + b, rtol=1e-14)
    np.testing.assert_array_equal(nrm, rm)
    np.testing.assert_array_equal(nrv, rv)


def test_bn_empty_batch_leaves_running(rng):
    rm, rv = np.array([0.5, 1.5]), np.array([2.0, 3.0])
    y, nrm, nrv = reference.batch_norm_forward(np.zeros((0, 2, 3)), None, None, rm, rv, True, 0.1, 1e-5)
    assert y.shape == (0, 2, 3)
    np.testing.assert_array_equal(nrm, rm)
    np.testing.assert_array_equal(nrv, rv)


def test_ln_invariants(rng):
    x = _x(rng, (3, 4, 5))
    y, mean, rstd = reference.layer_norm_forward(x, (4, 5), None, None, 0.0)
    assert mean.shape == rstd.shape == (3,)
    np.testing.assert_allclose(mean, x.reshape(3, -1).mean(axis=1), rtol=1e-13)
    np.testing.assert_allclose(rstd, 1 / x.reshape(3, -1).std(axis=1), rtol=1e-13)
    np.testing.assert_allclose(y.reshape(3, -1).mean(axis=1), 0.0, atol=1e-13)
    np.testing.assert_allclose(y.reshape(3, -1).var(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_bn_reference_matches_torch(rng, shape, training):
    torch = pytest.importorskip("torch")
    C = shape[1]
    x, dy = _x(rng, shape), rng.normal(size=shape)
    w, b = rng.normal(1, 0.5, C), rng.normal(size=C)
    rm, rv = rng.normal(size=C), rng.uniform(0.5, 2, C)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    ty = torch.nn.functional.batch_norm(tx, trm, trv, tw, tb, training, 0.3, 1e-4)
    ty.backward(torch.tensor(dy))
    y, nrm, nrv = reference.batch_norm_forward(x, w, b, rm, rv, training, 0.3, 1e-4)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(nrm, trm.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(nrv, trv.numpy(), rtol=1e-12, atol=1e-12)
    if training:
        mean, var = reference.batch_norm_stats(x)
    else:
        mean, var = rm, rv
    dx, dw, db = reference.batch_norm_backward(dy, x, w, mean, 1 / np.sqrt(var + 1e-4), training)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("shape,ns", LN_CASES, ids=str)
def test_ln_reference_matches_torch(rng, shape, ns):
    torch = pytest.importorskip("torch")
    x, dy = _x(rng, shape), rng.normal(size=shape)
    w, b = rng.normal(1, 0.5, ns), rng.normal(size=ns)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    ty, tmean, trstd = torch.native_layer_norm(tx, list(ns), tw, tb, 1e-5)
    ty.backward(torch.tensor(dy))
    y, mean, rstd = reference.layer_norm_forward(x, ns, w, b, 1e-5)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mean, tmean.numpy().reshape(mean.shape), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rstd, trstd.numpy().reshape(rstd.shape), rtol=1e-12, atol=1e-12)
    dx, dw, db = reference.layer_norm_backward(dy, x, ns, w, 1e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-11, atol=1e-11)


def test_reference_returns_float64_and_keeps_inputs(rng):
    x = _x(rng, (4, 3, 2)).astype(np.float32)
    x0 = x.copy()
    y, _, _ = reference.batch_norm_forward(x, None, None, None, None, True, 0.1, 1e-5)
    assert y.dtype == np.float64
    y, mean, rstd = reference.layer_norm_forward(x, 2, None, None, 1e-5)
    assert y.dtype == mean.dtype == rstd.dtype == np.float64
    np.testing.assert_array_equal(x, x0)


def test_batch_norm_relu_reference_mask_recomputed(rng):
    """reference.batch_norm_relu_backward without output= recomputes the mask (float64)."""
    x, dy = _x(rng, (5, 3, 4)), rng.normal(size=(5, 3, 4))
    mean, var = reference.batch_norm_stats(x)
    invstd = 1 / np.sqrt(var + EPS)
    y = reference.batch_norm_relu_forward(x, None, None, None, None, True, 0.1, EPS)[0]
    a = reference.batch_norm_relu_backward(dy, x, None, None, mean, invstd, True)
    b = reference.batch_norm_relu_backward(dy, x, None, None, mean, invstd, True, output=y)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-14, atol=1e-14)
