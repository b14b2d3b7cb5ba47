"""Compatibility with torch.nn: state_dicts both ways (torch tensors load directly), reprs,
and the same error messages and warnings as torch."""

import re
import warnings
from typing import Any, Callable, NamedTuple

import numpy as np
import pytest
from conftest import assert_close, assert_same_module_state
from torch_support import (
    BN_CONFIGS,
    BN_INPUTS,
    LN_CONFIGS,
    TF,
    compare_both_modes,
    numpy_state,
    randomize_params,
    to_np,
    torch,
)

import cnorm
import cnorm.functional as F

f32 = np.float32


# --------------------------------------------------------------------------- state_dict round trips


def _bn_case(inp, config):
    """(class name, input shape, constructor keywords, channels) of a batch-norm round trip."""
    name, shape = BN_INPUTS[inp]
    return name, shape, BN_CONFIGS[config], shape[1]


@pytest.mark.parametrize("config", ["default", "momentum_none", "nobias", "noaffine", "notrack"])
@pytest.mark.parametrize("inp", ["1d_NCL", "2d", "3d"])
def test_state_dict_cnorm_to_torch(rng, inp, config):
    name, shape, kw, C = _bn_case(inp, config)
    m = getattr(cnorm, name)(C, **kw)
    if m.weight is not None:
        sd = m.state_dict()
        sd["weight"] = rng.normal(1, 0.5, C).astype(np.float32)
        if "bias" in sd:
            sd["bias"] = rng.normal(0, 0.5, C).astype(np.float32)
        m.load_state_dict(sd)
    for _ in range(3):
        m(rng.normal(0.3, 1.5, shape).astype(np.float32))
    sd = m.state_dict()
    tm = getattr(torch.nn, name)(C, **kw)
    assert list(sd) == list(tm.state_dict())
    result = tm.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()})
    assert not result.missing_keys and not result.unexpected_keys
    if m.num_batches_tracked is not None:
        assert int(tm.num_batches_tracked) == m.num_batches_tracked == 3
    compare_both_modes(m, tm, rng.normal(0.3, 1.5, shape).astype(np.float32))


@pytest.mark.parametrize("config", ["default", "momentum_none", "nobias", "noaffine", "notrack"])
@pytest.mark.parametrize("inp", ["1d_NC", "2d", "3d"])
def test_state_dict_torch_to_cnorm(rng, inp, config):
    name, shape, kw, C = _bn_case(inp, config)
    tm = getattr(torch.nn, name)(C, **kw)
    randomize_params(tm, rng)
    for _ in range(4):
        tm(torch.from_numpy(rng.normal(0.3, 1.5, shape).astype(np.float32)))
    m = getattr(cnorm, name)(C, **kw)
    result = m.load_state_dict(tm.state_dict())  # torch tensors, directly
    assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, to_np(tm.state_dict()[k]), err_msg=k)
    if m.num_batches_tracked is not None:
        assert m.num_batches_tracked == 4
    compare_both_modes(m, tm, rng.normal(0.3, 1.5, shape).astype(np.float32))


@pytest.mark.parametrize("config", ["default", "nobias", "noaffine"])
def test_layer_norm_state_dict_round_trips(rng, config):
    kw = LN_CONFIGS[config]
    tm = torch.nn.LayerNorm((3, 4), **kw)
    randomize_params(tm, rng)
    m = cnorm.LayerNorm((3, 4), **kw)
    m.load_state_dict(tm.state_dict())
    sd = m.state_dict()
    assert list(sd) == list(tm.state_dict())
    tm2 = torch.nn.LayerNorm((3, 4), **kw)
    tm2.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    assert_close(m(x), to_np(tm2(torch.from_numpy(x))), np.float32)
    assert_close(m(x), to_np(tm(torch.from_numpy(x))), np.float32)


def test_missing_num_batches_tracked_keeps_value_like_torch(rng):
    tm = torch.nn.BatchNorm2d(3)
    m = cnorm.BatchNorm2d(3)
    for _ in range(2):
        x = rng.normal(size=(2, 3, 2, 2)).astype(np.float32)
        tm(torch.from_numpy(x))
        m(x)
    sd = {k: v for k, v in numpy_state(torch.nn.BatchNorm2d(3)).items() if k != "num_batches_tracked"}
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    result = m.load_state_dict(sd)
    assert list(result.missing_keys) == []
    assert m.num_batches_tracked == int(tm.num_batches_tracked) == 2
    np.testing.assert_array_equal(m.running_mean, 0)


