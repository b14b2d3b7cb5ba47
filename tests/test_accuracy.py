"""Accuracy: float32 results against the float64 result of the same float32 inputs.

The "float64 result" is :mod:`cnorm.slow` (plain NumPy in float64) applied to the float32
inputs (and the float32 parameters / running statistics) converted to float64.  Outputs
are O(1), so errors are absolute max errors.

Targets (issue "Accuracy -- a lead over PyTorch users can check"):

* every float32 forward (BN train, BN eval with running stats equal to the batch's own
  statistics, LN) within 2e-6 of the float64 result for x = offset + N(0, 1),
  offset = 0 ... 1e6; gradients within 1e-5 relative;
* constant channels / rows give exactly 0 (before beta);
* running_var relative error <= 1e-6 at those offsets;
* |x| up to 1e30 (and x = s * N(0, 1), s = 1e-30 ... 1e30, and offset + scale) give finite,
  correct outputs;
* NaN / Inf propagate like torch (only the affected channel / row for batch statistics);
* the AVX2 and baseline builds and the non-temporal-store path give identical bits.
"""

import os

import numpy as np
import pytest

import cnorm
import cnorm.functional as F
from cnorm import slow
from cnorm._kernels import batch_norm as _bn_kernels
from cnorm._kernels import row_norm as _rn_kernels

FWD_TOL = 2e-6          # max |error| of O(1) float32 outputs
GRAD_RTOL = 1e-5        # gradients, relative
RUNNING_RTOL = 1e-6     # running statistics, relative
EPS = 1e-5
FLT_MAX = float(np.finfo(np.float32).max)

OFFSETS = [0.0, 1e3, 1e4, 1e5, 1e6]

# BN input shapes covering the three kernel walks: (N, C, S>1) rows, (N, C) columns,
# and rows long enough for several exact-sum blocks (S > 512, odd tails).
BN_SHAPES = [(8, 16, 32, 32), (4096, 24), (6, 5, 1031), (3, 4, 7, 9)]
LN_CASES = [((256, 1024), (1024,)), ((300, 37), (37,)), ((16, 8, 50), (8, 50)), ((40, 7), (7,))]


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------

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


def channel(v, ndim):
    return np.asarray(v).reshape((1, -1) + (1,) * (ndim - 2))


def bn_axes(ndim):
    return (0,) + tuple(range(2, ndim))


def offset_data(rng, shape, offset, scale=1.0, dtype=np.float32):
    """x = offset + scale * N(0, 1) (in float64, then rounded once to dtype)."""
    return (offset + scale * rng.standard_normal(shape)).astype(dtype)


def affine_params(rng, C, dtype=np.float32):
    w = rng.uniform(0.5, 1.5, C).astype(dtype) * rng.choice([-1, 1], C).astype(dtype)
    b = rng.uniform(-1.0, 1.0, C).astype(dtype)
    return w, b


def ref_batch_stats(x):
    """float64 (mean, biased var) per channel of the float32 input."""
    return slow.batch_norm_stats(x.astype(np.float64))


def bn_train_ref(x, w, b, eps=EPS):
    return slow.batch_norm_forward(x.astype(np.float64), w, b, None, None, True, 0.1, eps)[0]


def bn_eval_ref(x, w, b, rm, rv, eps=EPS):
    return slow.batch_norm_forward(x.astype(np.float64), w, b, rm, rv, False, 0.1, eps)[0]


def ln_ref(x, ns, w, b, eps=EPS):
    return slow.layer_norm_forward(x.astype(np.float64), ns, w, b, eps)[0]


def bn_grad_ref(dy, x, w, eps=EPS, training=True, rm=None, rv=None):
    x64 = x.astype(np.float64)
    if training:
        mean, var = slow.batch_norm_stats(x64)
    else:
        mean, var = np.asarray(rm, np.float64), np.asarray(rv, np.float64)
    return slow.batch_norm_backward(dy, x64, w, mean, 1.0 / np.sqrt(var + eps), training)


