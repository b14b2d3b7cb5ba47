"""Parity of GroupNorm, InstanceNorm1d/2d/3d, RMSNorm, AddLayerNorm and BatchNormReLU with
torch 2.13 (CPU): outputs, gradients (input, weight, bias), running statistics, reprs,
state_dicts both ways, error messages and warnings, unbatched and empty inputs."""

import re
import warnings

import numpy as np
import pytest

import cnorm
import cnorm.functional as F

from conftest import DTYPES, assert_close

torch = pytest.importorskip("torch")
TF = torch.nn.functional

TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
STEPS = ["train", "train", "eval", "train", "eval", "train"]


def to_np(t):
    return None if t is None else t.detach().numpy()


def tt(a, grad=False):
    t = torch.from_numpy(np.array(a))
    return t.requires_grad_(grad)


def sync_params(m, tm, rng):
    """Random parameters, the same in the cnorm module m and the torch module tm."""
    with torch.no_grad():
        for name in ("weight", "bias"):
            p = getattr(tm, name, None)
            if p is not None:
                v = rng.normal(1.0 if name == "weight" else 0.0, 0.5, p.shape)
                p.copy_(torch.from_numpy(v))
                getattr(m, name)[...] = v


def torch_step(tm, x, dy, extra=None):
    """Forward + backward through torch; returns (y, dx) as NumPy."""
    xt = tt(x, True)
    for p in tm.parameters():
        p.grad = None
    y = tm(xt)
    y.backward(tt(dy))
    return to_np(y), to_np(xt.grad)


def compare_grads(m, tm, dtype, scale, msg):
    for name in ("weight", "bias"):
        p = getattr(tm, name, None)
        if p is None:
            assert getattr(m, name, None) is None, (msg, name)
            continue
        assert_close(getattr(m, name + "_grad"), to_np(p.grad), dtype, scale=scale,
                     err_msg=f"{msg} {name}_grad")


def compare_buffers(m, tm, dtype, msg):
    for name in ("running_mean", "running_var"):
        tv = getattr(tm, name, None)
        if tv is None:
            assert getattr(m, name) is None, (msg, name)
        else:
            assert_close(getattr(m, name), to_np(tv), dtype, err_msg=f"{msg} {name}")


# =======================================================================================
# modules
# =======================================================================================

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
    for step in STEPS[:3]:
        m.train(step == "train")
        tm.train(step == "train")
        x = rng.normal(rng.normal(), rng.uniform(0.5, 3), shape).astype(dtype)
        dy = rng.normal(size=shape).astype(dtype)
        m.zero_grad()
        y = m(x)
        dx = m.backward(dy)
        ty, tdx = torch_step(tm, x, dy)
        assert_close(y, ty, dtype, err_msg=f"{step} y")
        assert_close(dx, tdx, dtype, scale=np.abs(tdx).max(), err_msg=f"{step} dx")
        compare_grads(m, tm, dtype, np.abs(dy).sum(axis=(0,) + tuple(range(2, len(shape)))) * 2,
                      step)
    assert list(m.state_dict()) == list(tm.state_dict())