def test_state_dict_round_trip_through_torch():
    rng = np.random.default_rng(12)
    m = cnorm.BatchNorm2d(4)
    for _ in range(3):
        m(rng.standard_normal((3, 4, 5, 5)).astype(f32))
    tm = torch.nn.BatchNorm2d(4)
    tm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in m.state_dict().items()})
    back = cnorm.BatchNorm2d(4)
    back.load_state_dict(tm.state_dict())
    assert_same_module_state(m, back.train(m.training))


def test_instance_norm_untracked_loads_torch_state_with_running_stats_like_torch():
    """torch's version metadata: a current torch state_dict with running stats for an
    untracked module is just unexpected keys; a plain dict gets torch's old-checkpoint error."""
    tsd = torch.nn.InstanceNorm2d(3, affine=True, track_running_stats=True).state_dict()
    m = cnorm.InstanceNorm2d(3, affine=True)
    tm = torch.nn.InstanceNorm2d(3, affine=True)
    with pytest.raises(RuntimeError) as te:
        tm.load_state_dict(tsd)
    with pytest.raises(RuntimeError) as ce:
        m.load_state_dict(tsd)
    assert str(ce.value) == str(te.value)
    plain = {k: v for k, v in tsd.items() if k != "num_batches_tracked"}
    with pytest.raises(RuntimeError) as te:
        tm.load_state_dict(plain)
    with pytest.raises(RuntimeError) as ce:
        m.load_state_dict(plain)
    assert str(ce.value) == str(te.value)


def test_fused_modules_state_dicts_with_torch(rng):
    """AddLayerNorm <-> torch LayerNorm, BatchNormReLU2d <-> torch BatchNorm2d."""
    tln = torch.nn.LayerNorm(8)
    tbn = torch.nn.BatchNorm2d(3)
    tbn(torch.randn(4, 3, 2, 2))  # running stats and a count
    with torch.no_grad():
        for p in list(tln.parameters()) + list(tbn.parameters()):
            p.copy_(torch.from_numpy(rng.normal(size=tuple(p.shape))))
    for ours, theirs, fresh in [
        (cnorm.AddLayerNorm(8), tln, torch.nn.LayerNorm(8)),
        (cnorm.BatchNormReLU2d(3), tbn, torch.nn.BatchNorm2d(3)),
    ]:
        ours.load_state_dict(theirs.state_dict())
        sd = ours.state_dict()
        assert list(sd) == list(theirs.state_dict())
        for k, v in theirs.state_dict().items():
            assert np.array_equal(sd[k], v.numpy()), k
        fresh.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()})
        for k, v in fresh.state_dict().items():
            assert np.array_equal(v.numpy(), sd[k]), k


# --------------------------------------------------------------------------- repr

REPR_CASES = [
    ("BatchNorm1d", (3,), {}),
    ("BatchNorm1d", (3,), {"momentum": None, "affine": False, "track_running_stats": False}),
    ("BatchNorm2d", (64,), {}),
    ("BatchNorm2d", (64,), {"bias": False}),
    ("BatchNorm2d", (8,), {"eps": 1e-3, "momentum": 0.01}),
    ("BatchNorm2d", (8,), {"eps": 0.5, "momentum": 1}),
    ("BatchNorm2d", (0,), {"affine": False}),
    ("BatchNorm3d", (16,), {"track_running_stats": False}),
    ("LayerNorm", (768,), {}),
    ("LayerNorm", ([3, 4],), {"elementwise_affine": False}),
    ("LayerNorm", ((5,),), {"bias": False}),
    ("LayerNorm", (4,), {"eps": 0}),
    ("LayerNorm", (4,), {"eps": 1e-6, "elementwise_affine": False, "bias": False}),
]


@pytest.mark.parametrize("name,args,kw", REPR_CASES, ids=lambda v: str(v))
def test_repr_matches_torch(name, args, kw):
    assert repr(getattr(cnorm, name)(*args, **kw)) == repr(getattr(torch.nn, name)(*args, **kw))


