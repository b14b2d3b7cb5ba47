"""Accuracy at the extremes: huge and tiny magnitudes (no float32 overflow / underflow in
the statistics), and NaN / Inf propagating like torch (only the affected channel / row /
group / instance for batch statistics).

* |x| up to 1e30 (and x = s * N(0, 1), s = 1e-30 ... 1e30, and offset + scale) give finite,
  correct outputs (within 2e-6 of the float64 result; gradients 1e-5 relative);
* NaN / Inf masks equal torch's.
"""

import numpy as np
import pytest
from conftest import affine_params, bn_axes, channel, max_err, offset_data, rel_err
from norms import reference
from reference_models import bn_eval_ref, bn_grad_ref, bn_train_ref, ln_ref, ref_batch_stats

import cnorm
import cnorm.functional as F

FWD_TOL = 2e-6  # max |error| of O(1) float32 outputs
GRAD_RTOL = 1e-5  # gradients, relative
RUNNING_RTOL = 1e-6  # running statistics, relative
EPS = 1e-5


# ---------------------------------------------------------------------------------------
# huge and tiny magnitudes: no float32 overflow / underflow in the statistics
# ---------------------------------------------------------------------------------------

SCALES = [1e-30, 1e-20, 1e-10, 1e-3, 1.0, 1e3, 1e10, 1e19, 1e20, 1e25, 1e30]


OFFSET_SCALES = (
    [(0.0, s) for s in SCALES]
    + [(1e3 * s, s) for s in SCALES]
    + [(1e30, 1e25), (-1e30, 1e27), (1e25, 1e22), (-1e20, 1e17), (1e6, 0.1), (3e38 / 2, 1e32)]
)


SCALE_SHAPES = [(8, 4, 9, 31), (300, 6), (4, 3, 600)]


def _os_id(p):
    return f"off{p[0]:g}-s{p[1]:g}"


@pytest.mark.parametrize("off_scale", OFFSET_SCALES, ids=_os_id)
def test_bn_train_forward_any_magnitude(rng, off_scale):
    for shape in SCALE_SHAPES:
        _check_bn_train_magnitude(rng, off_scale, shape)


def _check_bn_train_magnitude(rng, off_scale, shape):
    offset, scale = off_scale
    x = offset_data(rng, shape, offset, scale)
    assert np.isfinite(x).all()
    C = shape[1]
    w, b = affine_params(rng, C)
    m = cnorm.BatchNorm1d(C) if len(shape) < 4 else cnorm.BatchNorm2d(C)
    m.weight[...] = w
    m.bias[...] = b
    y = m(x)
    assert np.isfinite(y).all(), "non-finite output"
    err = max_err(y, bn_train_ref(x, w, b))
    assert err <= FWD_TOL, f"max error {err:.3g}"
    # the running mean is representable and correct (the running variance overflows
    # float32 storage beyond |x| ~ 1.8e19, as it does in torch)
    mean, _ = ref_batch_stats(x)
    np.testing.assert_allclose(m.running_mean, 0.1 * mean, rtol=RUNNING_RTOL, atol=1e-6 * 0.1 * scale)


@pytest.mark.parametrize(
    "off_scale", [p for p in OFFSET_SCALES if p[1] <= 1e19 and abs(p[0]) < 1e20], ids=_os_id
)
def test_bn_eval_forward_any_magnitude(rng, off_scale):
    """Eval, running stats = the batch's statistics (as long as var fits in float32)."""
    offset, scale = off_scale
    for shape in SCALE_SHAPES:
        x = offset_data(rng, shape, offset, scale)
        mean, var = ref_batch_stats(x)
        rm, rv = mean.astype(np.float32), var.astype(np.float32)
        w, b = affine_params(rng, shape[1])
        y = F.batch_norm(x, rm, rv, w, b)
        assert np.isfinite(y).all()
        assert max_err(y, bn_eval_ref(x, w, b, rm, rv)) <= FWD_TOL, shape


