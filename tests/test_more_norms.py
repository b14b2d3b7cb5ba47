"""GroupNorm, InstanceNorm1d/2d/3d, RMSNorm and the fused AddLayerNorm / BatchNormReLU:
functional and modules against the float64 reference (cnorm.slow), finite differences,
float32 accuracy, module state, errors, empty inputs, layouts and threads.

Parity with torch itself is in test_more_norms_torch.py.
"""

import copy
import pickle
import re
import warnings

import numpy as np
import pytest

import cnorm
import cnorm.functional as F
from cnorm import slow

from conftest import DTYPES, assert_close, assert_reduction_close, channel, tol_for

EPS = 1e-5


def raises(exc, msg):
    return pytest.raises(exc, match=re.escape(msg))


def params(rng, shape, dtype, loc=(1.0, 0.0)):
    w = rng.normal(loc[0], 0.5, shape).astype(dtype)
    b = rng.normal(loc[1], 0.5, shape).astype(dtype)
    return w, b


def data(rng, shape, dtype, loc=0.5, scale=2.0):
    x = rng.normal(loc, scale, shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    return x, dy


def bn_axes(ndim):
    return (0,) + tuple(range(2, ndim))


# =======================================================================================
# against the float64 reference
# =======================================================================================

GN_CASES = [((2, 6, 5), 3), ((3, 8, 4, 4), 4), ((4, 6), 3), ((4, 6), 6), ((2, 32, 9, 9), 32),
            ((2, 4, 1031), 2), ((1, 2, 3, 5, 7), 1), ((5, 3, 2), 1), ((2, 12, 40, 40), 3),
            ((1, 64, 3), 64)]
GN_IDS = [f"{s}-G{g}" for s, g in GN_CASES]


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("case", GN_CASES, ids=GN_IDS)
def test_group_norm_matches_reference(rng, num_threads, case, dtype, affine):
    shape, G = case
    C = shape[1]
    x, dy = data(rng, shape, dtype)
    w, b = params(rng, C, dtype) if affine else (None, None)
    y, mean, rstd = F.native_group_norm(x, G, w, b, EPS)
    ry, rmean, rrstd = slow.group_norm_forward(x, G, w, b, EPS)
    assert y.dtype == dtype and y.shape == shape and y.flags.c_contiguous
    assert mean.dtype == rstd.dtype == np.float64 and mean.shape == rstd.shape == (shape[0], G)
    assert_close(y, ry, dtype, err_msg="y")
    assert_close(mean, rmean, dtype, scale=np.abs(rmean), err_msg="mean")
    assert_close(rstd, rrstd, dtype, scale=np.abs(rrstd), err_msg="rstd")
    assert np.array_equal(F.group_norm(x, G, w, b), y)

    dx, dw, db = F.group_norm_backward(dy, x, G, mean, rstd, w)
    rdx, rdw, rdb = slow.group_norm_backward(dy, x, G, w, EPS)
    assert dx.dtype == dw.dtype == db.dtype == dtype and dw.shape == db.shape == (C,)
    # dx is rstd * (a difference of O(|dy * w|) terms): with one value per group (var = 0,
    # rstd = 1/sqrt(eps)) it is exactly 0 in float64 and a rounding residue in float32
    terms = np.abs(dy.astype(np.float64) * (1 if w is None else channel(w, len(shape))))
    scale = max(np.abs(rdx).max(), (terms.reshape(shape[0], G, -1)
                                     * rrstd[:, :, None]).max(initial=0))
    assert_close(dx, rdx, dtype, scale=scale, err_msg="dx")
    xhat = ry if not affine else slow.group_norm_forward(x, G, None, None, EPS)[0]
    assert_reduction_close(dw, rdw, dy.astype(np.float64) * xhat, bn_axes(len(shape)), dtype,
                           err_msg="dweight")
    assert_reduction_close(db, rdb, dy, bn_axes(len(shape)), dtype, err_msg="dbias")


IN_SHAPES = [(2, 3, 5), (3, 4, 6, 6), (2, 2, 3, 4, 5), (2, 3, 1031), (1, 5, 2), (6, 1, 7, 3)]


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("shape", IN_SHAPES, ids=str)
def test_instance_norm_input_stats_matches_reference(rng, num_threads, shape, dtype, affine):
    N, C = shape[:2]
    x, dy = data(rng, shape, dtype)
    w, b = params(rng, C, dtype) if affine else (None, None)
    rm = rng.normal(size=C).astype(dtype)
    rv = rng.uniform(0.5, 2.0, C).astype(dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean, invstd = F.native_instance_norm(x, w, b, rm, rv, True, 0.3, EPS)
    ry, rrm, rrv = slow.instance_norm_forward(x, rm0, rv0, w, b, True, 0.3, EPS)
    assert mean.shape == invstd.shape == (N, C) and mean.dtype == np.float64
    assert_close(y, ry, dtype, err_msg="y")
    assert_close(rm, rrm, dtype, err_msg="running_mean")
    assert_close(rv, rrv, dtype, scale=np.abs(rrv), err_msg="running_var")
    # instance norm is group norm with one group per channel
    gy, gmean, grstd = slow.group_norm_forward(x, C, w, b, EPS)
    assert_close(mean, gmean, dtype, scale=np.abs(gmean))
    assert_close(invstd, grstd, dtype, scale=np.abs(grstd))

    dx, dw, db = F.instance_norm_backward(dy, x, w, mean, invstd, True)
    rdx, rdw, rdb = slow.instance_norm_backward(dy, x, w, EPS)
    assert_close(dx, rdx, dtype, scale=np.abs(rdx).max(), err_msg="dx")
    xhat = slow.group_norm_forward(x, C, None, None, EPS)[0]
    assert_reduction_close(dw, rdw, dy.astype(np.float64) * xhat, bn_axes(len(shape)), dtype)
    assert_reduction_close(db, rdb, dy, bn_axes(len(shape)), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("shape", IN_SHAPES + [(4, 3), (2, 3, 1)], ids=str)
def test_instance_norm_running_stats_matches_reference(rng, num_threads, shape, dtype):
    """use_input_stats=False: every instance normalized with the running stats (BN eval)."""
    C = shape[1]
    x, dy = data(rng, shape, dtype)
    w, b = params(rng, C, dtype)
    rm = rng.normal(size=C).astype(dtype)
    rv = rng.uniform(0.5, 2.0, C).astype(dtype)
    y, mean, invstd = F.native_instance_norm(x, w, b, rm, rv, False, 0.1, EPS)
    assert mean.shape == invstd.shape == (C,)
    ry, _, _ = slow.instance_norm_forward(x, rm, rv, w, b, False, 0.1, EPS)
    assert_close(y, ry, dtype)
    assert np.array_equal(y, F.batch_norm(x, rm, rv, w, b, training=False))
    dx, dw, db = F.instance_norm_backward(dy, x, w, mean, invstd, False)
    rdx, rdw, rdb = slow.instance_norm_backward(dy, x, w, EPS, rm, rv, use_input_stats=False)
    assert_close(dx, rdx, dtype, scale=np.abs(rdx).max())
    assert_close(dw, rdw, dtype, scale=np.abs(rdw).max() * 10)
    assert_close(db, rdb, dtype, scale=np.abs(rdb).max() * 10)


RMS_CASES = [((5, 11), (11,)), ((4, 513), (513,)), ((2, 3, 7), (3, 7)), ((3, 5000), (5000,)),
             ((7,), (7,)), ((64, 1024), (1024,)), ((40, 1), (1,))]
RMS_IDS = [f"{s}-{n}" for s, n in RMS_CASES]


@pytest.mark.parametrize("eps", [None, 1e-5, 0.1], ids=["epsNone", "eps1e-5", "eps0.1"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("case", RMS_CASES, ids=RMS_IDS)
def test_rms_norm_matches_reference(rng, num_threads, case, dtype, affine, eps):
    shape, ns = case
    x, dy = data(rng, shape, dtype)
    w = rng.normal(1.0, 0.5, ns).astype(dtype) if affine else None
    y, rrms = F.native_rms_norm(x, ns, w, eps)
    ry, rrrms = slow.rms_norm_forward(x, ns, w, eps)
    lead = shape[: len(shape) - len(ns)]
    assert rrms.shape == lead and rrms.dtype == np.float64 and y.dtype == dtype
    assert_close(y, ry, dtype, err_msg="y")
    assert_close(rrms, rrrms, dtype, scale=np.abs(rrrms), err_msg="rrms")
    assert np.array_equal(F.rms_norm(x, ns, w, eps), y)
    dx, dw = F.rms_norm_backward(dy, x, ns, rrms, w)
    rdx, rdw = slow.rms_norm_backward(dy, x, ns, w, eps)
    assert dw.shape == ns and dw.dtype == dtype
    assert_close(dx, rdx, dtype, scale=np.abs(rdx).max(), err_msg="dx")
    xhat = slow.rms_norm_forward(x, ns, None, eps)[0]
    lead_axes = tuple(range(len(lead)))
    assert_reduction_close(dw, rdw, dy.astype(np.float64) * xhat, lead_axes, dtype,
                           err_msg="dweight")


def test_rms_norm_default_eps_is_machine_epsilon_of_the_dtype(rng):
    for dtype in DTYPES:
        x = np.full((2, 3), 1e-5, dtype)           # mean(x^2) = 1e-10 << eps(float32)
        y = F.rms_norm(x, (3,))
        ref = 1e-5 / np.sqrt(np.float64(np.asarray(x, np.float64)[0, 0]) ** 2
                             + np.finfo(dtype).eps)
        assert_close(y, np.full((2, 3), ref), dtype)
        assert np.array_equal(y, F.rms_norm(x, (3,), eps=float(np.finfo(dtype).eps)))


LN_CASES = [((5, 11), (11,)), ((4, 513), (513,)), ((6, 3, 7), (3, 7)), ((3, 5000), (5000,)),
            ((2, 8, 1024), (1024,))]
LN_IDS = [f"{s}-{n}" for s, n in LN_CASES]


@pytest.mark.parametrize("with_dsum", [False, True], ids=["dsumNone", "dsum"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("case", LN_CASES, ids=LN_IDS)
def test_add_layer_norm_matches_reference(rng, num_threads, case, dtype, affine, with_dsum):
    shape, ns = case
    x, dy = data(rng, shape, dtype)
    r = rng.normal(-0.3, 1.0, shape).astype(dtype)
    dsum = rng.normal(size=shape).astype(dtype) if with_dsum else None
    w, b = params(rng, ns, dtype) if affine else (None, None)
    y, s, mean, rstd = F.native_add_layer_norm(x, r, ns, w, b, EPS)
    assert s.dtype == dtype and np.array_equal(s, x + r)     # the sum exactly as numpy's
    ry, rs, rmean, rrstd = slow.add_layer_norm_forward(x, r, ns, w, b, EPS)
    assert_close(y, ry, dtype)
    assert_close(mean, rmean, dtype, scale=np.abs(rmean))
    assert_close(rstd, rrstd, dtype, scale=np.abs(rrstd))
    # the same as layer_norm of the sum
    assert_close(y, slow.layer_norm_forward(x + r, ns, w, b, EPS)[0], dtype)
    y2, s2 = F.add_layer_norm(x, r, ns, w, b)
    assert np.array_equal(y2, y) and np.array_equal(s2, s)

    dxr, dw, db = F.add_layer_norm_backward(dy, dsum, s, ns, mean, rstd, w)
    rdx, rdw, rdb = slow.add_layer_norm_backward(dy, dsum, s, ns, w, EPS)
    assert_close(dxr, rdx, dtype, scale=np.abs(rdx).max())
    lead_axes = tuple(range(len(shape) - len(ns)))
    xhat = slow.layer_norm_forward(s, ns, None, None, EPS)[0]
    assert_reduction_close(dw, rdw, dy.astype(np.float64) * xhat, lead_axes, dtype)
    assert_reduction_close(db, rdb, dy, lead_axes, dtype)
    # == layer_norm_backward at s (+ dsum)
    ldx, ldw, ldb = F.layer_norm_backward(dy, s, ns, mean, rstd, w)
    if dsum is not None:
        ldx = ldx + dsum
    assert_close(dxr, ldx, dtype, scale=np.abs(ldx).max())


BNR_SHAPES = [(6, 5), (4, 5, 7), (3, 5, 4, 6), (2, 3, 2, 3, 4), (64, 3), (2, 4, 1031)]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("shape", BNR_SHAPES, ids=str)
def test_batch_norm_relu_matches_reference(rng, num_threads, shape, dtype, training):
    C = shape[1]
    x, dy = data(rng, shape, dtype)
    w, b = params(rng, C, dtype)
    rm = rng.normal(0.5, 1.0, C).astype(dtype)
    rv = rng.uniform(0.5, 2.0, C).astype(dtype)
    rm2, rv2 = rm.copy(), rv.copy()
    y, mean, invstd = F.native_batch_norm_relu(x, w, b, rm, rv, training, 0.2, EPS)
    ry, rrm, rrv = slow.batch_norm_relu_forward(x, w, b, rm2, rv2, training, 0.2, EPS)
    assert_close(y, ry, dtype)
    assert np.all(y >= 0) and np.any(y == 0)
    assert_close(rm, rrm, dtype)
    assert_close(rv, rrv, dtype, scale=np.abs(rrv))
    # the same statistics, running-stat update and positive part as native_batch_norm
    y0, mean0, invstd0 = F.native_batch_norm(x, w, b, rm2, rv2, training, 0.2, EPS)
    assert np.array_equal(mean, mean0) and np.array_equal(invstd, invstd0)
    assert np.array_equal(y, np.maximum(y0, 0))
    assert np.array_equal(F.batch_norm_relu(x, rm.copy(), rv.copy(), w, b, training, 0.2), y)

    dx, dw, db = F.batch_norm_relu_backward(dy, x, w, mean, invstd, training, y)
    rdx, rdw, rdb = slow.batch_norm_relu_backward(dy, x, w, b, mean, invstd, training, output=y)
    assert_close(dx, rdx, dtype, scale=np.abs(rdx).max())
    mask = (y > 0)
    sdx, sdw, sdb = F.batch_norm_backward((dy * mask).astype(dtype), x, w, mean, invstd, training)
    assert_close(dx, sdx, dtype, scale=np.abs(sdx).max())
    assert_close(dw, rdw, dtype, scale=np.sum(np.abs(dy), axis=bn_axes(len(shape))) * 4)
    assert_close(db, rdb, dtype, scale=np.sum(np.abs(dy), axis=bn_axes(len(shape))))


def test_batch_norm_relu_reference_mask_recomputed(rng):
    """slow.batch_norm_relu_backward without output= recomputes the mask (float64)."""
    x, dy = data(rng, (5, 3, 4), np.float64)
    mean, var = slow.batch_norm_stats(x)
    invstd = 1 / np.sqrt(var + EPS)
    y = slow.batch_norm_relu_forward(x, None, None, None, None, True, 0.1, EPS)[0]
    a = slow.batch_norm_relu_backward(dy, x, None, None, mean, invstd, True)
    b = slow.batch_norm_relu_backward(dy, x, None, None, mean, invstd, True, output=y)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-14, atol=1e-14)


# =======================================================================================
# finite differences (float64)
# =======================================================================================

FD_EPS = 1e-3
H = 1e-6
RTOL, ATOL = 1e-6, 1e-7


def numeric_grad(f, a, h=H):
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


def check(analytic, numeric, what):
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL, err_msg=what)


@pytest.mark.parametrize("impl", ["cnorm", "slow"])
@pytest.mark.parametrize("case", [((2, 6, 3), 3), ((2, 4, 2, 2), 2), ((3, 4), 2), ((1, 2, 5), 1)],
                         ids=lambda c: f"{c[0]}-G{c[1]}")
def test_group_norm_finite_differences(rng, case, impl):
    shape, G = case
    C = shape[1]
    x = rng.normal(0.5, 1.5, shape)
    w, b = rng.normal(1, 0.5, C), rng.normal(0, 0.5, C)
    R = rng.normal(size=shape)
    if impl == "cnorm":
        def fwd():
            return F.group_norm(x, G, w, b, FD_EPS)
        _, mean, rstd = F.native_group_norm(x, G, w, b, FD_EPS)
        dx, dw, db = F.group_norm_backward(R, x, G, mean, rstd, w)
    else:
        def fwd():
            return slow.group_norm_forward(x, G, w, b, FD_EPS)[0]
        dx, dw, db = slow.group_norm_backward(R, x, G, w, FD_EPS)

    def loss():
        return float(np.sum(fwd() * R))
    check(dx, numeric_grad(loss, x), "dx")
    check(dw, numeric_grad(loss, w), "dweight")
    check(db, numeric_grad(loss, b), "dbias")


@pytest.mark.parametrize("impl", ["cnorm", "slow"])
@pytest.mark.parametrize("use_input_stats", [True, False], ids=["input_stats", "running_stats"])
@pytest.mark.parametrize("shape", [(2, 3, 4), (2, 2, 2, 3), (1, 2, 2, 1, 3)], ids=str)
def test_instance_norm_finite_differences(rng, shape, use_input_stats, impl):
    C = shape[1]
    x = rng.normal(0.5, 1.5, shape)
    w, b = rng.normal(1, 0.5, C), rng.normal(0, 0.5, C)
    rm, rv = rng.normal(size=C), rng.uniform(0.5, 2, C)
    R = rng.normal(size=shape)
    if impl == "cnorm":
        def fwd():
            return F.instance_norm(x, rm.copy(), rv.copy(), w, b, use_input_stats, 0.1, FD_EPS)
        _, mean, invstd = F.native_instance_norm(x, w, b, rm.copy(), rv.copy(),
                                                 use_input_stats, 0.1, FD_EPS)
        dx, dw, db = F.instance_norm_backward(R, x, w, mean, invstd, use_input_stats)
    else:
        def fwd():
            return slow.instance_norm_forward(x, rm, rv, w, b, use_input_stats, 0.1, FD_EPS)[0]
        dx, dw, db = slow.instance_norm_backward(R, x, w, FD_EPS, rm, rv, use_input_stats)

    def loss():
        return float(np.sum(fwd() * R))
    check(dx, numeric_grad(loss, x), "dx")
    check(dw, numeric_grad(loss, w), "dweight")
    check(db, numeric_grad(loss, b), "dbias")


@pytest.mark.parametrize("impl", ["cnorm", "slow"])
@pytest.mark.parametrize("case", [((4, 5), (5,)), ((2, 3, 4), (3, 4)), ((3, 1), (1,))],
                         ids=lambda c: f"{c[0]}-{c[1]}")
def test_rms_norm_finite_differences(rng, case, impl):
    shape, ns = case
    x = rng.normal(0.3, 1.5, shape)
    w = rng.normal(1, 0.5, ns)
    R = rng.normal(size=shape)
    if impl == "cnorm":
        def fwd():
            return F.rms_norm(x, ns, w, FD_EPS)
        _, rrms = F.native_rms_norm(x, ns, w, FD_EPS)
        dx, dw = F.rms_norm_backward(R, x, ns, rrms, w)
    else:
        def fwd():
            return slow.rms_norm_forward(x, ns, w, FD_EPS)[0]
        dx, dw = slow.rms_norm_backward(R, x, ns, w, FD_EPS)

    def loss():
        return float(np.sum(fwd() * R))
    check(dx, numeric_grad(loss, x), "dx")
    check(dw, numeric_grad(loss, w), "dweight")


@pytest.mark.parametrize("impl", ["cnorm", "slow"])
@pytest.mark.parametrize("case", [((4, 5), (5,)), ((2, 3, 4), (3, 4))],
                         ids=lambda c: f"{c[0]}-{c[1]}")
def test_add_layer_norm_finite_differences(rng, case, impl):
    """L = sum(y * R) + sum(s * Q): grad_x == grad_residual == LN'(R) + Q."""
    shape, ns = case
    x = rng.normal(0.5, 1.5, shape)
    r = rng.normal(-0.5, 1.0, shape)
    w, b = rng.normal(1, 0.5, ns), rng.normal(0, 0.5, ns)
    R, Q = rng.normal(size=shape), rng.normal(size=shape)
    if impl == "cnorm":
        def fwd():
            return F.add_layer_norm(x, r, ns, w, b, FD_EPS)
        _, s, mean, rstd = F.native_add_layer_norm(x, r, ns, w, b, FD_EPS)
        dxr, dw, db = F.add_layer_norm_backward(R, Q, s, ns, mean, rstd, w)
    else:
        def fwd():
            return slow.add_layer_norm_forward(x, r, ns, w, b, FD_EPS)[:2]
        s = x + r
        dxr, dw, db = slow.add_layer_norm_backward(R, Q, s, ns, w, FD_EPS)

    def loss():
        y, s = fwd()
        return float(np.sum(y * R) + np.sum(s * Q))
    check(dxr, numeric_grad(loss, x), "dx")
    check(dxr, numeric_grad(loss, r), "dresidual")
    check(dw, numeric_grad(loss, w), "dweight")
    check(db, numeric_grad(loss, b), "dbias")


@pytest.mark.parametrize("impl", ["cnorm", "slow"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(6, 3), (3, 2, 4), (2, 2, 2, 3)], ids=str)
def test_batch_norm_relu_finite_differences(rng, shape, training, impl):
    C = shape[1]
    x = rng.normal(0.5, 1.5, shape)
    w, b = rng.normal(1, 0.5, C), rng.normal(0.2, 0.5, C)
    rm, rv = rng.normal(0.5, 1, C), rng.uniform(0.5, 2, C)
    R = rng.normal(size=shape)
    if impl == "cnorm":
        def fwd():
            return F.batch_norm_relu(x, rm.copy(), rv.copy(), w, b, training, 0.1, FD_EPS)
        y, mean, invstd = F.native_batch_norm_relu(x, w, b, rm.copy(), rv.copy(), training,
                                                   0.1, FD_EPS)
        dx, dw, db = F.batch_norm_relu_backward(R, x, w, mean, invstd, training, y)
    else:
        def fwd():
            return slow.batch_norm_relu_forward(x, w, b, rm, rv, training, 0.1, FD_EPS)[0]
        if training:
            mean, var = slow.batch_norm_stats(x)
        else:
            mean, var = rm, rv
        dx, dw, db = slow.batch_norm_relu_backward(R, x, w, b, mean, 1 / np.sqrt(var + FD_EPS),
                                                   training)
    y = fwd()
    assert np.min(np.abs(y[y != 0]), initial=1.0) > 1e-4   # no kink within the FD step
    assert np.any(y == 0)

    def loss():
        return float(np.sum(fwd() * R))
    check(dx, numeric_grad(loss, x), "dx")
    check(dw, numeric_grad(loss, w), "dweight")
    check(db, numeric_grad(loss, b), "dbias")


@pytest.mark.parametrize("kind", ["GroupNorm", "InstanceNorm", "RMSNorm", "AddLayerNorm",
                                  "BatchNormReLU"])
def test_module_backward_finite_differences(rng, kind):
    """The modules' backward (float64) against central differences through forward()."""
    if kind == "GroupNorm":
        m, shape = cnorm.GroupNorm(2, 4, eps=FD_EPS, dtype=np.float64), (2, 4, 3)
    elif kind == "InstanceNorm":
        m, shape = cnorm.InstanceNorm1d(3, eps=FD_EPS, affine=True, dtype=np.float64), (2, 3, 4)
    elif kind == "RMSNorm":
        m, shape = cnorm.RMSNorm((2, 3), eps=FD_EPS, dtype=np.float64), (3, 2, 3)
    elif kind == "AddLayerNorm":
        m, shape = cnorm.AddLayerNorm(5, eps=FD_EPS, dtype=np.float64), (3, 5)
    else:
        m, shape = cnorm.BatchNormReLU1d(3, eps=FD_EPS, dtype=np.float64), (5, 3, 2)
    for p in m.parameters():
        p[...] = rng.normal(0.8, 0.5, p.shape)
    x = rng.normal(0.3, 1.5, shape)
    r = rng.normal(size=shape)
    R, Q = rng.normal(size=shape), rng.normal(size=shape)

    def run():
        if kind == "AddLayerNorm":
            y, s = m(x, r)
            return float(np.sum(y * R) + np.sum(s * Q))
        if kind == "BatchNormReLU":
            m.reset_running_stats()
        return float(np.sum(m(x) * R))
    run()
    m.zero_grad()
    dx = m.backward(R, Q) if kind == "AddLayerNorm" else m.backward(R)
    check(dx, numeric_grad(run, x), "dx")
    for name, p in m.named_parameters():
        check(getattr(m, name + "_grad"), numeric_grad(run, p), name)


# =======================================================================================
# float32 accuracy: offsets, constant groups / rows
# =======================================================================================

FWD_TOL = 2e-6
GRAD_RTOL = 1e-5
OFFSETS = [0.0, 1e3, 1e4, 1e5, 1e6, -1e5]


def offset_data(rng, shape, offset, scale=1.0):
    return (offset + scale * rng.standard_normal(shape)).astype(np.float32)


def max_err(a, e):
    a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
    assert a.shape == e.shape
    if a.size == 0:
        return 0.0
    d = np.abs(a - e)
    return float("inf") if np.isnan(d).any() else float(d.max())


def rel_err(a, e):
    scale = float(np.max(np.abs(np.asarray(e, np.float64)), initial=0.0))
    return max_err(a, e) / scale if scale else max_err(a, e)


@pytest.mark.parametrize("case", [((4, 64, 16, 16), 32), ((2, 6, 1031), 3), ((8, 12), 4)],
                         ids=lambda c: f"{c[0]}-G{c[1]}")
@pytest.mark.parametrize("offset", OFFSETS, ids=lambda o: f"off{o:g}")
def test_group_norm_float32_offsets(rng, num_threads, offset, case):
    shape, G = case
    C = shape[1]
    x = offset_data(rng, shape, offset)
    w = rng.uniform(0.5, 1.5, C).astype(np.float32) * rng.choice([-1, 1], C).astype(np.float32)
    b = rng.uniform(-1, 1, C).astype(np.float32)
    for w_, b_ in [(None, None), (w, b)]:
        y, mean, rstd = F.native_group_norm(x, G, w_, b_, EPS)
        err = max_err(y, slow.group_norm_forward(x, G, w_, b_, EPS)[0])
        assert err <= FWD_TOL, f"GN forward at offset {offset:g}: max error {err:.3g}"
    dy = rng.standard_normal(shape).astype(np.float32)
    dx, dw, db = F.group_norm_backward(dy, x, G, mean, rstd, w)
    rdx, rdw, rdb = slow.group_norm_backward(dy, x, G, w, EPS)
    assert rel_err(dx, rdx) <= GRAD_RTOL
    assert rel_err(dw, rdw) <= GRAD_RTOL * 10 and rel_err(db, rdb) <= GRAD_RTOL * 10


@pytest.mark.parametrize("shape", [(4, 16, 32, 32), (3, 5, 1031), (2, 3, 4, 5, 6)], ids=str)
@pytest.mark.parametrize("offset", OFFSETS, ids=lambda o: f"off{o:g}")
def test_instance_norm_float32_offsets(rng, num_threads, offset, shape):
    C = shape[1]
    x = offset_data(rng, shape, offset)
    rm = np.zeros(C, np.float32)
    rv = np.ones(C, np.float32)
    y, mean, invstd = F.native_instance_norm(x, None, None, rm, rv, True, 0.1, EPS)
    ry, rrm, rrv = slow.instance_norm_forward(x, np.zeros(C), np.ones(C), None, None, True,
                                              0.1, EPS)
    err = max_err(y, ry)
    assert err <= FWD_TOL, f"IN forward at offset {offset:g}: max error {err:.3g}"
    np.testing.assert_allclose(rm, rrm, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rv, rrv, rtol=1e-6)
    dy = rng.standard_normal(shape).astype(np.float32)
    dx, _, _ = F.instance_norm_backward(dy, x, None, mean, invstd, True)
    assert rel_err(dx, slow.instance_norm_backward(dy, x, None, EPS)[0]) <= GRAD_RTOL


@pytest.mark.parametrize("case", [((64, 1024), (1024,)), ((30, 37), (37,)), ((4, 8, 50), (8, 50))],
                         ids=lambda c: f"{c[0]}-{c[1]}")
@pytest.mark.parametrize("offset", OFFSETS, ids=lambda o: f"off{o:g}")
def test_rms_norm_float32_offsets(rng, num_threads, offset, case):
    shape, ns = case
    x = offset_data(rng, shape, offset)
    w = rng.uniform(0.5, 1.5, ns).astype(np.float32)
    for w_ in (None, w):
        y, rrms = F.native_rms_norm(x, ns, w_, None)
        err = max_err(y, slow.rms_norm_forward(x, ns, w_, None)[0])
        assert err <= FWD_TOL, f"RMS forward at offset {offset:g}: max error {err:.3g}"
    dy = rng.standard_normal(shape).astype(np.float32)
    dx, dw = F.rms_norm_backward(dy, x, ns, rrms, w)
    rdx, rdw = slow.rms_norm_backward(dy, x, ns, w, None)
    assert rel_err(dx, rdx) <= GRAD_RTOL and rel_err(dw, rdw) <= GRAD_RTOL * 10


@pytest.mark.parametrize("case", [((64, 1024), (1024,)), ((30, 37), (37,)), ((4, 8, 50), (8, 50))],
                         ids=lambda c: f"{c[0]}-{c[1]}")
@pytest.mark.parametrize("offset", OFFSETS, ids=lambda o: f"off{o:g}")
def test_add_layer_norm_float32_offsets(rng, num_threads, offset, case):
    """The reference normalizes the float32 sum (what the fused op defines as s)."""
    shape, ns = case
    x = offset_data(rng, shape, offset)
    r = offset_data(rng, shape, -offset / 3)
    w = rng.uniform(0.5, 1.5, ns).astype(np.float32)
    b = rng.uniform(-1, 1, ns).astype(np.float32)
    for w_, b_ in [(None, None), (w, b)]:
        y, s, mean, rstd = F.native_add_layer_norm(x, r, ns, w_, b_, EPS)
        assert np.array_equal(s, x + r)
        err = max_err(y, slow.add_layer_norm_forward(x, r, ns, w_, b_, EPS)[0])
        assert err <= FWD_TOL, f"add+LN forward at offset {offset:g}: max error {err:.3g}"
    dy = rng.standard_normal(shape).astype(np.float32)
    dxr, dw, db = F.add_layer_norm_backward(dy, None, s, ns, mean, rstd, w)
    rdx, rdw, rdb = slow.add_layer_norm_backward(dy, None, s, ns, w, EPS)
    assert rel_err(dxr, rdx) <= GRAD_RTOL
    assert rel_err(dw, rdw) <= GRAD_RTOL * 10 and rel_err(db, rdb) <= GRAD_RTOL * 10


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(8, 16, 32, 32), (4096, 24), (6, 5, 1031)], ids=str)
@pytest.mark.parametrize("offset", OFFSETS, ids=lambda o: f"off{o:g}")
def test_batch_norm_relu_float32_offsets(rng, num_threads, offset, shape, training):
    C = shape[1]
    x = offset_data(rng, shape, offset)
    # eval: running statistics equal to the batch's own, so that x-hat is O(1)
    mean64, var64 = slow.batch_norm_stats(x)
    rm, rv = mean64.astype(np.float32), var64.astype(np.float32)
    y, mean, invstd = F.native_batch_norm_relu(x, None, None, rm.copy(), rv.copy(), training,
                                               0.1, EPS)
    ref = slow.batch_norm_relu_forward(x, None, None, rm, rv, training, 0.1, EPS)[0]
    err = max_err(y, ref)
    assert err <= FWD_TOL, f"BN+ReLU forward at offset {offset:g}: max error {err:.3g}"


GN_CONST = [0.0, 1.0, -3.5, 1e6, 123456.789, 1e-30, 3e30]


@pytest.mark.parametrize("case", [((3, 8, 5, 5), 4), ((2, 6, 1031), 3), ((4, 32, 3, 3), 32),
                                  ((2, 4, 70000), 2)],
                         ids=lambda c: f"{c[0]}-G{c[1]}")
def test_group_norm_constant_group_is_exactly_zero(rng, num_threads, case):
    shape, G = case
    C = shape[1]
    cg = C // G
    for const in GN_CONST:
        x = rng.standard_normal(shape).astype(np.float32)
        x[1, cg:2 * cg] = np.float32(const)              # group 1 of sample 1
        w = rng.uniform(0.5, 2.0, C).astype(np.float32)
        b = rng.uniform(-1, 1, C).astype(np.float32)
        y = F.group_norm(x, G, w, None)
        assert np.all(y[1, cg:2 * cg] == 0), f"constant {const:g}: max |y| {np.abs(y[1, cg:2*cg]).max()}"
        assert np.all(np.isfinite(y))
        y = F.group_norm(x, G, w, b)
        assert np.all(y[1, cg:2 * cg] == channel(b, len(shape))[0, cg:2 * cg])
        # the gradient of a constant group is finite (dx = rstd * (g - mean(g)))
        _, mean, rstd = F.native_group_norm(x, G, w, b, EPS)
        dy = rng.standard_normal(shape).astype(np.float32)
        dx, dw, db = F.group_norm_backward(dy, x, G, mean, rstd, w)
        assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dw))


@pytest.mark.parametrize("shape", [(3, 4, 5, 5), (2, 3, 1031), (2, 3, 2, 3, 4)], ids=str)
def test_instance_norm_constant_instance_is_exactly_zero(rng, num_threads, shape):
    C = shape[1]
    for const in GN_CONST:
        x = rng.standard_normal(shape).astype(np.float32)
        x[1, 2] = np.float32(const)
        w = rng.uniform(0.5, 2.0, C).astype(np.float32)
        b = rng.uniform(-1, 1, C).astype(np.float32)
        y = F.instance_norm(x, weight=w)
        assert np.all(y[1, 2] == 0), const
        assert np.all(np.isfinite(y))
        y = F.instance_norm(x, weight=w, bias=b)
        assert np.all(y[1, 2] == b[2])


@pytest.mark.parametrize("case", [((5, 11), (11,)), ((4, 1031), (1031,)), ((6, 3, 7), (3, 7))],
                         ids=lambda c: f"{c[0]}-{c[1]}")
def test_add_layer_norm_constant_row_is_exactly_zero(rng, num_threads, case):
    shape, ns = case
    for const in [0.0, 1.0, 1e6, -2.5]:
        x = rng.standard_normal(shape).astype(np.float32)
        r = rng.standard_normal(shape).astype(np.float32)
        x[1] = np.float32(const) / 2                       # halves: the sum is exact
        r[1] = np.float32(const) / 2
        b = rng.uniform(-1, 1, ns).astype(np.float32)
        y, s = F.add_layer_norm(x, r, ns, None, None)
        assert np.all(s[1] == np.float32(const)) and np.all(y[1] == 0)
        y, s = F.add_layer_norm(x, r, ns, None, b)
        assert np.all(y[1] == b)


def test_rms_norm_zero_row_is_exactly_zero_and_constant_row_is_sign(rng, num_threads):
    x = rng.standard_normal((4, 1031)).astype(np.float32)
    x[1] = 0
    x[2] = -7.25
    y = F.rms_norm(x, (1031,))
    assert np.all(y[1] == 0)
    np.testing.assert_allclose(y[2], -1.0, rtol=1e-6)
    dx, dw = F.rms_norm_backward(np.ones_like(x), x, (1031,), F.native_rms_norm(x, (1031,), None, None)[1], None)
    assert np.all(np.isfinite(dx))


# =======================================================================================
# modules: state and semantics
# =======================================================================================

def test_group_norm_module_state_and_defaults():
    m = cnorm.GroupNorm(4, 8)
    assert (m.num_groups, m.num_channels, m.eps, m.affine) == (4, 8, 1e-5, True)
    assert m.dtype == np.float32 and m.training
    assert np.array_equal(m.weight, np.ones(8)) and np.array_equal(m.bias, np.zeros(8))
    assert m.weight.dtype == np.float32
    assert m.weight_grad is None and m.bias_grad is None
    assert list(m.state_dict()) == ["weight", "bias"]
    m = cnorm.GroupNorm(4, 8, affine=False, dtype=np.float64)
    assert m.weight is None and m.bias is None and m.state_dict() == {}
    m = cnorm.GroupNorm(4, 8, bias=False)
    assert m.bias is None and list(m.state_dict()) == ["weight"]
    with pytest.raises(TypeError):
        cnorm.GroupNorm(4, 8, 1e-5, True, np.float32, True)     # bias is keyword-only


@pytest.mark.parametrize("name", ["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"])
def test_instance_norm_module_state_and_defaults(name):
    cls = getattr(cnorm, name)
    m = cls(5)
    assert (m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats) == \
        (5, 1e-5, 0.1, False, False)
    assert m.weight is None and m.bias is None and m.running_mean is None
    assert m.num_batches_tracked is None and m.state_dict() == {}
    m = cls(5, affine=True, track_running_stats=True, dtype=np.float64)
    assert list(m.state_dict()) == ["weight", "bias", "running_mean", "running_var",
                                    "num_batches_tracked"]
    sd = m.state_dict()
    assert sd["num_batches_tracked"].dtype == np.int64 and sd["running_var"].dtype == np.float64
    assert list(cls(5, affine=True, bias=False).state_dict()) == ["weight"]


def test_rms_norm_module_state_and_defaults():
    m = cnorm.RMSNorm([2, 3])
    assert m.normalized_shape == (2, 3) and m.eps is None and m.elementwise_affine
    assert m.weight.shape == (2, 3) and np.all(m.weight == 1)
    assert list(m.state_dict()) == ["weight"]
    m = cnorm.RMSNorm(4, eps=1e-6, elementwise_affine=False, dtype=np.float64)
    assert m.weight is None and m.state_dict() == {} and m.eps == 1e-6


def test_reprs():
    assert repr(cnorm.GroupNorm(32, 256)) == "GroupNorm(32, 256, eps=1e-05, affine=True, bias=True)"
    assert repr(cnorm.GroupNorm(2, 4, affine=False)) == \
        "GroupNorm(2, 4, eps=1e-05, affine=False, bias=False)"
    assert repr(cnorm.InstanceNorm2d(64)) == ("InstanceNorm2d(64, eps=1e-05, momentum=0.1, "
                                              "affine=False, bias=False, track_running_stats=False)")
    assert repr(cnorm.InstanceNorm1d(3, momentum=None, affine=True, track_running_stats=True)) \
        == ("InstanceNorm1d(3, eps=1e-05, momentum=None, affine=True, bias=True, "
            "track_running_stats=True)")
    assert repr(cnorm.RMSNorm(1024)) == "RMSNorm((1024,), eps=None, elementwise_affine=True)"
    assert repr(cnorm.RMSNorm([2, 3], eps=1e-6, elementwise_affine=False)) == \
        "RMSNorm((2, 3), eps=1e-06, elementwise_affine=False)"
    assert repr(cnorm.AddLayerNorm(768)) == \
        "AddLayerNorm((768,), eps=1e-05, elementwise_affine=True, bias=True)"
    assert repr(cnorm.BatchNormReLU2d(64)) == ("BatchNormReLU2d(64, eps=1e-05, momentum=0.1, "
                                               "affine=True, bias=True, track_running_stats=True)")


def make_module(kind, dtype=np.float32):
    """(module, input shape) with randomized parameters."""
    if kind == "GroupNorm":
        return cnorm.GroupNorm(3, 6, dtype=dtype), (4, 6, 5)
    if kind == "InstanceNorm":
        return cnorm.InstanceNorm2d(3, affine=True, track_running_stats=True, dtype=dtype), (2, 3, 4, 5)
    if kind == "RMSNorm":
        return cnorm.RMSNorm((5,), dtype=dtype), (4, 3, 5)
    if kind == "AddLayerNorm":
        return cnorm.AddLayerNorm(5, dtype=dtype), (4, 3, 5)
    return cnorm.BatchNormReLU2d(3, dtype=dtype), (4, 3, 2, 5)


KINDS = ["GroupNorm", "InstanceNorm", "RMSNorm", "AddLayerNorm", "BatchNormReLU"]


def run_fwd(m, x, r=None):
    if isinstance(m, cnorm.AddLayerNorm):
        return m(x, x[::-1].copy() if r is None else r)[0]
    return m(x)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("kind", KINDS)
def test_module_forward_backward_match_functional(rng, kind, dtype):
    m, shape = make_module(kind, dtype)
    for p in m.parameters():
        p[...] = rng.normal(1, 0.5, p.shape)
    x, dy = data(rng, shape, dtype)
    r = rng.normal(size=shape).astype(dtype)
    y = run_fwd(m, x, r)
    dx = m.backward(dy)
    if kind == "GroupNorm":
        fy, mean, rstd = F.native_group_norm(x, 3, m.weight, m.bias, EPS)
        fdx, fdw, fdb = F.group_norm_backward(dy, x, 3, mean, rstd, m.weight)
    elif kind == "InstanceNorm":
        fy, mean, rstd = F.native_instance_norm(x, m.weight, m.bias, np.zeros(3, dtype),
                                                np.ones(3, dtype), True, 0.1, EPS)
        fdx, fdw, fdb = F.instance_norm_backward(dy, x, m.weight, mean, rstd, True)
    elif kind == "RMSNorm":
        fy, rrms = F.native_rms_norm(x, (5,), m.weight, None)
        fdx, fdw = F.rms_norm_backward(dy, x, (5,), rrms, m.weight)
        fdb = None
    elif kind == "AddLayerNorm":
        fy, s, mean, rstd = F.native_add_layer_norm(x, r, (5,), m.weight, m.bias, EPS)
        fdx, fdw, fdb = F.add_layer_norm_backward(dy, None, s, (5,), mean, rstd, m.weight)
    else:
        fy, mean, invstd = F.native_batch_norm_relu(x, m.weight, m.bias, np.zeros(3, dtype),
                                                    np.ones(3, dtype), True, 0.1, EPS)
        fdx, fdw, fdb = F.batch_norm_relu_backward(dy, x, m.weight, mean, invstd, True, fy)
    assert np.array_equal(y, fy)
    assert np.array_equal(dx, fdx)
    assert np.array_equal(m.weight_grad, fdw)
    if fdb is not None:
        assert np.array_equal(m.bias_grad, fdb)


@pytest.mark.parametrize("kind", KINDS)
def test_module_grads_accumulate_zero_grad_and_backward_errors(rng, kind):
    m, shape = make_module(kind)
    x, dy = data(rng, shape, np.float32)
    with raises(RuntimeError, "backward() called before forward()"):
        m.backward(dy)
    run_fwd(m, x)
    m.backward(dy)
    w1 = m.weight_grad.copy()
    with raises(RuntimeError, "Trying to backward through the graph a second time"):
        m.backward(dy)
    run_fwd(m, x)
    with raises(ValueError, f"grad_output has shape (1, 2) but the input of forward() had shape {shape}"):
        m.backward(np.zeros((1, 2), np.float32))
    with raises(TypeError, "grad_output dtype float64 does not match the input dtype float32"):
        m.backward(dy.astype(np.float64))
    m.backward(dy)                                       # a bad call frees nothing
    np.testing.assert_allclose(m.weight_grad, 2 * w1, rtol=1e-6, atol=1e-6)
    m.zero_grad()
    assert m.weight_grad is None
    assert all(getattr(m, n + "_grad") is None for n in m._param_names)


@pytest.mark.parametrize("kind", KINDS)
def test_module_pickle_deepcopy_and_state_dict_round_trip(rng, kind):
    m, shape = make_module(kind)
    for p in m.parameters():
        p[...] = rng.normal(1, 0.5, p.shape)
    x, dy = data(rng, shape, np.float32)
    run_fwd(m, x)                                         # leaves saved state: not pickled
    m.backward(dy)
    run_fwd(m, x)
    clones = [pickle.loads(pickle.dumps(m)), copy.deepcopy(m)]
    m.eval()                       # forwards below leave the running statistics alone
    for clone in clones:
        assert repr(clone) == repr(m) and type(clone) is type(m)
        for k, v in m.state_dict().items():
            assert np.array_equal(clone.state_dict()[k], v)
        assert np.array_equal(clone.weight_grad, m.weight_grad)
        assert clone.training
        assert np.array_equal(run_fwd(clone.eval(), x), run_fwd(m, x))
        clone.weight[...] += 1
        assert not np.array_equal(clone.weight, m.weight)
    # state_dict round trip into a fresh module
    fresh, _ = make_module(kind)
    res = fresh.load_state_dict(m.state_dict())
    assert res.missing_keys == [] and res.unexpected_keys == []
    for k, v in m.state_dict().items():
        assert np.array_equal(fresh.state_dict()[k], v)
    sd = m.state_dict()
    sd["weight"][...] = 7                                  # copies
    assert not np.any(m.weight == 7)
    with raises(RuntimeError, f'Error(s) in loading state_dict for {type(m).__name__}:'):
        fresh.load_state_dict({})


def test_group_norm_module_eval_is_training(rng):
    m = cnorm.GroupNorm(2, 4)
    x, _ = data(rng, (3, 4, 5), np.float32)
    y = m(x)
    assert np.array_equal(m.eval()(x), y)
    assert m.train() is m and m.training


def test_group_norm_module_channel_count_checked_through_weight_only(rng):
    """torch: GroupNorm(2, 4, affine=False) runs on any C divisible by 2."""
    x, _ = data(rng, (2, 6, 3), np.float32)
    y = cnorm.GroupNorm(2, 4, affine=False)(x)
    assert_close(y, slow.group_norm_forward(x, 2, None, None, EPS)[0], np.float32)
    with raises(ValueError, "Expected weight to be a vector of size equal to the number of "
                            "channels in input, but got weight of shape [4] and input of shape "
                            "[2, 6, 3]"):
        cnorm.GroupNorm(2, 4)(x)


class RefInstanceNorm:
    """A NumPy model of torch's InstanceNorm state machine (on cnorm.slow)."""

    def __init__(self, C, eps=EPS, momentum=0.1, affine=False, track=False):
        self.eps, self.momentum, self.track = eps, momentum, track
        self.weight = np.ones(C) if affine else None
        self.bias = np.zeros(C) if affine else None
        self.running_mean = np.zeros(C) if track else None
        self.running_var = np.ones(C) if track else None
        self.training = True

    def forward(self, x):
        use_input = self.training or not self.track
        mom = 0.0 if self.momentum is None else self.momentum
        rm = self.running_mean if self.track else None
        rv = self.running_var if self.track else None
        y, nrm, nrv = slow.instance_norm_forward(x, rm, rv, self.weight, self.bias, use_input,
                                                 mom, self.eps)
        if use_input and self.track:
            self.running_mean, self.running_var = nrm, nrv
        self._saved = (x, use_input)
        return y

    def backward(self, dy):
        x, use_input = self._saved
        return slow.instance_norm_backward(dy, x, self.weight, self.eps, self.running_mean,
                                           self.running_var, use_input)


IN_CONFIGS = {
    "default": dict(),
    "affine": dict(affine=True),
    "track": dict(track_running_stats=True),
    "affine_track_m0.3": dict(affine=True, track_running_stats=True, momentum=0.3),
    "track_momentum_none": dict(track_running_stats=True, momentum=None),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("config", list(IN_CONFIGS), ids=list(IN_CONFIGS))
@pytest.mark.parametrize("name,shape", [("InstanceNorm1d", (4, 3, 7)), ("InstanceNorm2d", (2, 3, 4, 5)),
                                        ("InstanceNorm3d", (2, 3, 2, 3, 4))])
def test_instance_norm_module_sequence_matches_reference(rng, name, shape, config, dtype):
    kw = IN_CONFIGS[config]
    C = shape[1]
    m = getattr(cnorm, name)(C, dtype=dtype, **kw)
    ref = RefInstanceNorm(C, momentum=kw.get("momentum", 0.1), affine=kw.get("affine", False),
                          track=kw.get("track_running_stats", False))
    if m.weight is not None:
        m.weight[...] = rng.normal(1, 0.5, C)
        m.bias[...] = rng.normal(0, 0.5, C)
        ref.weight, ref.bias = m.weight.astype(np.float64), m.bias.astype(np.float64)
    for step in ["train", "train", "eval", "train", "eval"]:
        m.train(step == "train")
        ref.training = step == "train"
        x, dy = data(rng, shape, dtype, loc=rng.normal(), scale=rng.uniform(0.5, 3))
        y = m(x)
        assert_close(y, ref.forward(x), dtype, err_msg=step)
        dx = m.backward(dy)
        rdx, _, _ = ref.backward(dy)
        assert_close(dx, rdx, dtype, scale=np.abs(rdx).max(), err_msg=step)
        if m.running_mean is not None:
            assert_close(m.running_mean, ref.running_mean, dtype, err_msg=step)
            assert_close(m.running_var, ref.running_var, dtype, err_msg=step)
            assert m.num_batches_tracked == 0          # torch never counts for instance norm
    if kw.get("momentum", 0.1) is None:
        assert np.all(m.running_mean == 0) and np.all(m.running_var == 1)


@pytest.mark.parametrize("track", [False, True], ids=["notrack", "track"])
@pytest.mark.parametrize("name,shape", [("InstanceNorm1d", (3, 7)), ("InstanceNorm2d", (3, 4, 5)),
                                        ("InstanceNorm3d", (3, 2, 3, 4))])
def test_instance_norm_unbatched_input_is_a_batch_of_one(rng, name, shape, track):
    m = getattr(cnorm, name)(3, affine=True, track_running_stats=track)
    m.weight[...] = rng.normal(1, 0.5, 3)
    m2 = copy.deepcopy(m)
    x, dy = data(rng, shape, np.float32)
    y = m(x)
    assert y.shape == shape
    assert np.array_equal(y, m2(x[None])[0])
    dx = m.backward(dy)
    assert dx.shape == shape
    assert np.array_equal(dx, m2.backward(dy[None])[0])
    assert np.array_equal(m.weight_grad, m2.weight_grad)
    if track:
        assert np.array_equal(m.running_mean, m2.running_mean)
        m.eval()
        m2.eval()
        assert np.array_equal(m(x), m2(x[None])[0])
    with raises(ValueError, f"grad_output has shape {(1,) + shape}"):
        m(x)
        m.backward(dy[None])


def test_instance_norm_num_features_mismatch_warns_without_affine(rng):
    x, _ = data(rng, (2, 4, 5), np.float32)
    m = cnorm.InstanceNorm1d(3)
    msg = ("input's size at dim=1 does not match num_features. You can silence this warning "
           "by not passing in num_features, which is not used because affine=False")
    with pytest.warns(UserWarning, match=re.escape(msg)) as record:
        y = m(x)
    assert record[0].filename == __file__                # stacklevel: the caller's line
    assert_close(y, slow.instance_norm_forward(x, None, None, None, None, True, 0.1, EPS)[0],
                 np.float32)
    with pytest.warns(UserWarning, match=re.escape(msg.replace("dim=1", "dim=0"))):
        m(x[0])
    with raises(ValueError, "expected input's size at dim=1 to match num_features (3), but got: 4."):
        cnorm.InstanceNorm1d(3, affine=True)(x)
    with raises(ValueError, "expected input's size at dim=0 to match num_features (3), but got: 4."):
        cnorm.InstanceNorm1d(3, affine=True)(x[0])
    # tracked: the running statistics do not fit (torch: a RuntimeError after the warning)
    with pytest.warns(UserWarning), raises(ValueError, "running_mean should contain 4 elements not 3"):
        cnorm.InstanceNorm1d(3, track_running_stats=True)(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cnorm.InstanceNorm1d(4)(x)                        # no warning when it matches


def test_instance_norm_eval_without_tracking_uses_input_stats(rng):
    x, _ = data(rng, (2, 3, 6), np.float32)
    m = cnorm.InstanceNorm1d(3)
    y = m(x)
    assert np.array_equal(m.eval()(x), y)
    m = cnorm.InstanceNorm1d(3, track_running_stats=True).eval()
    assert np.array_equal(m(x), F.batch_norm(x, np.zeros(3, np.float32), np.ones(3, np.float32)))


def test_instance_norm_load_state_dict_untracked_with_running_stats(rng):
    m = cnorm.InstanceNorm2d(3, affine=True)
    sd = cnorm.InstanceNorm2d(3, affine=True, track_running_stats=True).state_dict()
    with raises(RuntimeError, 'Unexpected running stats buffer(s) "running_mean" and '
                              '"running_var" for InstanceNorm2d with track_running_stats=False.'):
        m.load_state_dict(sd)
    with raises(RuntimeError, 'Unexpected running stats buffer(s) "running_mean" for InstanceNorm2d'):
        m.load_state_dict({"weight": sd["weight"], "bias": sd["bias"], "running_mean": sd["running_mean"]})
    with raises(RuntimeError, 'Unexpected key(s) in state_dict: "num_batches_tracked".'):
        m.load_state_dict({k: sd[k] for k in ("weight", "bias", "num_batches_tracked")})
    sd["weight"][...] = 2
    res = m.load_state_dict({k: sd[k] for k in ("weight", "bias")}, strict=True)
    assert res.missing_keys == [] and res.unexpected_keys == [] and np.all(m.weight == 2)


def test_instance_norm_reset(rng):
    m = cnorm.InstanceNorm1d(3, affine=True, track_running_stats=True)
    m(data(rng, (2, 3, 5), np.float32)[0])
    m.weight[...] = 3
    m.reset_parameters()
    assert np.all(m.running_mean == 0) and np.all(m.running_var == 1) and np.all(m.weight == 1)


@pytest.mark.parametrize("name,ndim", [("BatchNormReLU1d", 2), ("BatchNormReLU1d", 3),
                                       ("BatchNormReLU2d", 4), ("BatchNormReLU3d", 5)])
@pytest.mark.parametrize("config", [dict(), dict(momentum=None), dict(affine=False),
                                    dict(track_running_stats=False), dict(bias=False)],
                         ids=["default", "mom_none", "noaffine", "notrack", "nobias"])
def test_batch_norm_relu_module_is_relu_of_batch_norm(rng, name, ndim, config):
    shape = (4, 3, 5, 2, 3)[:ndim]
    m = getattr(cnorm, name)(3, **config)
    bn = getattr(cnorm, name.replace("ReLU", ""))(3, **config)
    assert isinstance(m, type(bn))
    for p, q in zip(m.parameters(), bn.parameters()):
        p[...] = q[...] = rng.normal(0.5, 0.5, p.shape)
    for step in ["train", "train", "eval", "train", "eval"]:
        m.train(step == "train")
        bn.train(step == "train")
        x, dy = data(rng, shape, np.float32)
        y, yb = m(x), bn(x)
        assert np.array_equal(y, np.maximum(yb, 0)), step
        dx = m.backward(dy)
        dxb = bn.backward((dy * (yb > 0)).astype(np.float32))
        # the fused kernel may sum in another order: last-bit differences are allowed
        assert_close(dx, dxb, np.float32, scale=np.abs(dxb).max(), err_msg=step)
        for k, v in bn.state_dict().items():
            assert np.array_equal(m.state_dict()[k], v), (step, k)
        if m.weight is not None:
            assert_close(m.weight_grad, bn.weight_grad, np.float32,
                         scale=np.abs(dy).sum(axis=bn_axes(len(shape))), err_msg=step)
    assert list(m.state_dict()) == list(bn.state_dict())


def test_batch_norm_relu_module_errors_like_batch_norm():
    with raises(ValueError, "expected 4D input (got 3D input)"):
        cnorm.BatchNormReLU2d(3)(np.zeros((2, 3, 4), np.float32))
    with raises(ValueError, "Expected more than 1 value per channel when training, got input size (1, 3)"):
        cnorm.BatchNormReLU1d(3)(np.ones((1, 3), np.float32))
    with raises(ValueError, "expected input with 4 channels (num_features), got input of shape (2, 3)"):
        cnorm.BatchNormReLU1d(4)(np.ones((2, 3), np.float32))
    with raises(ValueError, "batch_norm eps must be positive during training, but got 0"):
        cnorm.BatchNormReLU1d(3, eps=0)(np.ones((2, 3), np.float32))
    with raises(TypeError, "input dtype float64 does not match the module dtype float32"):
        cnorm.BatchNormReLU1d(3)(np.ones((2, 3)))


def test_add_layer_norm_module(rng):
    m = cnorm.AddLayerNorm((3, 4), dtype=np.float64)
    m.weight[...] = rng.normal(1, 0.5, (3, 4))
    m.bias[...] = rng.normal(0, 0.5, (3, 4))
    ln = cnorm.LayerNorm((3, 4), dtype=np.float64)
    ln.load_state_dict(m.state_dict())
    x, dy = data(rng, (5, 3, 4), np.float64)
    r = rng.normal(size=(5, 3, 4))
    ds = rng.normal(size=(5, 3, 4))
    y, s = m(x, r)
    assert np.array_equal(s, x + r)
    np.testing.assert_allclose(y, ln(x + r), rtol=1e-13, atol=1e-13)
    dx = m.backward(dy, ds)
    np.testing.assert_allclose(dx, ln.backward(dy) + ds, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.weight_grad, ln.weight_grad, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.bias_grad, ln.bias_grad, rtol=1e-12, atol=1e-12)
    m(x, r)
    with raises(ValueError, "grad_sum has shape (5, 3) but the sum has shape (5, 3, 4)"):
        m.backward(dy, ds[..., 0])
    m.backward(dy)                     # the failed call kept the saved state
    with raises(ValueError, "residual has shape (5, 3) but the input has shape (5, 3, 4)"):
        m(x, r[..., 0])
    with raises(TypeError, "residual dtype float32 does not match the input dtype float64"):
        m(x, r.astype(np.float32))
    with raises(TypeError, "input dtype float32 does not match the module dtype float64"):
        m(x.astype(np.float32), r.astype(np.float32))
    with raises(TypeError, "expected a NumPy array for residual, got list"):
        m(x, r.tolist())
    assert list(m.state_dict()) == ["weight", "bias"]
    assert cnorm.AddLayerNorm(4, bias=False).bias is None
    assert cnorm.AddLayerNorm(4, elementwise_affine=False).parameters() == []


# =======================================================================================
# errors (torch's messages; see test_more_norms_torch.py for the comparison with torch)
# =======================================================================================

def test_group_norm_errors():
    x = np.zeros((2, 4, 3), np.float32)
    with raises(ValueError, "num_channels (4) must be divisible by num_groups (3)"):
        cnorm.GroupNorm(3, 4)
    with raises(ValueError, "Expected num groups to be greater than 0, got 0"):
        cnorm.GroupNorm(0, 4)
    with raises(ValueError, "Expected num groups to be greater than 0, got -2"):
        F.group_norm(x, -2)
    with raises(TypeError, "group_norm(): argument 'num_groups' (position 2) must be int, not float"):
        F.group_norm(x, 2.0)
    with raises(ValueError, "num_channels must be a non-negative integer, got -1"):
        cnorm.GroupNorm(1, -1)
    with raises(ValueError, "Expected number of channels in input to be divisible by num_groups, "
                            "but got input of shape [2, 4, 3] and num_groups=3"):
        F.group_norm(x, 3)
    with raises(ValueError, "Expected at least 2 dimensions for input tensor but received 1"):
        F.group_norm(np.zeros(4, np.float32), 2)
    with raises(ValueError, "Expected more than 1 value per channel when training, got input size [1, 2]"):
        F.group_norm(np.zeros((1, 2), np.float32), 2)
    with raises(ValueError, "Expected more than 1 value per channel when training, got input size [1, 2, 1]"):
        cnorm.GroupNorm(2, 2)(np.zeros((1, 2, 1), np.float32))
    F.group_norm(np.zeros((1, 4, 1), np.float32), 2)     # (N*C/G)*S = 2: fine, as in torch
    with raises(ValueError, "Expected weight to be a vector of size equal to the number of channels "
                            "in input, but got weight of shape [3] and input of shape [2, 4, 3]"):
        F.group_norm(x, 2, np.ones(3, np.float32))
    with raises(ValueError, "Expected bias to be a vector of size equal to the number of channels "
                            "in input, but got bias of shape [5] and input of shape [2, 4, 3]"):
        F.group_norm(x, 2, None, np.ones(5, np.float32))
    with raises(TypeError, "weight has dtype float64 but the input has dtype float32"):
        F.group_norm(x, 2, np.ones(4))
    with raises(ValueError, "mean must have shape (4,), got (3,)"):
        F.group_norm_backward(x, x, 2, np.zeros(3), np.ones(4), None)
    with raises(TypeError, "input dtype float64 does not match the module dtype float32"):
        cnorm.GroupNorm(2, 4)(x.astype(np.float64))
    with raises(TypeError, "expected a NumPy array, got list"):
        cnorm.GroupNorm(2, 4)(x.tolist())
    with raises(TypeError, "unsupported dtype int64"):
        F.group_norm(x.astype(np.int64), 2)


@pytest.mark.parametrize("name,nb", [("InstanceNorm1d", 2), ("InstanceNorm2d", 3), ("InstanceNorm3d", 4)])
def test_instance_norm_errors(name, nb):
    m = getattr(cnorm, name)(3)
    for nd in (nb - 1, nb + 2):
        with raises(ValueError, f"expected {nb}D or {nb + 1}D input (got {nd}D input)"):
            m(np.zeros((3,) * nd, np.float32))
    shape = (2, 3) + (1,) * (nb - 1)
    with raises(ValueError, f"Expected more than 1 spatial element when training, got input size {shape}"):
        m(np.zeros(shape, np.float32))
    with raises(ValueError, f"Expected more than 1 spatial element when training, got input size {(1,) + shape[1:]}"):
        m(np.zeros(shape[1:], np.float32))                 # unbatched: a batch of one
    with raises(ValueError, "Expected more than 1 spatial element when training"):
        m.eval()(np.zeros(shape, np.float32))              # not tracking: input stats in eval too
    t = getattr(cnorm, name)(3, track_running_stats=True).eval()
    assert t(np.zeros(shape, np.float32)).shape == shape   # running stats: fine
    with raises(ValueError, "num_features must be a non-negative integer, got -1"):
        getattr(cnorm, name)(-1)


def test_instance_norm_functional_errors():
    x = np.zeros((2, 3, 4), np.float32)
    z, o = np.zeros(3, np.float32), np.ones(3, np.float32)
    with raises(ValueError, "Expected more than 1 spatial element when training, got input size (2, 3, 1)"):
        F.instance_norm(np.zeros((2, 3, 1), np.float32))
    with raises(ValueError, "Expected more than 1 spatial element when training, got input size (2, 3)"):
        F.instance_norm(np.zeros((2, 3), np.float32))
    assert F.instance_norm(np.zeros((2, 3), np.float32), z, o, use_input_stats=False).shape == (2, 3)
    with raises(ValueError, "Expected running_mean and running_var to be defined when use_input_stats is false"):
        F.instance_norm(x, use_input_stats=False)
    with raises(ValueError, "running_mean and running_var must either both be None or neither be None"):
        F.instance_norm(x, z, None)
    with raises(ValueError, "running_mean should contain 3 elements not 4"):
        F.instance_norm(x, np.zeros(4, np.float32), np.ones(4, np.float32))
    with raises(ValueError, "weight should contain 3 elements not 4"):
        F.instance_norm(x, weight=np.ones(4, np.float32))
    with raises(ValueError, "running_mean is read-only"):
        ro = z.copy()
        ro.flags.writeable = False
        F.instance_norm(x, ro, o.copy())
    F.instance_norm(x, ro, o, use_input_stats=False)     # read-only is fine when not updated
    # eps is not checked (torch does not)
    assert np.all(np.isnan(F.instance_norm(np.ones((2, 3, 4), np.float32), eps=0.0)))
    with raises(ValueError, "save_mean must have shape (6,), got (3,)"):
        F.instance_norm_backward(x, x, None, z, o, True)


def test_rms_norm_errors():
    x = np.zeros((2, 3), np.float32)
    with raises(ValueError, "Given normalized_shape=[4], expected input with shape [*4], but got input of size[2, 3]"):
        F.rms_norm(x, (4,))
    with raises(ValueError, "Given normalized_shape=[2, 4], expected input with shape [*2, 4], but got input of size[2, 3, 4]"):
        F.rms_norm(np.zeros((2, 3, 4), np.float32), (2, 4))
    with raises(ValueError, "Input tensor must have at least 3 dimensions, but got 2"):
        F.rms_norm(x, (1, 2, 3))
    with raises(ValueError, "Expected normalized_shape to be at least 1-dimensional, i.e., containing "
                            "at least one element, but got normalized_shape = []"):
        F.rms_norm(x, ())
    with raises(ValueError, "Expected weight to be of same shape as normalized_shape, but got weight "
                            "of shape [4] and normalized_shape = [3]"):
        F.rms_norm(x, (3,), np.ones(4, np.float32))
    with raises(ValueError, "Given normalized_shape=[3], expected input with shape [*3], but got input of size[2, 4]"):
        cnorm.RMSNorm(3)(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError):
        cnorm.RMSNorm(-3)
    with raises(ValueError, "normalized_shape must not contain negative sizes"):
        cnorm.RMSNorm((2, -3))
    with raises(TypeError, "input dtype float64 does not match the module dtype float32"):
        cnorm.RMSNorm(3)(np.zeros((2, 3)))
    # eps=0 on a zero row: nan like torch; eps is not checked
    assert np.all(np.isnan(F.rms_norm(x, (3,), eps=0.0)))
    assert np.all(F.rms_norm(x, (3,)) == 0)


def test_add_layer_norm_and_batch_norm_relu_functional_errors():
    x = np.zeros((2, 3), np.float32)
    with raises(ValueError, "residual has shape (3, 2) but the input has shape (2, 3)"):
        F.add_layer_norm(x, x.T, (3,))
    with raises(ValueError, "Given normalized_shape=[4], expected input with shape [*, 4]"):
        F.add_layer_norm(x, x, (4,))
    with raises(ValueError, "grad_output has shape (2, 2) but the sum has shape (2, 3)"):
        F.add_layer_norm_backward(np.zeros((2, 2), np.float32), None, x, (3,), np.zeros(2), np.ones(2), None)
    with raises(ValueError, "running_mean and running_var must be given when training=False"):
        F.batch_norm_relu(x, None, None)
    with raises(ValueError, "batch_norm eps must be positive during training, but got 0.0"):
        F.batch_norm_relu(x, None, None, training=True, eps=0.0)
    with raises(ValueError, "Expected more than 1 value per channel when training, got input size (1, 3)"):
        F.batch_norm_relu(x[:1], None, None, training=True)
    with raises(ValueError, "output has shape (2, 2) but the input has shape (2, 3)"):
        F.batch_norm_relu_backward(x, x, None, np.zeros(3), np.ones(3), True, x[:, :2])


# =======================================================================================
# empty inputs
# =======================================================================================

@pytest.mark.parametrize("shape", [(0, 4, 3), (2, 4, 0), (2, 0, 3), (0, 4), (2, 4, 0, 5)], ids=str)
def test_group_norm_empty(shape):
    C = shape[1]
    x = np.zeros(shape, np.float32)
    m = cnorm.GroupNorm(2 if C else 1, C)
    y = m(x)
    assert y.shape == shape and y.dtype == np.float32
    dx = m.backward(np.zeros(shape, np.float32))
    assert dx.shape == shape
    assert np.array_equal(m.weight_grad, np.zeros(C)) and np.array_equal(m.bias_grad, np.zeros(C))
    y, mean, rstd = F.native_group_norm(x, 2 if C else 1, None, None, EPS)
    assert mean.shape == (shape[0], 2 if C else 1)


@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 3, 0), (2, 0, 4), (0, 3, 0)], ids=str)
def test_instance_norm_empty(shape):
    m = cnorm.InstanceNorm1d(shape[1], affine=True, track_running_stats=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = m(np.zeros(shape, np.float32))
    assert y.shape == shape
    dx = m.backward(np.zeros(shape, np.float32))
    assert dx.shape == shape and np.all(m.weight_grad == 0)
    if shape[0] == 0 and shape[1] > 0:
        # torch: the mean over no instance is NaN
        assert np.all(np.isnan(m.running_mean)) and np.all(np.isnan(m.running_var))
    else:
        assert np.all(m.running_mean == 0) and np.all(m.running_var == 1)
    assert m.num_batches_tracked == 0
    m.eval()
    assert m(np.zeros(shape, np.float32)).shape == shape


@pytest.mark.parametrize("case", [((0, 3), (3,)), ((2, 0), (0,)), ((0,), (0,)), ((2, 0, 3), (3,))],
                         ids=str)
def test_rms_norm_and_add_layer_norm_empty(case):
    shape, ns = case
    x = np.zeros(shape, np.float32)
    m = cnorm.RMSNorm(ns)
    assert m(x).shape == shape
    assert m.backward(x).shape == shape and np.all(m.weight_grad == 0)
    a = cnorm.AddLayerNorm(ns)
    y, s = a(x, x)
    assert y.shape == s.shape == shape
    assert a.backward(x, x).shape == shape and a.weight_grad.shape == ns


@pytest.mark.parametrize("shape", [(0, 3), (2, 3, 0), (2, 0, 4)], ids=str)
def test_batch_norm_relu_empty(shape):
    m = cnorm.BatchNormReLU1d(shape[1])
    y = m(np.zeros(shape, np.float32))
    assert y.shape == shape and m.num_batches_tracked == 1
    assert np.all(m.running_mean == 0) and np.all(m.running_var == 1)
    assert m.backward(np.zeros(shape, np.float32)).shape == shape
    m.eval()
    assert m(np.zeros(shape, np.float32)).shape == shape


# =======================================================================================
# layouts, inputs never modified, threads
# =======================================================================================

def layouts(a):
    yield "fortran", np.asfortranarray(a)
    big = np.zeros(tuple(2 * d for d in a.shape), a.dtype)
    v = big[tuple(slice(None, None, 2) for _ in a.shape)]
    v[...] = a
    yield "strided", v
    yield "reversed", a[::-1].copy()[::-1]
    ro = a.copy()
    ro.flags.writeable = False
    yield "readonly", ro


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_layouts_and_inputs_never_modified(rng, dtype):
    x, dy = data(rng, (4, 6, 3, 5), dtype)
    r = rng.normal(size=x.shape).astype(dtype)
    w, b = params(rng, 6, dtype)
    ref = {
        "gn": F.native_group_norm(x, 3, w, b, EPS),
        "in": F.native_instance_norm(x, w, b, None, None, True, 0.1, EPS),
        "rms": F.native_rms_norm(x, (3, 5), None, None),
        "add": F.native_add_layer_norm(x, r, (5,), None, None, EPS),
        "bnr": F.native_batch_norm_relu(x, w, b, None, None, True, 0.1, EPS),
    }
    for (label, xl), (_, rl), (_, dyl) in zip(layouts(x), layouts(r), layouts(dy)):
        copies = [a.copy() for a in (xl, rl, dyl)]
        got = {
            "gn": F.native_group_norm(xl, 3, w, b, EPS),
            "in": F.native_instance_norm(xl, w, b, None, None, True, 0.1, EPS),
            "rms": F.native_rms_norm(xl, (3, 5), None, None),
            "add": F.native_add_layer_norm(xl, rl, (5,), None, None, EPS),
            "bnr": F.native_batch_norm_relu(xl, w, b, None, None, True, 0.1, EPS),
        }
        for k in ref:
            for a, e in zip(got[k], ref[k]):
                assert np.array_equal(a, e), (label, k)
            assert got[k][0].flags.c_contiguous
        g = F.group_norm_backward(dyl, xl, 3, ref["gn"][1], ref["gn"][2], w)
        e = F.group_norm_backward(dy, x, 3, ref["gn"][1], ref["gn"][2], w)
        for a, b_ in zip(g, e):
            assert np.array_equal(a, b_), label
        g = F.add_layer_norm_backward(dyl, dyl, rl + xl, (5,), ref["add"][2], ref["add"][3], None)
        e = F.add_layer_norm_backward(dy, dy, ref["add"][1], (5,), ref["add"][2], ref["add"][3], None)
        for a, b_ in zip(g, e):
            assert np.array_equal(a, b_), label
        for a, c in zip((xl, rl, dyl), copies):
            assert np.array_equal(a, c), label
        # modules too
        for m in (cnorm.GroupNorm(3, 6, dtype=dtype), cnorm.InstanceNorm2d(6, dtype=dtype),
                  cnorm.RMSNorm(5, dtype=dtype), cnorm.BatchNormReLU2d(6, dtype=dtype)):
            m2 = copy.deepcopy(m)
            assert np.array_equal(m(xl), m2(x)), (label, m)
            assert np.array_equal(m.backward(dyl), m2.backward(dy)), (label, m)
        for a, c in zip((xl, rl, dyl), copies):
            assert np.array_equal(a, c), label


def test_running_stats_non_contiguous_updated_in_place(rng):
    x, _ = data(rng, (4, 3, 6), np.float32)
    base = np.zeros((3, 2), np.float32)
    rm = base[:, 0]
    rv_base = np.ones((3, 2), np.float32)
    rv = rv_base[:, 1]
    F.instance_norm(x, rm, rv, momentum=0.5)
    _, erm, erv = slow.instance_norm_forward(x, np.zeros(3), np.ones(3), None, None, True, 0.5, EPS)
    assert_close(base[:, 0], erm, np.float32)
    assert_close(rv_base[:, 1], erv, np.float32)
    assert np.all(base[:, 1] == 0) and np.all(rv_base[:, 0] == 1)
    F.batch_norm_relu(x, rm, rv, training=True, momentum=0.5)
    assert np.all(base[:, 1] == 0) and np.all(rv_base[:, 0] == 1) and np.any(base[:, 0] != erm)


def _all_outputs(x, dy, r):
    C = x.shape[1]
    G = int(np.gcd(C, 8))
    w = np.linspace(0.5, 1.5, C).astype(x.dtype)
    b = np.linspace(-1, 1, C).astype(x.dtype)
    y, mean, rstd = F.native_group_norm(x, G, w, b, EPS)
    out = [y, mean, rstd, *F.group_norm_backward(dy, x, G, mean, rstd, w)]
    rm, rv = np.zeros(C, x.dtype), np.ones(C, x.dtype)
    y, mean, rstd = F.native_instance_norm(x, w, b, rm, rv, True, 0.1, EPS)
    out += [y, mean, rstd, rm, rv, *F.instance_norm_backward(dy, x, w, mean, rstd, True)]
    ns = x.shape[2:]
    y, rr = F.native_rms_norm(x, ns, None, None)
    out += [y, rr, *F.rms_norm_backward(dy, x, ns, rr, None)]
    y, s, mean, rstd = F.native_add_layer_norm(x, r, ns, None, None, EPS)
    out += [y, s, mean, rstd, *F.add_layer_norm_backward(dy, dy, s, ns, mean, rstd, None)]
    y, mean, invstd = F.native_batch_norm_relu(x, w, b, rm, rv, True, 0.1, EPS)
    out += [y, mean, invstd, *F.batch_norm_relu_backward(dy, x, w, mean, invstd, True, y)]
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("shape", [(16, 64, 33, 33), (2, 32, 64, 96)], ids=str)
def test_one_vs_two_threads_and_repeatable(restore_threads, shape, dtype):
    rng = np.random.default_rng(7)
    x = rng.normal(0.5, 2.0, shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    r = rng.normal(size=shape).astype(dtype)
    cnorm.set_num_threads(1)
    one = _all_outputs(x, dy, r)
    cnorm.set_num_threads(2)
    two = _all_outputs(x, dy, r)
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    for i, (a, b) in enumerate(zip(one, two)):
        scale = np.abs(a).max(initial=1.0)
        np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * scale, err_msg=f"output {i}")
    again = _all_outputs(x, dy, r)
    for i, (a, b) in enumerate(zip(two, again)):
        np.testing.assert_array_equal(b, a, err_msg=f"output {i} (repeat)")


def test_exports():
    for name in ["GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "RMSNorm",
                 "AddLayerNorm", "BatchNormReLU1d", "BatchNormReLU2d", "BatchNormReLU3d"]:
        assert name in cnorm.__all__ and hasattr(cnorm, name)
        assert name in cnorm.modules.__all__
    for name in ["group_norm", "native_group_norm", "group_norm_backward", "instance_norm",
                 "native_instance_norm", "instance_norm_backward", "rms_norm", "native_rms_norm",
                 "rms_norm_backward", "add_layer_norm", "native_add_layer_norm",
                 "add_layer_norm_backward", "batch_norm_relu", "native_batch_norm_relu",
                 "batch_norm_relu_backward"]:
        assert name in F.__all__ and callable(getattr(F, name))
    for name in ["group_norm_forward", "group_norm_backward", "instance_norm_forward",
                 "instance_norm_backward", "rms_norm_forward", "rms_norm_backward",
                 "add_layer_norm_forward", "add_layer_norm_backward", "batch_norm_relu_forward",
                 "batch_norm_relu_backward"]:
        assert name in slow.__all__ and callable(getattr(slow, name))


# =======================================================================================
# any magnitude, NaN / Inf, SIMD builds and streaming stores
# =======================================================================================

SCALES = [1e-30, 1e-10, 1.0, 1e10, 1e19, 1e20, 1e25, 1e30]
OFFSET_SCALES = [(0.0, s) for s in SCALES] + [(1e3 * s, s) for s in SCALES] + [
    (1e30, 1e25), (-1e20, 1e17), (1e6, 0.1), (3e38 / 2, 1e32)]


def _os_id(p):
    return f"off{p[0]:g}-s{p[1]:g}"


@pytest.mark.parametrize("off_scale", OFFSET_SCALES, ids=_os_id)
def test_forward_any_magnitude(rng, off_scale):
    """float32 x = offset + scale * N(0, 1): finite outputs within FWD_TOL of float64."""
    offset, scale = off_scale
    for shape, G in [((6, 8, 9, 31), 4), ((300, 6, 2), 3), ((4, 3, 600), 3)]:
        x = offset_data(rng, shape, offset, scale)
        assert np.isfinite(x).all()
        C = shape[1]
        w = rng.uniform(0.5, 1.5, C).astype(np.float32)
        b = rng.uniform(-1, 1, C).astype(np.float32)
        ns = shape[1:]
        wn = rng.uniform(0.5, 1.5, ns).astype(np.float32)
        bn = rng.uniform(-1, 1, ns).astype(np.float32)
        r = (offset_data(rng, shape, 0.0, scale) if abs(offset) < 1e38 else np.zeros_like(x))
        outs = {
            "group_norm": (F.group_norm(x, G, w, b), slow.group_norm_forward(x, G, w, b, EPS)[0]),
            "instance_norm": (F.instance_norm(x, weight=w, bias=b),
                              slow.instance_norm_forward(x, None, None, w, b, True, 0.1, EPS)[0]),
            "rms_norm": (F.rms_norm(x, ns, wn), slow.rms_norm_forward(x, ns, wn, None)[0]),
            "add_layer_norm": (F.add_layer_norm(x, r, ns, wn, bn)[0],
                               slow.add_layer_norm_forward(x, r, ns, wn, bn, EPS)[0]),
            "batch_norm_relu": (F.batch_norm_relu(x, None, None, w, b, training=True),
                                slow.batch_norm_relu_forward(x, w, b, None, None, True, 0.1, EPS)[0]),
        }
        for name, (y, ref) in outs.items():
            assert np.isfinite(y).all(), f"{name} {shape}: non-finite output"
            err = max_err(y, ref)
            assert err <= FWD_TOL, f"{name} {shape}: max error {err:.3g}"




@pytest.mark.parametrize("scale", [
    1e-20,
    1e-10, 1e-3, 1e10, 1e15, 1e19,
    1e25,
    1e30],
    ids=lambda s: f"s{s:g}")
def test_gradients_any_magnitude(rng, scale):
    """Gradients are invariant to the scale of x (up to 1/scale): relative error <= 1e-5."""
    for shape, G in [((6, 8, 9, 31), 4), ((4, 3, 600), 3)]:
        x = offset_data(rng, shape, 0.0, scale)
        dy = rng.standard_normal(shape).astype(np.float32)
        C = shape[1]
        w = rng.uniform(0.5, 1.5, C).astype(np.float32)
        ns = shape[1:]
        eps = EPS * scale * scale           # the same problem at every scale
        _, mean, rstd = F.native_group_norm(x, G, w, None, eps)
        dx, dw, db = F.group_norm_backward(dy, x, G, mean, rstd, w)
        rdx, rdw, rdb = slow.group_norm_backward(dy, x, G, w, eps)
        assert np.isfinite(dx).all() and rel_err(dx, rdx) <= GRAD_RTOL, ("gn", shape)
        assert rel_err(dw, rdw) <= GRAD_RTOL * 10
        _, rr = F.native_rms_norm(x, ns, None, eps)
        dx, dw = F.rms_norm_backward(dy, x, ns, rr, None)
        rdx, rdw = slow.rms_norm_backward(dy, x, ns, None, eps)
        assert np.isfinite(dx).all() and rel_err(dx, rdx) <= GRAD_RTOL, ("rms", shape)
        assert rel_err(dw, rdw) <= GRAD_RTOL * 10


def _poison(rng, x, kind):
    idx = tuple(int(rng.integers(0, d)) for d in x.shape)
    x[idx] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[kind]
    return idx


@pytest.mark.parametrize("kind", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("case", [((4, 8, 9, 31), 4), ((3, 6, 1031), 3), ((2, 4, 70000), 2)],
                         ids=lambda c: f"{c[0]}-G{c[1]}")
def test_nan_inf_only_the_group_row_or_instance(rng, num_threads, case, kind):
    shape, G = case
    N, C = shape[:2]
    x = rng.standard_normal(shape).astype(np.float32)
    n, c = _poison(rng, x, kind)[:2]
    cg = C // G
    g = c // cg
    # group norm: only group g of sample n
    y = F.group_norm(x, G)
    bad = np.zeros(shape, bool)
    bad[n, g * cg:(g + 1) * cg] = True
    assert np.array_equal(np.isnan(y), bad)
    assert max_err(y[~bad], slow.group_norm_forward(np.where(bad, 0, x), G, None, None, EPS)[0][~bad]) <= FWD_TOL
    # instance norm: only (n, c)
    y = F.instance_norm(x)
    bad = np.zeros(shape, bool)
    bad[n, c] = True
    assert np.array_equal(np.isnan(y), bad)
    # rms norm and add + layer norm over (C, *): only sample n (rms of +-inf: nan, as torch)
    ns = shape[1:]
    y = F.rms_norm(x, ns)
    assert np.isnan(y[n]).any() and np.isfinite(np.delete(y, n, axis=0)).all()
    y, s = F.add_layer_norm(x, np.zeros_like(x), ns)
    assert np.isnan(y[n]).all() and np.isfinite(np.delete(y, n, axis=0)).all()
    # batch norm + relu: only channel c (nan or 0 after the ReLU of nan? torch: nan stays nan)
    y = F.batch_norm_relu(x, None, None, training=True)
    assert np.isfinite(np.delete(y, c, axis=1)).all()


def test_nan_inf_masks_match_torch(rng):
    torch = pytest.importorskip("torch")
    TF = torch.nn.functional
    for kind in ["nan", "inf", "-inf"]:
        x = rng.standard_normal((3, 6, 40)).astype(np.float32)
        _poison(rng, x, kind)
        t = torch.from_numpy(x)
        pairs = [(F.group_norm(x, 3), TF.group_norm(t, 3)),
                 (F.instance_norm(x), TF.instance_norm(t)),
                 (F.rms_norm(x, (6, 40)), TF.rms_norm(t, (6, 40))),
                 (F.batch_norm_relu(x, None, None, training=True),
                  TF.relu(TF.batch_norm(t, None, None, training=True)))]
        for i, (a, b) in enumerate(pairs):
            assert np.array_equal(np.isnan(a), torch.isnan(b).numpy()), (kind, i)


_NEVER = 1 << 62
_KERNEL_MODULES = (cnorm._kernels.batch_norm, cnorm._kernels.row_norm)


@pytest.fixture
def kernel_switches():
    """The available SIMD modes; restores the default build and streaming threshold."""
    import os
    avx2 = all(mod._set_simd(True) for mod in _KERNEL_MODULES)
    default_avx2 = avx2 and os.environ.get("CNORM_SIMD", "") != "baseline"
    old_stream = []
    for mod in _KERNEL_MODULES:
        old = mod._set_stream_min_bytes(_NEVER)
        mod._set_stream_min_bytes(old)
        old_stream.append(old)
    for mod in _KERNEL_MODULES:
        mod._set_simd(default_avx2)
    try:
        yield [False, True] if avx2 else [False]
    finally:
        for mod, old in zip(_KERNEL_MODULES, old_stream):
            mod._set_simd(default_avx2)
            mod._set_stream_min_bytes(old)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(4, 8, 1001), (2, 6, 24, 24), (33, 4, 129), (3, 64, 7)], ids=str)
def test_simd_and_streaming_identical_bits(kernel_switches, num_threads, shape, dtype):
    rng = np.random.default_rng(sum(shape))
    x = offset_data(rng, shape, 1e3, 2.0).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    r = rng.standard_normal(shape).astype(dtype)
    ref = _all_outputs(x, dy, r)
    for simd in kernel_switches:
        for stream_min in (0, _NEVER):
            for mod in _KERNEL_MODULES:
                assert mod._set_simd(simd) == simd
                mod._set_stream_min_bytes(stream_min)
            out = _all_outputs(x, dy, r)
            for i, (a, b) in enumerate(zip(ref, out)):
                assert np.array_equal(a, b), (f"output {i} differs with simd={simd}, "
                                              f"stream_min_bytes={stream_min}")
