"""Values: every functional forward and backward against the float64 reference (cnorm.slow),
return types and shapes; the channel norms (BatchNorm, BatchNormReLU, GroupNorm,
InstanceNorm) in detail.  The row norms in detail: test_values_rows.py."""

import numpy as np
import pytest
from conftest import (
    DTYPES,
    assert_close,
    assert_reduction_close,
    bn_axes,
    channel,
    data,
    dtype_id,
    make_bn_data,
    params,
)
from norms import bn_cases, bn_params, norm_cases, reference, values_per_channel

import cnorm.functional as F

EPS = 1e-5


# --------------------------------------------------------------------------- every norm


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("norm, case, dtype, training", norm_cases("shapes", modes=True, dtypes=DTYPES))
def test_functional_matches_reference(rng, norm, case, dtype, training, affine):
    """Every norm on ordinary and odd shapes: outputs (new C-contiguous arrays of the input's
    dtype), float64 statistics of the documented shape, and the gradients of every input
    against the float64 reference."""
    x, dy = data(rng, case.shape, dtype)
    p = norm.params(rng, case, dtype, affine=affine)
    mine = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in p.items()}
    outs, saved = norm.forward(x, case, mine, training)
    ref = norm.ref_forward(x, case, p, training)
    assert len(outs) == len(ref) == norm.n_outputs()
    for i, (y, ry) in enumerate(zip(outs, ref)):
        assert type(y) is np.ndarray and y.dtype == dtype and y.shape == case.shape and y.flags.c_contiguous
        assert not np.shares_memory(y, x)
        assert_close(y, ry, dtype, err_msg=f"output {i}")
    for s in norm.stats_of(saved):
        assert s.dtype == np.float64 and s.shape == norm.stats_shape(case, training)
    mine = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in p.items()}
    for y, py in zip(outs, norm.plain(x, case, mine, training)):  # the plain functional form
        assert np.array_equal(py, y)

    douts = (dy,) + tuple(rng.normal(size=case.shape).astype(dtype) for _ in outs[1:])
    grads = norm.backward(douts, x, case, p, saved, training)
    rgrads = norm.ref_backward(douts, x, case, p, training)
    assert sorted(grads) == sorted(rgrads)
    rdx = rgrads["input"]
    assert_close(grads["input"], rdx, dtype, scale=max(1.0, np.abs(rdx).max(initial=0)), err_msg="dx")
    plain = dict(p, weight=None, bias=None) if "bias" in p else dict(p, weight=None)
    xhat = norm.ref_forward(x, case, plain, training)[0]
    terms = np.abs(dy.astype(np.float64)) * (1 + np.abs(xhat))
    for name in set(grads) - {"input"}:
        g = grads[name]
        assert g.dtype == dtype, name
        if name == "residual":
            assert_close(g, rgrads[name], dtype, scale=max(1.0, np.abs(rdx).max(initial=0)), err_msg=name)
        else:
            assert g.shape == norm.param_shape(case), name
            assert_reduction_close(g, rgrads[name], terms, norm.reduce_axes(case), dtype, err_msg=name)


# --------------------------------------------------------------------------- BatchNorm


