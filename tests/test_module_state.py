"""Module state: state_dict keys, types, copies and errors (torch's messages), reprs,
and pickle / copy.deepcopy round trips of every module keeping every piece of state."""

import copy
import pickle
import re

import numpy as np
import pytest
from conftest import BN, BN_SHAPE, assert_nested_equal, assert_same_module_state, bn, raises, sample
from norms import norm_configs

import cnorm

f32 = np.float32


def _trained(norm, config, rng, steps=2):
    """A module after ``steps`` training steps (running stats, counters, accumulated grads)
    with random parameters; and its forward's extra input (AddLayerNorm's residual)."""
    case = norm.small
    m = norm.make(case, **norm.configs[config])
    r = norm.inputs(rng, case, m.dtype)
    for _ in range(steps):
        x = rng.standard_normal(case.shape).astype(m.dtype)
        outs = norm.call(m, x, r)
        norm.module_backward(m, tuple(rng.standard_normal(case.shape).astype(m.dtype) for _ in outs))
    for _, p in m.named_parameters():
        p[...] = rng.uniform(0.5, 1.5, p.shape)
    return m, r


# --------------------------------------------------------------------------- state_dict


@pytest.mark.parametrize(
    "kw,keys",
    [
        ({}, ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]),
        ({"bias": False}, ["weight", "running_mean", "running_var", "num_batches_tracked"]),
        ({"affine": False}, ["running_mean", "running_var", "num_batches_tracked"]),
        ({"track_running_stats": False}, ["weight", "bias"]),
        ({"affine": False, "track_running_stats": False}, []),
    ],
    ids=["default", "nobias", "noaffine", "notrack", "nothing"],
)
@pytest.mark.parametrize("name", BN)
def test_state_dict_keys_and_types(rng, name, kw, keys):
    m = bn(name, **kw)
    m(sample(rng, BN_SHAPE[name]))
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
    m(sample(rng, (5, 3)))
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
        a(sample(rng, (2, 3, 3, 3), np.float64))
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
    x = sample(rng, (2, 3, 3, 3), np.float64)
    a.eval()
    b.eval()
    np.testing.assert_array_equal(a(x), b(x))


def test_load_state_dict_converts_dtype_and_keeps_module_dtype(rng):
    m = cnorm.BatchNorm1d(3)  # float32
    m.load_state_dict(
        {
            "weight": np.full(3, 2.0),
            "bias": np.full(3, 1.0),
            "running_mean": np.zeros(3),
            "running_var": np.ones(3),
            "num_batches_tracked": np.array(5),
        }
    )
    assert m.weight.dtype == m.bias.dtype == m.running_mean.dtype == np.float32
    np.testing.assert_array_equal(m.weight, 2.0)
    assert m.num_batches_tracked == 5


def test_load_state_dict_missing_keys():
    m = cnorm.BatchNorm2d(3)
    sd = m.state_dict()
    del sd["bias"], sd["running_mean"]
    msg = (
        "Error(s) in loading state_dict for BatchNorm2d:\n\t"
        'Missing key(s) in state_dict: "bias", "running_mean".'
    )
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
    msg = (
        "Error(s) in loading state_dict for BatchNorm2d:\n\tsize mismatch for weight: copying a param with "
        "shape (4,) from checkpoint, the shape in current model is (3,)."
    )
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        m.load_state_dict(sd)
    with pytest.raises(
        RuntimeError,
        match=re.escape(
            "size mismatch for running_var: copying a param with "
            "shape (4,) from checkpoint, the shape in current model is (3,)."
        ),
    ):
        m.load_state_dict(sd, strict=False)
    np.testing.assert_array_equal(m.weight, 1)


def test_load_state_dict_layer_norm_size_mismatch():
    m = cnorm.LayerNorm((2, 3))
    msg = (
        "size mismatch for weight: copying a param with shape (6,) from checkpoint, "
        "the shape in current model is (2, 3)."
    )
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        m.load_state_dict({"weight": np.ones(6, np.float32), "bias": np.zeros((2, 3), np.float32)})


