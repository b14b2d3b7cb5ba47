"""Parity with torch.nn (2.13, CPU) of every module and functional form: outputs, gradients
(input, weight, bias), running statistics over train / eval steps; zero-size inputs and
eps edge cases; the float64 reference itself against torch."""

import warnings

import numpy as np
import pytest
from conftest import DTYPES, assert_close, bn_axes, dtype_id
from norms import BY_NAME, norm_cases, reference
from torch_support import (
    BN_CONFIGS,
    BN_INPUTS,
    LN_CONFIGS,
    TF,
    TORCH_DTYPE,
    compare_grads,
    compare_state,
    numpy_state,
    randomize_params,
    run_parity_steps,
    sync_params,
    to_np,
    torch,
    torch_bn,
    torch_forward,
    torch_twin,
    tt,
)

import cnorm
import cnorm.functional as F

BN_STEPS = ["train", "train", "eval", "train", "eval", "eval", "train"]
STEPS = ["train", "train", "eval", "train", "eval", "train"]


# --------------------------------------------------------------------------- BatchNorm, LayerNorm


def inputs_dtypes_configs(inputs, configs):
    """Parametrize a module-vs-torch test over the names of ``inputs``, the dtypes and the
    names of ``configs``."""

    def parametrize(test):
        test = pytest.mark.parametrize("inp", list(inputs))(test)
        test = pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)(test)
        return pytest.mark.parametrize("config", list(configs))(test)

    return parametrize


@inputs_dtypes_configs(BN_INPUTS, BN_CONFIGS)
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
    for step, mode in enumerate(BN_STEPS):
        msg = f"step {step} ({mode})"
        assert m.train(mode == "train") is m
        tm.train(mode == "train")
        x = (rng.normal(0.0, 2.0, shape) + rng.normal(0.5, 1.0, (1, C) + (1,) * (len(shape) - 2))).astype(
            dtype
        )
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
        compare_grads(m, tm, dtype, 5 * sum_abs_dy, msg)


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


LN_INPUTS = {
    "1d": ((8, 16), 16),
    "3d_last": ((2, 3, 10), (10,)),
    "2dim_ns": ((2, 3, 4, 5), (4, 5)),
    "3dim_ns": ((3, 2, 3, 4), [2, 3, 4]),
    "D1": ((5, 1), 1),
}


@inputs_dtypes_configs(LN_INPUTS, LN_CONFIGS)
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
        compare_grads(m, tm, dtype, 5 * sum_abs_dy, msg)


def test_layer_norm_eps_zero_constant_row_gives_nan_like_torch():
    x = np.ones((2, 4), np.float32)
    y = cnorm.LayerNorm(4, eps=0.0)(x)
    ty = torch.nn.LayerNorm(4, eps=0.0)(torch.from_numpy(x))
    assert np.isnan(to_np(ty)).all()
    assert np.isnan(y).all()


# --------------------------------------------------------------------------- GroupNorm, InstanceNorm, RMSNorm

