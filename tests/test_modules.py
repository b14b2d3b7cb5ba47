"""Module API: construction, attributes, grads, train/eval, state_dict, pickle/deepcopy."""

import copy
import pickle
import re

import numpy as np
import pytest

import cnorm

from conftest import DTYPES

BN = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]
BN_SHAPE = {"BatchNorm1d": (6, 4, 3), "BatchNorm2d": (3, 4, 2, 3), "BatchNorm3d": (2, 4, 2, 2, 3)}


def bn(name, C=4, **kw):
    return getattr(cnorm, name)(C, **kw)


def data(rng, shape, dtype=np.float32):
    return rng.normal(0.5, 2.0, shape).astype(dtype)


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
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


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
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


# --------------------------------------------------------------------------- call / train / eval


@pytest.mark.parametrize("name", BN + ["LayerNorm"])
def test_call_equals_forward_and_train_eval_return_module(rng, name):
    m = cnorm.LayerNorm(3) if name == "LayerNorm" else bn(name)
    shape = (5, 2, 3) if name == "LayerNorm" else BN_SHAPE[name]
    x = data(rng, shape)
    m.eval()
    np.testing.assert_array_equal(m(x), m.forward(x))
    assert m.train() is m and m.training is True
    assert m.eval() is m and m.training is False
    assert m.train(False) is m and m.training is False
    assert m.train(True) is m and m.training is True


@pytest.mark.parametrize("name", BN)
def test_eval_forward_does_not_touch_running_stats(rng, name):
    m = bn(name)
    m(data(rng, BN_SHAPE[name]))
    rm, rv, n = m.running_mean.copy(), m.running_var.copy(), m.num_batches_tracked
    m.eval()
    m(data(rng, BN_SHAPE[name]))
    np.testing.assert_array_equal(m.running_mean, rm)
    np.testing.assert_array_equal(m.running_var, rv)
    assert m.num_batches_tracked == n == 1


@pytest.mark.parametrize("name", BN)
def test_training_without_tracking_keeps_stats_none(rng, name):
    m = bn(name, track_running_stats=False)
    y1 = m(data(rng, BN_SHAPE[name]))
    assert m.running_mean is None and m.num_batches_tracked is None
    axes = (0,) + tuple(range(2, y1.ndim))
    np.testing.assert_allclose(y1.mean(axis=axes), 0, atol=1e-5)


def test_backward_uses_mode_of_forward(rng):
    """Forward in training, then eval(): backward still uses the training formula (and vice versa)."""
    x = data(rng, (8, 3), np.float64)
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
    x1, x2 = data(rng, (5, 3), np.float64), data(rng, (7, 3), np.float64)
    dy = rng.normal(size=(7, 3))
    m(x1)
    m(x2)
    ref = cnorm.BatchNorm1d(3, dtype=np.float64, track_running_stats=False)
    ref(x2)
    np.testing.assert_array_equal(m.backward(dy), ref.backward(dy))


# --------------------------------------------------------------------------- grad accumulation


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", BN + ["LayerNorm"])
def test_grads_accumulate_and_zero_grad(rng, name, dtype):
    if name == "LayerNorm":
        make, shape = (lambda: cnorm.LayerNorm((2, 3), dtype=dtype)), (4, 2, 3)
    else:
        make, shape = (lambda: bn(name, dtype=dtype)), BN_SHAPE[name]
    x1, x2 = data(rng, shape, dtype), data(rng, shape, dtype)
    d1, d2 = data(rng, shape, dtype), data(rng, shape, dtype)
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
    x, d = data(rng, (6, 3), np.float64), rng.normal(size=(6, 3))
    m(x)
    m.backward(d)
    g1 = m.weight_grad.copy()
    m(x)
    m.backward(d)
    np.testing.assert_allclose(m.weight_grad, 2 * g1, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("kw", [dict(affine=False), dict(bias=False)], ids=["noaffine", "nobias"])
def test_grads_none_for_missing_parameters(rng, kw):
    m = cnorm.BatchNorm2d(3, **kw)
    x = data(rng, (2, 3, 2, 2))
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
        m(data(rng, BN_SHAPE[name]))
    m.reset_running_stats()
    np.testing.assert_array_equal(m.running_mean, 0)
    np.testing.assert_array_equal(m.running_var, 1)
    assert m.num_batches_tracked == 0
    assert not np.all(m.weight == 1)  # parameters untouched
    np.testing.assert_array_equal(m.weight, sd["weight"])
    m(data(rng, BN_SHAPE[name]))
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
    m.load_state_dict({"weight": rng.normal(size=4).astype(np.float32),
                       "bias": rng.normal(size=4).astype(np.float32)})
    assert not np.all(m.weight == 1)
    m.reset_parameters()
    np.testing.assert_array_equal(m.weight, 1)
    np.testing.assert_array_equal(m.bias, 0)


# --------------------------------------------------------------------------- state_dict


@pytest.mark.parametrize(
    "kw,keys",
    [
        ({}, ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]),
        (dict(bias=False), ["weight", "running_mean", "running_var", "num_batches_tracked"]),
        (dict(affine=False), ["running_mean", "running_var", "num_batches_tracked"]),
        (dict(track_running_stats=False), ["weight", "bias"]),
        (dict(affine=False, track_running_stats=False), []),
    ],
    ids=["default", "nobias", "noaffine", "notrack", "nothing"],
)
@pytest.mark.parametrize("name", BN)
def test_state_dict_keys_and_types(rng, name, kw, keys):
    m = bn(name, **kw)
    m(data(rng, BN_SHAPE[name]))
    sd = m.state_dict()
    assert list(sd) == keys
    for k, v in sd.items():
        assert isinstance(v, np.ndarray), k
        if k == "num_batches_tracked":
            assert v.shape == () and v.dtype == np.int64 and int(v) == 1
        else:
            assert v.shape == (4,) and v.dtype == np.float32
            np.testing.assert_array_equal(v, getattr(m, k))


