"""Half storage (issue 12): float16 and ml_dtypes.bfloat16 in every norm.

The data are stored in half precision and every sum and coefficient is float32 or wider,
each output rounded once to nearest even. Checked here: the conversions (every float16,
the rounding edges, one rounding from float64), every norm forward and backward against
the float64 result of the same half inputs, parity with torch in the same dtype, torch's
mixed precision (half input, float32 parameters and running statistics) and its errors,
constant channels, NaN confinement, the in-kernel half paths against the float32 kernels
at 1, 2, 3 and 7 threads (every thread count: test_thread_determinism.py), the modules,
torch's zero-copy views and cnorm without ml_dtypes.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from norms import NORMS

import cnorm
import cnorm.functional as F
from cnorm import _ops
from cnorm._kernels import batch_norm as bn_kernels
from cnorm._kernels import row_norm as row_kernels

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
HALF = [F16, BF16]
KIND = {F16: 1, BF16: 2}
f64 = np.float64


def half_id(d):
    return np.dtype(d).name


def ulp(dtype, values):
    """The spacing of the half type at |values| (float64 array)."""
    finfo = ml_dtypes.finfo(dtype)
    mag = np.abs(np.asarray(values, f64))
    e = np.floor(np.log2(np.maximum(mag, float(finfo.smallest_normal))))
    return np.exp2(e - finfo.nmant)


def as64(a):
    return None if a is None else np.asarray(a).astype(f64)


# ---------------------------------------------------------------------------- conversions


def test_widen_every_float16_and_bfloat16():
    bits = np.arange(65536, dtype=np.uint16)
    for dtype, kind in KIND.items():
        ref = bits.view(dtype).astype(np.float32)
        got = row_kernels.widen_half(bits, kind)
        assert np.array_equal(got, ref, equal_nan=True)
        finite = ~np.isnan(ref)
        assert np.array_equal(got.view(np.uint32)[finite], ref.view(np.uint32)[finite])
        assert np.array_equal(row_kernels.widen_half(bits, kind, True), ref.astype(f64), equal_nan=True)


@pytest.mark.parametrize("dtype", HALF, ids=half_id)
def test_narrow_float32_rounds_to_nearest_even(dtype):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**32, 1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    edges = np.array([0.0, -0.0, np.inf, -np.inf, 65504, 65519.99, 65520, 3.3961e38, 1e-8, 2**-25, 2**-24])
    x = np.concatenate([x, edges.astype(np.float32)])
    got = row_kernels.narrow_half(x, KIND[dtype]).view(dtype)
    nan = np.isnan(x)
    with np.errstate(over="ignore", invalid="ignore"):
        ref = x.astype(dtype)
    assert np.array_equal(got.view(np.uint16)[~nan], ref.view(np.uint16)[~nan])
    assert np.isnan(got[nan].astype(np.float32)).all()
    assert np.array_equal(np.signbit(got[nan].astype(np.float32)), np.signbit(x[nan]))


@pytest.mark.parametrize("dtype", HALF, ids=half_id)
def test_narrow_float64_rounds_once(dtype):
    """Just off a midpoint between two half values, float64 -> float32 -> half would round
    twice (to the midpoint, then to even); the one rounding goes to the nearer value."""
    rng = np.random.default_rng(1)
    lo_bits = rng.integers(0x0400, 0x7800 if dtype == F16 else 0x7F00, 4096).astype(np.uint16)
    lo = lo_bits.view(dtype).astype(f64)
    hi = (lo_bits + 1).view(dtype).astype(f64)
    mid = (lo + hi) / 2
    even = np.where(lo_bits % 2 == 0, lo, hi)
    for x, want in ((mid, even), (np.nextafter(mid, np.inf), hi), (np.nextafter(mid, -np.inf), lo)):
        for sign in (1, -1):
            got = row_kernels.narrow_half(sign * x, KIND[dtype]).view(dtype).astype(f64)
            assert np.array_equal(got, sign * want)


# ------------------------------------------------------------ every norm against float64


def _half_inputs(norm, case, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.5, 2.0, case.shape).astype(dtype)
    p = norm.params(rng, case, dtype)
    douts = [rng.normal(0, 1, case.shape).astype(dtype) for _ in range(norm.n_outputs())]
    return x, p, douts


def _check_half(got, truth, dtype, scale, what):
    """got (half) within 1 ulp of the float64 truth plus float32 arithmetic on ``scale``."""
    assert got.dtype == dtype, (what, got.dtype)
    g, t = got.astype(f64), np.asarray(truth, f64)
    allowed = ulp(dtype, t) + 2.0**-20 * scale
    bad = ~(np.abs(g - t) <= allowed) & ~(np.isnan(g) & np.isnan(t))
    assert not bad.any(), (
        f"{what}: {int(bad.sum())}/{g.size} off, worst {np.max(np.abs(g - t) / allowed):.3g}"
    )


def _cases(norm):
    return [c for c in norm.shapes + norm.simd if np.prod(c.shape) > 1]


@pytest.mark.parametrize("dtype", HALF, ids=half_id)
@pytest.mark.parametrize("norm", NORMS, ids=repr)
def test_every_norm_within_one_ulp_of_float64(norm, dtype):
    for k, case in enumerate(_cases(norm)):
        for training in norm.modes:
            x, p, douts = _half_inputs(norm, case, dtype, k)
            p64 = {name: as64(a) for name, a in p.items()}
            try:
                outs, saved = norm.forward(
                    x, case, {n: (None if a is None else a.copy()) for n, a in p.items()}, training
                )
            except ValueError:  # e.g. one value per channel in training
                continue
            if norm.family == "add_layer":  # torch normalizes the sum rounded to the half type
                s_half = outs[1]
                assert np.array_equal(s_half, _ops.narrow(as64(x) + p64["residual"], np.dtype(dtype)))
                p64["residual"] = as64(s_half) - as64(x)
            ref = norm.ref_forward(
                as64(x), case, {n: (None if a is None else a.copy()) for n, a in p64.items()}, training
            )
            for i, (o, r) in enumerate(zip(outs, ref)):
                _check_half(
                    o, r, dtype, np.max(np.abs(r), initial=0), f"{norm} {case.id} out{i} training={training}"
                )
            grads = norm.backward(douts, x, case, p, saved, training)
            ref_g = norm.ref_backward([as64(d) for d in douts], as64(x), case, p64, training)
            dx_scale = np.max(np.abs(ref_g["input"]), initial=0) + np.max(np.abs(as64(douts[0]))) * 4
            if norm.family == "add_layer" and len(douts) > 1:  # ds rounded, then + dsum: as torch
                dx_scale = dx_scale + ulp(dtype, ref_g["input"] - as64(douts[1])) * 2.0**20
            _check_half(grads["input"], ref_g["input"], dtype, dx_scale, f"{norm} {case.id} dx")
            for name in ("weight", "bias"):
                if grads.get(name) is not None:
                    r = np.asarray(ref_g[name], f64)
                    n_terms = x.size / max(r.size, 1)
                    _check_half(
                        grads[name],
                        r,
                        dtype,
                        np.max(np.abs(r), initial=0) + n_terms * 2.0**-10,
                        f"{norm} d{name}",
                    )


# ------------------------------------------------------------------------ torch parity

try:
    import torch

    TF = torch.nn.functional
    TORCH = {F16: torch.float16, BF16: torch.bfloat16}
except ImportError:  # pragma: no cover
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")


def to_torch(a):
    """A half array as a torch tensor of the same bits (the drop-in's zero-copy views)."""
    return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(TORCH[a.dtype])


def from_torch(t):
    """A torch half tensor as a NumPy array of the same bits (no copy)."""
    dtype = F16 if t.dtype == torch.float16 else BF16
    return t.detach().contiguous().view(torch.int16).numpy().view(dtype)


def _no_worse_than_torch(ours, theirs, truth, dtype, what):
    o, t, r = ours.astype(f64), theirs.astype(f64), np.asarray(truth, f64)
    bound = np.maximum(ulp(dtype, r), np.abs(t - r))
    bad = np.abs(o - r) > bound * (1 + 1e-12)
    assert not bad.any(), f"{what}: {int(bad.sum())}/{o.size} worse than both 1 ulp and torch"


@needs_torch
@pytest.mark.parametrize("dtype", HALF, ids=half_id)
def test_parity_with_torch_in_the_same_dtype(dtype):
    rng = np.random.default_rng(5)
    x = rng.normal(1, 2, (8, 16, 12, 12)).astype(dtype)
    dy = rng.normal(0, 1, x.shape).astype(dtype)
    w = rng.normal(1, 0.3, 16).astype(dtype)
    b = rng.normal(0, 0.3, 16).astype(dtype)
    x64, dy64, w64, b64 = (a.astype(f64) for a in (x, dy, w, b))
    xt, dyt = to_torch(x).requires_grad_(), to_torch(dy)
    wt, bt = to_torch(w).requires_grad_(), to_torch(b).requires_grad_()
    runs = {
        "batch_norm": (
            lambda x_, w_, b_: F.batch_norm(x_, None, None, w_, b_, training=True),
            lambda: TF.batch_norm(xt, None, None, wt, bt, training=True),
        ),
        "group_norm": (lambda x_, w_, b_: F.group_norm(x_, 4, w_, b_), lambda: TF.group_norm(xt, 4, wt, bt)),
        "layer_norm": (
            lambda x_, w_, b_: F.layer_norm(x_, (12,), w_[:12], b_[:12]),
            lambda: TF.layer_norm(xt, (12,), wt[:12], bt[:12]),
        ),
        "rms_norm": (
            lambda x_, w_, b_: F.rms_norm(x_, (12,), w_[:12], 1e-6),
            lambda: TF.rms_norm(xt, (12,), wt[:12], 1e-6),
        ),
    }
    for name, (ours_fn, torch_fn) in runs.items():
        ours = ours_fn(x, w, b)
        truth = ours_fn(x64, w64, b64)
        yt = torch_fn()
        theirs = from_torch(yt)
        assert ours.dtype == dtype
        _no_worse_than_torch(ours, theirs, truth, dtype, f"{name} forward")
        xt.grad = None
        (gx,) = torch.autograd.grad(yt, xt, dyt)
        if name == "batch_norm":
            out, mean, invstd = F.native_batch_norm(x, w, b, None, None, True, 0.1, 1e-5)
            dx, _, _ = F.batch_norm_backward(dy, x, w, mean, invstd, True)
            out64, mean64, invstd64 = F.native_batch_norm(x64, w64, b64, None, None, True, 0.1, 1e-5)
            dx64, _, _ = F.batch_norm_backward(dy64, x64, w64, mean64, invstd64, True)
        elif name == "layer_norm":
            out, mean, rstd = F.native_layer_norm(x, (12,), w[:12], b[:12], 1e-5)
            dx, _, _ = F.layer_norm_backward(dy, x, (12,), mean, rstd, w[:12])
            out64, mean64, rstd64 = F.native_layer_norm(x64, (12,), w64[:12], b64[:12], 1e-5)
            dx64, _, _ = F.layer_norm_backward(dy64, x64, (12,), mean64, rstd64, w64[:12])
        else:
            continue
        scale = 2.0**-20 * np.abs(dy64).max() * 8
        err_ours = np.abs(dx.astype(f64) - dx64)
        err_torch = np.abs(from_torch(gx).astype(f64) - dx64)
        assert np.all(err_ours <= np.maximum(ulp(dtype, dx64), err_torch) + scale), f"{name} backward"


@needs_torch
@pytest.mark.parametrize("dtype", HALF, ids=half_id)
def test_zero_copy_views_of_torch_tensors(dtype):
    """torch.bfloat16 -> .view(torch.int16).numpy().view(ml_dtypes.bfloat16): the
    functional API takes the view as it is and its result goes back the same way."""
    t = torch.randn(4, 6, 32).to(TORCH[dtype])
    x = t.view(torch.int16).numpy().view(dtype)
    assert np.shares_memory(x, t.numpy() if dtype == F16 else t.view(torch.int16).numpy())
    y = F.layer_norm(x, (32,))
    yt = torch.from_numpy(y.view(np.int16)).view(TORCH[dtype])
    ref = TF.layer_norm(t, (32,))
    assert torch.all(
        (yt.float() - ref.float()).abs() <= torch.from_numpy(ulp(dtype, ref.float().numpy())) * 1.5
    )


# ---------------------------------------------------------------------- mixed precision


@needs_torch
@pytest.mark.parametrize("dtype", HALF, ids=half_id)
def test_mixed_precision_float32_parameters_and_running_stats(dtype):
    rng = np.random.default_rng(3)
    x = rng.normal(0.3, 1.5, (6, 4, 50)).astype(dtype)
    dy = rng.normal(0, 1, x.shape).astype(dtype)
    w, b = rng.normal(1, 0.2, 4).astype(dtype), rng.normal(0, 0.2, 4).astype(dtype)
    w32, b32 = w.astype(np.float32), b.astype(np.float32)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    y, mean, invstd = F.native_batch_norm(x, w32, b32, rm, rv, True, 0.1, 1e-5)
    y_half, _, _ = F.native_batch_norm(x, w, b, None, None, True, 0.1, 1e-5)
    assert y.dtype == dtype and np.array_equal(y, y_half)
    assert rm.dtype == rv.dtype == np.float32
    rmt, rvt = torch.zeros(4), torch.ones(4)
    TF.batch_norm(to_torch(x), rmt, rvt, torch.from_numpy(w32), torch.from_numpy(b32), True)
    np.testing.assert_allclose(rm, rmt.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rv, rvt.numpy(), rtol=1e-6, atol=1e-7)
    dx, dw, db = F.batch_norm_backward(dy, x, w32, mean, invstd, True)
    assert dx.dtype == dtype and dw.dtype == db.dtype == np.float32
    dx_h, dw_h, db_h = F.batch_norm_backward(dy, x, w, mean, invstd, True)
    assert np.array_equal(dx, dx_h) and dw_h.dtype == dtype
    # row norms: float32 weight and bias
    y, mean, rstd = F.native_layer_norm(x, (50,), rng.normal(1, 0.1, 50).astype(np.float32), None, 1e-5)
    assert y.dtype == dtype
    _, dw, db = F.layer_norm_backward(dy, x, (50,), mean, rstd, np.ones(50, np.float32))
    assert dw.dtype == db.dtype == np.float32
    y = F.group_norm(x, 2, w32, b32)
    assert y.dtype == dtype and np.array_equal(y, F.group_norm(x, 2, w, b))
    # eval with float32 running statistics
    ye = F.batch_norm(x, rm, rv, w32, b32, training=False)
    assert (
        np.array_equal(ye, F.batch_norm(x, rm.astype(dtype).astype(np.float32), rv, w32, b32))
        or ye.dtype == dtype
    )


@pytest.mark.parametrize("dtype", HALF, ids=half_id)
def test_other_mixes_get_torchs_errors(dtype):
    other = F16 if dtype == BF16 else BF16
    x = np.ones((2, 3, 4), dtype)
    c32, ch, co = np.ones(3, np.float32), np.ones(3, dtype), np.ones(3, other)
    torch_name = "BFloat16" if dtype == BF16 else "Half"
    # torch's type: RuntimeError
    with pytest.raises(RuntimeError, match=f"^expected scalar type {torch_name} but found Float$"):
        F.batch_norm(x, c32, c32, ch, ch, training=True)
    for w in (co, np.ones(3, np.float64)):
        with pytest.raises(
            RuntimeError, match=r"^mixed dtype \(CPU\): expect parameter to have scalar type of Float$"
        ):
            F.batch_norm(x, None, None, w, None, training=True)
    with pytest.raises(
        RuntimeError, match=r"^mixed dtype \(CPU\): expect parameter to have scalar type of Float$"
    ):
        F.layer_norm(x, (4,), np.ones(4, np.float32), np.ones(4, dtype))
    with pytest.raises(
        RuntimeError, match=r"^mixed dtype \(CPU\): expect parameter to have scalar type of Float$"
    ):
        F.group_norm(x, 3, c32, ch)
    with pytest.raises(TypeError, match="dtype"):  # float32 input, half weight: as before
        F.layer_norm(np.ones((2, 4), np.float32), (4,), np.ones(4, dtype))


# ---------------------------------------------------------- constant channels, NaN, Inf


@pytest.mark.parametrize("dtype", HALF, ids=half_id)
def test_constant_channels_are_exactly_zero_and_nan_stays_put(dtype):
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, (4, 3, 40)).astype(dtype)
    x[:, 1] = np.asarray(7.25, dtype)  # a constant channel (BatchNorm) / constant rows
    y = F.batch_norm(x, None, None, training=True)
    assert np.all(y[:, 1].astype(f64) == 0)
    y = F.layer_norm(x, (40,))
    assert np.all(y[:, 1].astype(f64) == 0)
    y = F.instance_norm(x)
    assert np.all(y[:, 1].astype(f64) == 0)
    x[2, 0, 5] = np.nan
    x[1, 2, 7] = np.inf
    y = F.batch_norm(x, None, None, training=True)
    assert np.isnan(y[:, 0].astype(f64)).all() and np.isnan(y[:, 2].astype(f64)).all()
    assert np.all(y[:, 1].astype(f64) == 0)
    y = F.layer_norm(x, (40,))
    bad = np.isnan(y.astype(f64)).all(axis=-1)
    assert bad[2, 0] and bad[1, 2] and bad.sum() == 2
    assert np.isfinite(y[~bad].astype(f64)).all()


