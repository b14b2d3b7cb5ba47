"""Modules: construction and defaults, call / train / eval, backward protocol, gradient
accumulation, reset -- and every module's forward and backward equal to its functional
form, to the bit."""

import numpy as np
import pytest
from conftest import BN, BN_SHAPE, DTYPES, bn, data, dtype_id, raises, sample
from norms import NORMS

import cnorm

# --------------------------------------------------------------------------- every module


def _randomized(norm, rng, dtype):
    m = norm.make(norm.small, dtype, **norm.full_kw)
    for _, p in m.named_parameters():
        p[...] = rng.normal(1, 0.5, p.shape)
    return m


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("norm", NORMS, ids=str)
def test_module_forward_backward_match_functional(rng, norm, dtype):
    """The module (training, fresh running statistics) computes exactly its functional form."""
    m = _randomized(norm, rng, dtype)
    case = norm.small
    x, dy = data(rng, case.shape, dtype)
    r = norm.inputs(rng, case, dtype)
    outs = norm.call(m, x, r)
    dx = norm.module_backward(m, (dy,))
    p = {name: getattr(m, name) for name in norm.param_names}
    p["running_mean"] = p["running_var"] = None
    if getattr(m, "running_mean", None) is not None:
        p["running_mean"], p["running_var"] = np.zeros(case.shape[1], dtype), np.ones(case.shape[1], dtype)
    p["residual"] = r
    fouts, saved = norm.forward(x, case, p, True, eps=m.eps)
    grads = norm.backward((dy,), x, case, p, saved, True)
    for y, fy in zip(outs, fouts):
        assert np.array_equal(y, fy)
    assert np.array_equal(dx, grads["input"])
    for name, _ in m.named_parameters():
        assert np.array_equal(getattr(m, name + "_grad"), grads[name]), name


@pytest.mark.parametrize("norm", NORMS, ids=str)
def test_module_grads_accumulate_zero_grad_and_backward_errors(rng, norm):
    m = _randomized(norm, rng, np.float32)
    shape = norm.small.shape
    x, dy = data(rng, shape, np.float32)
    with raises(RuntimeError, "backward() called before forward()"):
        m.backward(dy)
    norm.call(m, x)
    m.backward(dy)
    w1 = m.weight_grad.copy()
    with raises(RuntimeError, "Trying to backward through the graph a second time"):
        m.backward(dy)
    norm.call(m, x)
    with raises(ValueError, f"grad_output has shape (1, 2) but the input of forward() had shape {shape}"):
        m.backward(np.zeros((1, 2), np.float32))
    with raises(TypeError, "grad_output dtype float64 does not match the input dtype float32"):
        m.backward(dy.astype(np.float64))
    m.backward(dy)  # a bad call frees nothing
    np.testing.assert_allclose(m.weight_grad, 2 * w1, rtol=1e-6, atol=1e-6)
    m.zero_grad()
    assert m.weight_grad is None
    assert all(getattr(m, n + "_grad") is None for n, _ in m.named_parameters())


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", BN)
def test_bn_initial_state(name, dtype):
    m = bn(name, 5, dtype=dtype)
    assert m.num_features == 5 and m.eps == 1e-5 and m.momentum == 0.1
    assert m.affine is True and m.track_running_stats is True and m.training is True
    for attr, value in [("weight", 1), ("bias", 0), ("running_mean", 0), ("running_var", 1)]:
        arr = getattr(m, attr)
        assert isinstance(arr, np.ndarray) and arr.dtype == dtype and arr.shape == (5,), attr
        np.testing.assert_array_equal(arr, value)
    assert m.num_batches_tracked == 0
    assert m.weight_grad is None and m.bias_grad is None


def test_bn_default_dtype_is_float32():
    m = cnorm.BatchNorm2d(3)
    assert m.weight.dtype == m.running_var.dtype == np.float32


@pytest.mark.parametrize("name", BN)
def test_bn_optional_parts(name):
    m = bn(name, affine=False)
    assert m.weight is None and m.bias is None
    m = bn(name, bias=False)
    assert m.bias is None and m.weight.shape == (4,)
    m = bn(name, track_running_stats=False)
    assert m.running_mean is None and m.running_var is None and m.num_batches_tracked is None