def test_load_state_dict_missing_num_batches_tracked_allowed(rng):
    m = cnorm.BatchNorm1d(3)
    m(sample(rng, (4, 3)))
    sd = cnorm.BatchNorm1d(3).state_dict()
    del sd["num_batches_tracked"]
    res = m.load_state_dict(sd)
    assert list(res.missing_keys) == [] and list(res.unexpected_keys) == []
    np.testing.assert_array_equal(m.running_mean, 0)
    assert m.num_batches_tracked == 1  # kept, as torch does


def test_load_state_dict_keys_for_notrack():
    m = cnorm.BatchNorm1d(3, track_running_stats=False)
    sd = cnorm.BatchNorm1d(3).state_dict()
    with pytest.raises(
        RuntimeError,
        match=re.escape(
            'Unexpected key(s) in state_dict: "running_mean", "running_var", "num_batches_tracked".'
        ),
    ):
        m.load_state_dict(sd)


def test_instance_norm_load_state_dict_untracked_with_running_stats(rng):
    m = cnorm.InstanceNorm2d(3, affine=True)
    sd = cnorm.InstanceNorm2d(3, affine=True, track_running_stats=True).state_dict()
    with raises(
        RuntimeError,
        'Unexpected running stats buffer(s) "running_mean" and '
        '"running_var" for InstanceNorm2d with track_running_stats=False.',
    ):
        m.load_state_dict(sd)
    with raises(RuntimeError, 'Unexpected running stats buffer(s) "running_mean" for InstanceNorm2d'):
        m.load_state_dict({"weight": sd["weight"], "bias": sd["bias"], "running_mean": sd["running_mean"]})
    with raises(RuntimeError, 'Unexpected key(s) in state_dict: "num_batches_tracked".'):
        m.load_state_dict({k: sd[k] for k in ("weight", "bias", "num_batches_tracked")})
    sd["weight"][...] = 2
    res = m.load_state_dict({k: sd[k] for k in ("weight", "bias")}, strict=True)
    assert res.missing_keys == [] and res.unexpected_keys == [] and np.all(m.weight == 2)


def test_load_state_dict_is_atomic_on_bad_values():
    m = cnorm.BatchNorm2d(3)
    sd = m.state_dict()
    sd["weight"] = np.full(3, 5.0, f32)
    sd["bias"] = np.array(["a", "b", "c"])
    with pytest.raises(RuntimeError):
        m.load_state_dict(sd)
    np.testing.assert_array_equal(m.weight, np.ones(3, f32))


@pytest.mark.parametrize("norm, config", norm_configs())
def test_state_dict_round_trip(rng, norm, config):
    """Every module: its state_dict loads into a fresh module (copies, not views) that then
    computes the same; a dict without the keys is an error naming the class."""
    m, r = _trained(norm, config, rng)
    fresh = norm.make(norm.small, **norm.configs[config])
    res = fresh.load_state_dict(m.state_dict())
    assert res.missing_keys == [] and res.unexpected_keys == []
    for k, v in m.state_dict().items():
        assert np.array_equal(fresh.state_dict()[k], v), k
    sd = m.state_dict()
    if "weight" in sd:
        sd["weight"][...] = 7  # copies
        assert not np.any(m.weight == 7)
    if sd:
        with raises(RuntimeError, f"Error(s) in loading state_dict for {type(m).__name__}:"):
            fresh.load_state_dict({})
    x = rng.standard_normal(norm.small.shape).astype(m.dtype)
    assert_nested_equal(norm.call(fresh.eval(), x, r), norm.call(m.eval(), x, r), "forward")


# --------------------------------------------------------------------------- repr