def assert_grads(dx, dw, db, ref, dy, x, axes, w_ref_terms, what):
    """dx within GRAD_RTOL norm-wise; dweight/dbias within GRAD_RTOL of the sum of |terms|."""
    rdx, rdw, rdb = ref
    assert rel_err(dx, rdx) <= GRAD_RTOL, f"{what}: dx relative error {rel_err(dx, rdx):.3g}"
    dy64 = dy.astype(np.float64)
    sw = np.sum(np.abs(dy64 * w_ref_terms), axis=axes)
    sb = np.sum(np.abs(dy64), axis=axes)
    if dw is not None:
        ew = np.abs(dw.astype(np.float64) - rdw)
        assert np.all(ew <= GRAD_RTOL * sw + 1e-30), f"{what}: dweight error {ew.max():.3g}"
    if db is not None:
        eb = np.abs(db.astype(np.float64) - rdb)
        assert np.all(eb <= GRAD_RTOL * sb + 1e-30), f"{what}: dbias error {eb.max():.3g}"


def xhat_bn(x, eps=EPS):
    x64 = x.astype(np.float64)
    mean, var = slow.batch_norm_stats(x64)
    return (x64 - channel(mean, x.ndim)) / channel(np.sqrt(var + eps), x.ndim)


def xhat_ln(x, ns, eps=EPS):
    x64 = x.astype(np.float64)
    axes = tuple(range(x.ndim - len(ns), x.ndim))
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x64 - mean) / np.sqrt(var + eps)


# ---------------------------------------------------------------------------------------
# offsets: forward
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
@pytest.mark.parametrize("offset", OFFSETS + [-1e5], ids=lambda o: f"off{o:g}")
def test_bn_train_forward_offsets(rng, num_threads, offset, shape):
    x = offset_data(rng, shape, offset)
    C = shape[1]
    for w, b in [(None, None), affine_params(rng, C)]:
        y = F.batch_norm(x, None, None, w, b, training=True)
        err = max_err(y, bn_train_ref(x, w, b))
        assert err <= FWD_TOL, f"BN train forward at offset {offset:g}: max error {err:.3g}"


@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
@pytest.mark.parametrize("offset", OFFSETS, ids=lambda o: f"off{o:g}")
def test_bn_module_train_forward_and_running_stats(rng, num_threads, offset, shape):
    """The module in training: output within FWD_TOL, running stats within RUNNING_RTOL."""
    x = offset_data(rng, shape, offset)
    C = shape[1]
    m = cnorm.BatchNorm1d(C) if len(shape) < 4 else cnorm.BatchNorm2d(C)
    y = m(x)
    assert max_err(y, bn_train_ref(x, m.weight, m.bias)) <= FWD_TOL
    mean, var = ref_batch_stats(x)
    M = x.size // C
    rm_ref = 0.9 * 0.0 + 0.1 * mean
    rv_ref = 0.9 * 1.0 + 0.1 * var * M / (M - 1)
    rv_err = np.max(np.abs(m.running_var - rv_ref) / rv_ref)
    assert rv_err <= RUNNING_RTOL, f"running_var relative error {rv_err:.3g}"
    rm_err = np.max(np.abs(m.running_mean - rm_ref) / np.maximum(np.abs(rm_ref), 1.0))
    assert rm_err <= RUNNING_RTOL, f"running_mean relative error {rm_err:.3g}"


@pytest.mark.parametrize("momentum", [0.1, 1.0, None], ids=["m0.1", "m1", "cumulative"])
@pytest.mark.parametrize("offset", OFFSETS, ids=lambda o: f"off{o:g}")
def test_running_var_relative_error(rng, offset, momentum):
    """Three training steps; reference: the float64 update from the float32 stored state."""
    shape = (16, 6, 20, 20)
    m = cnorm.BatchNorm2d(6, momentum=momentum)
    for step in range(1, 4):
        x = offset_data(rng, shape, offset, scale=rng.uniform(0.5, 2.0))
        rm_old = m.running_mean.astype(np.float64)
        rv_old = m.running_var.astype(np.float64)
        m(x)
        f = 1.0 / step if momentum is None else momentum
        mean, var = ref_batch_stats(x)
        M = x.size // 6
        rm_ref = (1 - f) * rm_old + f * mean
        rv_ref = (1 - f) * rv_old + f * var * M / (M - 1)
        rv_err = np.max(np.abs(m.running_var - rv_ref) / rv_ref)
        assert rv_err <= RUNNING_RTOL, f"step {step}: running_var relative error {rv_err:.3g}"
        rm_err = np.max(np.abs(m.running_mean - rm_ref) / np.maximum(np.abs(rm_ref), 1.0))
        assert rm_err <= RUNNING_RTOL, f"step {step}: running_mean relative error {rm_err:.3g}"
        assert m.num_batches_tracked == step


