"""Compiled kernels (through cnorm.functional and the modules) against the NumPy reference."""

import math

import numpy as np
import pytest

import cnorm
import cnorm.functional as F
from cnorm import slow

from conftest import (
    DTYPES,
    RefBatchNorm,
    assert_close,
    assert_reduction_close,
    bn_axes,
    bn_class,
    channel,
    make_bn_data,
    make_ln_data,
)

EPS = 1e-5

BN_SHAPES = [
    # (N, C)
    (2, 1), (5, 3), (1, 4), (64, 7), (256, 1024),
    # (N, C, L)
    (4, 3, 1), (1, 3, 7), (7, 3, 11), (2, 1, 100), (3, 4, 1000), (16, 64, 33),
    (0, 3, 5), (2, 5, 0), (4, 0, 5),
    # (N, C, H, W)
    (7, 3, 5, 11), (1, 1, 1, 2), (2, 3, 1, 1), (1, 2, 1, 1), (4, 4, 32, 32), (2, 16, 8, 8),
    (8, 3, 64, 64), (0, 3, 4, 4), (2, 3, 0, 4), (3, 0, 2, 2),
    # (N, C, D, H, W)
    (2, 3, 1, 5, 7), (1, 2, 3, 3, 3), (3, 5, 2, 3, 4), (2, 4, 8, 16, 16), (1, 1, 1, 1, 3),
    (0, 2, 3, 3, 3), (2, 3, 2, 0, 2), (2, 0, 2, 2, 2),
]


def values_per_channel(shape):
    return shape[0] * math.prod(shape[2:])


def bn_params(training_values=(True, False)):
    """(shape, training) pairs; training with exactly one value per channel is an error case."""
    out = []
    for shape in BN_SHAPES:
        for training in training_values:
            if training and values_per_channel(shape) == 1:
                continue
            out.append(pytest.param(shape, training, id=f"{shape}-{'train' if training else 'eval'}"))
    return out


LN_CASES = [
    ((4, 5), (5,)),
    ((3, 1), (1,)),          # D = 1
    ((6, 13), (13,)),        # prime D
    ((1, 17), (17,)),        # M = 1
    ((17,), (17,)),          # no leading dims
    ((2, 3, 4, 5), (4, 5)),  # 2-dim normalized_shape
    ((2, 3, 7), (3, 7)),
    ((3, 5, 1), (5, 1)),
    ((5, 1, 1), (1, 1)),
    ((64, 1024), (1024,)),
    ((512, 96), (96,)),
    ((4, 33, 257), (257,)),
    ((0, 8), (8,)),          # empty
    ((2, 0, 6), (6,)),
    ((0, 3, 4), (3, 4)),
]


def ln_id(case):
    return f"{case[0]}-{case[1]}"


def ln_dx_scale(ns, rstd):
    """Rows of one element have rstd = 1/sqrt(eps) (~316): dx is O(ulp * rstd) there."""
    return np.max(rstd, initial=1.0) * 0.1 if math.prod(ns) == 1 else 1.0


def ln_xhat(x, ns, mean, rstd):
    expand = (1,) * len(ns)
    return (x.astype(np.float64) - mean.reshape(mean.shape + expand)) * rstd.reshape(rstd.shape + expand)


