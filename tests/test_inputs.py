"""Inputs: every memory layout (strided, Fortran, negative strides, channels-last, read-only,
misaligned, memory-mapped, byte-swapped, broadcast) gives the contiguous result; inputs and
parameters are never modified; outputs are new C-contiguous arrays; zero-size inputs in
every dimension work like torch; edge cases that must work."""

import copy
import os
import warnings

import numpy as np
import pytest
from conftest import DTYPES, assert_close, data, dtype_id, params
from norms import ONE_VALUE_PER_CHANNEL, norm_cases, reference

import cnorm
import cnorm.functional as F

EPS = 1e-5
f32 = np.float32


# --------------------------------------------------------------------------- empty inputs


@pytest.mark.parametrize("norm, case, dtype, training", norm_cases("empty", modes=True, dtypes=DTYPES))
def test_empty(rng, norm, case, dtype, training):
    """Zero-size in every dimension (C = 0 too): outputs and gradients of the input's shape
    and dtype, zero parameter gradients, the running statistics left alone (torch: the mean
    over no instance is NaN for InstanceNorm), num_batches_tracked counted as for any batch;
    the functional form returns statistics of the documented shapes."""
    shape = case.shape
    C = shape[1] if len(shape) > 1 else 0
    m = norm.make(case, dtype, **norm.full_kw)
    running = getattr(m, "running_mean", None) is not None
    if running and C:
        # non-default running statistics first
        norm.call(m, rng.standard_normal(tuple(d if d else 2 for d in shape)).astype(dtype))
        m.zero_grad()
    state = {k: np.array(v, copy=True) for k, v in m.state_dict().items()}
    nbt = getattr(m, "num_batches_tracked", None)
    m.train(training)
    x = np.zeros(shape, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outs = norm.call(m, x, x)
    for y in outs:
        assert y.shape == shape and y.dtype == dtype
    if running:
        if norm.family == "instance" and training and shape[0] == 0 and C > 0:
            # torch: the mean over no instance is NaN
            assert np.all(np.isnan(m.running_mean)) and np.all(np.isnan(m.running_var))
        else:
            np.testing.assert_array_equal(m.running_mean, state["running_mean"])
            np.testing.assert_array_equal(m.running_var, state["running_var"])
        if norm.family == "instance":
            assert m.num_batches_tracked == 0
        else:
            assert m.num_batches_tracked == nbt + (1 if training else 0)
    dx = norm.module_backward(m, tuple(np.zeros(shape, dtype) for _ in outs))
    assert dx.shape == shape and dx.dtype == dtype
    for name, p in m.named_parameters():
        g = getattr(m, name + "_grad")
        assert g.dtype == dtype and g.shape == p.shape, name
        np.testing.assert_array_equal(g, np.zeros(p.shape, dtype))
    for k, v in m.state_dict().items():
        assert k == "num_batches_tracked" or v.shape == norm.param_shape(case), k

    p = norm.params(rng, case, dtype)
    before = {k: p[k].copy() for k in ("running_mean", "running_var") if p[k] is not None}
    for native in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if native:
                fouts, saved = norm.forward(x, case, p, training)
                for s in norm.stats_of(saved):
                    assert s.shape == norm.stats_shape(case, training) and s.dtype == np.float64
            else:
                fouts = norm.plain(x, case, p, training)
        for y in fouts:
            assert y.shape == shape and y.dtype == dtype
        if norm.family in ("batch", "batch_relu"):
            for k, v in before.items():
                np.testing.assert_array_equal(p[k], v, err_msg=k)


# --------------------------------------------------------------------------- edge cases that work


@pytest.mark.parametrize("cls, shape", ONE_VALUE_PER_CHANNEL)
def test_bn_one_value_per_channel_in_eval_works(cls, shape):
    rng = np.random.default_rng(3)
    m = getattr(cnorm, cls)(3).eval()
    m.running_mean[...] = rng.standard_normal(3)
    m.running_var[...] = rng.uniform(0.5, 2, 3)
    x = rng.standard_normal(shape).astype(f32)
    y = m(x)
    ref = reference.batch_norm_forward(x, m.weight, m.bias, m.running_mean, m.running_var, False, 0.1, 1e-5)[
        0
    ]
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)
    dy = rng.standard_normal(shape).astype(f32)
    dx = m.backward(dy)
    np.testing.assert_allclose(
        dx, dy / np.sqrt(m.running_var.reshape((1, 3) + (1,) * (len(shape) - 2)) + 1e-5), rtol=1e-6
    )
    assert m.num_batches_tracked == 0