def test_bn_bias_is_keyword_only():
    with pytest.raises(TypeError):
        cnorm.BatchNorm2d(3, 1e-5, 0.1, True, True, np.float32, False)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_ln_initial_state(dtype):
    m = cnorm.LayerNorm([3, 4], dtype=dtype)
    assert m.normalized_shape == (3, 4) and isinstance(m.normalized_shape, tuple)
    assert m.eps == 1e-5 and m.elementwise_affine is True
    assert m.weight.shape == m.bias.shape == (3, 4) and m.weight.dtype == m.bias.dtype == dtype
    np.testing.assert_array_equal(m.weight, 1)
    np.testing.assert_array_equal(m.bias, 0)
    assert cnorm.LayerNorm(7).normalized_shape == (7,)
    assert cnorm.LayerNorm((7,)).normalized_shape == (7,)
    assert cnorm.LayerNorm(np.int64(7)).normalized_shape == (7,)
    m = cnorm.LayerNorm(4, bias=False)
    assert m.bias is None and m.weight.shape == (4,)
    m = cnorm.LayerNorm(4, elementwise_affine=False)
    assert m.weight is None and m.bias is None


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
        cnorm.GroupNorm(4, 8, 1e-5, True, np.float32, True)  # bias is keyword-only


@pytest.mark.parametrize("name", ["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"])
def test_instance_norm_module_state_and_defaults(name):
    cls = getattr(cnorm, name)
    m = cls(5)
    assert (m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats) == (
        5,
        1e-5,
        0.1,
        False,
        False,
    )
    assert m.weight is None and m.bias is None and m.running_mean is None
    assert m.num_batches_tracked is None and m.state_dict() == {}
    m = cls(5, affine=True, track_running_stats=True, dtype=np.float64)
    assert list(m.state_dict()) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
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


# --------------------------------------------------------------------------- call / train / eval


@pytest.mark.parametrize("name", BN + ["LayerNorm"])
def test_call_equals_forward_and_train_eval_return_module(rng, name):
    m = cnorm.LayerNorm(3) if name == "LayerNorm" else bn(name)
    shape = (5, 2, 3) if name == "LayerNorm" else BN_SHAPE[name]
    x = sample(rng, shape)
    m.eval()
    np.testing.assert_array_equal(m(x), m.forward(x))
    assert m.train() is m and m.training is True
    assert m.eval() is m and m.training is False
    assert m.train(False) is m and m.training is False
    assert m.train(True) is m and m.training is True


@pytest.mark.parametrize("name", BN)
def test_eval_forward_does_not_touch_running_stats(rng, name):
    m = bn(name)
    m(sample(rng, BN_SHAPE[name]))
    rm, rv, n = m.running_mean.copy(), m.running_var.copy(), m.num_batches_tracked
    m.eval()
    m(sample(rng, BN_SHAPE[name]))
    np.testing.assert_array_equal(m.running_mean, rm)
    np.testing.assert_array_equal(m.running_var, rv)
    assert m.num_batches_tracked == n == 1


@pytest.mark.parametrize("name", BN)
def test_training_without_tracking_keeps_stats_none(rng, name):
    m = bn(name, track_running_stats=False)
    y1 = m(sample(rng, BN_SHAPE[name]))
    assert m.running_mean is None and m.num_batches_tracked is None
    axes = (0,) + tuple(range(2, y1.ndim))
    np.testing.assert_allclose(y1.mean(axis=axes), 0, atol=1e-5)


def test_backward_uses_mode_of_forward(rng):
    """Forward in training, then eval(): backward still uses the training formula (and vice versa)."""
    x = sample(rng, (8, 3), np.float64)
    dy = rng.normal(size=(8, 3))
    a = cnorm.BatchNorm1d(3, dtype=np.float64)
    b = cnorm.BatchNorm1d(3, dtype=np.float64)
    a(x)
    b(x)
    b.eval()
    np.testing.assert_array_equal(b.backward(dy), a.backward(dy))
    np.testing.assert_array_equal(b.weight_grad, a.weight_grad)
    # eval forward then train(): the eval formula dx = dy * w * invstd
    c = cnorm.BatchNorm1d(3, dtype=np.float64).eval()
    c(x)
    c.train()
    np.testing.assert_allclose(c.backward(dy), dy / np.sqrt(1 + 1e-5), rtol=1e-14)


def test_backward_uses_latest_forward(rng):
    m = cnorm.BatchNorm1d(3, dtype=np.float64, track_running_stats=False)
    x1, x2 = sample(rng, (5, 3), np.float64), sample(rng, (7, 3), np.float64)
    dy = rng.normal(size=(7, 3))
    m(x1)
    m(x2)
    ref = cnorm.BatchNorm1d(3, dtype=np.float64, track_running_stats=False)
    ref(x2)
    np.testing.assert_array_equal(m.backward(dy), ref.backward(dy))


def test_group_norm_module_eval_is_training(rng):
    m = cnorm.GroupNorm(2, 4)
    x, _ = data(rng, (3, 4, 5), np.float32)
    y = m(x)
    assert np.array_equal(m.eval()(x), y)
    assert m.train() is m and m.training