@pytest.mark.parametrize("shape", [(4, 3, 600), (600, 3)], ids=["NCS", "NC"])
def test_bfloat16_near_the_top_of_its_range(shape):
    """bfloat16 has float32's range: |x| up to 3e38, where dy * (x - mean) overflows float32
    and the sums of the backward are redone from O(1) terms (as for float32 data)."""
    rng = np.random.default_rng(5)
    u = rng.standard_normal(shape)
    x = (u / np.abs(u).max() * 3e38).astype(BF16)
    dy = rng.standard_normal(shape).astype(BF16)
    w = np.ones(3, BF16)
    y, mean, invstd = F.native_batch_norm(x, w, None, None, None, True, 0.1, 1e-5)
    dx, dw, _ = F.batch_norm_backward(dy, x, w, mean, invstd, True)
    axes = (0, 2) if len(shape) == 3 else (0,)
    x64, dy64 = as64(x), as64(dy)
    xhat = (x64 - x64.mean(axes, keepdims=True)) / x64.std(axes, keepdims=True)
    dx64 = dy64 - dy64.mean(axes, keepdims=True) - xhat * (dy64 * xhat).mean(axes, keepdims=True)
    dx64 /= x64.std(axes, keepdims=True)
    assert np.abs(as64(y) - xhat).max() <= 2 * ulp(BF16, 4.0)
    assert np.abs(as64(dx) - dx64).max() <= 4 * float(ulp(BF16, np.abs(dx64).max()))
    np.testing.assert_allclose(as64(dw), (dy64 * xhat).sum(axes), rtol=1e-2, atol=0.2)