@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
@pytest.mark.parametrize("offset", OFFSETS + [-1e5], ids=lambda o: f"off{o:g}")
def test_bn_eval_forward_offsets(rng, num_threads, offset, shape):
    """Eval with running stats = the batch's own float64 statistics (stored as float32)."""
    x = offset_data(rng, shape, offset)
    C = shape[1]
    mean, var = ref_batch_stats(x)
    rm, rv = mean.astype(np.float32), var.astype(np.float32)
    for w, b in [(None, None), affine_params(rng, C)]:
        y = F.batch_norm(x, rm, rv, w, b, training=False)
        err = max_err(y, bn_eval_ref(x, w, b, rm, rv))
        assert err <= FWD_TOL, f"BN eval forward at offset {offset:g}: max error {err:.3g}"
    # the same through the module
    m = (cnorm.BatchNorm1d(C) if len(shape) < 4 else cnorm.BatchNorm2d(C)).eval()
    m.running_mean[...] = rm
    m.running_var[...] = rv
    assert max_err(m(x), bn_eval_ref(x, None, None, rm, rv)) <= FWD_TOL


@pytest.mark.parametrize("case", LN_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
@pytest.mark.parametrize("offset", OFFSETS + [-1e5], ids=lambda o: f"off{o:g}")
def test_ln_forward_offsets(rng, num_threads, offset, case):
    shape, ns = case
    x = offset_data(rng, shape, offset)
    w = rng.uniform(0.5, 1.5, ns).astype(np.float32)
    b = rng.uniform(-1, 1, ns).astype(np.float32)
    for w_, b_ in [(None, None), (w, b)]:
        y = F.layer_norm(x, ns, w_, b_)
        err = max_err(y, ln_ref(x, ns, w_, b_))
        assert err <= FWD_TOL, f"LN forward at offset {offset:g}: max error {err:.3g}"


def test_per_channel_offsets_and_spreads(rng):
    """Channels with very different offsets and spreads in one batch."""
    C = 8
    offs = channel([0, -1e6, 1e3, 5e5, -2e4, 1e6, 7.5, 3e5], 4)
    spreads = channel([1, 2, 0.5, 10, 1, 3, 0.01, 100], 4)
    x = (offs + spreads * rng.standard_normal((16, C, 12, 12))).astype(np.float32)
    w, b = affine_params(rng, C)
    assert max_err(F.batch_norm(x, None, None, w, b, training=True), bn_train_ref(x, w, b)) <= FWD_TOL
    mean, var = ref_batch_stats(x)
    rm, rv = mean.astype(np.float32), var.astype(np.float32)
    assert max_err(F.batch_norm(x, rm, rv, w, b), bn_eval_ref(x, w, b, rm, rv)) <= FWD_TOL


# ---------------------------------------------------------------------------------------
# offsets: gradients
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
@pytest.mark.parametrize("offset", OFFSETS, ids=lambda o: f"off{o:g}")
def test_bn_gradients_offsets(rng, num_threads, offset, shape, training):
    x = offset_data(rng, shape, offset)
    dy = rng.standard_normal(shape).astype(np.float32)
    C = shape[1]
    w, b = affine_params(rng, C)
    m = cnorm.BatchNorm1d(C) if len(shape) < 4 else cnorm.BatchNorm2d(C)
    m.weight[...] = w
    m.bias[...] = b
    mean, var = ref_batch_stats(x)
    if not training:
        m.running_mean[...] = mean
        m.running_var[...] = var
        m.eval()
    m(x)
    dx = m.backward(dy)
    ref = bn_grad_ref(dy, x, w, training=training, rm=m.running_mean, rv=m.running_var)
    if training:
        terms = xhat_bn(x)
    else:
        terms = ((x.astype(np.float64) - channel(m.running_mean, x.ndim))
                 / channel(np.sqrt(m.running_var.astype(np.float64) + EPS), x.ndim))
    assert_grads(dx, m.weight_grad, m.bias_grad, ref, dy, x, bn_axes(x.ndim), terms,
                 f"BN {'train' if training else 'eval'} offset {offset:g}")


@pytest.mark.parametrize("case", LN_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
@pytest.mark.parametrize("offset", OFFSETS, ids=lambda o: f"off{o:g}")
def test_ln_gradients_offsets(rng, num_threads, offset, case):
    shape, ns = case
    x = offset_data(rng, shape, offset)
    dy = rng.standard_normal(shape).astype(np.float32)
    m = cnorm.LayerNorm(ns)
    m.weight[...] = rng.uniform(0.5, 1.5, ns)
    m.bias[...] = rng.uniform(-1, 1, ns)
    m(x)
    dx = m.backward(dy)
    ref = slow.layer_norm_backward(dy, x.astype(np.float64), ns, m.weight, EPS)
    lead = tuple(range(x.ndim - len(ns)))
    assert_grads(dx, m.weight_grad, m.bias_grad, ref, dy, x, lead, xhat_ln(x, ns),
                 f"LN offset {offset:g}")


# ---------------------------------------------------------------------------------------
# constant channels / rows: exactly 0 before beta
# ---------------------------------------------------------------------------------------

CONSTANTS = [0.0, 1e4, -1e4, 0.1, 1 / 3, 12345.678, -7.3e-3, 1e6 + 0.5, 1e25, 1e30, -3e-30,
             1e-40]   # the last one is subnormal in float32
CONST_SHAPES = [(7, 3, 5, 11), (33, 5), (3, 4, 513), (2, 3, 1000), (2, 3, 40000), (4096, 3)]


@pytest.mark.parametrize("shape", CONST_SHAPES, ids=str)
def test_bn_constant_channel_is_exactly_zero(rng, num_threads, shape):
    for const in CONSTANTS:
        _check_bn_constant_channel(rng, const, shape)


def _check_bn_constant_channel(rng, const, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    x[:, 1] = np.float32(const)
    C = shape[1]
    w = rng.uniform(0.5, 2.0, C).astype(np.float32)
    b = rng.uniform(-1, 1, C).astype(np.float32)
    # training (batch statistics), no beta: exactly 0; with beta: exactly beta
    y = F.batch_norm(x, None, None, w, None, training=True)
    assert np.all(y[:, 1] == 0), f"constant {const:g}: max |y| = {np.abs(y[:, 1]).max():.3g}"
    y = F.batch_norm(x, None, None, w, b, training=True)
    assert np.all(y[:, 1] == b[1])
    # the module, with running statistics updated: variance of the channel exactly 0
    m = cnorm.BatchNorm1d(C) if len(shape) < 4 else cnorm.BatchNorm2d(C)
    y = m(x)
    assert np.all(y[:, 1] == 0)
    assert m.running_var[1] == np.float32(0.9)
    assert abs(m.running_mean[1] - 0.1 * np.float64(np.float32(const))) <= 1e-6 * abs(0.1 * const) + 1e-44
    # eval with running stats equal to the constant and a zero variance
    rm = np.zeros(C, np.float32)
    rm[1] = const
    rv = np.ones(C, np.float32)
    rv[1] = 0
    y = F.batch_norm(x, rm, rv, w, None, training=False)
    assert np.all(y[:, 1] == 0)
    # the other channels are unaffected
    assert max_err(np.delete(y, 1, axis=1),
                   np.delete(bn_eval_ref(x, w, None, rm, rv), 1, axis=1)) <= 1e-3


@pytest.mark.parametrize("case", [((5, 11), (11,)), ((4, 513), (513,)), ((3, 5000), (5000,)),
                                  ((6, 3, 7), (3, 7)), ((2, 70000), (70000,))],
                         ids=lambda c: f"{c[0]}-{c[1]}")
def test_ln_constant_row_is_exactly_zero(rng, num_threads, case):
    shape, ns = case
    for const in CONSTANTS:
        x = rng.standard_normal(shape).astype(np.float32)
        x[1] = np.float32(const)
        w = rng.uniform(0.5, 2.0, ns).astype(np.float32)
        b = rng.uniform(-1, 1, ns).astype(np.float32)
        y = F.layer_norm(x, ns, w, None)
        assert np.all(y[1] == 0), f"constant {const:g}: max |y| = {np.abs(y[1]).max():.3g}"
        y = F.layer_norm(x, ns, w, b)
        assert np.all(y[1] == b)


def test_constant_channel_gradient_is_finite_and_exact(rng):
    """A constant channel has x_hat = 0: dx = gamma * invstd * (dy - mean(dy))."""
    x = rng.standard_normal((6, 3, 50)).astype(np.float32)
    x[:, 2] = np.float32(1e4)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    m = cnorm.BatchNorm1d(3)
    m(x)
    dx = m.backward(dy)
    ref = bn_grad_ref(dy, x, m.weight)
    assert np.isfinite(dx).all()
    assert rel_err(dx, ref[0]) <= GRAD_RTOL
    assert m.weight_grad[2] == 0


# ---------------------------------------------------------------------------------------
# huge and tiny magnitudes: no float32 overflow / underflow in the statistics
# ---------------------------------------------------------------------------------------

SCALES = [1e-30, 1e-20, 1e-10, 1e-3, 1.0, 1e3, 1e10, 1e19, 1e20, 1e25, 1e30]
# (offset, scale): offset + scale * N(0, 1)
OFFSET_SCALES = [(0.0, s) for s in SCALES] + [(1e3 * s, s) for s in SCALES] + [
    (1e30, 1e25), (-1e30, 1e27), (1e25, 1e22), (-1e20, 1e17), (1e6, 0.1), (3e38 / 2, 1e32)]
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
    np.testing.assert_allclose(m.running_mean, 0.1 * mean, rtol=RUNNING_RTOL,
                               atol=1e-6 * 0.1 * scale)


@pytest.mark.parametrize("off_scale", [p for p in OFFSET_SCALES if p[1] <= 1e19 and abs(p[0]) < 1e20],
                         ids=_os_id)
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


@pytest.mark.parametrize("scale", [
    1e-30,
    1e-25,
    1e-20,
    1e-15, 1e-10, 1e-3, 1.0, 1e10, 1e19, 1e25, 1e30], ids=lambda s: f"s{s:g}")
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
        errors[f"ln{xl.shape} dx (rel.)"] = rel_err(dxl, slow.layer_norm_backward(
            dyl, xl.astype(np.float64), ns, None, eps)[0]) * FWD_TOL / GRAD_RTOL
    bad = {k: v for k, v in errors.items() if not v <= FWD_TOL}
    assert not bad, (f"errors above the limits (outputs {FWD_TOL}; gradients {GRAD_RTOL} relative, "
                     f"shown scaled to {FWD_TOL}): {bad}")


@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1e-10, 1.0, 1e10, 1e15, 1e20, 1e25, 1e30],
                         ids=lambda s: f"s{s:g}")
def test_gradients_any_magnitude(scale):
    """Gradients of x = s * N(0, 1) (default eps): no coefficient of the backward may
    underflow or overflow float32 (invstd**2 or rstd**3 ~ 1e-90 at s = 1e30)."""
    rng = np.random.default_rng(int(abs(np.log10(scale))) + 21)
    errors = {}
    for shape in SCALE_SHAPES:
        x = offset_data(rng, shape, 0.0, scale)
        dy = rng.standard_normal(shape).astype(np.float32)
        y, mean, invstd = F.native_batch_norm(x, None, None, None, None, True, 0.1, EPS)
        dx, dw, db = F.batch_norm_backward(dy, x, None, mean, invstd, True)
        errors[f"bn{shape}"] = rel_err(dx, bn_grad_ref(dy, x, None)[0])
        xl, dyl = x.reshape(shape[0], -1), dy.reshape(shape[0], -1)
        ns = xl.shape[1:]
        yl, ml, rl = F.native_layer_norm(xl, ns, None, None, EPS)
        dxl = F.layer_norm_backward(dyl, xl, ns, ml, rl, None)[0]
        errors[f"ln{xl.shape}"] = rel_err(dxl, slow.layer_norm_backward(
            dyl, xl.astype(np.float64), ns, None, EPS)[0])
    bad = {k: v for k, v in errors.items() if not v <= GRAD_RTOL}
    assert not bad, f"relative gradient errors above {GRAD_RTOL}: {bad}"


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
        f"{what}: non-finite mask differs ({int(m_a.sum())} vs {int(m_e.sum())} elements)")