def test_state_dict_returns_copies(rng):
    m = cnorm.BatchNorm1d(3)
    m(data(rng, (5, 3)))
    sd = m.state_dict()
    before = {k: np.array(v, copy=True) for k, v in sd.items()}
    for v in sd.values():
        v[...] = 7
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    for k in ("weight", "bias", "running_mean", "running_var"):
        assert not np.shares_memory(sd[k], getattr(m, k))


def test_load_state_dict_copies_and_round_trips(rng):
    a = cnorm.BatchNorm2d(3, dtype=np.float64)
    for _ in range(2):
        a(data(rng, (2, 3, 3, 3), np.float64))
    sd = a.state_dict()
    b = cnorm.BatchNorm2d(3, dtype=np.float64)
    res = b.load_state_dict(sd)
    assert list(res.missing_keys) == [] and list(res.unexpected_keys) == []
    assert res._fields == ("missing_keys", "unexpected_keys")
    assert b.num_batches_tracked == 2 and isinstance(b.num_batches_tracked, int)
    for k in ("weight", "bias", "running_mean", "running_var"):
        np.testing.assert_array_equal(getattr(b, k), sd[k])
        assert not np.shares_memory(getattr(b, k), sd[k]), k
    sd["running_mean"][...] = 99  # later changes to the dict do not leak into the module
    assert not np.any(b.running_mean == 99)
    x = data(rng, (2, 3, 3, 3), np.float64)
    a.eval()
    b.eval()
    np.testing.assert_array_equal(a(x), b(x))


def test_load_state_dict_converts_dtype_and_keeps_module_dtype(rng):
    m = cnorm.BatchNorm1d(3)  # float32
    m.load_state_dict({"weight": np.full(3, 2.0), "bias": np.full(3, 1.0),
                       "running_mean": np.zeros(3), "running_var": np.ones(3),
                       "num_batches_tracked": np.array(5)})
    assert m.weight.dtype == m.bias.dtype == m.running_mean.dtype == np.float32
    np.testing.assert_array_equal(m.weight, 2.0)
    assert m.num_batches_tracked == 5


def test_load_state_dict_missing_keys():
    m = cnorm.BatchNorm2d(3)
    sd = m.state_dict()
    del sd["bias"], sd["running_mean"]
    msg = ('Error(s) in loading state_dict for BatchNorm2d:\n\t'
           'Missing key(s) in state_dict: "bias", "running_mean".')
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        m.load_state_dict(sd)
    res = m.load_state_dict(sd, strict=False)
    assert list(res.missing_keys) == ["bias", "running_mean"] and list(res.unexpected_keys) == []


def test_load_state_dict_unexpected_keys():
    m = cnorm.BatchNorm2d(3)
    sd = m.state_dict()
    sd["foo"] = np.zeros(3, np.float32)
    msg = 'Error(s) in loading state_dict for BatchNorm2d:\n\tUnexpected key(s) in state_dict: "foo".'
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        m.load_state_dict(sd)
    res = m.load_state_dict(sd, strict=False)
    assert list(res.missing_keys) == [] and list(res.unexpected_keys) == ["foo"]


@pytest.mark.parametrize("name", ["BatchNorm1d", "BatchNorm3d", "LayerNorm"])
def test_load_state_dict_error_names_class(name):
    m = getattr(cnorm, name)(3)
    with pytest.raises(RuntimeError, match=re.escape(f"Error(s) in loading state_dict for {name}:\n\t")):
        m.load_state_dict({})