# ------------------------------------------- in-kernel half paths, threads, SIMD builds


def _float32_twin(kernel, *args, out_dtype):
    """The float32 kernel on the widened arguments, its first output rounded once."""
    wide = [_ops.widen(a) for a in args]
    out = kernel(*wide)
    return _ops.narrow(out[0], out_dtype), out[1:]


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
@pytest.mark.parametrize("dtype", HALF, ids=half_id)
def test_half_kernels_are_the_float32_kernels_on_the_widened_input(dtype, threads):
    rng = np.random.default_rng(6)
    x = rng.normal(2, 3, (8, 6, 4099)).astype(dtype)
    dy = rng.normal(0, 1, x.shape).astype(dtype)
    w, b = rng.normal(1, 0.3, 6).astype(np.float32), rng.normal(0, 0.3, 6).astype(np.float32)
    wd, bd = rng.normal(1, 0.3, 4099).astype(np.float32), rng.normal(0, 0.3, 4099).astype(np.float32)
    kind = KIND[dtype]
    bits = x.view(np.uint16)
    old = cnorm.get_num_threads()
    cnorm.set_num_threads(threads)
    try:
        # batch norm: train forward (running statistics float32), backward, eval
        rm, rv = np.zeros(6, np.float32), np.ones(6, np.float32)
        rm2, rv2 = rm.copy(), rv.copy()
        y, mean, invstd = bn_kernels.batch_norm_forward_train(
            bits, 8, 6, 4099, w, b, rm, rv, 0.1, 1e-5, False, kind
        )
        y2, (mean2, _) = _float32_twin(
            lambda *a: bn_kernels.batch_norm_forward_train(*a, rm2, rv2, 0.1, 1e-5),
            x,
            8,
            6,
            4099,
            w,
            b,
            out_dtype=dtype,
        )
        assert np.array_equal(y.view(dtype), y2) and np.array_equal(mean, mean2)
        assert np.array_equal(rm, rm2) and np.array_equal(rv, rv2)
        dx, sdy, sdyx = bn_kernels.batch_norm_backward(
            dy.view(np.uint16), bits, 8, 6, 4099, mean, invstd, w, True, None, kind
        )
        dx2, (sdy2, sdyx2) = _float32_twin(
            lambda *a: bn_kernels.batch_norm_backward(*a, mean, invstd, w, True),
            dy,
            x,
            8,
            6,
            4099,
            out_dtype=dtype,
        )
        assert (
            np.array_equal(dx.view(dtype), dx2) and np.array_equal(sdy, sdy2) and np.array_equal(sdyx, sdyx2)
        )
        # layer norm over the last dim, forward and backward
        y, mean, rstd = row_kernels.layer_norm_forward(bits, 48, 4099, wd, bd, 1e-5, kind)
        y2, (mean2, _) = _float32_twin(
            lambda *a: row_kernels.layer_norm_forward(*a, 1e-5), x, 48, 4099, wd, bd, out_dtype=dtype
        )
        assert np.array_equal(y.view(dtype), y2) and np.array_equal(mean, mean2)
        dx, dw, db = row_kernels.layer_norm_backward(dy.view(np.uint16), bits, 48, 4099, mean, rstd, wd, kind)
        dx2, (dw2, db2) = _float32_twin(
            lambda *a: row_kernels.layer_norm_backward(*a, mean, rstd, wd), dy, x, 48, 4099, out_dtype=dtype
        )
        assert np.array_equal(dx.view(dtype), dx2)
        assert dw.dtype == f64 and np.allclose(dw, dw2, rtol=1e-5, atol=1e-3)
    finally:
        cnorm.set_num_threads(old)


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
@pytest.mark.parametrize("dtype", HALF, ids=half_id)
def test_half_batch_norm_of_n_c_batches(dtype, threads):
    """(N, C): tiles widened in cache, walked and merged as the float32 kernels walk
    theirs, so every result is that of the float32 kernels on the widened input."""
    rng = np.random.default_rng(9)
    x = rng.normal(2, 3, (130, 1500)).astype(dtype)
    dy = rng.normal(0, 1, x.shape).astype(dtype)
    w, b = rng.normal(1, 0.3, 1500).astype(np.float32), rng.normal(0, 0.3, 1500).astype(np.float32)
    bits, kind = x.view(np.uint16), KIND[dtype]
    old = cnorm.get_num_threads()
    cnorm.set_num_threads(threads)
    try:
        y, mean, invstd = bn_kernels.batch_norm_forward_train(
            bits, 130, 1500, 1, w, b, None, None, 0.1, 1e-5, True, kind
        )
        mean2, var2 = bn_kernels.batch_norm_stats(_ops.widen(x), 130, 1500, 1)
        assert np.array_equal(mean, mean2) and np.array_equal(invstd, 1 / np.sqrt(var2 + 1e-5))
        y2 = bn_kernels.batch_norm_elemt(_ops.widen(x), 130, 1500, 1, mean, invstd, w, b, True)
        assert np.array_equal(y.view(dtype), _ops.narrow(y2, dtype))
        dx, sdy, sdyx = bn_kernels.batch_norm_backward(
            dy.view(np.uint16), bits, 130, 1500, 1, mean, invstd, w, True, y, kind
        )
        dx2, sdy2, sdyx2 = bn_kernels.batch_norm_backward(
            _ops.widen(dy), _ops.widen(x), 130, 1500, 1, mean, invstd, w, True, _ops.widen(y.view(dtype))
        )
        assert np.array_equal(dx.view(dtype), _ops.narrow(dx2, dtype))
        assert np.array_equal(sdy, sdy2) and np.array_equal(sdyx, sdyx2)
    finally:
        cnorm.set_num_threads(old)