MODULE_PAIRS = [
    ("GroupNorm", (32, 256), {}),
    ("GroupNorm", (4, 8), {"affine": False}),
    ("GroupNorm", (4, 8), {"bias": False, "eps": 1e-3}),
    ("InstanceNorm1d", (3,), {}),
    ("InstanceNorm2d", (64,), {"affine": True, "track_running_stats": True}),
    ("InstanceNorm3d", (5,), {"momentum": None, "affine": True, "bias": False}),
    ("InstanceNorm2d", (5,), {"track_running_stats": True}),
    ("RMSNorm", (1024,), {}),
    ("RMSNorm", ([2, 3],), {"eps": 1e-6, "elementwise_affine": False}),
]


@pytest.mark.parametrize("pair", MODULE_PAIRS, ids=lambda p: f"{p[0]}{p[1]}{p[2]}")
def test_repr_and_state_dict_round_trips_with_torch(rng, pair):
    name, args, kw = pair
    m = getattr(cnorm, name)(*args, **kw)
    tm = getattr(torch.nn, name)(*args, **kw)
    assert repr(m) == repr(tm)
    # torch -> cnorm
    with torch.no_grad():
        for _k, v in tm.state_dict().items():
            if v.dtype.is_floating_point:
                v.copy_(torch.from_numpy(rng.normal(1, 0.5, tuple(v.shape))))
            else:
                v.fill_(7)
    tsd = tm.state_dict()
    res = m.load_state_dict(tsd)
    assert res.missing_keys == [] and res.unexpected_keys == []
    sd = m.state_dict()
    assert list(sd) == list(tsd)
    for k in sd:
        assert np.array_equal(sd[k], tsd[k].numpy()), k
    # cnorm -> torch
    tm2 = getattr(torch.nn, name)(*args, **kw)
    res = tm2.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
    assert res.missing_keys == [] and res.unexpected_keys == []
    for k, v in tm2.state_dict().items():
        assert np.array_equal(v.numpy(), sd[k]), k


# --------------------------------------------------------------------------- errors and warnings: the same message as torch


def torch_message(fn):
    with pytest.raises(Exception) as info:
        fn()
    return str(info.value)


def cnorm_message(fn):
    with pytest.raises((ValueError, TypeError, RuntimeError)) as info:
        fn()
    return str(info.value)


def torch_size_as_tuple(msg):
    """torch prints torch.Size([1, 3]) where cnorm (as its batch norms) prints (1, 3)."""
    return re.sub(
        r"torch\.Size\(\[([^\]]*)\]\)",
        lambda mo: str(tuple(int(v) for v in mo.group(1).split(", ") if v)),
        msg,
    )


class _Lib(NamedTuple):
    """One side of an error case: module classes, functional API, array constructors."""

    nn: Any
    F: Any
    zeros: Callable
    ones: Callable


TORCH_LIB = _Lib(torch.nn, TF, torch.zeros, torch.ones)
CNORM_LIB = _Lib(cnorm, F, lambda shape: np.zeros(shape, f32), lambda shape: np.ones(shape, f32))


def both(call):
    """(torch call, cnorm call): ``call(lib)`` on torch's side and on cnorm's."""
    return (lambda: call(TORCH_LIB), lambda: call(CNORM_LIB))


