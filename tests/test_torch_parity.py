"""Parity with torch.nn (2.13, CPU): outputs, running stats, gradients, state_dict, repr."""

import numpy as np
import pytest

import cnorm

from conftest import DTYPES, assert_close, bn_axes

torch = pytest.importorskip("torch")

TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}

BN_INPUTS = {
    "1d_NC": ("BatchNorm1d", (6, 5)),
    "1d_NCL": ("BatchNorm1d", (4, 5, 7)),
    "2d": ("BatchNorm2d", (3, 5, 4, 6)),
    "3d": ("BatchNorm3d", (2, 5, 3, 2, 4)),
}

BN_CONFIGS = {
    "default": dict(),
    "momentum_none": dict(momentum=None),
    "momentum_0.3": dict(momentum=0.3),
    "eps_1e-2": dict(eps=1e-2),
    "noaffine": dict(affine=False),
    "nobias": dict(bias=False),
    "notrack": dict(track_running_stats=False),
    "notrack_momentum_none": dict(track_running_stats=False, momentum=None),
    "noaffine_notrack": dict(affine=False, track_running_stats=False),
}

STEPS = ["train", "train", "eval", "train", "eval", "eval", "train"]


def to_np(t):
    return t.detach().numpy()


def torch_bn(name, C, dtype, **kw):
    return getattr(torch.nn, name)(C, dtype=TORCH_DTYPE[np.dtype(dtype)], **kw)


def randomize_params(tm, rng):
    with torch.no_grad():
        if tm.weight is not None:
            tm.weight.copy_(torch.from_numpy(rng.normal(1.0, 0.5, tm.weight.shape)))
        if tm.bias is not None:
            tm.bias.copy_(torch.from_numpy(rng.normal(0.0, 0.5, tm.bias.shape)))


def numpy_state(tm):
    return {k: v.detach().numpy().copy() for k, v in tm.state_dict().items()}


def compare_state(m, tm, dtype, msg=""):
    for name in ("running_mean", "running_var"):
        tv = getattr(tm, name)
        if tv is None:
            assert getattr(m, name) is None, name
        else:
            assert_close(getattr(m, name), to_np(tv), dtype, err_msg=f"{name} {msg}")
    if tm.num_batches_tracked is None:
        assert m.num_batches_tracked is None
    else:
        assert m.num_batches_tracked == int(tm.num_batches_tracked), msg


