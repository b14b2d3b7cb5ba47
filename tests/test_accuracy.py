"""Accuracy: float32 results against the float64 result of the same float32 inputs.

The "float64 result" is :mod:`cnorm.slow` (plain NumPy in float64) applied to the float32
inputs (and the float32 parameters / running statistics) converted to float64.  Outputs
are O(1), so errors are absolute max errors.

Targets (issue "Accuracy -- a lead over PyTorch users can check"):

* every float32 forward (BN train, BN eval with running stats equal to the batch's own
  statistics, LN, GN, IN, RMS, add + LN, BN + ReLU) within 2e-6 of the float64 result for
  x = offset + N(0, 1), offset = 0 ... 1e6; gradients within 1e-5 relative;
* constant channels / rows / groups give exactly 0 (before beta);
* running_var relative error <= 1e-6 at those offsets.

Huge and tiny magnitudes and NaN / Inf: test_accuracy_extremes.py; identical bits of the
SIMD builds and streaming stores: test_simd.py.
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

OFFSETS = [0.0, 1e3, 1e4, 1e5, 1e6]

# BN input shapes covering the three kernel walks: (N, C, S>1) rows, (N, C) columns,
# and rows long enough for several exact-sum blocks (S > 512, odd tails).
BN_SHAPES = [(8, 16, 32, 32), (4096, 24), (6, 5, 1031), (3, 4, 7, 9)]
LN_CASES = [((256, 1024), (1024,)), ((300, 37), (37,)), ((16, 8, 50), (8, 50)), ((40, 7), (7,))]


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
    mean, var = reference.batch_norm_stats(x64)
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


@pytest.mark.parametrize(
    "dtype,loc,atol", [(np.float32, 1e3, 5e-4), (np.float64, 1e6, 1e-7)], ids=["float32", "float64"]
)
@pytest.mark.parametrize("shape", [(64, 3, 100), (512, 8), (4, 2, 33, 65)], ids=str)
def test_batch_norm_large_offset_is_stable(num_threads, rng, shape, dtype, loc, atol):
    """Variance of data with |mean| >> std: no catastrophic cancellation (as torch)."""
    x = (loc + rng.normal(0.0, 1.0, shape)).astype(dtype)
    y, _save_mean, save_invstd = F.native_batch_norm(x, None, None, None, None, True, 0.1, EPS)
    y_ref, _, _ = reference.batch_norm_forward(x, None, None, None, None, True, 0.1, EPS)
    _mean, var = reference.batch_norm_stats(x)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=atol)
    np.testing.assert_allclose(
        save_invstd, 1 / np.sqrt(var + EPS), rtol=1e-4 if dtype == np.float32 else 1e-9
    )


@pytest.mark.parametrize(
    "dtype,loc,atol", [(np.float32, 1e3, 1e-3), (np.float64, 1e6, 1e-7)], ids=["float32", "float64"]
)
def test_layer_norm_large_offset_is_stable(num_threads, rng, dtype, loc, atol):
    x = (loc + rng.normal(0.0, 1.0, (64, 300))).astype(dtype)
    y, _, rstd = F.native_layer_norm(x, (300,), None, None, EPS)
    y_ref, _, rstd_ref = reference.layer_norm_forward(x, (300,), None, None, EPS)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=atol)
    np.testing.assert_allclose(rstd, rstd_ref, rtol=1e-4 if dtype == np.float32 else 1e-9)


@pytest.mark.parametrize(
    "case", [((4, 64, 16, 16), 32), ((2, 6, 1031), 3), ((8, 12), 4)], ids=lambda c: f"{c[0]}-G{c[1]}"
)
@pytest.mark.parametrize("offset", OFFSETS + [-1e5], ids=lambda o: f"off{o:g}")
def test_group_norm_float32_offsets(rng, num_threads, offset, case):
    shape, G = case
    C = shape[1]
    x = offset_data(rng, shape, offset)
    w = rng.uniform(0.5, 1.5, C).astype(np.float32) * rng.choice([-1, 1], C).astype(np.float32)
    b = rng.uniform(-1, 1, C).astype(np.float32)
    for w_, b_ in [(None, None), (w, b)]:
        y, mean, rstd = F.native_group_norm(x, G, w_, b_, EPS)
        err = max_err(y, reference.group_norm_forward(x, G, w_, b_, EPS)[0])
        assert err <= FWD_TOL, f"GN forward at offset {offset:g}: max error {err:.3g}"
    dy = rng.standard_normal(shape).astype(np.float32)
    dx, dw, db = F.group_norm_backward(dy, x, G, mean, rstd, w)
    rdx, rdw, rdb = reference.group_norm_backward(dy, x, G, w, EPS)
    assert rel_err(dx, rdx) <= GRAD_RTOL
    assert rel_err(dw, rdw) <= GRAD_RTOL * 10 and rel_err(db, rdb) <= GRAD_RTOL * 10


@pytest.mark.parametrize("shape", [(4, 16, 32, 32), (3, 5, 1031), (2, 3, 4, 5, 6)], ids=str)
@pytest.mark.parametrize("offset", OFFSETS + [-1e5], ids=lambda o: f"off{o:g}")
def test_instance_norm_float32_offsets(rng, num_threads, offset, shape):
    C = shape[1]
    x = offset_data(rng, shape, offset)
    rm = np.zeros(C, np.float32)
    rv = np.ones(C, np.float32)
    y, mean, invstd = F.native_instance_norm(x, None, None, rm, rv, True, 0.1, EPS)
    ry, rrm, rrv = reference.instance_norm_forward(x, np.zeros(C), np.ones(C), None, None, True, 0.1, EPS)
    err = max_err(y, ry)
    assert err <= FWD_TOL, f"IN forward at offset {offset:g}: max error {err:.3g}"
    np.testing.assert_allclose(rm, rrm, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rv, rrv, rtol=1e-6)
    dy = rng.standard_normal(shape).astype(np.float32)
    dx, _, _ = F.instance_norm_backward(dy, x, None, mean, invstd, True)
    assert rel_err(dx, reference.instance_norm_backward(dy, x, None, EPS)[0]) <= GRAD_RTOL


def row_offset_cases(test):
    """Parametrize a row-norm test over (input shape, normalized_shape) cases and offsets."""
    test = pytest.mark.parametrize("offset", OFFSETS + [-1e5], ids=lambda o: f"off{o:g}")(test)
    cases = [((64, 1024), (1024,)), ((30, 37), (37,)), ((4, 8, 50), (8, 50))]
    return pytest.mark.parametrize("case", cases, ids=lambda c: f"{c[0]}-{c[1]}")(test)


@row_offset_cases
def test_rms_norm_float32_offsets(rng, num_threads, offset, case):
    shape, ns = case
    x = offset_data(rng, shape, offset)
    w = rng.uniform(0.5, 1.5, ns).astype(np.float32)
    for w_ in (None, w):
        y, rrms = F.native_rms_norm(x, ns, w_, None)
        err = max_err(y, reference.rms_norm_forward(x, ns, w_, None)[0])
        assert err <= FWD_TOL, f"RMS forward at offset {offset:g}: max error {err:.3g}"
    dy = rng.standard_normal(shape).astype(np.float32)
    dx, dw = F.rms_norm_backward(dy, x, ns, rrms, w)
    rdx, rdw = reference.rms_norm_backward(dy, x, ns, w, None)
    assert rel_err(dx, rdx) <= GRAD_RTOL and rel_err(dw, rdw) <= GRAD_RTOL * 10


@row_offset_cases
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
        err = max_err(y, reference.add_layer_norm_forward(x, r, ns, w_, b_, EPS)[0])
        assert err <= FWD_TOL, f"add+LN forward at offset {offset:g}: max error {err:.3g}"
    dy = rng.standard_normal(shape).astype(np.float32)
    dxr, dw, db = F.add_layer_norm_backward(dy, None, s, ns, mean, rstd, w)
    rdx, rdw, rdb = reference.add_layer_norm_backward(dy, None, s, ns, w, EPS)
    assert rel_err(dxr, rdx) <= GRAD_RTOL
    assert rel_err(dw, rdw) <= GRAD_RTOL * 10 and rel_err(db, rdb) <= GRAD_RTOL * 10


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(8, 16, 32, 32), (4096, 24), (6, 5, 1031)], ids=str)
@pytest.mark.parametrize("offset", OFFSETS + [-1e5], ids=lambda o: f"off{o:g}")
def test_batch_norm_relu_float32_offsets(rng, num_threads, offset, shape, training):
    shape[1]
    x = offset_data(rng, shape, offset)
    # eval: running statistics equal to the batch's own, so that x-hat is O(1)
    mean64, var64 = reference.batch_norm_stats(x)
    rm, rv = mean64.astype(np.float32), var64.astype(np.float32)
    y, _mean, _invstd = F.native_batch_norm_relu(x, None, None, rm.copy(), rv.copy(), training, 0.1, EPS)
    ref = reference.batch_norm_relu_forward(x, None, None, rm, rv, training, 0.1, EPS)[0]
    err = max_err(y, ref)
    assert err <= FWD_TOL, f"BN+ReLU forward at offset {offset:g}: max error {err:.3g}"


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
        terms = (x.astype(np.float64) - channel(m.running_mean, x.ndim)) / channel(
            np.sqrt(m.running_var.astype(np.float64) + EPS), x.ndim
        )
    assert_grads(
        dx,
        m.weight_grad,
        m.bias_grad,
        ref,
        dy,
        x,
        bn_axes(x.ndim),
        terms,
        f"BN {'train' if training else 'eval'} offset {offset:g}",
    )


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
    ref = reference.layer_norm_backward(dy, x.astype(np.float64), ns, m.weight, EPS)
    lead = tuple(range(x.ndim - len(ns)))
    assert_grads(dx, m.weight_grad, m.bias_grad, ref, dy, x, lead, xhat_ln(x, ns), f"LN offset {offset:g}")


# ---------------------------------------------------------------------------------------
# constant channels / rows / groups: exactly 0 before beta
# ---------------------------------------------------------------------------------------

CONSTANTS = [
    0.0,
    1e4,
    -1e4,
    0.1,
    1 / 3,
    12345.678,
    -7.3e-3,
    1e6 + 0.5,
    1e25,
    1e30,
    -3e-30,
    1e-40,
]  # the last one is subnormal in float32


CONST_SHAPES = [(7, 3, 5, 11), (33, 5), (3, 4, 513), (2, 3, 1000), (2, 3, 40000), (4096, 3)]


@pytest.mark.parametrize("const", CONSTANTS, ids=lambda c: f"{c:g}")
@pytest.mark.parametrize("shape", CONST_SHAPES, ids=str)
def test_bn_constant_channel_is_exactly_zero(rng, num_threads, shape, const):
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
    assert max_err(np.delete(y, 1, axis=1), np.delete(bn_eval_ref(x, w, None, rm, rv), 1, axis=1)) <= 1e-3


@pytest.mark.parametrize(
    "case",
    [((5, 11), (11,)), ((4, 513), (513,)), ((3, 5000), (5000,)), ((6, 3, 7), (3, 7)), ((2, 70000), (70000,))],
    ids=lambda c: f"{c[0]}-{c[1]}",
)
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


GN_CONST = [0.0, 1.0, -3.5, 1e6, 123456.789, 1e-30, 3e30]


@pytest.mark.parametrize(
    "case",
    [((3, 8, 5, 5), 4), ((2, 6, 1031), 3), ((4, 32, 3, 3), 32), ((2, 4, 70000), 2)],
    ids=lambda c: f"{c[0]}-G{c[1]}",
)
def test_group_norm_constant_group_is_exactly_zero(rng, num_threads, case):
    shape, G = case
    C = shape[1]
    cg = C // G
    for const in GN_CONST:
        x = rng.standard_normal(shape).astype(np.float32)
        x[1, cg : 2 * cg] = np.float32(const)  # group 1 of sample 1
        w = rng.uniform(0.5, 2.0, C).astype(np.float32)
        b = rng.uniform(-1, 1, C).astype(np.float32)
        y = F.group_norm(x, G, w, None)
        assert np.all(y[1, cg : 2 * cg] == 0), (
            f"constant {const:g}: max |y| {np.abs(y[1, cg : 2 * cg]).max()}"
        )
        assert np.all(np.isfinite(y))
        y = F.group_norm(x, G, w, b)
        assert np.all(y[1, cg : 2 * cg] == channel(b, len(shape))[0, cg : 2 * cg])
        # the gradient of a constant group is finite (dx = rstd * (g - mean(g)))
        _, mean, rstd = F.native_group_norm(x, G, w, b, EPS)
        dy = rng.standard_normal(shape).astype(np.float32)
        dx, dw, _db = F.group_norm_backward(dy, x, G, mean, rstd, w)
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


@pytest.mark.parametrize(
    "case", [((5, 11), (11,)), ((4, 1031), (1031,)), ((6, 3, 7), (3, 7))], ids=lambda c: f"{c[0]}-{c[1]}"
)
def test_add_layer_norm_constant_row_is_exactly_zero(rng, num_threads, case):
    shape, ns = case
    for const in [0.0, 1.0, 1e6, -2.5]:
        x = rng.standard_normal(shape).astype(np.float32)
        r = rng.standard_normal(shape).astype(np.float32)
        x[1] = np.float32(const) / 2  # halves: the sum is exact
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
    dx, _dw = F.rms_norm_backward(
        np.ones_like(x), x, (1031,), F.native_rms_norm(x, (1031,), None, None)[1], None
    )
    assert np.all(np.isfinite(dx))