def _assert_same_masks(actual, expected, what):
    for name, m_a, m_e in zip(("nan", "+inf", "-inf"), _masks(actual), _masks(expected)):
        assert np.array_equal(m_a, m_e), (
            f"{what}: {name} mask differs ({int(m_a.sum())} vs {int(m_e.sum())} elements)")


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


@pytest.mark.parametrize("shape", NAN_SHAPES, ids=str)
def test_nan_inf_bn_train_only_the_channel(rng, num_threads, shape):
    for kind in NAN_KINDS:
        _check_bn_nan_channel(rng, shape, kind)


def _check_bn_nan_channel(rng, shape, kind):
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
    assert max_err(np.delete(y, np.flatnonzero(bad_channel), axis=1),
                   bn_train_ref(clean, np.delete(w, np.flatnonzero(bad_channel)),
                                np.delete(b, np.flatnonzero(bad_channel)))) <= FWD_TOL


@pytest.mark.parametrize("shape", [(300, 6), (12, 3000), (6, 4, 9, 31), (2, 70000)], ids=str)
def test_nan_inf_ln_only_the_row(rng, num_threads, shape):
    for kind in NAN_KINDS:
        _check_ln_nan_row(rng, shape, kind)


def _check_ln_nan_row(rng, shape, kind):
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