# --------------------------------------------------------------------------- BatchNorm


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,training", bn_params())
def test_native_batch_norm_forward(num_threads, rng, shape, training, dtype, affine):
    x, _, w, b, rm, rv = make_bn_data(rng, shape, dtype)
    if not affine:
        w = b = None
    C = shape[1]
    y, save_mean, save_invstd = F.native_batch_norm(x, w, b, rm.copy(), rv.copy(), training, 0.1, EPS)
    y_ref, _, _ = slow.batch_norm_forward(x, w, b, rm, rv, training, 0.1, EPS)
    assert y.dtype == dtype and y.shape == shape
    assert_close(y, y_ref, dtype)
    assert save_mean.dtype == save_invstd.dtype == np.float64
    assert save_mean.shape == save_invstd.shape == (C,)
    if training:
        if values_per_channel(shape) > 0:
            mean, var = slow.batch_norm_stats(x)
            assert_close(save_mean, mean, dtype)
            assert_close(save_invstd, 1 / np.sqrt(var + EPS), dtype)
    else:
        assert_close(save_mean, rm.astype(np.float64), dtype)
        assert_close(save_invstd, 1 / np.sqrt(rv.astype(np.float64) + EPS), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,training", bn_params(training_values=(True,)))
def test_native_batch_norm_no_running_stats(num_threads, rng, shape, training, dtype):
    x, _, w, b, _, _ = make_bn_data(rng, shape, dtype)
    y, _, _ = F.native_batch_norm(x, w, b, None, None, True, 0.1, EPS)
    y_ref, rm, rv = slow.batch_norm_forward(x, w, b, None, None, True, 0.1, EPS)
    assert rm is None and rv is None
    assert_close(y, y_ref, dtype)


@pytest.mark.parametrize("momentum", [0.1, 0.5, 1.0, 0.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,training", bn_params(training_values=(True,)))
def test_batch_norm_running_stats_in_place(num_threads, rng, shape, training, dtype, momentum):
    x, _, w, b, rm, rv = make_bn_data(rng, shape, dtype)
    rm_ref, rv_ref = rm.astype(np.float64), rv.astype(np.float64)
    for step in range(3):
        if step:
            x = make_bn_data(rng, shape, dtype)[0]
        y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=momentum, eps=EPS)
        y_ref, rm_ref, rv_ref = slow.batch_norm_forward(x, w, b, rm_ref, rv_ref, True, momentum, EPS)
        assert_close(y, y_ref, dtype, err_msg=f"step {step}")
        assert rm.dtype == rv.dtype == dtype
        assert_close(rm, rm_ref, dtype, err_msg=f"running_mean step {step}")
        assert_close(rv, rv_ref, dtype, err_msg=f"running_var step {step}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,training", bn_params(training_values=(False,)))
def test_batch_norm_eval_uses_and_keeps_running_stats(rng, shape, training, dtype):
    x, _, w, b, rm, rv = make_bn_data(rng, shape, dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    y = F.batch_norm(x, rm, rv, w, b, training=False, momentum=0.1, eps=EPS)
    y_ref, _, _ = slow.batch_norm_forward(x, w, b, rm, rv, False, 0.1, EPS)
    assert_close(y, y_ref, dtype)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,training", bn_params())
def test_batch_norm_backward(num_threads, rng, shape, training, dtype, affine):
    x, dy, w, _, rm, rv = make_bn_data(rng, shape, dtype)
    if not affine:
        w = None
    if training:
        mean, var = slow.batch_norm_stats(x)
    else:
        mean, var = rm.astype(np.float64), rv.astype(np.float64)
    invstd = 1 / np.sqrt(var + EPS)
    dx, dw, db = F.batch_norm_backward(dy, x, w, mean, invstd, training)
    dx_ref, dw_ref, db_ref = slow.batch_norm_backward(dy, x, w, mean, invstd, training)
    C = shape[1]
    assert dx.dtype == dw.dtype == db.dtype == dtype
    assert dw.shape == db.shape == (C,)
    assert_close(dx, dx_ref, dtype)
    axes = bn_axes(len(shape))
    xhat = (x.astype(np.float64) - channel(mean, len(shape))) * channel(invstd, len(shape))
    assert_reduction_close(dw, dw_ref, dy.astype(np.float64) * xhat, axes, dtype)
    assert_reduction_close(db, db_ref, dy, axes, dtype)
    if values_per_channel(shape) == 0:
        np.testing.assert_array_equal(dw, 0)
        np.testing.assert_array_equal(db, 0)


@pytest.mark.parametrize(
    "dtype,loc,atol", [(np.float32, 1e3, 5e-4), (np.float64, 1e6, 1e-7)], ids=["float32", "float64"]
)
@pytest.mark.parametrize("shape", [(64, 3, 100), (512, 8), (4, 2, 33, 65)], ids=str)
def test_batch_norm_large_offset_is_stable(num_threads, rng, shape, dtype, loc, atol):
    """Variance of data with |mean| >> std: no catastrophic cancellation (as torch)."""
    x = (loc + rng.normal(0.0, 1.0, shape)).astype(dtype)
    y, save_mean, save_invstd = F.native_batch_norm(x, None, None, None, None, True, 0.1, EPS)
    y_ref, _, _ = slow.batch_norm_forward(x, None, None, None, None, True, 0.1, EPS)
    mean, var = slow.batch_norm_stats(x)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=atol)
    np.testing.assert_allclose(save_invstd, 1 / np.sqrt(var + EPS), rtol=1e-4 if dtype == np.float32 else 1e-9)


# --------------------------------------------------------------------------- BatchNorm modules


MODULE_SHAPES = [(5, 3), (64, 7), (7, 3, 11), (3, 4, 1000), (7, 3, 5, 11), (2, 3, 1, 1),
                 (4, 4, 32, 32), (3, 5, 2, 3, 4), (2, 3, 1, 5, 7)]

MODULE_CONFIGS = {
    "default": dict(),
    "momentum_none": dict(momentum=None),
    "momentum_0.5": dict(momentum=0.5),
    "noaffine": dict(affine=False),
    "nobias": dict(bias=False),
    "notrack": dict(track_running_stats=False),
    "notrack_noaffine_none": dict(track_running_stats=False, affine=False, momentum=None),
    "eps_1e-3": dict(eps=1e-3),
}

STEPS = ["train", "train", "eval", "train", "eval", "train"]


@pytest.mark.parametrize("config", list(MODULE_CONFIGS), ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", MODULE_SHAPES, ids=str)
def test_bn_module_steps_vs_reference(num_threads, rng, shape, dtype, config):
    kw = MODULE_CONFIGS[config]
    C = shape[1]
    m = bn_class(len(shape))(C, dtype=dtype, **kw)
    ref = RefBatchNorm(C, **kw)
    if m.weight is not None:
        sd = m.state_dict()
        sd["weight"] = rng.normal(1.0, 0.5, C).astype(dtype)
        if m.bias is not None:
            sd["bias"] = rng.normal(0.0, 0.5, C).astype(dtype)
        m.load_state_dict(sd)
        ref.weight = sd["weight"].astype(np.float64)
        if ref.bias is not None:
            ref.bias = sd["bias"].astype(np.float64)
    axes = bn_axes(len(shape))
    grad_scale_w = 0.0
    grad_scale_b = 0.0
    for step, mode in enumerate(STEPS):
        m.train(mode == "train")
        ref.training = mode == "train"
        x, dy = make_bn_data(rng, shape, dtype)[:2]
        y = m(x)
        y_ref = ref.forward(x)
        msg = f"step {step} ({mode})"
        assert_close(y, y_ref, dtype, err_msg=msg)
        assert m.num_batches_tracked == ref.num_batches_tracked, msg
        if ref.running_mean is None:
            assert m.running_mean is None and m.running_var is None
        else:
            assert m.running_mean.dtype == m.running_var.dtype == dtype
            assert_close(m.running_mean, ref.running_mean, dtype, err_msg="running_mean " + msg)
            assert_close(m.running_var, ref.running_var, dtype, err_msg="running_var " + msg)
        dx = m.backward(dy)
        dx_ref = ref.backward(dy)
        assert dx.dtype == dtype
        assert_close(dx, dx_ref, dtype, err_msg="dx " + msg)
        x64 = x.astype(np.float64)
        _, mean, invstd, _ = ref._saved
        xhat = (x64 - channel(mean, x.ndim)) * channel(invstd, x.ndim)
        grad_scale_w = grad_scale_w + np.sum(np.abs(dy * xhat), axis=axes)
        grad_scale_b = grad_scale_b + np.sum(np.abs(dy.astype(np.float64)), axis=axes)
        if ref.weight_grad is None:
            assert m.weight_grad is None
        else:
            assert m.weight_grad.dtype == dtype and m.weight_grad.shape == (C,)
            assert_close(m.weight_grad, ref.weight_grad, dtype, scale=grad_scale_w, err_msg="weight_grad " + msg)
        if ref.bias_grad is None:
            assert m.bias_grad is None
        else:
            assert m.bias_grad.dtype == dtype and m.bias_grad.shape == (C,)
            assert_close(m.bias_grad, ref.bias_grad, dtype, scale=grad_scale_b, err_msg="bias_grad " + msg)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 5), (2, 3, 0), (0, 2, 4, 4), (2, 2, 3, 0), (2, 3, 0, 2, 2)],
                         ids=str)