def test_load_state_dict_size_mismatch(rng):
    m = cnorm.BatchNorm2d(3)
    sd = cnorm.BatchNorm2d(4).state_dict()
    msg = ("Error(s) in loading state_dict for BatchNorm2d:\n\tsize mismatch for weight: copying a param with "
           "shape (4,) from checkpoint, the shape in current model is (3,).")
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        m.load_state_dict(sd)
    with pytest.raises(RuntimeError, match=re.escape("size mismatch for running_var: copying a param with "
                                                     "shape (4,) from checkpoint, the shape in current model is (3,).")):
        m.load_state_dict(sd, strict=False)
    np.testing.assert_array_equal(m.weight, 1)


def test_load_state_dict_layer_norm_size_mismatch():
    m = cnorm.LayerNorm((2, 3))
    msg = ("size mismatch for weight: copying a param with shape (6,) from checkpoint, "
           "the shape in current model is (2, 3).")
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        m.load_state_dict({"weight": np.ones(6, np.float32), "bias": np.zeros((2, 3), np.float32)})


def test_load_state_dict_missing_num_batches_tracked_allowed(rng):
    m = cnorm.BatchNorm1d(3)
    m(data(rng, (4, 3)))
    sd = cnorm.BatchNorm1d(3).state_dict()
    del sd["num_batches_tracked"]
    res = m.load_state_dict(sd)
    assert list(res.missing_keys) == [] and list(res.unexpected_keys) == []
    np.testing.assert_array_equal(m.running_mean, 0)
    assert m.num_batches_tracked == 1  # kept, as torch does


def test_load_state_dict_keys_for_notrack():
    m = cnorm.BatchNorm1d(3, track_running_stats=False)
    sd = cnorm.BatchNorm1d(3).state_dict()
    with pytest.raises(RuntimeError, match=re.escape(
            'Unexpected key(s) in state_dict: "running_mean", "running_var", "num_batches_tracked".')):
        m.load_state_dict(sd)


# --------------------------------------------------------------------------- pickle / deepcopy


def trained_modules(rng):
    out = []
    for name in BN:
        for kw in ({}, dict(momentum=None, bias=False), dict(affine=False, track_running_stats=False)):
            m = bn(name, dtype=np.float64, **kw)
            for _ in range(2):
                x = data(rng, BN_SHAPE[name], np.float64)
                m(x)
                m.backward(np.ones_like(x))
            out.append((m, BN_SHAPE[name]))
    for kw in ({}, dict(bias=False), dict(elementwise_affine=False)):
        m = cnorm.LayerNorm((2, 3), eps=1e-3, dtype=np.float64, **kw)
        if m.weight is not None:
            m.load_state_dict({k: rng.normal(size=(2, 3)) for k in m.state_dict()})
        out.append((m, (4, 2, 3)))
    return out


def module_state(m):
    return {k: np.array(v) for k, v in m.state_dict().items()}


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_pickle_and_deepcopy_round_trip(rng, how):
    for m, shape in trained_modules(rng):
        m.eval()
        c = pickle.loads(pickle.dumps(m)) if how == "pickle" else copy.deepcopy(m)
        assert type(c) is type(m)
        assert repr(c) == repr(m)
        assert c.training is False
        sa, sc = module_state(m), module_state(c)
        assert list(sa) == list(sc)
        for k in sa:
            np.testing.assert_array_equal(sc[k], sa[k], err_msg=k)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            a, b = getattr(m, attr, None), getattr(c, attr, None)
            assert (a is None) == (b is None), attr
            if a is not None:
                assert not np.shares_memory(a, b), attr
        x = data(rng, shape, np.float64)
        np.testing.assert_array_equal(c(x), m(x))
        # the copy is independent
        c.train()
        c(data(rng, shape, np.float64))
        if getattr(m, "num_batches_tracked", None) is not None:
            assert c.num_batches_tracked == m.num_batches_tracked + 1
            assert not np.array_equal(c.running_mean, m.running_mean)


def test_pickle_keeps_hyperparameters():
    m = cnorm.BatchNorm3d(5, eps=1e-3, momentum=None, affine=True, track_running_stats=True,
                          dtype=np.float64, bias=False)
    c = pickle.loads(pickle.dumps(m))
    assert (c.num_features, c.eps, c.momentum, c.affine, c.track_running_stats) == (5, 1e-3, None, True, True)
    assert c.bias is None and c.weight.dtype == np.float64
    ln = pickle.loads(pickle.dumps(cnorm.LayerNorm([2, 3], eps=1e-4, bias=False)))
    assert ln.normalized_shape == (2, 3) and ln.eps == 1e-4 and ln.bias is None


def test_deepcopy_keeps_grads_independent(rng):
    m = cnorm.BatchNorm1d(3, dtype=np.float64)
    x = data(rng, (5, 3), np.float64)
    m(x)
    m.backward(np.ones_like(x))
    c = copy.deepcopy(m)
    assert c.weight_grad is not None  # as torch: deepcopy keeps .grad
    np.testing.assert_array_equal(c.weight_grad, m.weight_grad)
    c.weight_grad[...] = 123
    assert not np.any(m.weight_grad == 123)