def _check_masks_vs_torch_forward(rng, shape, kind, training):
    T = _torch()
    x = rng.standard_normal(shape).astype(np.float32)
    _poison(rng, x, kind)
    C = shape[1]
    w, b = affine_params(rng, C)
    rm = rng.standard_normal(C).astype(np.float32)
    rv = rng.uniform(0.5, 2, C).astype(np.float32)
    y = F.batch_norm(x, rm.copy(), rv.copy(), w, b, training=training)
    yt = T.nn.functional.batch_norm(T.from_numpy(x), T.from_numpy(rm.copy()),
                                    T.from_numpy(rv.copy()), T.from_numpy(w), T.from_numpy(b),
                                    training=training).numpy()
    _assert_same_masks(y, yt, "BN forward")
    xl = x.reshape(shape[0], -1)
    yl = F.layer_norm(xl, xl.shape[1:])
    ylt = T.nn.functional.layer_norm(T.from_numpy(xl), xl.shape[1:]).numpy()
    _assert_same_masks(yl, ylt, "LN forward")


def _torch_bn_grads(T, x, dy, w, b, rm, rv, training):
    xt = T.from_numpy(x).requires_grad_()
    wt = T.from_numpy(w).requires_grad_()
    bt = T.from_numpy(b).requires_grad_()
    yt = T.nn.functional.batch_norm(xt, T.from_numpy(rm.copy()), T.from_numpy(rv.copy()), wt, bt,
                                    training=training)
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
    y, mean, invstd = F.native_batch_norm(x, w, b, rm.copy(), rv.copy(), True, 0.1, EPS)
    dx, dw, db = F.batch_norm_backward(dy, x, w, mean, invstd, True)
    tdx, tdw, tdb = _torch_bn_grads(T, x, dy, w, b, rm, rv, True)
    _assert_same_nonfinite(dx, tdx, "BN dx")
    _assert_same_nonfinite(dw, tdw, "BN dweight")
    _assert_same_nonfinite(db, tdb, "BN dbias")
    xl, dyl = x.reshape(shape[0], -1), dy.reshape(shape[0], -1)
    ns = xl.shape[1:]
    yl, ml, rl = F.native_layer_norm(xl, ns, None, None, EPS)
    dxl = F.layer_norm_backward(dyl, xl, ns, ml, rl, None)[0]
    xlt = T.from_numpy(xl).requires_grad_()
    T.nn.functional.layer_norm(xlt, ns).backward(T.from_numpy(dyl))
    _assert_same_nonfinite(dxl, xlt.grad.numpy(), "LN dx")