def _planes(dtype, N, C, S, seed, values):
    """(N, C, S) half values of a kind: plain, tiny (float32 squares subnormal: the
    float64 redo), huge (squares overflow), with NaN / inf planes, or constant planes."""
    rng = np.random.default_rng(seed)
    x = rng.normal(2, 3, (N, C, S))
    if values == "tiny":
        x = x * 1e-30 if dtype == BF16 else x * 1e-6
    elif values == "huge":
        x = x * 1e36 if dtype == BF16 else x * 2e3
    x = x.astype(dtype)
    if values == "special":
        x[0, 1, S // 2] = np.nan
        x[N - 1, C - 1, 0] = np.inf
        x[N // 2, C // 2, S - 1] = -np.inf
        x[:, 3] = -0.0
        x[:, 4] = 7.0
    return x


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("values", ["plain", "tiny", "huge", "special"])
@pytest.mark.parametrize(
    "shape",
    [
        (3, 40, 196),
        (2, 33, 1),
        (5, 32, 2),
        (4, 35, 7),
        (3, 36, 15),
        (3, 40, 16),
        (2, 34, 17),
        (2, 32, 31),
        (2, 33, 511),
        (2, 32, 512),
        (2, 33, 513),
        (2, 32, 1025),
        (2, 8, 196),
        (3, 6, 1537),
        (2, 5, 2048),
        (2, 40, 1600),
        (70, 32, 9),
    ],
    ids=str,
)
@pytest.mark.parametrize("dtype", HALF, ids=half_id)
def test_half_batch_norm_planes_are_the_float32_kernels_bits(dtype, shape, values, threads):
    """NCHW half storage: the statistics of a row of short planes in one runs_stats call
    (C >= 32), a channel's whole blocks in one (long planes), the normalize and input
    gradient with their overlapping last step: every result the float32 kernels' on the
    widened input, at every plane length around the steps and BLOCK, for tiny and huge
    values (the float64 redo), NaN / inf, -0 and constant planes, at 1, 2 and 3 threads."""
    N, C, S = shape
    x = _planes(dtype, N, C, S, 11 + S, values)
    dy = np.random.default_rng(S).normal(0, 1, x.shape).astype(dtype)
    rng = np.random.default_rng(5)
    w, b = rng.normal(1, 0.3, C).astype(np.float32), rng.normal(0, 0.3, C).astype(np.float32)
    bits, kind = x.view(np.uint16), KIND[dtype]
    old = cnorm.get_num_threads()
    cnorm.set_num_threads(threads)
    try:
        for relu in (False, True):
            y, mean, invstd = bn_kernels.batch_norm_forward_train(
                bits, N, C, S, w, b, None, None, 0.1, 1e-5, relu, kind
            )
            mean2, var2 = bn_kernels.batch_norm_stats(_ops.widen(x), N, C, S)
            assert np.array_equal(mean, mean2, equal_nan=True)
            assert np.array_equal(invstd, 1 / np.sqrt(var2 + 1e-5), equal_nan=True)
            m_h, v_h = bn_kernels.batch_norm_stats(bits, N, C, S, kind)
            assert np.array_equal(m_h, mean2, equal_nan=True) and np.array_equal(v_h, var2, equal_nan=True)
            y2 = bn_kernels.batch_norm_elemt(_ops.widen(x), N, C, S, mean, invstd, w, b, relu)
            assert np.array_equal(y, _ops.narrow(y2, dtype).view(np.uint16))
        for ym, training in [(None, True), (None, False), (y, True), (y, False)]:
            dx, sdy, sdyx = bn_kernels.batch_norm_backward(
                dy.view(np.uint16), bits, N, C, S, mean, invstd, w, training, ym, kind
            )
            dx2, sdy2, sdyx2 = bn_kernels.batch_norm_backward(
                _ops.widen(dy),
                _ops.widen(x),
                N,
                C,
                S,
                mean,
                invstd,
                w,
                training,
                None if ym is None else _ops.widen(ym.view(dtype)),
            )
            assert np.array_equal(dx, _ops.narrow(dx2, dtype).view(np.uint16))
            assert np.array_equal(sdy, sdy2, equal_nan=True) and np.array_equal(sdyx, sdyx2, equal_nan=True)
    finally:
        cnorm.set_num_threads(old)


@pytest.mark.parametrize("dtype", HALF, ids=half_id)
def test_half_batch_norm_short_planes_match_float64(dtype):
    """S = 196 planes (one block each, many channels): the statistics within a few float32
    ulp of float64's, y within one half ulp of the float64 result of the same inputs."""
    x = _planes(dtype, 6, 48, 196, 3, "plain")
    y, mean, invstd = bn_kernels.batch_norm_forward_train(
        x.view(np.uint16), 6, 48, 196, None, None, None, None, 0.1, 1e-5, False, KIND[dtype]
    )
    x64 = as64(x)
    m64, v64 = x64.mean((0, 2)), x64.var((0, 2))
    np.testing.assert_allclose(mean, m64, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(1 / invstd**2 - 1e-5, v64, rtol=1e-5)
    ref = (x64 - m64[:, None]) / np.sqrt(v64[:, None] + 1e-5)
    assert np.all(np.abs(as64(y.view(dtype)) - ref) <= ulp(dtype, ref))


@pytest.mark.parametrize("dtype", HALF, ids=half_id)
def test_row_outputs_do_not_depend_on_the_thread_count(dtype):
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, (256, 1030)).astype(dtype)
    r = rng.normal(0, 1, x.shape).astype(dtype)
    old = cnorm.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            cnorm.set_num_threads(t)
            outs.append([F.layer_norm(x, (1030,)), *F.add_layer_norm(x, r, (1030,)), F.rms_norm(x, (1030,))])
        for a, b in zip(*outs):
            assert np.array_equal(a, b)
    finally:
        cnorm.set_num_threads(old)


# ------------------------------------------------------------------------------- modules


@pytest.mark.parametrize("dtype", HALF, ids=half_id)
@pytest.mark.parametrize("norm", NORMS, ids=repr)
def test_modules_keep_half_parameters_and_running_stats(norm, dtype):
    case = norm.small
    m = norm.make(case, dtype=dtype, **norm.full_kw)
    rng = np.random.default_rng(8)
    x = rng.normal(0, 1, case.shape).astype(dtype)
    r = norm.inputs(rng, case, dtype)
    outs = norm.call(m, x, r)
    assert all(o.dtype == dtype for o in outs)
    dx = norm.module_backward(m, [np.ones_like(o) for o in outs])
    assert dx.dtype == dtype
    for name in ("weight", "bias", "running_mean", "running_var"):
        a = getattr(m, name, None)
        assert a is None or a.dtype == dtype, name
        g = getattr(m, name + "_grad", None)
        assert g is None or g.dtype == dtype, name
    state = m.state_dict()
    m2 = norm.make(case, dtype=dtype, **norm.full_kw)
    m2.load_state_dict(state)
    m.eval()
    m2.eval()
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(norm.call(m, x, r), norm.call(m2, x, r)))


@needs_torch
def test_module_dtype_by_torch_name():
    assert cnorm.BatchNorm2d(3, dtype=torch.bfloat16).weight.dtype == BF16
    assert cnorm.LayerNorm(4, dtype=torch.float16).weight.dtype == F16


# ----------------------------------------------------------------------- without ml_dtypes


def test_without_ml_dtypes_bfloat16_is_cleanly_unavailable():
    code = """
import sys
sys.modules["ml_dtypes"] = None          # import ml_dtypes -> ImportError
import numpy as np
import cnorm, cnorm.functional as F
from cnorm import _validate
assert _validate.BFLOAT16 is None
y = F.layer_norm(np.ones((2, 4), np.float16), (4,))
assert y.dtype == np.float16
m = cnorm.BatchNorm1d(3, dtype=np.float16)
assert m(np.ones((4, 3), np.float16)).dtype == np.float16
try:
    F.layer_norm(np.ones((2, 4), np.int32), (4,))
except TypeError as e:
    assert "bfloat16 needs the ml_dtypes package" in str(e), e
else:
    raise AssertionError("no TypeError")
print("ok")
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_kernel_half_storage_arguments_are_checked():
    x16 = np.zeros((4, 8), np.uint16)
    w = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="uint16"):
        row_kernels.layer_norm_forward(np.zeros((4, 8), np.float32), 4, 8, None, None, 1e-5, 1)
    with pytest.raises(ValueError, match="kind"):
        row_kernels.layer_norm_forward(x16, 4, 8, None, None, 1e-5, 3)
    with pytest.raises(ValueError, match="float"):  # half storage: float32 parameters
        row_kernels.layer_norm_forward(x16, 4, 8, w.astype(np.float16), None, 1e-5, 1)
    with pytest.raises(ValueError, match="kind"):
        bn_kernels.batch_norm_stats(x16, 4, 8, 1, 3)
    with pytest.raises(ValueError, match="uint16"):
        bn_kernels.batch_norm_backward(
            np.zeros((4, 2, 4), np.float32), x16, 4, 2, 4, np.zeros(2), np.ones(2), None, True, None, 2
        )
    with pytest.raises(ValueError, match="kind"):
        row_kernels.widen_half(x16, 0)


def test_ml_dtypes_is_imported_lazily():
    """import cnorm / cnorm.torch leave ml_dtypes (a second to import) alone; a bfloat16
    array made after the import is recognised, and a bfloat16 tensor imports it."""
    code = """
import sys
import numpy as np
import cnorm, cnorm.functional as F
assert "ml_dtypes" not in sys.modules
import ml_dtypes
y = F.layer_norm(np.ones((2, 4), ml_dtypes.bfloat16), (4,))
assert y.dtype == ml_dtypes.bfloat16
print("ok")
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_torch_dropin_imports_ml_dtypes_with_the_first_bfloat16_tensor():
    code = """
import sys
import torch, cnorm.torch as ct
assert "ml_dtypes" not in sys.modules
m = ct.LayerNorm(4096, dtype=torch.bfloat16)
x = torch.randn(256, 4096).bfloat16().requires_grad_()
y = m(x)
assert "ml_dtypes" in sys.modules and y.dtype == torch.bfloat16
ref = torch.nn.functional.layer_norm(x.float(), (4096,), m.weight.float(), m.bias.float())
assert torch.allclose(y.float(), ref, atol=0.05), (y, ref)
y.sum().backward()
print("ok")
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