def test_reprs():
    assert repr(cnorm.GroupNorm(32, 256)) == "GroupNorm(32, 256, eps=1e-05, affine=True, bias=True)"
    assert repr(cnorm.GroupNorm(2, 4, affine=False)) == "GroupNorm(2, 4, eps=1e-05, affine=False, bias=False)"
    assert repr(cnorm.InstanceNorm2d(64)) == (
        "InstanceNorm2d(64, eps=1e-05, momentum=0.1, affine=False, bias=False, track_running_stats=False)"
    )
    assert repr(cnorm.InstanceNorm1d(3, momentum=None, affine=True, track_running_stats=True)) == (
        "InstanceNorm1d(3, eps=1e-05, momentum=None, affine=True, bias=True, track_running_stats=True)"
    )
    assert repr(cnorm.RMSNorm(1024)) == "RMSNorm((1024,), eps=None, elementwise_affine=True)"
    assert (
        repr(cnorm.RMSNorm([2, 3], eps=1e-6, elementwise_affine=False))
        == "RMSNorm((2, 3), eps=1e-06, elementwise_affine=False)"
    )
    assert (
        repr(cnorm.AddLayerNorm(768)) == "AddLayerNorm((768,), eps=1e-05, elementwise_affine=True, bias=True)"
    )
    assert repr(cnorm.BatchNormReLU2d(64)) == (
        "BatchNormReLU2d(64, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)"
    )


# --------------------------------------------------------------------------- pickle / deepcopy


def _copy(m, how):
    if how == "pickle":
        return pickle.loads(pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL))
    if how == "pickle0":
        return pickle.loads(pickle.dumps(m, protocol=0))
    if how == "deepcopy":
        return copy.deepcopy(m)
    return copy.deepcopy(copy.copy(m))


@pytest.mark.parametrize("how", ["pickle", "pickle0", "deepcopy", "copy"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("norm, config", norm_configs())
def test_pickle_and_deepcopy_round_trip(rng, norm, config, training, how):
    """The copy has the same state, hyperparameters and repr, shares no memory, computes the
    same afterwards and is independent; like torch's autograd graph, the saved forward is
    not pickled (backward needs a new forward, and says so), while .grad is kept."""
    shape = norm.small.shape
    m, r = _trained(norm, config, rng)
    norm.call(m, rng.standard_normal(shape).astype(m.dtype), r)  # a saved forward
    m.train(training)
    c = _copy(m, how)
    assert_same_module_state(m, c)
    for attr in ("weight", "bias", "weight_grad", "bias_grad", "running_mean", "running_var"):
        a, b = getattr(m, attr, None), getattr(c, attr, None)
        assert (a is None) == (b is None), attr
        if a is not None:
            assert not np.shares_memory(a, b), attr
    douts = tuple(rng.standard_normal(shape).astype(m.dtype) for _ in range(norm.n_outputs()))
    if how.startswith("pickle"):
        with pytest.raises(RuntimeError, match="forward"):
            norm.module_backward(c, douts)
    # the copy behaves the same
    x = rng.standard_normal(shape).astype(m.dtype)
    assert_nested_equal(norm.call(c, x, r), norm.call(m, x, r), "forward")
    np.testing.assert_array_equal(norm.module_backward(c, douts), norm.module_backward(m, douts))
    assert_same_module_state(m, c)
    # ... and is independent
    if c.weight_grad is not None:
        c.weight_grad[...] = 123
        assert not np.any(m.weight_grad == 123)
    c.train()
    norm.call(c, rng.standard_normal(shape).astype(m.dtype), r)
    if getattr(c, "running_mean", None) is not None:
        if norm.family != "instance":
            assert c.num_batches_tracked == m.num_batches_tracked + 1
            assert not np.array_equal(c.running_mean, m.running_mean)
        elif c.momentum is not None:  # torch never counts for instance norm: momentum=None freezes
            assert not np.array_equal(c.running_mean, m.running_mean)
        c.running_mean += 1
        assert not np.array_equal(c.running_mean, m.running_mean)
    if c.weight is not None:
        c.weight += 1
        assert not np.array_equal(c.weight, m.weight)