@pytest.mark.parametrize("kind", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("shape", NAN_SHAPES[:4], ids=str)
def test_nan_inf_masks_match_torch_eval_backward(rng, shape, kind):
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    _poison(rng, x, kind)
    C = shape[1]
    w, b = affine_params(rng, C)
    rm = rng.standard_normal(C).astype(np.float32)
    rv = rng.uniform(0.5, 2, C).astype(np.float32)
    y, mean, invstd = F.native_batch_norm(x, w, b, rm, rv, False, 0.1, EPS)
    dx, dw, db = F.batch_norm_backward(dy, x, w, mean, invstd, False)
    # torch / the documented formula: dx = dy * gamma / sqrt(running_var + eps), finite
    expected = dy.astype(np.float64) * channel(w / np.sqrt(rv.astype(np.float64) + EPS), x.ndim)
    _assert_same_nonfinite(dx, expected, "BN eval dx")


# ---------------------------------------------------------------------------------------
# SIMD builds and non-temporal stores: identical bits
# ---------------------------------------------------------------------------------------

_KERNEL_MODULES = (_bn_kernels, _rn_kernels)
_NEVER = 2 ** 62


@pytest.fixture
def kernel_switches():
    """Yields the available SIMD modes; restores the default SIMD build and the
    non-temporal-store threshold of both kernel modules afterwards."""
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


def _set_all(simd, stream_min):
    active = [mod._set_simd(simd) for mod in _KERNEL_MODULES]
    assert active == [simd, simd]
    for mod in _KERNEL_MODULES:
        mod._set_stream_min_bytes(stream_min)


def _bn_everything(x, dy, training):
    C = x.shape[1]
    r = np.random.default_rng(7)
    w = r.normal(1, 0.5, C).astype(x.dtype)
    b = r.normal(0, 0.5, C).astype(x.dtype)
    rm = r.normal(size=C).astype(x.dtype)
    rv = r.uniform(0.5, 2, C).astype(x.dtype)
    y, mean, invstd = F.native_batch_norm(x, w, b, rm, rv, training, 0.1, EPS)
    dx, dw, db = F.batch_norm_backward(dy, x, w, mean, invstd, training)
    y2 = F.batch_norm(x, None, None, None, None, training=True)     # no affine
    dx2 = F.batch_norm_backward(dy, x, None, mean, invstd, training)[0]
    return [y, mean, invstd, dx, dw, db, rm, rv, y2, dx2]


def _ln_everything(x, dy, ns):
    r = np.random.default_rng(8)
    w = r.normal(1, 0.5, ns).astype(x.dtype)
    b = r.normal(0, 0.5, ns).astype(x.dtype)
    y, mean, rstd = F.native_layer_norm(x, ns, w, b, EPS)
    dx, dw, db = F.layer_norm_backward(dy, x, ns, mean, rstd, w)
    y2, m2, r2 = F.native_layer_norm(x, ns, None, None, EPS)
    dx2 = F.layer_norm_backward(dy, x, ns, m2, r2, None)[0]
    return [y, mean, rstd, dx, dw, db, y2, dx2]


SIMD_BN_SHAPES = [(4, 3, 1001), (2, 5, 24, 24), (3, 2, 4099), (64, 1030), (33, 517), (40, 600)]
SIMD_LN_CASES = [((33, 777), (777,)), ((8, 2048), (2048,)), ((5, 4, 129), (4, 129)),
                 ((17, 513), (513,))]


def _check_identical_bits(switches, fn, args, offset_note):
    ref = fn(*args)                          # default build, default streaming threshold
    for simd in switches:
        for stream_min in (0, _NEVER):      # 0: every long-enough run streamed; never
            _set_all(simd, stream_min)
            out = fn(*args)
            for i, (a, b) in enumerate(zip(ref, out)):
                assert np.array_equal(a, b), (
                    f"{offset_note}: output {i} differs with simd={'avx2' if simd else 'base'}, "
                    f"stream_min_bytes={stream_min}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", SIMD_BN_SHAPES, ids=str)
def test_simd_and_streaming_identical_bits_bn(kernel_switches, num_threads, shape, training, dtype):
    rng = np.random.default_rng(sum(shape) * 7 + len(shape))
    x = offset_data(rng, shape, 1e3, 2.0, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    _check_identical_bits(kernel_switches, _bn_everything, (x, dy, training), f"BN {shape}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", SIMD_LN_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_simd_and_streaming_identical_bits_ln(kernel_switches, num_threads, case, dtype):
    shape, ns = case
    rng = np.random.default_rng(sum(shape))
    x = offset_data(rng, shape, -50.0, 3.0, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    _check_identical_bits(kernel_switches, _ln_everything, (x, dy, ns), f"LN {shape}")


def test_simd_switches_restored(kernel_switches):
    """The switches report what they set; the fixture restores the defaults."""
    for simd in kernel_switches:
        for mod in _KERNEL_MODULES:
            assert mod._set_simd(simd) is simd
    for mod in _KERNEL_MODULES:
        old = mod._set_stream_min_bytes(123)
        assert mod._set_stream_min_bytes(old) == 123