@pytest.mark.parametrize("off_scale", OFFSET_SCALES, ids=_os_id)
def test_ln_forward_any_magnitude(rng, off_scale):
    offset, scale = off_scale
    for shape in [(300, 6), (12, 3000), (6, 4, 9, 31)]:
        x = offset_data(rng, shape, offset, scale)
        ns = shape[1:]
        w = rng.uniform(0.5, 1.5, ns).astype(np.float32)
        b = rng.uniform(-1, 1, ns).astype(np.float32)
        y = F.layer_norm(x, ns, w, b)
        assert np.isfinite(y).all(), f"non-finite output {shape}"
        err = max_err(y, ln_ref(x, ns, w, b))
        assert err <= FWD_TOL, f"{shape}: max error {err:.3g}"


@pytest.mark.parametrize("value", [1e19, 1e25, 1e30, 3e38])
def test_huge_values_mixed_with_ordinary_channels(rng, value):
    """One channel at |x| ~ value, the others ordinary: every output finite and correct."""
    x = rng.standard_normal((16, 4, 700)).astype(np.float32)
    x[:, 2] = (rng.standard_normal((16, 700)) * value / 16).astype(np.float32)
    y = F.batch_norm(x, None, None, training=True)
    assert np.isfinite(y).all()
    assert max_err(y, bn_train_ref(x, None, None)) <= FWD_TOL
    xl = x.reshape(64, 700)
    yl = F.layer_norm(xl, (700,))
    assert np.isfinite(yl).all()
    assert max_err(yl, ln_ref(xl, (700,), None, None)) <= FWD_TOL


# eps scaled with the data, eps = 1e-5 * s**2, so that the variance (not eps) decides the
# output: this is where float32 squares must neither overflow nor underflow.


@pytest.mark.parametrize(
    "scale", [1e-30, 1e-25, 1e-20, 1e-15, 1e-10, 1e-3, 1.0, 1e10, 1e19, 1e25, 1e30], ids=lambda s: f"s{s:g}"
)
def test_forward_and_gradients_with_eps_scaled_to_data(scale):
    rng = np.random.default_rng(int(abs(np.log10(scale))) + 11)
    eps = 1e-5 * scale * scale
    errors = {}
    for shape in SCALE_SHAPES:
        x = offset_data(rng, shape, 0.0, scale)
        dy = rng.standard_normal(shape).astype(np.float32)
        y, mean, invstd = F.native_batch_norm(x, None, None, None, None, True, 0.1, eps)
        errors[f"bn{shape}"] = max_err(y, bn_train_ref(x, None, None, eps))
        dx = F.batch_norm_backward(dy, x, None, mean, invstd, True)[0]
        errors[f"bn{shape} dx (rel.)"] = rel_err(dx, bn_grad_ref(dy, x, None, eps)[0]) * FWD_TOL / GRAD_RTOL
        xl, dyl = x.reshape(shape[0], -1), dy.reshape(shape[0], -1)
        ns = xl.shape[1:]
        yl, ml, rl = F.native_layer_norm(xl, ns, None, None, eps)
        errors[f"ln{xl.shape}"] = max_err(yl, ln_ref(xl, ns, None, None, eps))
        dxl = F.layer_norm_backward(dyl, xl, ns, ml, rl, None)[0]
        errors[f"ln{xl.shape} dx (rel.)"] = (
            rel_err(dxl, reference.layer_norm_backward(dyl, xl.astype(np.float64), ns, None, eps)[0])
            * FWD_TOL
            / GRAD_RTOL
        )
    bad = {k: v for k, v in errors.items() if not v <= FWD_TOL}
    assert not bad, (
        f"errors above the limits (outputs {FWD_TOL}; gradients {GRAD_RTOL} relative, "
        f"shown scaled to {FWD_TOL}): {bad}"
    )


