"""Input layouts and ownership: strided / Fortran / negative-stride / read-only / broadcast inputs,
inputs never modified, outputs new C-contiguous arrays."""

import numpy as np
import pytest

import cnorm
import cnorm.functional as F

from conftest import DTYPES, assert_close


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
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
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


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
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
    np.testing.assert_allclose(cnorm.LayerNorm(7, dtype=dtype)(xl), cnorm.LayerNorm(7, dtype=dtype)(c_copy(xl)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
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


@pytest.mark.parametrize("kind", ["readonly", "strided", "negative"])
def test_functional_eval_running_stats_any_layout(rng, kind):
    """In eval the running stats are only read: read-only / strided arrays work like any input."""
    x = rng.normal(0.5, 2.0, (6, 3, 4))
    rm, rv = rng.normal(size=3), rng.uniform(0.5, 2.0, 3)
    expected = F.batch_norm(x, rm.copy(), rv.copy(), training=False)
    rml, rvl = layout(rm, kind), layout(rv, kind)
    y = F.batch_norm(x, rml, rvl, training=False)
    np.testing.assert_array_equal(y, expected)
    y2, mean, invstd = F.native_batch_norm(x, None, None, rml, rvl, False, 0.1, 1e-5)
    np.testing.assert_array_equal(y2, expected)
