"""Modules over sequences of train / eval steps against reference state machines (the
float64 reference on NumPy), and the semantics of each module: BatchNormReLU is the ReLU of
BatchNorm, AddLayerNorm is LayerNorm of the sum, InstanceNorm's unbatched input, warnings
and running statistics, GroupNorm's channel check."""

import copy
import re
import warnings

import numpy as np
import pytest
from conftest import (
    DTYPES,
    assert_close,
    bn_axes,
    bn_class,
    channel,
    data,
    dtype_id,
    ln_dx_scale,
    ln_xhat,
    make_bn_data,
    make_ln_data,
    raises,
)
from norms import LN_CASES, ln_id, reference
from reference_models import RefBatchNorm, RefInstanceNorm

import cnorm
import cnorm.functional as F

EPS = 1e-5


# --------------------------------------------------------------------------- BatchNorm

MODULE_SHAPES = [
    (5, 3),
    (64, 7),
    (7, 3, 11),
    (3, 4, 1000),
    (7, 3, 5, 11),
    (2, 3, 1, 1),
    (4, 4, 32, 32),
    (3, 5, 2, 3, 4),
    (2, 3, 1, 5, 7),
]


MODULE_CONFIGS = {
    "default": {},
    "momentum_none": {"momentum": None},
    "momentum_0.5": {"momentum": 0.5},
    "noaffine": {"affine": False},
    "nobias": {"bias": False},
    "notrack": {"track_running_stats": False},
    "notrack_noaffine_none": {"track_running_stats": False, "affine": False, "momentum": None},
    "eps_1e-3": {"eps": 1e-3},
}


STEPS = ["train", "train", "eval", "train", "eval", "train"]


@pytest.mark.parametrize("config", list(MODULE_CONFIGS), ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
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
            assert_close(
                m.weight_grad, ref.weight_grad, dtype, scale=grad_scale_w, err_msg="weight_grad " + msg
            )
        if ref.bias_grad is None:
            assert m.bias_grad is None
        else:
            assert m.bias_grad.dtype == dtype and m.bias_grad.shape == (C,)
            assert_close(m.bias_grad, ref.bias_grad, dtype, scale=grad_scale_b, err_msg="bias_grad " + msg)


@pytest.mark.parametrize(
    "name,ndim",
    [("BatchNormReLU1d", 2), ("BatchNormReLU1d", 3), ("BatchNormReLU2d", 4), ("BatchNormReLU3d", 5)],
)
@pytest.mark.parametrize(
    "config",
    [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False}, {"bias": False}],
    ids=["default", "mom_none", "noaffine", "notrack", "nobias"],
)
def test_batch_norm_relu_module_is_relu_of_batch_norm(rng, name, ndim, config):
    shape = (4, 3, 5, 2, 3)[:ndim]
    m = getattr(cnorm, name)(3, **config)
    bn = getattr(cnorm, name.replace("ReLU", ""))(3, **config)
    assert isinstance(m, type(bn))
    for p, q in zip(m.parameters(), bn.parameters()):
        p[...] = q[...] = rng.normal(0.5, 0.5, p.shape)
    for step in ["train", "train", "eval", "train", "eval"]:
        m.train(step == "train")
        bn.train(step == "train")
        x, dy = data(rng, shape, np.float32)
        y, yb = m(x), bn(x)
        assert np.array_equal(y, np.maximum(yb, 0)), step
        dx = m.backward(dy)
        dxb = bn.backward((dy * (yb > 0)).astype(np.float32))
        # the fused kernel may sum in another order: last-bit differences are allowed
        assert_close(dx, dxb, np.float32, scale=np.abs(dxb).max(), err_msg=step)
        for k, v in bn.state_dict().items():
            assert np.array_equal(m.state_dict()[k], v), (step, k)
        if m.weight is not None:
            assert_close(
                m.weight_grad,
                bn.weight_grad,
                np.float32,
                scale=np.abs(dy).sum(axis=bn_axes(len(shape))),
                err_msg=step,
            )
    assert list(m.state_dict()) == list(bn.state_dict())


# --------------------------------------------------------------------------- LayerNorm

LN_MODULE_CONFIGS = {
    "default": {},
    "nobias": {"bias": False},
    "noaffine": {"elementwise_affine": False},
    "eps_1e-3": {"eps": 1e-3},
}