@pytest.mark.parametrize(
    "scale", [1e-30, 1e-20, 1e-10, 1.0, 1e10, 1e15, 1e20, 1e25, 1e30], ids=lambda s: f"s{s:g}"
)
def test_gradients_any_magnitude(scale):
    """Gradients of x = s * N(0, 1) (default eps): no coefficient of the backward may
    underflow or overflow float32 (invstd**2 or rstd**3 ~ 1e-90 at s = 1e30)."""
    rng = np.random.default_rng(int(abs(np.log10(scale))) + 21)
    errors = {}
    for shape in SCALE_SHAPES:
        x = offset_data(rng, shape, 0.0, scale)
        dy = rng.standard_normal(shape).astype(np.float32)
        _y, mean, invstd = F.native_batch_norm(x, None, None, None, None, True, 0.1, EPS)
        dx, _dw, _db = F.batch_norm_backward(dy, x, None, mean, invstd, True)
        errors[f"bn{shape}"] = rel_err(dx, bn_grad_ref(dy, x, None)[0])
        xl, dyl = x.reshape(shape[0], -1), dy.reshape(shape[0], -1)
        ns = xl.shape[1:]
        _yl, ml, rl = F.native_layer_norm(xl, ns, None, None, EPS)
        dxl = F.layer_norm_backward(dyl, xl, ns, ml, rl, None)[0]
        errors[f"ln{xl.shape}"] = rel_err(
            dxl, reference.layer_norm_backward(dyl, xl.astype(np.float64), ns, None, EPS)[0]
        )
    bad = {k: v for k, v in errors.items() if not v <= GRAD_RTOL}
    assert not bad, f"relative gradient errors above {GRAD_RTOL}: {bad}"


OTHER_SCALES = [1e-30, 1e-10, 1.0, 1e10, 1e19, 1e20, 1e25, 1e30]


OTHER_OFFSET_SCALES = (
    [(0.0, s) for s in OTHER_SCALES]
    + [(1e3 * s, s) for s in OTHER_SCALES]
    + [(1e30, 1e25), (-1e20, 1e17), (1e6, 0.1), (3e38 / 2, 1e32)]
)


@pytest.mark.parametrize("off_scale", OTHER_OFFSET_SCALES, ids=_os_id)
def test_forward_any_magnitude_other_norms(rng, off_scale):
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
        r = offset_data(rng, shape, 0.0, scale) if abs(offset) < 1e38 else np.zeros_like(x)
        outs = {
            "group_norm": (F.group_norm(x, G, w, b), reference.group_norm_forward(x, G, w, b, EPS)[0]),
            "instance_norm": (
                F.instance_norm(x, weight=w, bias=b),
                reference.instance_norm_forward(x, None, None, w, b, True, 0.1, EPS)[0],
            ),
            "rms_norm": (F.rms_norm(x, ns, wn), reference.rms_norm_forward(x, ns, wn, None)[0]),
            "add_layer_norm": (
                F.add_layer_norm(x, r, ns, wn, bn)[0],
                reference.add_layer_norm_forward(x, r, ns, wn, bn, EPS)[0],
            ),
            "batch_norm_relu": (
                F.batch_norm_relu(x, None, None, w, b, training=True),
                reference.batch_norm_relu_forward(x, w, b, None, None, True, 0.1, EPS)[0],
            ),
        }
        for name, (y, ref) in outs.items():
            assert np.isfinite(y).all(), f"{name} {shape}: non-finite output"
            err = max_err(y, ref)
            assert err <= FWD_TOL, f"{name} {shape}: max error {err:.3g}"


@pytest.mark.parametrize("scale", [1e-20, 1e-10, 1e-3, 1e10, 1e15, 1e19, 1e25, 1e30], ids=lambda s: f"s{s:g}")
def test_gradients_any_magnitude_other_norms(rng, scale):
    """Gradients are invariant to the scale of x (up to 1/scale): relative error <= 1e-5."""
    for shape, G in [((6, 8, 9, 31), 4), ((4, 3, 600), 3)]:
        x = offset_data(rng, shape, 0.0, scale)
        dy = rng.standard_normal(shape).astype(np.float32)
        C = shape[1]
        w = rng.uniform(0.5, 1.5, C).astype(np.float32)
        ns = shape[1:]
        eps = EPS * scale * scale  # the same problem at every scale
        _, mean, rstd = F.native_group_norm(x, G, w, None, eps)
        dx, dw, _db = F.group_norm_backward(dy, x, G, mean, rstd, w)
        rdx, rdw, _rdb = reference.group_norm_backward(dy, x, G, w, eps)
        assert np.isfinite(dx).all() and rel_err(dx, rdx) <= GRAD_RTOL, ("gn", shape)
        assert rel_err(dw, rdw) <= GRAD_RTOL * 10
        _, rr = F.native_rms_norm(x, ns, None, eps)
        dx, dw = F.rms_norm_backward(dy, x, ns, rr, None)
        rdx, rdw = reference.rms_norm_backward(dy, x, ns, None, eps)
        assert np.isfinite(dx).all() and rel_err(dx, rdx) <= GRAD_RTOL, ("rms", shape)
        assert rel_err(dw, rdw) <= GRAD_RTOL * 10