GN_CONFIGS = [
    (3, 6, (4, 6, 5), {}),
    (4, 8, (2, 8, 3, 3), {}),
    (1, 4, (3, 4, 2, 2, 2), {}),
    (4, 4, (2, 4, 7), {"eps": 1e-3}),
    (2, 6, (5, 6), {"affine": False}),
    (32, 64, (2, 64, 5, 5), {"bias": False}),
    (2, 4, (3, 4, 1031), {}),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("cfg", GN_CONFIGS, ids=lambda c: f"G{c[0]}-C{c[1]}-{c[2]}-{c[3]}")
def test_group_norm_module_parity(rng, num_threads, cfg, dtype):
    G, C, shape, kw = cfg
    m = cnorm.GroupNorm(G, C, dtype=dtype, **kw)
    tm = torch.nn.GroupNorm(G, C, dtype=TORCH_DTYPE[np.dtype(dtype)], **kw)
    assert repr(m) == repr(tm)
    sync_params(m, tm, rng)
    run_parity_steps(rng, m, tm, STEPS[:3], shape, dtype, bn_axes(len(shape)), 2)


IN_CONFIGS = {
    "default": {},
    "affine": {"affine": True},
    "affine_nobias": {"affine": True, "bias": False},
    "track": {"track_running_stats": True},
    "affine_track_m0.3": {"affine": True, "track_running_stats": True, "momentum": 0.3},
    "track_momentum_none": {"track_running_stats": True, "momentum": None},
    "eps_1e-2": {"eps": 1e-2, "affine": True},
}


IN_SHAPES = {
    "1d": ("InstanceNorm1d", (4, 3, 7)),
    "1d_unbatched": ("InstanceNorm1d", (3, 9)),
    "2d": ("InstanceNorm2d", (2, 3, 4, 5)),
    "2d_unbatched": ("InstanceNorm2d", (3, 4, 5)),
    "3d": ("InstanceNorm3d", (2, 3, 2, 3, 4)),
    "3d_unbatched": ("InstanceNorm3d", (3, 2, 3, 4)),
    "1d_long": ("InstanceNorm1d", (2, 3, 1031)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("config", list(IN_CONFIGS))
@pytest.mark.parametrize("inp", list(IN_SHAPES))
def test_instance_norm_module_parity(rng, num_threads, inp, config, dtype):
    name, shape = IN_SHAPES[inp]
    kw = IN_CONFIGS[config]
    C = 3
    m = getattr(cnorm, name)(C, dtype=dtype, **kw)
    tm = getattr(torch.nn, name)(C, dtype=TORCH_DTYPE[np.dtype(dtype)], **kw)
    assert repr(m) == repr(tm)
    sync_params(m, tm, rng)
    no_batch_dim = BY_NAME[name].ndims[0] - 1  # an unbatched input: (C, *spatial)
    batched = len(shape) == no_batch_dim + 1
    red = ((0,) if batched else ()) + tuple(range(len(shape) - no_batch_dim + 1, len(shape)))
    run_parity_steps(rng, m, tm, STEPS, shape, dtype, red, 3, buffers=True)
    assert m.num_batches_tracked in (None, 0)  # torch never counts for instance norm


RMS_CONFIGS = [
    ((5,), (4, 3, 5), {}),
    ((1024,), (8, 1024), {}),
    ((3, 7), (2, 3, 7), {"eps": 1e-6}),
    ((11,), (11,), {"elementwise_affine": False}),
    ((4,), (6, 4), {"eps": 0.1}),
    ((513,), (4, 513), {}),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("cfg", RMS_CONFIGS, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_rms_norm_module_parity(rng, num_threads, cfg, dtype):
    ns, shape, kw = cfg
    m = cnorm.RMSNorm(ns, dtype=dtype, **kw)
    tm = torch.nn.RMSNorm(ns, dtype=TORCH_DTYPE[np.dtype(dtype)], **kw)
    assert repr(m) == repr(tm)
    sync_params(m, tm, rng)
    run_parity_steps(rng, m, tm, STEPS[:3], shape, dtype, tuple(range(len(shape) - len(ns))), 3)


# --------------------------------------------------------------------------- fused


@pytest.mark.parametrize("with_dsum", [False, True], ids=["dsumNone", "dsum"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize(
    "cfg",
    [
        ((16,), (4, 8, 16), {}),
        ((3, 7), (5, 3, 7), {"bias": False}),
        ((1024,), (2, 4, 1024), {"eps": 1e-6}),
        ((9,), (6, 9), {"elementwise_affine": False}),
    ],
    ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}",
)
def test_add_layer_norm_module_parity(rng, num_threads, cfg, dtype, with_dsum):
    """torch side: the unfused s = x + r; y = layer_norm(s); both gradients of x and r."""
    ns, shape, kw = cfg
    m = cnorm.AddLayerNorm(ns, dtype=dtype, **kw)
    tm = torch.nn.LayerNorm(ns, dtype=TORCH_DTYPE[np.dtype(dtype)], **kw)
    assert repr(m) == repr(tm).replace("LayerNorm", "AddLayerNorm")
    sync_params(m, tm, rng)
    x = rng.normal(0.5, 2, shape).astype(dtype)
    r = rng.normal(-1, 1, shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    ds = rng.normal(size=shape).astype(dtype) if with_dsum else None
    y, s = m(x, r)
    dx = m.backward(dy, ds)
    xt, rt = tt(x, True), tt(r, True)
    st = xt + rt
    yt = tm(st)
    loss = (yt * tt(dy)).sum() + ((st * tt(ds)).sum() if with_dsum else 0)
    loss.backward()
    assert np.array_equal(s, to_np(st))
    assert_close(y, to_np(yt), dtype)
    assert_close(dx, to_np(xt.grad), dtype, scale=np.abs(to_np(xt.grad)).max())
    assert_close(dx, to_np(rt.grad), dtype, scale=np.abs(to_np(rt.grad)).max())
    compare_grads(m, tm, dtype, np.abs(dy).sum(axis=tuple(range(len(shape) - len(ns)))) * 3, "")
    assert list(m.state_dict()) == list(tm.state_dict())


BNR = {
    "1d_NC": ("BatchNormReLU1d", "BatchNorm1d", (6, 5)),
    "1d_NCL": ("BatchNormReLU1d", "BatchNorm1d", (4, 5, 7)),
    "2d": ("BatchNormReLU2d", "BatchNorm2d", (3, 5, 4, 6)),
    "3d": ("BatchNormReLU3d", "BatchNorm3d", (2, 5, 3, 2, 4)),
}


BNR_CONFIGS = {
    "default": {},
    "momentum_none": {"momentum": None},
    "noaffine": {"affine": False},
    "notrack": {"track_running_stats": False},
    "nobias": {"bias": False},
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("config", list(BNR_CONFIGS))
@pytest.mark.parametrize("inp", list(BNR))
def test_batch_norm_relu_module_parity(rng, num_threads, inp, config, dtype):
    name, tname, shape = BNR[inp]
    kw = BNR_CONFIGS[config]
    m = getattr(cnorm, name)(5, dtype=dtype, **kw)
    tbn = getattr(torch.nn, tname)(5, dtype=TORCH_DTYPE[np.dtype(dtype)], **kw)
    tm = torch.nn.Sequential(tbn, torch.nn.ReLU())
    assert repr(m) == repr(tbn).replace(tname, name)
    sync_params(m, tbn, rng)
    run_parity_steps(rng, m, tm, STEPS, shape, dtype, bn_axes(len(shape)), 3, holder=tbn, buffers=True)


# --------------------------------------------------------------------------- functional


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_functional_parity(rng, dtype):
    x = rng.normal(0.5, 2, (4, 6, 5, 3)).astype(dtype)
    w = rng.normal(1, 0.5, 6).astype(dtype)
    b = rng.normal(0, 0.5, 6).astype(dtype)
    rm = rng.normal(size=6).astype(dtype)
    rv = rng.uniform(0.5, 2, 6).astype(dtype)
    assert_close(F.group_norm(x, 3, w, b, 1e-3), to_np(TF.group_norm(tt(x), 3, tt(w), tt(b), 1e-3)), dtype)
    assert_close(F.group_norm(x, 2), to_np(TF.group_norm(tt(x), 2)), dtype)
    # instance norm: running statistics updated in place, as torch's
    crm, crv, trm, trv = rm.copy(), rv.copy(), tt(rm), tt(rv)
    y = F.instance_norm(x, crm, crv, w, b, True, 0.3, 1e-4)
    ty = TF.instance_norm(tt(x), trm, trv, tt(w), tt(b), True, 0.3, 1e-4)
    assert_close(y, to_np(ty), dtype)
    assert_close(crm, to_np(trm), dtype)
    assert_close(crv, to_np(trv), dtype)
    y = F.instance_norm(x, crm, crv, w, b, use_input_stats=False)
    ty = TF.instance_norm(tt(x), trm, trv, tt(w), tt(b), use_input_stats=False)
    assert_close(y, to_np(ty), dtype)
    assert_close(F.instance_norm(x), to_np(TF.instance_norm(tt(x))), dtype)
    # rms norm, eps=None -> finfo(dtype).eps
    for eps in (None, 1e-3):
        assert_close(F.rms_norm(x, (5, 3), None, eps), to_np(TF.rms_norm(tt(x), (5, 3), None, eps)), dtype)
    small = np.full((2, 4), 1e-5, dtype)
    assert_close(F.rms_norm(small, (4,)), to_np(TF.rms_norm(tt(small), (4,))), dtype)
    # batch norm + relu, running statistics in place
    crm, crv, trm, trv = rm.copy(), rv.copy(), tt(rm), tt(rv)
    y = F.batch_norm_relu(x, crm, crv, w, b, True, 0.2)
    ty = TF.relu(TF.batch_norm(tt(x), trm, trv, tt(w), tt(b), True, 0.2))
    assert_close(y, to_np(ty), dtype)
    assert_close(crm, to_np(trm), dtype)
    assert_close(crv, to_np(trv), dtype)
    # add + layer norm
    r = rng.normal(size=x.shape).astype(dtype)
    y, _s = F.add_layer_norm(x, r, (5, 3))
    assert_close(y, to_np(TF.layer_norm(tt(x) + tt(r), (5, 3))), dtype)


# --------------------------------------------------------------------------- empty inputs, eps edge cases

_EMPTY_CONFIGS = {
    "batch": {"m0.1": {}, "mNone": {"momentum": None}},
    "batch_relu": {"m0.1": {}, "mNone": {"momentum": None}},
    "instance": {
        "track": {"track_running_stats": True},
        "affine_track": {"affine": True, "track_running_stats": True},
    },
}


def _empty_params():
    out = []
    for p in norm_cases("empty", modes=True, dtypes=DTYPES):
        configs = _EMPTY_CONFIGS.get(p.values[0].family, {"default": {}})
        out += [pytest.param(*p.values, kw, id=f"{p.id}-{name}") for name, kw in configs.items()]
    return out


@pytest.mark.parametrize("norm, case, dtype, training, kw", _empty_params())
def test_empty_matches_torch(norm, case, dtype, training, kw):
    """Zero-size inputs: the output shape, the running statistics (NaN where torch's are),
    num_batches_tracked and the parameter gradients equal torch's."""
    shape = case.shape
    m = norm.make(case, dtype, **kw)
    tm, holder = torch_twin(norm, case, dtype, **kw)
    m.train(training)
    tm.train(training)
    x = np.zeros(shape, dtype)
    xt = torch.zeros(shape, dtype=TORCH_DTYPE[np.dtype(dtype)], requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yt = torch_forward(norm, tm, xt, torch.zeros_like(xt))
        except (RuntimeError, IndexError) as exc:
            pytest.skip(f"torch rejects it: {exc}")
        outs = norm.call(m, x, x)
    assert outs[0].shape == tuple(yt.shape)
    if getattr(m, "running_mean", None) is not None:
        np.testing.assert_array_equal(m.running_mean, holder.running_mean.numpy())
        np.testing.assert_array_equal(m.running_var, holder.running_var.numpy())
        assert m.num_batches_tracked == int(holder.num_batches_tracked)
    yt.sum().backward()
    dx = norm.module_backward(m, tuple(np.zeros(shape, dtype) for _ in outs))
    assert dx.shape == tuple(xt.grad.shape)
    if norm.family == "group":
        return  # torch: NaN, the mean of no values; cnorm: 0, the sum of none (test_inputs.py)
    for name, p in holder.named_parameters():
        np.testing.assert_array_equal(getattr(m, name + "_grad"), p.grad.numpy(), err_msg=name)


@pytest.mark.parametrize("case", [((0, 4, 3), 2), ((2, 4, 0), 2), ((2, 0, 3), 2), ((2, 4), 4)], ids=str)
def test_group_norm_edge_shapes_like_torch(rng, case):
    shape, G = case
    x = rng.normal(size=shape).astype(np.float32)
    y = F.group_norm(x, G)
    ty = TF.group_norm(torch.from_numpy(x), G)
    assert y.shape == tuple(ty.shape)
    np.testing.assert_allclose(y, ty.numpy(), atol=1e-5)


def test_eps_zero_constant_rows_nan_like_torch():
    x = np.ones((2, 4, 3), np.float32)
    assert np.all(np.isnan(F.group_norm(x, 2, eps=0.0)))
    assert torch.isnan(TF.group_norm(torch.from_numpy(x), 2, eps=0.0)).all()
    z = np.zeros((2, 3), np.float32)
    assert np.all(np.isnan(F.rms_norm(z, (3,), eps=0.0)))
    assert torch.isnan(TF.rms_norm(torch.from_numpy(z), (3,), eps=0.0)).all()
    np.testing.assert_array_equal(F.rms_norm(z, (3,)), TF.rms_norm(torch.from_numpy(z), (3,)).numpy())


# --------------------------------------------------------------------------- the float64 reference


def test_slow_references_match_torch_float64(rng):
    x = rng.normal(0.5, 2, (3, 6, 4, 5))
    dy = rng.normal(size=x.shape)
    w, b = rng.normal(1, 0.5, 6), rng.normal(0, 0.5, 6)

    def grads(fn, *tensors):
        ts = [tt(t, True) for t in tensors]
        fn(*ts).backward(tt(dy))
        return [to_np(t.grad) for t in ts]

    def close(a, e):
        np.testing.assert_allclose(a, e, rtol=1e-11, atol=1e-11)

    close(reference.group_norm_forward(x, 3, w, b, 1e-5)[0], to_np(TF.group_norm(tt(x), 3, tt(w), tt(b))))
    for a, e in zip(
        reference.group_norm_backward(dy, x, 3, w, 1e-5),
        grads(lambda x_, w_, b_: TF.group_norm(x_, 3, w_, b_), x, w, b),
    ):
        close(a, e)
    rm, rv = rng.normal(size=6), rng.uniform(0.5, 2, 6)
    trm, trv = tt(rm), tt(rv)
    y, nrm, nrv = reference.instance_norm_forward(x, rm, rv, w, b, True, 0.3, 1e-5)
    close(y, to_np(TF.instance_norm(tt(x), trm, trv, tt(w), tt(b), True, 0.3)))
    close(nrm, to_np(trm))
    close(nrv, to_np(trv))
    for a, e in zip(
        reference.instance_norm_backward(dy, x, w, 1e-5),
        grads(lambda x_, w_, b_: TF.instance_norm(x_, None, None, w_, b_), x, w, b),
    ):
        close(a, e)
    for a, e in zip(
        reference.instance_norm_backward(dy, x, w, 1e-5, rm, rv, use_input_stats=False),
        grads(lambda x_, w_, b_: TF.instance_norm(x_, tt(rm), tt(rv), w_, b_, False), x, w, b),
    ):
        close(a, e)
    wn = rng.normal(1, 0.5, (4, 5))
    close(reference.rms_norm_forward(x, (4, 5), wn, None)[0], to_np(TF.rms_norm(tt(x), (4, 5), tt(wn))))
    for a, e in zip(
        reference.rms_norm_backward(dy, x, (4, 5), wn, None),
        grads(lambda x_, w_: TF.rms_norm(x_, (4, 5), w_), x, wn),
    ):
        close(a, e)
    r = rng.normal(size=x.shape)
    bn = rng.normal(size=(4, 5))
    close(
        reference.add_layer_norm_forward(x, r, (4, 5), wn, bn, 1e-5)[0],
        to_np(TF.layer_norm(tt(x) + tt(r), (4, 5), tt(wn), tt(bn))),
    )
    dx, dr, dw_, db_ = grads(lambda x_, r_, w_, b_: TF.layer_norm(x_ + r_, (4, 5), w_, b_), x, r, wn, bn)
    ds, dw, db = reference.add_layer_norm_backward(dy, None, x + r, (4, 5), wn, 1e-5)
    for a, e in zip((ds, ds, dw, db), (dx, dr, dw_, db_)):
        close(a, e)
    y = reference.batch_norm_relu_forward(x, w, b, None, None, True, 0.1, 1e-5)[0]
    close(y, to_np(TF.relu(TF.batch_norm(tt(x), None, None, tt(w), tt(b), True))))
    mean, var = reference.batch_norm_stats(x)
    for a, e in zip(
        reference.batch_norm_relu_backward(dy, x, w, b, mean, 1 / np.sqrt(var + 1e-5), True),
        grads(lambda x_, w_, b_: TF.relu(TF.batch_norm(x_, None, None, w_, b_, True)), x, w, b),
    ):
        close(a, e)