def test_bn_module_empty_batch(rng, shape, dtype):
    C = shape[1]
    m = bn_class(len(shape))(C, dtype=dtype)
    m(make_bn_data(rng, (4, C) + (3,) * (len(shape) - 2), dtype)[0])  # make the stats non-trivial
    rm, rv = m.running_mean.copy(), m.running_var.copy()
    x = np.zeros(shape, dtype)
    y = m(x)
    assert y.shape == shape and y.dtype == dtype
    np.testing.assert_array_equal(m.running_mean, rm)
    np.testing.assert_array_equal(m.running_var, rv)
    assert m.num_batches_tracked == 2
    dx = m.backward(np.zeros(shape, dtype))
    assert dx.shape == shape and dx.dtype == dtype
    np.testing.assert_array_equal(m.weight_grad, np.zeros(C, dtype))
    np.testing.assert_array_equal(m.bias_grad, np.zeros(C, dtype))
    assert m.weight_grad.dtype == m.bias_grad.dtype == dtype


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(5, 0), (3, 0, 4), (2, 0, 3, 3), (2, 0, 1, 2, 2)], ids=str)
def test_bn_module_zero_channels(shape, training):
    m = bn_class(len(shape))(0)
    m.train(training)
    x = np.ones(shape, np.float32)
    y = m(x)
    assert y.shape == shape and y.dtype == np.float32
    assert m.num_batches_tracked == (1 if training else 0)
    dx = m.backward(np.ones(shape, np.float32))
    assert dx.shape == shape
    assert m.weight_grad.shape == m.bias_grad.shape == (0,)