# ---------------------------------------------------------------------------------------
# NaN / Inf propagation (like torch)
# ---------------------------------------------------------------------------------------


def _masks(a):
    a = np.asarray(a)
    return np.isnan(a), np.isposinf(a), np.isneginf(a)


def _assert_same_nonfinite(actual, expected, what):
    """The same elements are non-finite (NaN or +-Inf: which one may differ in backward,
    where an infinite dy meets terms of both signs)."""
    m_a, m_e = ~np.isfinite(actual), ~np.isfinite(expected)
    assert np.array_equal(m_a, m_e), (
        f"{what}: non-finite mask differs ({int(m_a.sum())} vs {int(m_e.sum())} elements)"
    )


def _assert_same_masks(actual, expected, what):
    for name, m_a, m_e in zip(("nan", "+inf", "-inf"), _masks(actual), _masks(expected)):
        assert np.array_equal(m_a, m_e), (
            f"{what}: {name} mask differs ({int(m_a.sum())} vs {int(m_e.sum())} elements)"
        )


NAN_SHAPES = [(8, 4, 9, 31), (300, 6), (4, 3, 600), (64, 1030), (2, 5, 70000)]


NAN_KINDS = ["nan", "inf", "-inf", "inf_and_-inf", "nan_channel", "two_channels"]


def _poison(rng, x, kind):
    """Put non-finite values into x (in place); returns the affected (n, c) sets."""
    shape = x.shape
    idx = tuple(int(rng.integers(0, d)) for d in shape)
    idx2 = tuple(int(rng.integers(0, d)) for d in shape)
    if kind == "nan":
        x[idx] = np.nan
    elif kind == "inf":
        x[idx] = np.inf
    elif kind == "-inf":
        x[idx] = -np.inf
    elif kind == "inf_and_-inf":
        x[idx] = np.inf
        x[(idx2[0], idx[1]) + idx2[2:]] = -np.inf
    elif kind == "nan_channel":
        x[:, idx[1]] = np.nan
    elif kind == "two_channels":
        x[idx] = np.nan
        x[(idx2[0], (idx[1] + 1) % shape[1]) + idx2[2:]] = np.inf


@pytest.mark.parametrize("kind", NAN_KINDS)
@pytest.mark.parametrize("shape", NAN_SHAPES, ids=str)
def test_nan_inf_bn_train_only_the_channel(rng, num_threads, shape, kind):
    x = rng.standard_normal(shape).astype(np.float32)
    _poison(rng, x, kind)
    C = shape[1]
    w, b = affine_params(rng, C)
    y = F.batch_norm(x, None, None, w, b, training=True)
    bad_channel = ~np.isfinite(x).all(axis=bn_axes(x.ndim))
    expected_nan = np.broadcast_to(channel(bad_channel, x.ndim), shape)
    assert np.array_equal(np.isnan(y), expected_nan)
    assert np.isfinite(y[:, ~bad_channel]).all()
    clean = np.delete(x, np.flatnonzero(bad_channel), axis=1)
    assert (
        max_err(
            np.delete(y, np.flatnonzero(bad_channel), axis=1),
            bn_train_ref(
                clean, np.delete(w, np.flatnonzero(bad_channel)), np.delete(b, np.flatnonzero(bad_channel))
            ),
        )
        <= FWD_TOL
    )