def test_bn_eps_zero_in_eval_with_running_stats_works():
    m = cnorm.BatchNorm2d(3, eps=0.0).eval()
    y = m(np.ones((2, 3, 2, 2), f32))
    np.testing.assert_array_equal(y, np.ones((2, 3, 2, 2), f32))


# --------------------------------------------------------------------------- layouts: modules


def c_copy(a):
    return np.ascontiguousarray(a).copy()


def layout(x, kind):
    """An array equal to the C-contiguous ``x`` but laid out differently in memory."""
    if kind == "fortran":
        out = np.asfortranarray(x)
        assert not out.flags.c_contiguous
    elif kind == "strided":
        big = np.zeros(x.shape[:-1] + (2 * x.shape[-1] + 1,), x.dtype)
        big[..., 1::2] = x
        out = big[..., 1::2]
    elif kind == "negative":
        out = np.flip(np.flip(x, axis=0).copy(), axis=0)
        assert out.strides[0] < 0
    elif kind == "channels_last":
        out = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
    elif kind == "readonly":
        out = x.copy()
        out.setflags(write=False)
    elif kind == "unaligned":
        buf = np.zeros(x.nbytes + 1, np.uint8)
        out = buf[1:].view(x.dtype).reshape(x.shape)
        out[...] = x
        assert not out.flags.aligned
    else:
        raise ValueError(kind)
    np.testing.assert_array_equal(out, x)
    return out


LAYOUTS = ["fortran", "strided", "negative", "channels_last", "readonly", "unaligned"]


MODULE_CASES = {
    "bn1d_NC": (lambda dt: cnorm.BatchNorm1d(5, dtype=dt), (9, 5)),
    "bn1d_NCL": (lambda dt: cnorm.BatchNorm1d(5, dtype=dt), (4, 5, 6)),
    "bn2d": (lambda dt: cnorm.BatchNorm2d(3, dtype=dt), (3, 3, 4, 5)),
    "bn2d_big": (lambda dt: cnorm.BatchNorm2d(4, dtype=dt), (8, 4, 48, 48)),
    "bn3d": (lambda dt: cnorm.BatchNorm3d(3, dtype=dt), (2, 3, 2, 3, 4)),
    "ln": (lambda dt: cnorm.LayerNorm(6, dtype=dt), (4, 5, 6)),
    "ln_2d": (lambda dt: cnorm.LayerNorm((5, 6), dtype=dt), (4, 5, 6)),
    "ln_big": (lambda dt: cnorm.LayerNorm(300, dtype=dt), (400, 300)),
}