@pytest.mark.parametrize("config", list(LN_MODULE_CONFIGS), ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
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
        y_ref, mean, rstd = reference.layer_norm_forward(x, ns, w, b, eps)
        assert_close(y, y_ref, dtype, err_msg=f"step {step}")
        dx = m.backward(dy)
        dx_ref, dw, db = reference.layer_norm_backward(dy, x, ns, w, eps)
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


def test_add_layer_norm_module(rng):
    m = cnorm.AddLayerNorm((3, 4), dtype=np.float64)
    m.weight[...] = rng.normal(1, 0.5, (3, 4))
    m.bias[...] = rng.normal(0, 0.5, (3, 4))
    ln = cnorm.LayerNorm((3, 4), dtype=np.float64)
    ln.load_state_dict(m.state_dict())
    x, dy = data(rng, (5, 3, 4), np.float64)
    r = rng.normal(size=(5, 3, 4))
    ds = rng.normal(size=(5, 3, 4))
    y, s = m(x, r)
    assert np.array_equal(s, x + r)
    np.testing.assert_allclose(y, ln(x + r), rtol=1e-13, atol=1e-13)
    dx = m.backward(dy, ds)
    np.testing.assert_allclose(dx, ln.backward(dy) + ds, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.weight_grad, ln.weight_grad, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.bias_grad, ln.bias_grad, rtol=1e-12, atol=1e-12)
    m(x, r)
    with raises(ValueError, "grad_sum has shape (5, 3) but the sum has shape (5, 3, 4)"):
        m.backward(dy, ds[..., 0])
    m.backward(dy)  # the failed call kept the saved state
    with raises(ValueError, "residual has shape (5, 3) but the input has shape (5, 3, 4)"):
        m(x, r[..., 0])
    with raises(TypeError, "residual dtype float32 does not match the input dtype float64"):
        m(x, r.astype(np.float32))
    with raises(TypeError, "input dtype float32 does not match the module dtype float64"):
        m(x.astype(np.float32), r.astype(np.float32))
    with raises(TypeError, "expected a NumPy array for residual, got list"):
        m(x, r.tolist())
    assert list(m.state_dict()) == ["weight", "bias"]
    assert cnorm.AddLayerNorm(4, bias=False).bias is None
    assert cnorm.AddLayerNorm(4, elementwise_affine=False).parameters() == []


# --------------------------------------------------------------------------- InstanceNorm

IN_CONFIGS = {
    "default": {},
    "affine": {"affine": True},
    "track": {"track_running_stats": True},
    "affine_track_m0.3": {"affine": True, "track_running_stats": True, "momentum": 0.3},
    "track_momentum_none": {"track_running_stats": True, "momentum": None},
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("config", list(IN_CONFIGS), ids=list(IN_CONFIGS))
@pytest.mark.parametrize(
    "name,shape",
    [("InstanceNorm1d", (4, 3, 7)), ("InstanceNorm2d", (2, 3, 4, 5)), ("InstanceNorm3d", (2, 3, 2, 3, 4))],
)
def test_instance_norm_module_sequence_matches_reference(rng, name, shape, config, dtype):
    kw = IN_CONFIGS[config]
    C = shape[1]
    m = getattr(cnorm, name)(C, dtype=dtype, **kw)
    ref = RefInstanceNorm(
        C,
        momentum=kw.get("momentum", 0.1),
        affine=kw.get("affine", False),
        track=kw.get("track_running_stats", False),
    )
    if m.weight is not None:
        m.weight[...] = rng.normal(1, 0.5, C)
        m.bias[...] = rng.normal(0, 0.5, C)
        ref.weight, ref.bias = m.weight.astype(np.float64), m.bias.astype(np.float64)
    for step in ["train", "train", "eval", "train", "eval"]:
        m.train(step == "train")
        ref.training = step == "train"
        x, dy = data(rng, shape, dtype, loc=rng.normal(), scale=rng.uniform(0.5, 3))
        y = m(x)
        assert_close(y, ref.forward(x), dtype, err_msg=step)
        dx = m.backward(dy)
        rdx, _, _ = ref.backward(dy)
        assert_close(dx, rdx, dtype, scale=np.abs(rdx).max(), err_msg=step)
        if m.running_mean is not None:
            assert_close(m.running_mean, ref.running_mean, dtype, err_msg=step)
            assert_close(m.running_var, ref.running_var, dtype, err_msg=step)
            assert m.num_batches_tracked == 0  # torch never counts for instance norm
    if kw.get("momentum", 0.1) is None:
        assert np.all(m.running_mean == 0) and np.all(m.running_var == 1)


@pytest.mark.parametrize("track", [False, True], ids=["notrack", "track"])
@pytest.mark.parametrize(
    "name,shape",
    [("InstanceNorm1d", (3, 7)), ("InstanceNorm2d", (3, 4, 5)), ("InstanceNorm3d", (3, 2, 3, 4))],
)
def test_instance_norm_unbatched_input_is_a_batch_of_one(rng, name, shape, track):
    m = getattr(cnorm, name)(3, affine=True, track_running_stats=track)
    m.weight[...] = rng.normal(1, 0.5, 3)
    m2 = copy.deepcopy(m)
    x, dy = data(rng, shape, np.float32)
    y = m(x)
    assert y.shape == shape
    assert np.array_equal(y, m2(x[None])[0])
    dx = m.backward(dy)
    assert dx.shape == shape
    assert np.array_equal(dx, m2.backward(dy[None])[0])
    assert np.array_equal(m.weight_grad, m2.weight_grad)
    if track:
        assert np.array_equal(m.running_mean, m2.running_mean)
        m.eval()
        m2.eval()
        assert np.array_equal(m(x), m2(x[None])[0])
    with raises(ValueError, f"grad_output has shape {(1,) + shape}"):
        m(x)
        m.backward(dy[None])


def test_instance_norm_num_features_mismatch_warns_without_affine(rng):
    x, _ = data(rng, (2, 4, 5), np.float32)
    m = cnorm.InstanceNorm1d(3)
    msg = (
        "input's size at dim=1 does not match num_features. You can silence this warning "
        "by not passing in num_features, which is not used because affine=False"
    )
    with pytest.warns(UserWarning, match=re.escape(msg)) as record:
        y = m(x)
    assert record[0].filename == __file__  # stacklevel: the caller's line
    assert_close(y, reference.instance_norm_forward(x, None, None, None, None, True, 0.1, EPS)[0], np.float32)
    with pytest.warns(UserWarning, match=re.escape(msg.replace("dim=1", "dim=0"))):
        m(x[0])
    with raises(ValueError, "expected input's size at dim=1 to match num_features (3), but got: 4."):
        cnorm.InstanceNorm1d(3, affine=True)(x)
    with raises(ValueError, "expected input's size at dim=0 to match num_features (3), but got: 4."):
        cnorm.InstanceNorm1d(3, affine=True)(x[0])
    # tracked: the running statistics do not fit (torch: a RuntimeError after the warning)
    with pytest.warns(UserWarning), raises(ValueError, "running_mean should contain 4 elements not 3"):
        cnorm.InstanceNorm1d(3, track_running_stats=True)(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cnorm.InstanceNorm1d(4)(x)  # no warning when it matches


def test_instance_norm_eval_without_tracking_uses_input_stats(rng):
    x, _ = data(rng, (2, 3, 6), np.float32)
    m = cnorm.InstanceNorm1d(3)
    y = m(x)
    assert np.array_equal(m.eval()(x), y)
    m = cnorm.InstanceNorm1d(3, track_running_stats=True).eval()
    assert np.array_equal(m(x), F.batch_norm(x, np.zeros(3, np.float32), np.ones(3, np.float32)))


# --------------------------------------------------------------------------- GroupNorm


def test_group_norm_module_channel_count_checked_through_weight_only(rng):
    """torch: GroupNorm(2, 4, affine=False) runs on any C divisible by 2."""
    x, _ = data(rng, (2, 6, 3), np.float32)
    y = cnorm.GroupNorm(2, 4, affine=False)(x)
    assert_close(y, reference.group_norm_forward(x, 2, None, None, EPS)[0], np.float32)
    with raises(
        ValueError,
        "Expected weight to be a vector of size equal to the number of "
        "channels in input, but got weight of shape [4] and input of shape "
        "[2, 6, 3]",
    ):
        cnorm.GroupNorm(2, 4)(x)