# --------------------------------------------------------------------------- LayerNorm

LN_AFFINE = {"affine": (True, True), "weight_only": (True, False), "none": (False, False)}


@pytest.mark.parametrize("affine", list(LN_AFFINE), ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", LN_CASES, ids=ln_id)
def test_native_layer_norm(num_threads, rng, case, dtype, affine):
    shape, ns = case
    x, _, w, b = make_ln_data(rng, shape, ns, dtype)
    use_w, use_b = LN_AFFINE[affine]
    w = w if use_w else None
    b = b if use_b else None
    y, mean, rstd = F.native_layer_norm(x, ns, w, b, EPS)
    y_ref, mean_ref, rstd_ref = slow.layer_norm_forward(x, ns, w, b, EPS)
    lead = shape[: len(shape) - len(ns)]
    assert y.dtype == dtype and y.shape == shape
    assert mean.dtype == rstd.dtype == np.float64
    assert mean.shape == rstd.shape == lead
    assert_close(y, y_ref, dtype)
    assert_close(mean, mean_ref, dtype)
    assert_close(rstd, rstd_ref, dtype, scale=np.max(rstd_ref, initial=1.0))
    y2 = F.layer_norm(x, ns, w, b, EPS)
    np.testing.assert_array_equal(y2, y)


@pytest.mark.parametrize("affine", list(LN_AFFINE), ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", LN_CASES, ids=ln_id)
def test_layer_norm_backward(num_threads, rng, case, dtype, affine):
    shape, ns = case
    x, dy, w, _ = make_ln_data(rng, shape, ns, dtype)
    w = w if LN_AFFINE[affine][0] else None
    _, mean, rstd = slow.layer_norm_forward(x, ns, None, None, EPS)
    dx, dw, db = F.layer_norm_backward(dy, x, ns, mean, rstd, w)
    dx_ref, dw_ref, db_ref = slow.layer_norm_backward(dy, x, ns, w, EPS)
    assert dx.dtype == dw.dtype == db.dtype == dtype
    assert dx.shape == shape
    assert dw.shape == db.shape == tuple(ns)
    assert_close(dx, dx_ref, dtype, scale=ln_dx_scale(ns, rstd))
    lead_axes = tuple(range(len(shape) - len(ns)))
    xhat = ln_xhat(x, ns, mean, rstd)
    assert_reduction_close(dw, dw_ref, dy * xhat, lead_axes, dtype)
    assert_reduction_close(db, db_ref, dy, lead_axes, dtype)
    if x.size == 0:
        np.testing.assert_array_equal(dw, 0)
        np.testing.assert_array_equal(db, 0)


@pytest.mark.parametrize("dtype,loc,atol", [(np.float32, 1e3, 1e-3), (np.float64, 1e6, 1e-7)],
                         ids=["float32", "float64"])
def test_layer_norm_large_offset_is_stable(num_threads, rng, dtype, loc, atol):
    x = (loc + rng.normal(0.0, 1.0, (64, 300))).astype(dtype)
    y, _, rstd = F.native_layer_norm(x, (300,), None, None, EPS)
    y_ref, _, rstd_ref = slow.layer_norm_forward(x, (300,), None, None, EPS)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=atol)
    np.testing.assert_allclose(rstd, rstd_ref, rtol=1e-4 if dtype == np.float32 else 1e-9)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", [c for c in LN_CASES if 0 in c[0]], ids=ln_id)
def test_ln_module_empty(case, dtype):
    shape, ns = case
    m = cnorm.LayerNorm(ns, dtype=dtype)
    y = m(np.zeros(shape, dtype))
    assert y.shape == shape and y.dtype == dtype
    dx = m.backward(np.zeros(shape, dtype))
    assert dx.shape == shape and dx.dtype == dtype
    for g in (m.weight_grad, m.bias_grad):
        assert g.shape == tuple(ns) and g.dtype == dtype
        np.testing.assert_array_equal(g, 0)


LN_MODULE_CONFIGS = {
    "default": dict(),
    "nobias": dict(bias=False),
    "noaffine": dict(elementwise_affine=False),
    "eps_1e-3": dict(eps=1e-3),
}


@pytest.mark.parametrize("config", list(LN_MODULE_CONFIGS), ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", [c for c in LN_CASES if 0 not in c[0]], ids=ln_id)
def test_ln_module_vs_reference(num_threads, rng, case, dtype, config):
    shape, ns = case
    kw = LN_MODULE_CONFIGS[config]
    eps = kw.get("eps", EPS)
    m = cnorm.LayerNorm(ns if len(ns) > 1 else ns[0], dtype=dtype, **kw)
    assert m.normalized_shape == tuple(ns)
    w = b = None
    if m.weight is not None:
        sd = m.state_dict()
        sd["weight"] = w = rng.normal(1.0, 0.5, ns).astype(dtype)
        if m.bias is not None:
            sd["bias"] = b = rng.normal(0.0, 0.5, ns).astype(dtype)
        m.load_state_dict(sd)
    lead_axes = tuple(range(len(shape) - len(ns)))
    dw_acc = db_acc = 0.0
    sw = sb = 0.0
    for step, mode in enumerate(["train", "eval", "train"]):
        m.train(mode == "train")
        x, dy = make_ln_data(rng, shape, ns, dtype)[:2]
        y = m(x)
        y_ref, mean, rstd = slow.layer_norm_forward(x, ns, w, b, eps)
        assert_close(y, y_ref, dtype, err_msg=f"step {step}")
        dx = m.backward(dy)
        dx_ref, dw, db = slow.layer_norm_backward(dy, x, ns, w, eps)
        assert_close(dx, dx_ref, dtype, scale=ln_dx_scale(ns, rstd), err_msg=f"dx step {step}")
        dw_acc, db_acc = dw_acc + dw, db_acc + db
        sw = sw + np.sum(np.abs(dy * ln_xhat(x, ns, mean, rstd)), axis=lead_axes)
        sb = sb + np.sum(np.abs(dy.astype(np.float64)), axis=lead_axes)
        if m.weight is None:
            assert m.weight_grad is None and m.bias_grad is None
            continue
        assert m.weight_grad.dtype == dtype and m.weight_grad.shape == tuple(ns)
        assert_close(m.weight_grad, dw_acc, dtype, scale=sw, err_msg=f"weight_grad step {step}")
        if m.bias is None:
            assert m.bias_grad is None
        else:
            assert_close(m.bias_grad, db_acc, dtype, scale=sb, err_msg=f"bias_grad step {step}")


# --------------------------------------------------------------------------- heavy


@pytest.mark.slow
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_large_float32(num_threads, rng, training):
    """Millions of values per channel in float32 (accumulation precision)."""
    shape = (32, 4, 256, 256)
    x, dy, w, b, rm, rv = make_bn_data(rng, shape, np.float32)
    y, mean, invstd = F.native_batch_norm(x, w, b, rm.copy(), rv.copy(), training, 0.1, EPS)
    y_ref, _, _ = slow.batch_norm_forward(x, w, b, rm, rv, training, 0.1, EPS)
    assert_close(y, y_ref, np.float32)
    dx, dw, db = F.batch_norm_backward(dy, x, w, mean, invstd, training)
    dx_ref, dw_ref, db_ref = slow.batch_norm_backward(dy, x, w, mean, invstd, training)
    assert_close(dx, dx_ref, np.float32)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-3 * np.sqrt(dy.size / 4))
    np.testing.assert_allclose(db, db_ref, rtol=1e-4, atol=1e-3 * np.sqrt(dy.size / 4))


@pytest.mark.slow
def test_layer_norm_large_float32(num_threads, rng):
    shape, ns = (4096, 4096), (4096,)
    x, dy, w, b = make_ln_data(rng, shape, ns, np.float32)
    y, mean, rstd = F.native_layer_norm(x, ns, w, b, EPS)
    y_ref, _, _ = slow.layer_norm_forward(x, ns, w, b, EPS)
    assert_close(y, y_ref, np.float32)
    dx, dw, db = F.layer_norm_backward(dy, x, ns, mean, rstd, w)
    dx_ref, dw_ref, db_ref = slow.layer_norm_backward(dy, x, ns, w, EPS)
    assert_close(dx, dx_ref, np.float32)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-3 * np.sqrt(shape[0]))
    np.testing.assert_allclose(db, db_ref, rtol=1e-4, atol=1e-3 * np.sqrt(shape[0]))