IN_CONFIGS = {
    "default": dict(),
    "affine": dict(affine=True),
    "affine_nobias": dict(affine=True, bias=False),
    "track": dict(track_running_stats=True),
    "affine_track_m0.3": dict(affine=True, track_running_stats=True, momentum=0.3),
    "track_momentum_none": dict(track_running_stats=True, momentum=None),
    "eps_1e-2": dict(eps=1e-2, affine=True),
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
    batched = len(shape) == m._no_batch_dim + 1
    red = ((0,) if batched else ()) + tuple(range(len(shape) - m._no_batch_dim + 1, len(shape)))
    for step in STEPS:
        m.train(step == "train")
        tm.train(step == "train")
        x = rng.normal(rng.normal(), rng.uniform(0.5, 3), shape).astype(dtype)
        dy = rng.normal(size=shape).astype(dtype)
        m.zero_grad()
        y = m(x)
        dx = m.backward(dy)
        ty, tdx = torch_step(tm, x, dy)
        assert_close(y, ty, dtype, err_msg=f"{step} y")
        assert_close(dx, tdx, dtype, scale=np.abs(tdx).max(), err_msg=f"{step} dx")
        compare_grads(m, tm, dtype, np.abs(dy).sum(axis=red) * 3, step)
        compare_buffers(m, tm, dtype, step)
        if m.num_batches_tracked is not None:
            assert m.num_batches_tracked == int(tm.num_batches_tracked) == 0
    assert list(m.state_dict()) == list(tm.state_dict())


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
    lead = tuple(range(len(shape) - len(ns)))
    for step in STEPS[:3]:
        m.train(step == "train")
        tm.train(step == "train")
        x = rng.normal(rng.normal(), rng.uniform(0.5, 3), shape).astype(dtype)
        dy = rng.normal(size=shape).astype(dtype)
        m.zero_grad()
        y = m(x)
        dx = m.backward(dy)
        ty, tdx = torch_step(tm, x, dy)
        assert_close(y, ty, dtype, err_msg=f"{step} y")
        assert_close(dx, tdx, dtype, scale=np.abs(tdx).max(), err_msg=f"{step} dx")
        compare_grads(m, tm, dtype, np.abs(dy).sum(axis=lead) * 3, step)
    assert list(m.state_dict()) == list(tm.state_dict())


@pytest.mark.parametrize("with_dsum", [False, True], ids=["dsumNone", "dsum"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("cfg", [((16,), (4, 8, 16), {}), ((3, 7), (5, 3, 7), {"bias": False}),
                                 ((1024,), (2, 4, 1024), {"eps": 1e-6}),
                                 ((9,), (6, 9), {"elementwise_affine": False})],
                         ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
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
BNR_CONFIGS = {"default": {}, "momentum_none": dict(momentum=None), "noaffine": dict(affine=False),
               "notrack": dict(track_running_stats=False), "nobias": dict(bias=False)}


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
    red = (0,) + tuple(range(2, len(shape)))
    for step in STEPS:
        m.train(step == "train")
        tm.train(step == "train")
        x = rng.normal(rng.normal(), rng.uniform(0.5, 3), shape).astype(dtype)
        dy = rng.normal(size=shape).astype(dtype)
        m.zero_grad()
        y = m(x)
        dx = m.backward(dy)
        ty, tdx = torch_step(tm, x, dy)
        assert_close(y, ty, dtype, err_msg=f"{step} y")
        assert_close(dx, tdx, dtype, scale=np.abs(tdx).max(), err_msg=f"{step} dx")
        compare_grads(m, tbn, dtype, np.abs(dy).sum(axis=red) * 3, step)
        compare_buffers(m, tbn, dtype, step)
        if m.num_batches_tracked is not None:
            assert m.num_batches_tracked == int(tbn.num_batches_tracked)
    assert list(m.state_dict()) == list(tbn.state_dict())


# =======================================================================================
# functional
# =======================================================================================

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
    y, s = F.add_layer_norm(x, r, (5, 3))
    assert_close(y, to_np(TF.layer_norm(tt(x) + tt(r), (5, 3))), dtype)


# =======================================================================================
# reprs, state_dicts both ways
# =======================================================================================

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
        for k, v in tm.state_dict().items():
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


# =======================================================================================
# errors and warnings: the same message as torch
# =======================================================================================

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
    return re.sub(r"torch\.Size\(\[([^\]]*)\]\)",
                  lambda mo: str(tuple(int(v) for v in mo.group(1).split(", ") if v)), msg)


ERROR_CASES = {
    # name: (torch call, cnorm call)
    "gn_ctor_divisible": (lambda: torch.nn.GroupNorm(3, 4), lambda: cnorm.GroupNorm(3, 4)),
    "gn_not_divisible": (lambda: TF.group_norm(torch.zeros(2, 4, 3), 3),
                         lambda: F.group_norm(np.zeros((2, 4, 3), np.float32), 3)),
    "gn_1d": (lambda: TF.group_norm(torch.zeros(4), 2),
              lambda: F.group_norm(np.zeros(4, np.float32), 2)),
    "gn_one_value": (lambda: TF.group_norm(torch.zeros(1, 2), 2),
                     lambda: F.group_norm(np.zeros((1, 2), np.float32), 2)),
    "gn_one_value_3d": (lambda: torch.nn.GroupNorm(2, 2)(torch.zeros(1, 2, 1)),
                        lambda: cnorm.GroupNorm(2, 2)(np.zeros((1, 2, 1), np.float32))),
    "gn_negative_groups": (lambda: TF.group_norm(torch.zeros(2, 4, 3), -2),
                           lambda: F.group_norm(np.zeros((2, 4, 3), np.float32), -2)),
    "gn_float_groups": (lambda: TF.group_norm(torch.zeros(2, 4, 3), 2.0),
                        lambda: F.group_norm(np.zeros((2, 4, 3), np.float32), 2.0)),
    "gn_weight": (lambda: TF.group_norm(torch.zeros(2, 4, 3), 2, torch.ones(3)),
                  lambda: F.group_norm(np.zeros((2, 4, 3), np.float32), 2, np.ones(3, np.float32))),
    "gn_module_channels": (lambda: torch.nn.GroupNorm(2, 4)(torch.zeros(2, 6, 3)),
                           lambda: cnorm.GroupNorm(2, 4)(np.zeros((2, 6, 3), np.float32))),
    "in_spatial": (lambda: torch.nn.InstanceNorm1d(3)(torch.zeros(2, 3, 1)),
                   lambda: cnorm.InstanceNorm1d(3)(np.zeros((2, 3, 1), np.float32))),
    "in_spatial_unbatched": (lambda: torch.nn.InstanceNorm2d(3)(torch.zeros(3, 1, 1)),
                             lambda: cnorm.InstanceNorm2d(3)(np.zeros((3, 1, 1), np.float32))),
    "in_spatial_eval_untracked": (lambda: torch.nn.InstanceNorm1d(3).eval()(torch.zeros(2, 3, 1)),
                                  lambda: cnorm.InstanceNorm1d(3).eval()(np.zeros((2, 3, 1), np.float32))),
    "in_f_spatial_2d": (lambda: TF.instance_norm(torch.zeros(2, 3)),
                        lambda: F.instance_norm(np.zeros((2, 3), np.float32))),
    "in1d_ndim": (lambda: torch.nn.InstanceNorm1d(3)(torch.zeros(2, 3, 4, 5)),
                  lambda: cnorm.InstanceNorm1d(3)(np.zeros((2, 3, 4, 5), np.float32))),
    "in2d_ndim": (lambda: torch.nn.InstanceNorm2d(3)(torch.zeros(2, 3)),
                  lambda: cnorm.InstanceNorm2d(3)(np.zeros((2, 3), np.float32))),
    "in3d_ndim": (lambda: torch.nn.InstanceNorm3d(3)(torch.zeros(2, 3, 4)),
                  lambda: cnorm.InstanceNorm3d(3)(np.zeros((2, 3, 4), np.float32))),
    "in_affine_mismatch": (lambda: torch.nn.InstanceNorm1d(3, affine=True)(torch.zeros(2, 4, 5)),
                           lambda: cnorm.InstanceNorm1d(3, affine=True)(np.zeros((2, 4, 5), np.float32))),
    "in_affine_mismatch_unbatched": (
        lambda: torch.nn.InstanceNorm1d(3, affine=True)(torch.zeros(4, 5)),
        lambda: cnorm.InstanceNorm1d(3, affine=True)(np.zeros((4, 5), np.float32))),
    "in_f_no_running": (lambda: TF.instance_norm(torch.zeros(2, 3, 4), use_input_stats=False),
                        lambda: F.instance_norm(np.zeros((2, 3, 4), np.float32), use_input_stats=False)),
    "in_f_one_running": (lambda: TF.instance_norm(torch.zeros(2, 3, 4), torch.zeros(3), None),
                         lambda: F.instance_norm(np.zeros((2, 3, 4), np.float32), np.zeros(3, np.float32), None)),
    "rms_shape": (lambda: TF.rms_norm(torch.zeros(2, 3), (4,)),
                  lambda: F.rms_norm(np.zeros((2, 3), np.float32), (4,))),
    "rms_shape_2": (lambda: TF.rms_norm(torch.zeros(2, 3, 4), (2, 4)),
                    lambda: F.rms_norm(np.zeros((2, 3, 4), np.float32), (2, 4))),
    "rms_ndim": (lambda: TF.rms_norm(torch.zeros(2, 3), (1, 2, 3)),
                 lambda: F.rms_norm(np.zeros((2, 3), np.float32), (1, 2, 3))),
    "rms_empty_shape": (lambda: TF.rms_norm(torch.zeros(2, 3), ()),
                        lambda: F.rms_norm(np.zeros((2, 3), np.float32), ())),
    "rms_weight": (lambda: TF.rms_norm(torch.zeros(2, 3), (3,), torch.ones(4)),
                   lambda: F.rms_norm(np.zeros((2, 3), np.float32), (3,), np.ones(4, np.float32))),
    "rms_module": (lambda: torch.nn.RMSNorm(3)(torch.zeros(2, 4)),
                   lambda: cnorm.RMSNorm(3)(np.zeros((2, 4), np.float32))),
    "bnr_one_value": (lambda: torch.nn.BatchNorm1d(3)(torch.zeros(1, 3)),
                      lambda: cnorm.BatchNormReLU1d(3)(np.zeros((1, 3), np.float32))),
    "bnr_ndim": (lambda: torch.nn.BatchNorm2d(3)(torch.zeros(1, 3, 2)),
                 lambda: cnorm.BatchNormReLU2d(3)(np.zeros((1, 3, 2), np.float32))),
    "bnr_eps": (lambda: TF.batch_norm(torch.zeros(2, 3), None, None, training=True, eps=0.0),
                lambda: F.batch_norm_relu(np.zeros((2, 3), np.float32), None, None, training=True, eps=0.0)),
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
    got = cnorm_message(lambda: F.group_norm(np.zeros((2, 4, 3), np.float32), 2,
                                             np.ones(4, np.float32), np.ones(5, np.float32)))
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


# =======================================================================================
# empty inputs, eps edge cases
# =======================================================================================

@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 3, 0), (0, 3, 0), (2, 0, 4)], ids=str)
def test_instance_norm_empty_running_stats_like_torch(shape):
    m = cnorm.InstanceNorm1d(shape[1], track_running_stats=True)
    tm = torch.nn.InstanceNorm1d(shape[1], track_running_stats=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = m(np.zeros(shape, np.float32))
        ty = tm(torch.zeros(shape))
    assert y.shape == tuple(ty.shape)
    np.testing.assert_array_equal(m.running_mean, tm.running_mean.numpy())
    np.testing.assert_array_equal(m.running_var, tm.running_var.numpy())
    assert m.num_batches_tracked == int(tm.num_batches_tracked)


@pytest.mark.parametrize("case", [((0, 4, 3), 2), ((2, 4, 0), 2), ((2, 0, 3), 2), ((2, 4), 4)],
                         ids=str)
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


# =======================================================================================
# the float64 reference itself against torch; state dicts of the fused modules
# =======================================================================================

def test_slow_references_match_torch_float64(rng):
    from cnorm import slow
    x = rng.normal(0.5, 2, (3, 6, 4, 5))
    dy = rng.normal(size=x.shape)
    w, b = rng.normal(1, 0.5, 6), rng.normal(0, 0.5, 6)

    def grads(fn, *tensors):
        ts = [tt(t, True) for t in tensors]
        fn(*ts).backward(tt(dy))
        return [to_np(t.grad) for t in ts]

    def close(a, e):
        np.testing.assert_allclose(a, e, rtol=1e-11, atol=1e-11)

    close(slow.group_norm_forward(x, 3, w, b, 1e-5)[0], to_np(TF.group_norm(tt(x), 3, tt(w), tt(b))))
    for a, e in zip(slow.group_norm_backward(dy, x, 3, w, 1e-5),
                    grads(lambda x_, w_, b_: TF.group_norm(x_, 3, w_, b_), x, w, b)):
        close(a, e)
    rm, rv = rng.normal(size=6), rng.uniform(0.5, 2, 6)
    trm, trv = tt(rm), tt(rv)
    y, nrm, nrv = slow.instance_norm_forward(x, rm, rv, w, b, True, 0.3, 1e-5)
    close(y, to_np(TF.instance_norm(tt(x), trm, trv, tt(w), tt(b), True, 0.3)))
    close(nrm, to_np(trm))
    close(nrv, to_np(trv))
    for a, e in zip(slow.instance_norm_backward(dy, x, w, 1e-5),
                    grads(lambda x_, w_, b_: TF.instance_norm(x_, None, None, w_, b_), x, w, b)):
        close(a, e)
    for a, e in zip(slow.instance_norm_backward(dy, x, w, 1e-5, rm, rv, use_input_stats=False),
                    grads(lambda x_, w_, b_: TF.instance_norm(x_, tt(rm), tt(rv), w_, b_, False),
                          x, w, b)):
        close(a, e)
    wn = rng.normal(1, 0.5, (4, 5))
    close(slow.rms_norm_forward(x, (4, 5), wn, None)[0], to_np(TF.rms_norm(tt(x), (4, 5), tt(wn))))
    for a, e in zip(slow.rms_norm_backward(dy, x, (4, 5), wn, None),
                    grads(lambda x_, w_: TF.rms_norm(x_, (4, 5), w_), x, wn)):
        close(a, e)
    r = rng.normal(size=x.shape)
    bn = rng.normal(size=(4, 5))
    close(slow.add_layer_norm_forward(x, r, (4, 5), wn, bn, 1e-5)[0],
          to_np(TF.layer_norm(tt(x) + tt(r), (4, 5), tt(wn), tt(bn))))
    dx, dr, dw_, db_ = grads(lambda x_, r_, w_, b_: TF.layer_norm(x_ + r_, (4, 5), w_, b_), x, r, wn, bn)
    ds, dw, db = slow.add_layer_norm_backward(dy, None, x + r, (4, 5), wn, 1e-5)
    for a, e in zip((ds, ds, dw, db), (dx, dr, dw_, db_)):
        close(a, e)
    y = slow.batch_norm_relu_forward(x, w, b, None, None, True, 0.1, 1e-5)[0]
    close(y, to_np(TF.relu(TF.batch_norm(tt(x), None, None, tt(w), tt(b), True))))
    mean, var = slow.batch_norm_stats(x)
    for a, e in zip(slow.batch_norm_relu_backward(dy, x, w, b, mean, 1 / np.sqrt(var + 1e-5), True),
                    grads(lambda x_, w_, b_: TF.relu(TF.batch_norm(x_, None, None, w_, b_, True)),
                          x, w, b)):
        close(a, e)


def test_fused_modules_state_dicts_with_torch(rng):
    """AddLayerNorm <-> torch LayerNorm, BatchNormReLU2d <-> torch BatchNorm2d."""
    tln = torch.nn.LayerNorm(8)
    tbn = torch.nn.BatchNorm2d(3)
    tbn(torch.randn(4, 3, 2, 2))                      # running stats and a count
    with torch.no_grad():
        for p in list(tln.parameters()) + list(tbn.parameters()):
            p.copy_(torch.from_numpy(rng.normal(size=tuple(p.shape))))
    for ours, theirs, fresh in [(cnorm.AddLayerNorm(8), tln, torch.nn.LayerNorm(8)),
                                (cnorm.BatchNormReLU2d(3), tbn, torch.nn.BatchNorm2d(3))]:
        ours.load_state_dict(theirs.state_dict())
        sd = ours.state_dict()
        assert list(sd) == list(theirs.state_dict())
        for k, v in theirs.state_dict().items():
            assert np.array_equal(sd[k], v.numpy()), k
        fresh.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()})
        for k, v in fresh.state_dict().items():
            assert np.array_equal(v.numpy(), sd[k]), k