def run_module(m, x, dy, training):
    m.train(training)
    y = m(x)
    dx = m.backward(dy)
    return y, dx, m.weight_grad, m.bias_grad


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", list(MODULE_CASES))
def test_module_layouts_match_contiguous(rng, case, dtype, kind, training):
    make, shape = MODULE_CASES[case]
    x = rng.normal(0.5, 2.0, shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    expected = run_module(make(dtype), x, dy, training)
    xl, dyl = layout(x, kind), layout(dy, kind)
    xl0, dyl0 = xl.copy(), dyl.copy()
    got = run_module(make(dtype), xl, dyl, training)
    for name, g, e in zip(["y", "dx", "weight_grad", "bias_grad"], got, expected):
        assert_close(g, e, dtype, scale=np.abs(e).max(initial=1.0), err_msg=name)
    for name, a in zip(["y", "dx"], got[:2]):
        assert a.flags.c_contiguous and a.flags.writeable, name
        assert not np.shares_memory(a, xl) and not np.shares_memory(a, dyl), name
    np.testing.assert_array_equal(xl, xl0)
    np.testing.assert_array_equal(dyl, dyl0)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_broadcast_zero_stride_input(rng, dtype):
    x = np.broadcast_to(rng.normal(size=(1, 4, 3, 3)).astype(dtype), (5, 4, 3, 3))
    assert x.strides[0] == 0 and not x.flags.writeable
    dy = np.broadcast_to(rng.normal(size=(4, 3, 3)).astype(dtype), (5, 4, 3, 3))
    for training in (True, False):
        expected = run_module(cnorm.BatchNorm2d(4, dtype=dtype), c_copy(x), c_copy(dy), training)
        got = run_module(cnorm.BatchNorm2d(4, dtype=dtype), x, dy, training)
        for g, e in zip(got, expected):
            assert_close(g, e, dtype, scale=np.abs(e).max(initial=1.0))
    xl = np.broadcast_to(rng.normal(size=(7,)).astype(dtype), (3, 7))
    np.testing.assert_allclose(
        cnorm.LayerNorm(7, dtype=dtype)(xl), cnorm.LayerNorm(7, dtype=dtype)(c_copy(xl)), rtol=1e-5, atol=1e-5
    )


def _layouts(x, tmp_path):
    """name -> an array equal to x with another memory layout."""
    out = {}
    out["fortran"] = np.asfortranarray(x)
    big = np.zeros(x.shape[:-1] + (2 * x.shape[-1] + 1,), x.dtype)
    big[..., 1::2] = x
    out["strided"] = big[..., 1::2]
    out["negative"] = np.flip(np.flip(x, axis=0).copy(), axis=0)
    out["negative_last"] = np.flip(np.flip(x, axis=-1).copy(), axis=-1)
    ro = x.copy()
    ro.setflags(write=False)
    out["readonly"] = ro
    path = os.path.join(str(tmp_path), f"x_{x.dtype.name}_{x.ndim}.bin")
    mm = np.memmap(path, dtype=x.dtype, mode="w+", shape=x.shape)
    mm[...] = x
    mm.flush()
    del mm
    out["memmap_r"] = np.memmap(path, dtype=x.dtype, mode="r", shape=x.shape)
    out["memmap_c"] = np.memmap(path, dtype=x.dtype, mode="c", shape=x.shape)
    out["byteswapped"] = x.astype(x.dtype.newbyteorder(">"))
    buf = np.zeros(x.nbytes + 1, np.uint8)
    mis = buf[1:].view(x.dtype).reshape(x.shape)
    mis[...] = x
    out["misaligned"] = mis
    bs = x.astype(x.dtype.newbyteorder(">"))
    out["byteswapped_fortran"] = np.asfortranarray(bs)
    for name, a in out.items():
        np.testing.assert_array_equal(a, x, err_msg=name)
    return out


LAYOUT_MODULES = {
    "bn1d_NC": (lambda dt: cnorm.BatchNorm1d(5, dtype=dt), (9, 5)),
    "bn1d_NCL": (lambda dt: cnorm.BatchNorm1d(5, dtype=dt), (4, 5, 6)),
    "bn2d": (lambda dt: cnorm.BatchNorm2d(3, dtype=dt), (3, 3, 4, 5)),
    "bn3d": (lambda dt: cnorm.BatchNorm3d(3, dtype=dt), (2, 3, 2, 3, 4)),
    "ln": (lambda dt: cnorm.LayerNorm(6, dtype=dt), (4, 5, 6)),
    "ln_2d": (lambda dt: cnorm.LayerNorm((5, 6), dtype=dt), (4, 5, 6)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", list(LAYOUT_MODULES))
def test_every_layout_equals_contiguous(tmp_path, case, dtype):
    make, shape = LAYOUT_MODULES[case]
    rng = np.random.default_rng(len(case) * 31 + len(shape))
    x = (3.0 + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    (tmp_path / "x").mkdir()
    (tmp_path / "dy").mkdir()
    xs = _layouts(x, tmp_path / "x")
    dys = _layouts(dy, tmp_path / "dy")
    for training in (True, False):
        ref_m = make(dtype).train(training)
        y_ref = ref_m(x)
        dx_ref = ref_m.backward(dy)
        for name in xs:
            before = np.array(xs[name], copy=True)
            m = make(dtype).train(training)
            y = m(xs[name])
            dx = m.backward(dys[name])
            assert y.flags.c_contiguous and y.dtype == np.dtype(dtype), name
            np.testing.assert_array_equal(y, y_ref, err_msg=f"{name} forward")
            np.testing.assert_array_equal(dx, dx_ref, err_msg=f"{name} backward")
            np.testing.assert_array_equal(m.weight_grad, ref_m.weight_grad, err_msg=name)
            if hasattr(m, "running_mean"):
                np.testing.assert_array_equal(m.running_mean, ref_m.running_mean, err_msg=name)
                np.testing.assert_array_equal(m.running_var, ref_m.running_var, err_msg=name)
            np.testing.assert_array_equal(xs[name], before, err_msg=f"{name} input modified")


def layouts(a):
    yield "fortran", np.asfortranarray(a)
    big = np.zeros(tuple(2 * d for d in a.shape), a.dtype)
    v = big[tuple(slice(None, None, 2) for _ in a.shape)]
    v[...] = a
    yield "strided", v
    yield "reversed", a[::-1].copy()[::-1]
    ro = a.copy()
    ro.flags.writeable = False
    yield "readonly", ro


def _native_forwards(x, r, w, b):
    return {
        "gn": F.native_group_norm(x, 3, w, b, EPS),
        "in": F.native_instance_norm(x, w, b, None, None, True, 0.1, EPS),
        "rms": F.native_rms_norm(x, (3, 5), None, None),
        "add": F.native_add_layer_norm(x, r, (5,), None, None, EPS),
        "bnr": F.native_batch_norm_relu(x, w, b, None, None, True, 0.1, EPS),
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_layouts_and_inputs_never_modified(rng, dtype):
    x, dy = data(rng, (4, 6, 3, 5), dtype)
    r = rng.normal(size=x.shape).astype(dtype)
    w, b = params(rng, 6, dtype)
    ref = _native_forwards(x, r, w, b)
    for (label, xl), (_, rl), (_, dyl) in zip(layouts(x), layouts(r), layouts(dy)):
        copies = [a.copy() for a in (xl, rl, dyl)]
        got = _native_forwards(xl, rl, w, b)
        for k, expected in ref.items():
            for a, e in zip(got[k], expected):
                assert np.array_equal(a, e), (label, k)
            assert got[k][0].flags.c_contiguous
        g = F.group_norm_backward(dyl, xl, 3, ref["gn"][1], ref["gn"][2], w)
        e = F.group_norm_backward(dy, x, 3, ref["gn"][1], ref["gn"][2], w)
        for a, b_ in zip(g, e):
            assert np.array_equal(a, b_), label
        g = F.add_layer_norm_backward(dyl, dyl, rl + xl, (5,), ref["add"][2], ref["add"][3], None)
        e = F.add_layer_norm_backward(dy, dy, ref["add"][1], (5,), ref["add"][2], ref["add"][3], None)
        for a, b_ in zip(g, e):
            assert np.array_equal(a, b_), label
        for a, c in zip((xl, rl, dyl), copies):
            assert np.array_equal(a, c), label
        # modules too
        for m in (
            cnorm.GroupNorm(3, 6, dtype=dtype),
            cnorm.InstanceNorm2d(6, dtype=dtype),
            cnorm.RMSNorm(5, dtype=dtype),
            cnorm.BatchNormReLU2d(6, dtype=dtype),
        ):
            m2 = copy.deepcopy(m)
            assert np.array_equal(m(xl), m2(x)), (label, m)
            assert np.array_equal(m.backward(dyl), m2.backward(dy)), (label, m)
        for a, c in zip((xl, rl, dyl), copies):
            assert np.array_equal(a, c), label


# --------------------------------------------------------------------------- layouts: functional


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("kind", LAYOUTS)
def test_functional_batch_norm_layouts(rng, dtype, kind):
    shape = (4, 3, 5, 6)
    x = rng.normal(0.5, 2.0, shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    w, b = rng.normal(size=3).astype(dtype), rng.normal(size=3).astype(dtype)
    rm, rv = rng.normal(size=3).astype(dtype), rng.uniform(0.5, 2, 3).astype(dtype)
    for training in (True, False):
        y, mean, invstd = F.native_batch_norm(x, w, b, rm.copy(), rv.copy(), training, 0.1, 1e-5)
        dx, dw, db = F.batch_norm_backward(dy, x, w, mean, invstd, training)
        rml, rvl = rm.copy(), rv.copy()
        pkind = {"fortran": "strided", "channels_last": "negative"}.get(kind, kind)  # 1-D parameters
        wl, bl = layout(w, pkind), layout(b, pkind)
        y2, mean2, invstd2 = F.native_batch_norm(layout(x, kind), wl, bl, rml, rvl, training, 0.1, 1e-5)
        dx2, dw2, db2 = F.batch_norm_backward(layout(dy, kind), layout(x, kind), wl, mean2, invstd2, training)
        for g, e in [(y2, y), (mean2, mean), (invstd2, invstd), (dx2, dx)]:
            assert_close(g, e, dtype)
        for g, e in [(dw2, dw), (db2, db)]:
            assert_close(g, e, dtype, scale=np.abs(e).max(initial=1.0))
        assert y2.flags.c_contiguous and dx2.flags.c_contiguous


@pytest.mark.parametrize("kind", ["fortran", "strided", "negative", "readonly"])
def test_functional_running_stats_non_contiguous_updated_in_place(rng, kind):
    x = rng.normal(0.5, 2.0, (6, 3, 4)).astype(np.float64)
    rm, rv = np.zeros(3), np.ones(3)
    F.batch_norm(x, rm, rv, training=True, momentum=0.5)
    buf_m, buf_v = np.zeros(7), np.ones(7)
    rm2, rv2 = buf_m[::2][:3], buf_v[::2][:3]
    if kind == "readonly":
        rm2, rv2 = np.zeros(3), np.ones(3)
        rm2.setflags(write=False)
        rv2.setflags(write=False)
        with pytest.raises((ValueError, TypeError)):
            F.batch_norm(x, rm2, rv2, training=True, momentum=0.5)
        return
    if kind == "negative":
        rm2, rv2 = buf_m[::-2][:3], buf_v[::-2][:3]
    if kind == "fortran":  # 1-D: a strided view again, of a different step
        rm2, rv2 = np.zeros(9)[::3], np.ones(9)[::3]
    F.batch_norm(x, rm2, rv2, training=True, momentum=0.5)
    np.testing.assert_allclose(rm2, rm, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(rv2, rv, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("kind", ["readonly", "strided", "negative"])
def test_functional_eval_running_stats_any_layout(rng, kind):
    """In eval the running stats are only read: read-only / strided arrays work like any input."""
    x = rng.normal(0.5, 2.0, (6, 3, 4))
    rm, rv = rng.normal(size=3), rng.uniform(0.5, 2.0, 3)
    expected = F.batch_norm(x, rm.copy(), rv.copy(), training=False)
    rml, rvl = layout(rm, kind), layout(rv, kind)
    y = F.batch_norm(x, rml, rvl, training=False)
    np.testing.assert_array_equal(y, expected)
    y2, _mean, _invstd = F.native_batch_norm(x, None, None, rml, rvl, False, 0.1, 1e-5)
    np.testing.assert_array_equal(y2, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_functional_every_layout(tmp_path, dtype):
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((6, 4, 7)) - 2.0).astype(dtype)
    dy = rng.standard_normal((6, 4, 7)).astype(dtype)
    (tmp_path / "x").mkdir()
    (tmp_path / "dy").mkdir()
    xs = _layouts(x, tmp_path / "x")
    dys = _layouts(dy, tmp_path / "dy")
    rm0 = rng.standard_normal(4).astype(dtype)
    rv0 = rng.uniform(0.5, 2, 4).astype(dtype)
    w = rng.uniform(0.5, 1.5, 4).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)

    def run(xx, gg):
        rm, rv = rm0.copy(), rv0.copy()
        y, mean, invstd = F.native_batch_norm(xx, w, b, rm, rv, True, 0.1, 1e-5)
        dx, dw, db = F.batch_norm_backward(gg, xx, w, mean, invstd, True)
        ye = F.batch_norm(xx, rm0, rv0, w, b, training=False)
        yl, ml, rl = F.native_layer_norm(xx, (4, 7), None, None, 1e-5)
        dxl = F.layer_norm_backward(gg, xx, (4, 7), ml, rl, None)[0]
        return [y, mean, invstd, dx, dw, db, rm, rv, ye, yl, ml, rl, dxl]

    ref = run(x, dy)
    for name in xs:
        for i, (a, r) in enumerate(zip(run(xs[name], dys[name]), ref)):
            np.testing.assert_array_equal(a, r, err_msg=f"{name} output {i}")


def test_running_stats_non_contiguous_updated_in_place(rng):
    x, _ = data(rng, (4, 3, 6), np.float32)
    base = np.zeros((3, 2), np.float32)
    rm = base[:, 0]
    rv_base = np.ones((3, 2), np.float32)
    rv = rv_base[:, 1]
    F.instance_norm(x, rm, rv, momentum=0.5)
    _, erm, erv = reference.instance_norm_forward(x, np.zeros(3), np.ones(3), None, None, True, 0.5, EPS)
    assert_close(base[:, 0], erm, np.float32)
    assert_close(rv_base[:, 1], erv, np.float32)
    assert np.all(base[:, 1] == 0) and np.all(rv_base[:, 0] == 1)
    F.batch_norm_relu(x, rm, rv, training=True, momentum=0.5)
    assert np.all(base[:, 1] == 0) and np.all(rv_base[:, 0] == 1) and np.any(base[:, 0] != erm)


# --------------------------------------------------------------------------- ownership

MODULE_IDS = list(MODULE_CASES)


@pytest.mark.parametrize("case", MODULE_IDS)
def test_inputs_and_parameters_never_modified(rng, case):
    make, shape = MODULE_CASES[case]
    m = make(np.float32)
    if m.weight is not None:
        sd = m.state_dict()
        sd["weight"] = rng.normal(size=m.weight.shape).astype(np.float32)
        sd["bias"] = rng.normal(size=m.bias.shape).astype(np.float32)
        m.load_state_dict(sd)
    w0, b0 = m.weight.copy(), m.bias.copy()
    for training in (True, False):
        m.train(training)
        x = rng.normal(0.5, 2.0, shape).astype(np.float32)
        dy = rng.normal(size=shape).astype(np.float32)
        x0, dy0 = x.copy(), dy.copy()
        y = m(x)
        np.testing.assert_array_equal(x, x0)
        dx = m.backward(dy)
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(dy, dy0)
        np.testing.assert_array_equal(m.weight, w0)
        np.testing.assert_array_equal(m.bias, b0)
        for a in (y, dx):
            assert a.flags.c_contiguous and a.flags.writeable
            assert not np.shares_memory(a, x) and not np.shares_memory(a, dy)
            assert not np.shares_memory(a, m.weight) and not np.shares_memory(a, m.bias)
        assert not np.shares_memory(y, dx)
        assert not np.shares_memory(m.weight_grad, m.weight)
        assert not np.shares_memory(m.weight_grad, m.bias_grad)


@pytest.mark.parametrize("case", MODULE_IDS)
def test_outputs_not_reused_between_calls(rng, case):
    make, shape = MODULE_CASES[case]
    m = make(np.float64)
    x1, x2 = rng.normal(size=shape), rng.normal(1.0, 3.0, shape)
    y1 = m(x1)
    dx1 = m.backward(np.ones(shape))
    y1c, dx1c = y1.copy(), dx1.copy()
    y2 = m(x2)
    dx2 = m.backward(rng.normal(size=shape))
    np.testing.assert_array_equal(y1, y1c)
    np.testing.assert_array_equal(dx1, dx1c)
    assert not np.shares_memory(y1, y2) and not np.shares_memory(dx1, dx2)


def test_functional_inputs_never_modified(rng):
    x = rng.normal(size=(5, 3, 4))
    dy = rng.normal(size=(5, 3, 4))
    w, b, rm, rv = rng.normal(size=3), rng.normal(size=3), rng.normal(size=3), rng.uniform(1, 2, 3)
    saved = [a.copy() for a in (x, dy, w, b, rm, rv)]
    y = F.batch_norm(x, rm, rv, w, b, training=False)
    y, mean, invstd = F.native_batch_norm(x, w, b, rm, rv, False, 0.1, 1e-5)
    mean0, invstd0 = mean.copy(), invstd.copy()
    for training in (True, False):
        F.batch_norm_backward(dy, x, w, mean, invstd, training)
    for a, a0 in zip((x, dy, w, b, rm, rv), saved):
        np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(mean, mean0)
    np.testing.assert_array_equal(invstd, invstd0)
    assert not np.shares_memory(mean, rm) and not np.shares_memory(y, x)
    lw, lb = rng.normal(size=4), rng.normal(size=4)
    xl, dyl = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    ls = [a.copy() for a in (lw, lb, xl, dyl)]
    yl, lm, lr = F.native_layer_norm(xl, (4,), lw, lb, 1e-5)
    F.layer_norm(xl, (4,), lw, lb, 1e-5)
    lm0, lr0 = lm.copy(), lr.copy()
    dxl, _, _ = F.layer_norm_backward(dyl, xl, (4,), lm, lr, lw)
    for a, a0 in zip((lw, lb, xl, dyl), ls):
        np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(lm, lm0)
    np.testing.assert_array_equal(lr, lr0)
    assert yl.flags.c_contiguous and dxl.flags.c_contiguous
    assert not np.shares_memory(yl, xl) and not np.shares_memory(dxl, dyl)