@pytest.mark.parametrize("config", list(BN_CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("inp", list(BN_INPUTS))
def test_batch_norm_matches_torch(rng, inp, dtype, config):
    name, shape = BN_INPUTS[inp]
    kw = BN_CONFIGS[config]
    C = shape[1]
    tm = torch_bn(name, C, dtype, **kw)
    randomize_params(tm, rng)
    m = getattr(cnorm, name)(C, dtype=dtype, **kw)
    m.load_state_dict(numpy_state(tm))
    axes = bn_axes(len(shape))
    sum_abs_dy = 0.0
    for step, mode in enumerate(STEPS):
        msg = f"step {step} ({mode})"
        assert m.train(mode == "train") is m
        tm.train(mode == "train")
        x = (rng.normal(0.0, 2.0, shape) + rng.normal(0.5, 1.0, (1, C) + (1,) * (len(shape) - 2))).astype(dtype)
        dy = rng.normal(size=shape).astype(dtype)
        tx = torch.from_numpy(x.copy()).requires_grad_(True)
        ty = tm(tx)
        y = m(x)
        assert_close(y, to_np(ty), dtype, err_msg="y " + msg)
        compare_state(m, tm, dtype, msg)
        ty.backward(torch.from_numpy(dy.copy()))
        dx = m.backward(dy)
        assert_close(dx, to_np(tx.grad), dtype, err_msg="dx " + msg)
        sum_abs_dy = sum_abs_dy + np.sum(np.abs(dy.astype(np.float64)), axis=axes)
        for pname in ("weight", "bias"):
            tp = getattr(tm, pname)
            grad = getattr(m, pname + "_grad")
            if tp is None:
                assert getattr(m, pname) is None and grad is None, pname
            else:
                assert grad.dtype == dtype
                assert_close(grad, to_np(tp.grad), dtype, scale=5 * sum_abs_dy, err_msg=f"{pname}_grad {msg}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4), (2, 3, 0), (0, 3, 2, 2), (2, 3, 2, 0, 1)], ids=str)
def test_batch_norm_empty_batch_matches_torch(shape, dtype):
    name = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}[len(shape)]
    tm = torch_bn(name, 3, dtype, momentum=None)
    m = getattr(cnorm, name)(3, dtype=dtype, momentum=None)
    x = np.zeros(shape, dtype)
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = tm(tx)
    y = m(x)
    assert y.shape == tuple(ty.shape)
    compare_state(m, tm, dtype)
    ty.backward(torch.zeros(shape, dtype=TORCH_DTYPE[np.dtype(dtype)]))
    dx = m.backward(np.zeros(shape, dtype))
    assert dx.shape == shape
    np.testing.assert_array_equal(m.weight_grad, to_np(tm.weight.grad))
    np.testing.assert_array_equal(m.bias_grad, to_np(tm.bias.grad))


def test_batch_norm_momentum_none_is_cumulative_average(rng):
    """After k training steps with momentum=None, running_mean is the plain average of batch means."""
    m = cnorm.BatchNorm1d(4, momentum=None, dtype=np.float64)
    tm = torch.nn.BatchNorm1d(4, momentum=None, dtype=torch.float64)
    means = []
    for _ in range(5):
        x = rng.normal(rng.normal(size=4), 1.0, (10, 4))
        means.append(x.mean(axis=0))
        m(x)
        tm(torch.from_numpy(x))
    np.testing.assert_allclose(m.running_mean, np.mean(means, axis=0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(m.running_mean, to_np(tm.running_mean), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(m.running_var, to_np(tm.running_var), rtol=1e-12, atol=1e-14)
    assert m.num_batches_tracked == 5


# --------------------------------------------------------------------------- LayerNorm

LN_CONFIGS = {
    "default": dict(),
    "nobias": dict(bias=False),
    "noaffine": dict(elementwise_affine=False),
    "noaffine_nobias": dict(elementwise_affine=False, bias=False),
    "eps_1e-2": dict(eps=1e-2),
}

LN_INPUTS = {
    "1d": ((8, 16), 16),
    "3d_last": ((2, 3, 10), (10,)),
    "2dim_ns": ((2, 3, 4, 5), (4, 5)),
    "3dim_ns": ((3, 2, 3, 4), [2, 3, 4]),
    "D1": ((5, 1), 1),
}


@pytest.mark.parametrize("config", list(LN_CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("inp", list(LN_INPUTS))
def test_layer_norm_matches_torch(rng, inp, dtype, config):
    shape, ns = LN_INPUTS[inp]
    kw = LN_CONFIGS[config]
    tm = torch.nn.LayerNorm(ns, dtype=TORCH_DTYPE[np.dtype(dtype)], **kw)
    randomize_params(tm, rng)
    m = cnorm.LayerNorm(ns, dtype=dtype, **kw)
    assert m.normalized_shape == tm.normalized_shape
    m.load_state_dict(numpy_state(tm))
    nd = len(tm.normalized_shape)
    lead_axes = tuple(range(len(shape) - nd))
    sum_abs_dy = 0.0
    for step, mode in enumerate(["train", "eval", "train"]):
        msg = f"step {step}"
        m.train(mode == "train")
        tm.train(mode == "train")
        x = rng.normal(0.5, 2.0, shape).astype(dtype)
        dy = rng.normal(size=shape).astype(dtype)
        tx = torch.from_numpy(x.copy()).requires_grad_(True)
        ty = tm(tx)
        y = m(x)
        assert_close(y, to_np(ty), dtype, err_msg="y " + msg)
        ty.backward(torch.from_numpy(dy.copy()))
        dx = m.backward(dy)
        # rows of one element: rstd = 1/sqrt(eps) amplifies rounding
        assert_close(dx, to_np(tx.grad), dtype, scale=32.0 if inp == "D1" else 1.0, err_msg="dx " + msg)
        sum_abs_dy = sum_abs_dy + np.sum(np.abs(dy.astype(np.float64)), axis=lead_axes)
        for pname in ("weight", "bias"):
            tp = getattr(tm, pname)
            grad = getattr(m, pname + "_grad")
            if tp is None:
                assert getattr(m, pname) is None and grad is None, pname
            else:
                assert grad.shape == tuple(tp.shape)
                assert_close(grad, to_np(tp.grad), dtype, scale=5 * sum_abs_dy, err_msg=f"{pname}_grad {msg}")


def test_layer_norm_eps_zero_constant_row_gives_nan_like_torch():
    x = np.ones((2, 4), np.float32)
    y = cnorm.LayerNorm(4, eps=0.0)(x)
    ty = torch.nn.LayerNorm(4, eps=0.0)(torch.from_numpy(x))
    assert np.isnan(to_np(ty)).all()
    assert np.isnan(y).all()


# --------------------------------------------------------------------------- state_dict round trips


@pytest.mark.parametrize("config", ["default", "momentum_none", "nobias", "noaffine", "notrack"])
@pytest.mark.parametrize("inp", ["1d_NCL", "2d", "3d"])
def test_state_dict_cnorm_to_torch(rng, inp, config):
    name, shape = BN_INPUTS[inp]
    kw = BN_CONFIGS[config]
    C = shape[1]
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
    x = rng.normal(0.3, 1.5, shape).astype(np.float32)
    for mode in (False, True):
        m.train(mode)
        tm.train(mode)
        assert_close(m(x), to_np(tm(torch.from_numpy(x))), np.float32, err_msg=f"training={mode}")
        compare_state(m, tm, np.float32)


@pytest.mark.parametrize("config", ["default", "momentum_none", "nobias", "noaffine", "notrack"])
@pytest.mark.parametrize("inp", ["1d_NC", "2d", "3d"])
def test_state_dict_torch_to_cnorm(rng, inp, config):
    name, shape = BN_INPUTS[inp]
    kw = BN_CONFIGS[config]
    C = shape[1]
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
    x = rng.normal(0.3, 1.5, shape).astype(np.float32)
    for mode in (False, True):
        m.train(mode)
        tm.train(mode)
        assert_close(m(x), to_np(tm(torch.from_numpy(x))), np.float32, err_msg=f"training={mode}")
        compare_state(m, tm, np.float32)


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


# --------------------------------------------------------------------------- repr

REPR_CASES = [
    ("BatchNorm1d", (3,), {}),
    ("BatchNorm1d", (3,), dict(momentum=None, affine=False, track_running_stats=False)),
    ("BatchNorm2d", (64,), {}),
    ("BatchNorm2d", (64,), dict(bias=False)),
    ("BatchNorm2d", (8,), dict(eps=1e-3, momentum=0.01)),
    ("BatchNorm2d", (8,), dict(eps=0.5, momentum=1)),
    ("BatchNorm2d", (0,), dict(affine=False)),
    ("BatchNorm3d", (16,), dict(track_running_stats=False)),
    ("LayerNorm", (768,), {}),
    ("LayerNorm", ([3, 4],), dict(elementwise_affine=False)),
    ("LayerNorm", ((5,),), dict(bias=False)),
    ("LayerNorm", (4,), dict(eps=0)),
    ("LayerNorm", (4,), dict(eps=1e-6, elementwise_affine=False, bias=False)),
]


@pytest.mark.parametrize("name,args,kw", REPR_CASES, ids=lambda v: str(v))
def test_repr_matches_torch(name, args, kw):
    assert repr(getattr(cnorm, name)(*args, **kw)) == repr(getattr(torch.nn, name)(*args, **kw))