@pytest.mark.parametrize("kind", NAN_KINDS)
@pytest.mark.parametrize("shape", [(300, 6), (12, 3000), (6, 4, 9, 31), (2, 70000)], ids=str)
def test_nan_inf_ln_only_the_row(rng, num_threads, shape, kind):
    x = rng.standard_normal(shape).astype(np.float32)
    _poison(rng, x, kind)
    ns = shape[1:]
    y = F.layer_norm(x, ns)
    axes = tuple(range(1, x.ndim))
    bad_row = ~np.isfinite(x).all(axis=axes)
    assert np.array_equal(np.isnan(y), np.broadcast_to(bad_row.reshape((-1,) + (1,) * len(ns)), shape))
    good = ~bad_row
    assert max_err(y[good], ln_ref(x[good], ns, None, None)) <= FWD_TOL


torch = None


def _torch():
    global torch
    if torch is None:
        torch = pytest.importorskip("torch")
    return torch


@pytest.mark.parametrize("kind", NAN_KINDS)
@pytest.mark.parametrize("shape", NAN_SHAPES, ids=str)
def test_nan_inf_masks_match_torch_forward(rng, shape, kind):
    for training in (True, False):
        _check_masks_vs_torch_forward(rng, shape, kind, training)


def _poisoned_batch(rng, shape, kind):
    """``(x, weight, bias, running_mean, running_var)``: float32 ``x`` of ``shape`` with the
    non-finite values of ``kind`` (see _poison) and random per-channel parameters."""
    x = rng.standard_normal(shape).astype(np.float32)
    _poison(rng, x, kind)
    C = shape[1]
    w, b = affine_params(rng, C)
    rm = rng.standard_normal(C).astype(np.float32)
    rv = rng.uniform(0.5, 2, C).astype(np.float32)
    return x, w, b, rm, rv


def _check_masks_vs_torch_forward(rng, shape, kind, training):
    T = _torch()
    x, w, b, rm, rv = _poisoned_batch(rng, shape, kind)
    y = F.batch_norm(x, rm.copy(), rv.copy(), w, b, training=training)
    yt = T.nn.functional.batch_norm(
        T.from_numpy(x),
        T.from_numpy(rm.copy()),
        T.from_numpy(rv.copy()),
        T.from_numpy(w),
        T.from_numpy(b),
        training=training,
    ).numpy()
    _assert_same_masks(y, yt, "BN forward")
    xl = x.reshape(shape[0], -1)
    yl = F.layer_norm(xl, xl.shape[1:])
    ylt = T.nn.functional.layer_norm(T.from_numpy(xl), xl.shape[1:]).numpy()
    _assert_same_masks(yl, ylt, "LN forward")


def _torch_bn_grads(T, x, dy, w, b, rm, rv, training):
    xt = T.from_numpy(x).requires_grad_()
    wt = T.from_numpy(w).requires_grad_()
    bt = T.from_numpy(b).requires_grad_()
    yt = T.nn.functional.batch_norm(
        xt, T.from_numpy(rm.copy()), T.from_numpy(rv.copy()), wt, bt, training=training
    )
    yt.backward(T.from_numpy(dy))
    return xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()


@pytest.mark.parametrize("where", ["x", "dy"])
@pytest.mark.parametrize("kind", ["nan", "inf", "-inf", "two_channels"])
@pytest.mark.parametrize("shape", NAN_SHAPES[:4], ids=str)
def test_nan_inf_masks_match_torch_train_backward(rng, shape, kind, where):
    T = _torch()
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    _poison(rng, x if where == "x" else dy, kind)
    C = shape[1]
    w, b = affine_params(rng, C)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    _y, mean, invstd = F.native_batch_norm(x, w, b, rm.copy(), rv.copy(), True, 0.1, EPS)
    dx, dw, db = F.batch_norm_backward(dy, x, w, mean, invstd, True)
    tdx, tdw, tdb = _torch_bn_grads(T, x, dy, w, b, rm, rv, True)
    _assert_same_nonfinite(dx, tdx, "BN dx")
    _assert_same_nonfinite(dw, tdw, "BN dweight")
    _assert_same_nonfinite(db, tdb, "BN dbias")
    xl, dyl = x.reshape(shape[0], -1), dy.reshape(shape[0], -1)
    ns = xl.shape[1:]
    _yl, ml, rl = F.native_layer_norm(xl, ns, None, None, EPS)
    dxl = F.layer_norm_backward(dyl, xl, ns, ml, rl, None)[0]
    xlt = T.from_numpy(xl).requires_grad_()
    T.nn.functional.layer_norm(xlt, ns).backward(T.from_numpy(dyl))
    _assert_same_nonfinite(dxl, xlt.grad.numpy(), "LN dx")