# --------------------------------------------------------------------------- grad accumulation


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", BN + ["LayerNorm"])
def test_grads_accumulate_and_zero_grad(rng, name, dtype):
    if name == "LayerNorm":
        make, shape = (lambda: cnorm.LayerNorm((2, 3), dtype=dtype)), (4, 2, 3)
    else:
        make, shape = (lambda: bn(name, dtype=dtype)), BN_SHAPE[name]
    x1, x2 = sample(rng, shape, dtype), sample(rng, shape, dtype)
    d1, d2 = sample(rng, shape, dtype), sample(rng, shape, dtype)
    singles = []
    for x, d in [(x1, d1), (x2, d2)]:
        s = make()
        s(x)
        s.backward(d)
        singles.append((s.weight_grad.copy(), s.bias_grad.copy()))
    m = make()
    m(x1)
    m.backward(d1)
    np.testing.assert_array_equal(m.weight_grad, singles[0][0])
    m(x2)
    m.backward(d2)
    # with batch statistics the second step's grads do not depend on the (unchanged) weights
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(m.weight_grad, singles[0][0] + singles[1][0], rtol=tol, atol=tol)
    np.testing.assert_allclose(m.bias_grad, singles[0][1] + singles[1][1], rtol=tol, atol=tol)
    assert m.weight_grad.dtype == m.bias_grad.dtype == dtype
    m.zero_grad()
    assert m.weight_grad is None and m.bias_grad is None
    m(x2)
    m.backward(d2)
    np.testing.assert_array_equal(m.weight_grad, singles[1][0])
    np.testing.assert_array_equal(m.bias_grad, singles[1][1])


def test_grad_accumulation_same_batch_doubles(rng):
    m = cnorm.BatchNorm1d(3, dtype=np.float64)
    x, d = sample(rng, (6, 3), np.float64), rng.normal(size=(6, 3))
    m(x)
    m.backward(d)
    g1 = m.weight_grad.copy()
    m(x)
    m.backward(d)
    np.testing.assert_allclose(m.weight_grad, 2 * g1, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("kw", [{"affine": False}, {"bias": False}], ids=["noaffine", "nobias"])
def test_grads_none_for_missing_parameters(rng, kw):
    m = cnorm.BatchNorm2d(3, **kw)
    x = sample(rng, (2, 3, 2, 2))
    m(x)
    m.backward(np.ones_like(x))
    assert m.bias_grad is None
    if kw.get("affine") is False:
        assert m.weight_grad is None
    else:
        assert m.weight_grad.shape == (3,)


# --------------------------------------------------------------------------- reset


@pytest.mark.parametrize("name", BN)
def test_reset_running_stats_and_parameters(rng, name):
    m = bn(name)
    sd = m.state_dict()
    sd["weight"] = rng.normal(size=4).astype(np.float32)
    sd["bias"] = rng.normal(size=4).astype(np.float32)
    m.load_state_dict(sd)
    for _ in range(3):
        m(sample(rng, BN_SHAPE[name]))
    m.reset_running_stats()
    np.testing.assert_array_equal(m.running_mean, 0)
    np.testing.assert_array_equal(m.running_var, 1)
    assert m.num_batches_tracked == 0
    assert not np.all(m.weight == 1)  # parameters untouched
    np.testing.assert_array_equal(m.weight, sd["weight"])
    m(sample(rng, BN_SHAPE[name]))
    m.reset_parameters()
    np.testing.assert_array_equal(m.weight, 1)
    np.testing.assert_array_equal(m.bias, 0)
    np.testing.assert_array_equal(m.running_mean, 0)
    np.testing.assert_array_equal(m.running_var, 1)
    assert m.num_batches_tracked == 0
    assert m.weight.dtype == m.running_mean.dtype == np.float32


def test_reset_without_optional_parts():
    m = cnorm.BatchNorm1d(3, affine=False, track_running_stats=False)
    m.reset_running_stats()
    m.reset_parameters()
    assert m.weight is None and m.running_mean is None and m.num_batches_tracked is None


def test_layer_norm_reset_parameters(rng):
    m = cnorm.LayerNorm(4)
    m.load_state_dict(
        {"weight": rng.normal(size=4).astype(np.float32), "bias": rng.normal(size=4).astype(np.float32)}
    )
    assert not np.all(m.weight == 1)
    m.reset_parameters()
    np.testing.assert_array_equal(m.weight, 1)
    np.testing.assert_array_equal(m.bias, 0)


def test_instance_norm_reset(rng):
    m = cnorm.InstanceNorm1d(3, affine=True, track_running_stats=True)
    m(sample(rng, (2, 3, 5)))
    m.weight[...] = 3
    m.reset_parameters()
    assert np.all(m.running_mean == 0) and np.all(m.running_var == 1) and np.all(m.weight == 1)