@bn_cases
def test_native_batch_norm_forward(num_threads, rng, shape, training, dtype, affine):
    x, _, w, b, rm, rv = make_bn_data(rng, shape, dtype)
    if not affine:
        w = b = None
    C = shape[1]
    y, save_mean, save_invstd = F.native_batch_norm(x, w, b, rm.copy(), rv.copy(), training, 0.1, EPS)
    y_ref, _, _ = reference.batch_norm_forward(x, w, b, rm, rv, training, 0.1, EPS)
    assert y.dtype == dtype and y.shape == shape
    assert_close(y, y_ref, dtype)
    assert save_mean.dtype == save_invstd.dtype == np.float64
    assert save_mean.shape == save_invstd.shape == (C,)
    if training:
        if values_per_channel(shape) > 0:
            mean, var = reference.batch_norm_stats(x)
            assert_close(save_mean, mean, dtype)
            assert_close(save_invstd, 1 / np.sqrt(var + EPS), dtype)
    else:
        assert_close(save_mean, rm.astype(np.float64), dtype)
        assert_close(save_invstd, 1 / np.sqrt(rv.astype(np.float64) + EPS), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape,training", bn_params(training_values=(True,)))
def test_native_batch_norm_no_running_stats(num_threads, rng, shape, training, dtype):
    x, _, w, b, _, _ = make_bn_data(rng, shape, dtype)
    y, _, _ = F.native_batch_norm(x, w, b, None, None, True, 0.1, EPS)
    y_ref, rm, rv = reference.batch_norm_forward(x, w, b, None, None, True, 0.1, EPS)
    assert rm is None and rv is None
    assert_close(y, y_ref, dtype)


@pytest.mark.parametrize("momentum", [0.1, 0.5, 1.0, 0.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape,training", bn_params(training_values=(True,)))
def test_batch_norm_running_stats_in_place(num_threads, rng, shape, training, dtype, momentum):
    x, _, w, b, rm, rv = make_bn_data(rng, shape, dtype)
    rm_ref, rv_ref = rm.astype(np.float64), rv.astype(np.float64)
    for step in range(3):
        if step:
            x = make_bn_data(rng, shape, dtype)[0]
        y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=momentum, eps=EPS)
        y_ref, rm_ref, rv_ref = reference.batch_norm_forward(x, w, b, rm_ref, rv_ref, True, momentum, EPS)
        assert_close(y, y_ref, dtype, err_msg=f"step {step}")
        assert rm.dtype == rv.dtype == dtype
        assert_close(rm, rm_ref, dtype, err_msg=f"running_mean step {step}")
        assert_close(rv, rv_ref, dtype, err_msg=f"running_var step {step}")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape,training", bn_params(training_values=(False,)))
def test_batch_norm_eval_uses_and_keeps_running_stats(rng, shape, training, dtype):
    x, _, w, b, rm, rv = make_bn_data(rng, shape, dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    y = F.batch_norm(x, rm, rv, w, b, training=False, momentum=0.1, eps=EPS)
    y_ref, _, _ = reference.batch_norm_forward(x, w, b, rm, rv, False, 0.1, EPS)
    assert_close(y, y_ref, dtype)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
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
    expect = (x.astype(np.float64) - save_mean.reshape(c)) * save_invstd.reshape(c) * w.reshape(
        c
    ) + b.reshape(c)
    assert_close(y, expect, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_native_batch_norm_eval_statistics_are_the_running_ones(rng, dtype):
    x, _, w, b, rm, rv = make_bn_data(rng, (5, 3, 4), dtype)
    _, mean, invstd = F.native_batch_norm(x, w, b, rm, rv, False, 0.1, 1e-3)
    np.testing.assert_array_equal(mean, rm.astype(np.float64))
    np.testing.assert_allclose(invstd, 1 / np.sqrt(rv.astype(np.float64) + 1e-3), rtol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
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


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_batch_norm_training_without_running_stats(rng, dtype):
    x = make_bn_data(rng, (6, 3, 5), dtype)[0]
    y = F.batch_norm(x, None, None, training=True)
    assert_close(y, reference.batch_norm_forward(x, None, None, None, None, True, 0.1, EPS)[0], dtype)


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


# --------------------------------------------------------------------------- BatchNormReLU

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
    ry, rrm, rrv = reference.batch_norm_relu_forward(x, w, b, rm2, rv2, training, 0.2, EPS)
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
    rdx, rdw, rdb = reference.batch_norm_relu_backward(dy, x, w, b, mean, invstd, training, output=y)
    assert_close(dx, rdx, dtype, scale=np.abs(rdx).max())
    mask = y > 0
    sdx, _sdw, _sdb = F.batch_norm_backward((dy * mask).astype(dtype), x, w, mean, invstd, training)
    assert_close(dx, sdx, dtype, scale=np.abs(sdx).max())
    assert_close(dw, rdw, dtype, scale=np.sum(np.abs(dy), axis=bn_axes(len(shape))) * 4)
    assert_close(db, rdb, dtype, scale=np.sum(np.abs(dy), axis=bn_axes(len(shape))))


# --------------------------------------------------------------------------- GroupNorm

GN_CASES = [
    ((2, 6, 5), 3),
    ((3, 8, 4, 4), 4),
    ((4, 6), 3),
    ((4, 6), 6),
    ((2, 32, 9, 9), 32),
    ((2, 4, 1031), 2),
    ((1, 2, 3, 5, 7), 1),
    ((5, 3, 2), 1),
    ((2, 12, 40, 40), 3),
    ((1, 64, 3), 64),
]


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
    ry, rmean, rrstd = reference.group_norm_forward(x, G, w, b, EPS)
    assert y.dtype == dtype and y.shape == shape and y.flags.c_contiguous
    assert mean.dtype == rstd.dtype == np.float64 and mean.shape == rstd.shape == (shape[0], G)
    assert_close(y, ry, dtype, err_msg="y")
    assert_close(mean, rmean, dtype, scale=np.abs(rmean), err_msg="mean")
    assert_close(rstd, rrstd, dtype, scale=np.abs(rrstd), err_msg="rstd")
    assert np.array_equal(F.group_norm(x, G, w, b), y)

    dx, dw, db = F.group_norm_backward(dy, x, G, mean, rstd, w)
    rdx, rdw, rdb = reference.group_norm_backward(dy, x, G, w, EPS)
    assert dx.dtype == dw.dtype == db.dtype == dtype and dw.shape == db.shape == (C,)
    # dx is rstd * (a difference of O(|dy * w|) terms): with one value per group (var = 0,
    # rstd = 1/sqrt(eps)) it is exactly 0 in float64 and a rounding residue in float32
    terms = np.abs(dy.astype(np.float64) * (1 if w is None else channel(w, len(shape))))
    scale = max(np.abs(rdx).max(), (terms.reshape(shape[0], G, -1) * rrstd[:, :, None]).max(initial=0))
    assert_close(dx, rdx, dtype, scale=scale, err_msg="dx")
    xhat = ry if not affine else reference.group_norm_forward(x, G, None, None, EPS)[0]
    assert_reduction_close(
        dw, rdw, dy.astype(np.float64) * xhat, bn_axes(len(shape)), dtype, err_msg="dweight"
    )
    assert_reduction_close(db, rdb, dy, bn_axes(len(shape)), dtype, err_msg="dbias")


# --------------------------------------------------------------------------- InstanceNorm

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
    ry, rrm, rrv = reference.instance_norm_forward(x, rm0, rv0, w, b, True, 0.3, EPS)
    assert mean.shape == invstd.shape == (N, C) and mean.dtype == np.float64
    assert_close(y, ry, dtype, err_msg="y")
    assert_close(rm, rrm, dtype, err_msg="running_mean")
    assert_close(rv, rrv, dtype, scale=np.abs(rrv), err_msg="running_var")
    # instance norm is group norm with one group per channel
    _gy, gmean, grstd = reference.group_norm_forward(x, C, w, b, EPS)
    assert_close(mean, gmean, dtype, scale=np.abs(gmean))
    assert_close(invstd, grstd, dtype, scale=np.abs(grstd))

    dx, dw, db = F.instance_norm_backward(dy, x, w, mean, invstd, True)
    rdx, rdw, rdb = reference.instance_norm_backward(dy, x, w, EPS)
    assert_close(dx, rdx, dtype, scale=np.abs(rdx).max(), err_msg="dx")
    xhat = reference.group_norm_forward(x, C, None, None, EPS)[0]
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
    ry, _, _ = reference.instance_norm_forward(x, rm, rv, w, b, False, 0.1, EPS)
    assert_close(y, ry, dtype)
    assert np.array_equal(y, F.batch_norm(x, rm, rv, w, b, training=False))
    dx, dw, db = F.instance_norm_backward(dy, x, w, mean, invstd, False)
    rdx, rdw, rdb = reference.instance_norm_backward(dy, x, w, EPS, rm, rv, use_input_stats=False)
    assert_close(dx, rdx, dtype, scale=np.abs(rdx).max())
    assert_close(dw, rdw, dtype, scale=np.abs(rdw).max() * 10)
    assert_close(db, rdb, dtype, scale=np.abs(rdb).max() * 10)