@pytest.mark.parametrize("kind", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("shape", NAN_SHAPES[:4], ids=str)
def test_nan_inf_masks_match_torch_eval_backward(rng, shape, kind):
    x, w, b, rm, rv = _poisoned_batch(rng, shape, kind)
    dy = rng.standard_normal(shape).astype(np.float32)
    _y, mean, invstd = F.native_batch_norm(x, w, b, rm, rv, False, 0.1, EPS)
    dx, _dw, _db = F.batch_norm_backward(dy, x, w, mean, invstd, False)
    # torch / the documented formula: dx = dy * gamma / sqrt(running_var + eps), finite
    expected = dy.astype(np.float64) * channel(w / np.sqrt(rv.astype(np.float64) + EPS), x.ndim)
    _assert_same_nonfinite(dx, expected, "BN eval dx")


def _poison_one(rng, x, kind):
    idx = tuple(int(rng.integers(0, d)) for d in x.shape)
    x[idx] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[kind]
    return idx


@pytest.mark.parametrize("kind", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    "case", [((4, 8, 9, 31), 4), ((3, 6, 1031), 3), ((2, 4, 70000), 2)], ids=lambda c: f"{c[0]}-G{c[1]}"
)
def test_nan_inf_only_the_group_row_or_instance(rng, num_threads, case, kind):
    shape, G = case
    _N, C = shape[:2]
    x = rng.standard_normal(shape).astype(np.float32)
    n, c = _poison_one(rng, x, kind)[:2]
    cg = C // G
    g = c // cg
    # group norm: only group g of sample n
    y = F.group_norm(x, G)
    bad = np.zeros(shape, bool)
    bad[n, g * cg : (g + 1) * cg] = True
    assert np.array_equal(np.isnan(y), bad)
    assert (
        max_err(y[~bad], reference.group_norm_forward(np.where(bad, 0, x), G, None, None, EPS)[0][~bad])
        <= FWD_TOL
    )
    # instance norm: only (n, c)
    y = F.instance_norm(x)
    bad = np.zeros(shape, bool)
    bad[n, c] = True
    assert np.array_equal(np.isnan(y), bad)
    # rms norm and add + layer norm over (C, *): only sample n (rms of +-inf: nan, as torch)
    ns = shape[1:]
    y = F.rms_norm(x, ns)
    assert np.isnan(y[n]).any() and np.isfinite(np.delete(y, n, axis=0)).all()
    y, _s = F.add_layer_norm(x, np.zeros_like(x), ns)
    assert np.isnan(y[n]).all() and np.isfinite(np.delete(y, n, axis=0)).all()
    # batch norm + relu: only channel c (nan or 0 after the ReLU of nan? torch: nan stays nan)
    y = F.batch_norm_relu(x, None, None, training=True)
    assert np.isfinite(np.delete(y, c, axis=1)).all()


def test_nan_inf_masks_match_torch_other_norms(rng):
    torch = pytest.importorskip("torch")
    TF = torch.nn.functional
    for kind in ["nan", "inf", "-inf"]:
        x = rng.standard_normal((3, 6, 40)).astype(np.float32)
        _poison_one(rng, x, kind)
        t = torch.from_numpy(x)
        pairs = [
            (F.group_norm(x, 3), TF.group_norm(t, 3)),
            (F.instance_norm(x), TF.instance_norm(t)),
            (F.rms_norm(x, (6, 40)), TF.rms_norm(t, (6, 40))),
            (
                F.batch_norm_relu(x, None, None, training=True),
                TF.relu(TF.batch_norm(t, None, None, training=True)),
            ),
        ]
        for i, (a, b) in enumerate(pairs):
            assert np.array_equal(np.isnan(a), torch.isnan(b).numpy()), (kind, i)