ERROR_CASES = {
    # name: (torch call, cnorm call)
    "gn_ctor_divisible": both(lambda t: t.nn.GroupNorm(3, 4)),
    "gn_not_divisible": both(lambda t: t.F.group_norm(t.zeros((2, 4, 3)), 3)),
    "gn_1d": both(lambda t: t.F.group_norm(t.zeros(4), 2)),
    "gn_one_value": both(lambda t: t.F.group_norm(t.zeros((1, 2)), 2)),
    "gn_one_value_3d": both(lambda t: t.nn.GroupNorm(2, 2)(t.zeros((1, 2, 1)))),
    "gn_negative_groups": both(lambda t: t.F.group_norm(t.zeros((2, 4, 3)), -2)),
    "gn_float_groups": both(lambda t: t.F.group_norm(t.zeros((2, 4, 3)), 2.0)),
    "gn_weight": both(lambda t: t.F.group_norm(t.zeros((2, 4, 3)), 2, t.ones(3))),
    "gn_module_channels": both(lambda t: t.nn.GroupNorm(2, 4)(t.zeros((2, 6, 3)))),
    "in_spatial": both(lambda t: t.nn.InstanceNorm1d(3)(t.zeros((2, 3, 1)))),
    "in_spatial_unbatched": both(lambda t: t.nn.InstanceNorm2d(3)(t.zeros((3, 1, 1)))),
    "in_spatial_eval_untracked": both(lambda t: t.nn.InstanceNorm1d(3).eval()(t.zeros((2, 3, 1)))),
    "in_f_spatial_2d": both(lambda t: t.F.instance_norm(t.zeros((2, 3)))),
    "in1d_ndim": both(lambda t: t.nn.InstanceNorm1d(3)(t.zeros((2, 3, 4, 5)))),
    "in2d_ndim": both(lambda t: t.nn.InstanceNorm2d(3)(t.zeros((2, 3)))),
    "in3d_ndim": both(lambda t: t.nn.InstanceNorm3d(3)(t.zeros((2, 3, 4)))),
    "in_affine_mismatch": both(lambda t: t.nn.InstanceNorm1d(3, affine=True)(t.zeros((2, 4, 5)))),
    "in_affine_mismatch_unbatched": both(lambda t: t.nn.InstanceNorm1d(3, affine=True)(t.zeros((4, 5)))),
    "in_f_no_running": both(lambda t: t.F.instance_norm(t.zeros((2, 3, 4)), use_input_stats=False)),
    "in_f_one_running": both(lambda t: t.F.instance_norm(t.zeros((2, 3, 4)), t.zeros(3), None)),
    "rms_shape": both(lambda t: t.F.rms_norm(t.zeros((2, 3)), (4,))),
    "rms_shape_2": both(lambda t: t.F.rms_norm(t.zeros((2, 3, 4)), (2, 4))),
    "rms_ndim": both(lambda t: t.F.rms_norm(t.zeros((2, 3)), (1, 2, 3))),
    "rms_empty_shape": both(lambda t: t.F.rms_norm(t.zeros((2, 3)), ())),
    "rms_weight": both(lambda t: t.F.rms_norm(t.zeros((2, 3)), (3,), t.ones(4))),
    "rms_module": both(lambda t: t.nn.RMSNorm(3)(t.zeros((2, 4)))),
    "bnr_one_value": (
        lambda: torch.nn.BatchNorm1d(3)(torch.zeros(1, 3)),
        lambda: cnorm.BatchNormReLU1d(3)(np.zeros((1, 3), np.float32)),
    ),
    "bnr_ndim": (
        lambda: torch.nn.BatchNorm2d(3)(torch.zeros(1, 3, 2)),
        lambda: cnorm.BatchNormReLU2d(3)(np.zeros((1, 3, 2), np.float32)),
    ),
    "bnr_eps": (
        lambda: TF.batch_norm(torch.zeros(2, 3), None, None, training=True, eps=0.0),
        lambda: F.batch_norm_relu(np.zeros((2, 3), np.float32), None, None, training=True, eps=0.0),
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_messages_match_torch(case):
    tfn, cfn = ERROR_CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = torch_size_as_tuple(torch_message(tfn))
        got = cnorm_message(cfn)
    assert got == expected


def test_group_norm_bias_message_names_the_bias_shape():
    """torch 2.13 prints the WEIGHT's shape in its bias message (a torch slip); cnorm prints
    the bias's own shape, otherwise the same words."""
    msg = torch_message(lambda: TF.group_norm(torch.zeros(2, 4, 3), 2, torch.ones(4), torch.ones(5)))
    assert msg.startswith("Expected bias to be a vector of size equal to the number of channels")
    got = cnorm_message(
        lambda: F.group_norm(
            np.zeros((2, 4, 3), np.float32), 2, np.ones(4, np.float32), np.ones(5, np.float32)
        )
    )
    assert got == msg.replace("bias of shape [4]", "bias of shape [5]")


@pytest.mark.parametrize("shape", [(2, 4, 5), (4, 5)], ids=["batched", "unbatched"])
def test_instance_norm_mismatch_warning_matches_torch(shape):
    with pytest.warns(UserWarning) as tw:
        torch.nn.InstanceNorm1d(3)(torch.zeros(shape))
    with pytest.warns(UserWarning) as cw:
        cnorm.InstanceNorm1d(3)(np.zeros(shape, np.float32))
    assert [str(w.message) for w in cw] == [str(w.message) for w in tw]


def test_instance_norm_tracked_mismatch_warns_then_fails_like_torch():
    x = np.zeros((2, 4, 5), np.float32)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="running_mean should contain"):
        torch.nn.InstanceNorm1d(3, track_running_stats=True)(torch.from_numpy(x))
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="running_mean should contain"):
        cnorm.InstanceNorm1d(3, track_running_stats=True)(x)
