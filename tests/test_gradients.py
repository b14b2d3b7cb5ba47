"""Gradients: every backward against central finite differences (float64) -- the compiled
functional backward, the float64 reference and the modules -- and the BatchNorm /
LayerNorm backward against the reference on many shapes, with their conventions."""

import numpy as np
import pytest
from conftest import (
    DTYPES,
    FD_EPS,
    assert_close,
    assert_reduction_close,
    bn_axes,
    channel,
    check_grad,
    dtype_id,
    ln_dx_scale,
    ln_xhat,
    make_bn_data,
    make_ln_data,
    numeric_grad,
)
from norms import (
    LN_AFFINE,
    NORMS,
    bn_cases,
    ln_cases,
    norm_cases,
    reference,
    values_per_channel,
)

import cnorm.functional as F

EPS = 1e-5
WHAT = {"input": "dx", "weight": "dweight", "bias": "dbias", "residual": "dresidual"}


def _loss(outs, douts):
    """L = sum(y * R) (+ sum(s * Q) for the sum AddLayerNorm returns too)."""
    return float(sum(np.sum(o * d) for o, d in zip(outs, douts)))


def _assert_no_kink(y):
    """BatchNormReLU: no output within the finite-difference step of the ReLU's kink."""
    assert np.min(np.abs(y[y != 0]), initial=1.0) > 1e-4
    assert np.any(y == 0)


# --------------------------------------------------------------------------- finite differences


@pytest.mark.parametrize("impl", ["cnorm", "slow"])
@pytest.mark.parametrize("norm, case, training", norm_cases("fd", modes=True))
def test_finite_differences(rng, norm, case, training, impl):
    """dL/d(every input) of the functional backward and of the reference's backward."""
    x = rng.normal(0.5, 1.5, case.shape)
    p = norm.params(rng, case, np.float64)
    douts = tuple(rng.normal(size=case.shape) for _ in range(norm.n_outputs()))

    def fresh():
        # running stats are copied so that a training forward cannot drift them
        return {k: v.copy() if k.startswith("running") and v is not None else v for k, v in p.items()}

    if impl == "cnorm":

        def forward():
            return norm.forward(x, case, fresh(), training, eps=FD_EPS)[0]

        _, saved = norm.forward(x, case, fresh(), training, eps=FD_EPS)
        grads = norm.backward(douts, x, case, p, saved, training)
    else:

        def forward():
            return norm.ref_forward(x, case, p, training, eps=FD_EPS)

        grads = norm.ref_backward(douts, x, case, p, training, eps=FD_EPS)
    if norm.family == "batch_relu":
        _assert_no_kink(forward()[0])
    wrt = dict(p, input=x)
    for name, g in grads.items():
        check_grad(g, numeric_grad(lambda: _loss(forward(), douts), wrt[name]), WHAT[name])


_BN_MODES = [
    ("train", {}, True),
    ("eval", {}, False),
    ("eval_notrack", {"track_running_stats": False}, False),
]
MODULE_MODES = {
    "batch": _BN_MODES,
    "batch_relu": _BN_MODES,
    "instance": [
        ("train", {"affine": True}, True),
        ("eval", {"affine": True, "track_running_stats": True}, False),
    ],
}


def _module_fd_params():
    out = []
    for norm in NORMS:
        for case in norm.fd:
            for mode in MODULE_MODES.get(norm.family, [("train", {}, True)]):
                out.append(pytest.param(norm, case, mode, id=f"{norm.name}-{case.id}-{mode[0]}"))
    return out


@pytest.mark.parametrize("norm, case, mode", _module_fd_params())
def test_module_finite_differences(rng, norm, case, mode):
    """Module backward vs finite differences of the module forward (running stats frozen)."""
    _, kw, training = mode
    m = norm.make(case, np.float64, eps=FD_EPS, **kw)
    p = norm.params(rng, case, np.float64)
    for name, arr in m.named_parameters():
        arr[...] = p[name]
    running = getattr(m, "running_mean", None) is not None
    if running:
        m.running_mean[...] = p["running_mean"]
        m.running_var[...] = p["running_var"]
        m.num_batches_tracked = 3
    frozen = [np.array(a) for a in (m.running_mean, m.running_var)] if running else None
    m.train(training)
    x = rng.normal(0.5, 1.5, case.shape)
    r = norm.inputs(rng, case, np.float64)
    douts = tuple(rng.normal(size=case.shape) for _ in range(norm.n_outputs()))

    def run():
        if running:
            m.running_mean[...], m.running_var[...] = frozen
        outs = norm.call(m, x, r)
        return _loss(outs, douts)

    numeric = {"input": numeric_grad(run, x)}
    for name, arr in m.named_parameters():
        numeric[name] = numeric_grad(run, arr)
    m.zero_grad()
    outs = norm.call(m, x, r)
    if norm.family == "batch_relu" and training:
        _assert_no_kink(outs[0])
    dx = norm.module_backward(m, douts)
    check_grad(dx, numeric.pop("input"), "dx")
    for name, num in numeric.items():
        check_grad(getattr(m, name + "_grad"), num, name + "_grad")


# --------------------------------------------------------------------------- against the reference


@bn_cases
def test_batch_norm_backward(num_threads, rng, shape, training, dtype, affine):
    x, dy, w, _, rm, rv = make_bn_data(rng, shape, dtype)
    if not affine:
        w = None
    if training:
        mean, var = reference.batch_norm_stats(x)
    else:
        mean, var = rm.astype(np.float64), rv.astype(np.float64)
    invstd = 1 / np.sqrt(var + EPS)
    dx, dw, db = F.batch_norm_backward(dy, x, w, mean, invstd, training)
    dx_ref, dw_ref, db_ref = reference.batch_norm_backward(dy, x, w, mean, invstd, training)
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


@ln_cases
def test_layer_norm_backward(num_threads, rng, case, dtype, affine):
    shape, ns = case
    x, dy, w, _ = make_ln_data(rng, shape, ns, dtype)
    w = w if LN_AFFINE[affine][0] else None
    _, mean, rstd = reference.layer_norm_forward(x, ns, None, None, EPS)
    dx, dw, db = F.layer_norm_backward(dy, x, ns, mean, rstd, w)
    dx_ref, dw_ref, db_ref = reference.layer_norm_backward(dy, x, ns, w, EPS)
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


# --------------------------------------------------------------------------- conventions


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_backward_weight_none_means_ones(rng, dtype, training):
    x, dy, _, _, rm, rv = make_bn_data(rng, (5, 3, 4), dtype)
    _, mean, invstd = F.native_batch_norm(x, None, None, rm, rv, training, 0.1, EPS)
    a = F.batch_norm_backward(dy, x, None, mean, invstd, training)
    b = F.batch_norm_backward(dy, x, np.ones(3, dtype), mean, invstd, training)
    for u, v in zip(a, b):
        assert u.dtype == dtype
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
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


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
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


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
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
