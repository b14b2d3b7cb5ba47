"""Values of the row norms (LayerNorm, RMSNorm, AddLayerNorm) against the float64 reference
(cnorm.slow): outputs, statistics, gradients, return types and defaults."""

import numpy as np
import pytest
from conftest import DTYPES, assert_close, assert_reduction_close, data, dtype_id, make_ln_data, params
from norms import LN_AFFINE, ln_cases, reference

import cnorm.functional as F

EPS = 1e-5


def row_cases(cases):
    """Parametrize a row-norm test over ``cases`` (input shape, normalized_shape), the dtypes
    and affine or plain."""

    def parametrize(test):
        test = pytest.mark.parametrize("case", cases, ids=[f"{s}-{n}" for s, n in cases])(test)
        test = pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])(test)
        return pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])(test)

    return parametrize


# --------------------------------------------------------------------------- LayerNorm


@ln_cases
def test_native_layer_norm(num_threads, rng, case, dtype, affine):
    shape, ns = case
    x, _, w, b = make_ln_data(rng, shape, ns, dtype)
    use_w, use_b = LN_AFFINE[affine]
    w = w if use_w else None
    b = b if use_b else None
    y, mean, rstd = F.native_layer_norm(x, ns, w, b, EPS)
    y_ref, mean_ref, rstd_ref = reference.layer_norm_forward(x, ns, w, b, EPS)
    lead = shape[: len(shape) - len(ns)]
    assert y.dtype == dtype and y.shape == shape
    assert mean.dtype == rstd.dtype == np.float64
    assert mean.shape == rstd.shape == lead
    assert_close(y, y_ref, dtype)
    assert_close(mean, mean_ref, dtype)
    assert_close(rstd, rstd_ref, dtype, scale=np.max(rstd_ref, initial=1.0))
    y2 = F.layer_norm(x, ns, w, b, EPS)
    np.testing.assert_array_equal(y2, y)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("ns", [4, (4,), [3, 4], (2, 3, 4)], ids=str)
def test_native_layer_norm_returns(rng, dtype, ns):
    shape = (2, 5, 2, 3, 4)
    nst = (ns,) if isinstance(ns, int) else tuple(ns)
    x, _, w, b = make_ln_data(rng, shape, nst, dtype)
    y, mean, rstd = F.native_layer_norm(x, ns, w, b, EPS)
    lead = shape[: len(shape) - len(nst)]
    assert type(y) is np.ndarray and y.shape == shape and y.dtype == dtype and y.flags.c_contiguous
    for s in (mean, rstd):
        assert type(s) is np.ndarray and s.shape == lead and s.dtype == np.float64
    np.testing.assert_array_equal(F.layer_norm(x, ns, w, b, EPS), y)
    axes = tuple(range(len(lead), len(shape)))
    x64 = x.astype(np.float64)
    assert_close(mean, x64.mean(axis=axes), dtype)
    assert_close(rstd, 1 / np.sqrt(x64.var(axis=axes) + EPS), dtype)


def test_layer_norm_defaults(rng):
    x = rng.normal(size=(3, 6))
    y = F.layer_norm(x, (6,))
    np.testing.assert_allclose(
        y, (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5), rtol=1e-13, atol=1e-13
    )


# --------------------------------------------------------------------------- RMSNorm

RMS_CASES = [
    ((5, 11), (11,)),
    ((4, 513), (513,)),
    ((2, 3, 7), (3, 7)),
    ((3, 5000), (5000,)),
    ((7,), (7,)),
    ((64, 1024), (1024,)),
    ((40, 1), (1,)),
]


@pytest.mark.parametrize("eps", [None, 1e-5, 0.1], ids=["epsNone", "eps1e-5", "eps0.1"])
@row_cases(RMS_CASES)
def test_rms_norm_matches_reference(rng, num_threads, case, dtype, affine, eps):
    shape, ns = case
    x, dy = data(rng, shape, dtype)
    w = rng.normal(1.0, 0.5, ns).astype(dtype) if affine else None
    y, rrms = F.native_rms_norm(x, ns, w, eps)
    ry, rrrms = reference.rms_norm_forward(x, ns, w, eps)
    lead = shape[: len(shape) - len(ns)]
    assert rrms.shape == lead and rrms.dtype == np.float64 and y.dtype == dtype
    assert_close(y, ry, dtype, err_msg="y")
    assert_close(rrms, rrrms, dtype, scale=np.abs(rrrms), err_msg="rrms")
    assert np.array_equal(F.rms_norm(x, ns, w, eps), y)
    dx, dw = F.rms_norm_backward(dy, x, ns, rrms, w)
    rdx, rdw = reference.rms_norm_backward(dy, x, ns, w, eps)
    assert dw.shape == ns and dw.dtype == dtype
    assert_close(dx, rdx, dtype, scale=np.abs(rdx).max(), err_msg="dx")
    xhat = reference.rms_norm_forward(x, ns, None, eps)[0]
    lead_axes = tuple(range(len(lead)))
    assert_reduction_close(dw, rdw, dy.astype(np.float64) * xhat, lead_axes, dtype, err_msg="dweight")


def test_rms_norm_default_eps_is_machine_epsilon_of_the_dtype(rng):
    for dtype in DTYPES:
        x = np.full((2, 3), 1e-5, dtype)  # mean(x^2) = 1e-10 << eps(float32)
        y = F.rms_norm(x, (3,))
        ref = 1e-5 / np.sqrt(np.float64(np.asarray(x, np.float64)[0, 0]) ** 2 + np.finfo(dtype).eps)
        assert_close(y, np.full((2, 3), ref), dtype)
        assert np.array_equal(y, F.rms_norm(x, (3,), eps=float(np.finfo(dtype).eps)))


# --------------------------------------------------------------------------- AddLayerNorm

ADD_LN_CASES = [
    ((5, 11), (11,)),
    ((4, 513), (513,)),
    ((6, 3, 7), (3, 7)),
    ((3, 5000), (5000,)),
    ((2, 8, 1024), (1024,)),
]


@pytest.mark.parametrize("with_dsum", [False, True], ids=["dsumNone", "dsum"])
@row_cases(ADD_LN_CASES)
def test_add_layer_norm_matches_reference(rng, num_threads, case, dtype, affine, with_dsum):
    shape, ns = case
    x, dy = data(rng, shape, dtype)
    r = rng.normal(-0.3, 1.0, shape).astype(dtype)
    dsum = rng.normal(size=shape).astype(dtype) if with_dsum else None
    w, b = params(rng, ns, dtype) if affine else (None, None)
    y, s, mean, rstd = F.native_add_layer_norm(x, r, ns, w, b, EPS)
    assert s.dtype == dtype and np.array_equal(s, x + r)  # the sum exactly as numpy's
    ry, _rs, rmean, rrstd = reference.add_layer_norm_forward(x, r, ns, w, b, EPS)
    assert_close(y, ry, dtype)
    assert_close(mean, rmean, dtype, scale=np.abs(rmean))
    assert_close(rstd, rrstd, dtype, scale=np.abs(rrstd))
    # the same as layer_norm of the sum
    assert_close(y, reference.layer_norm_forward(x + r, ns, w, b, EPS)[0], dtype)
    y2, s2 = F.add_layer_norm(x, r, ns, w, b)
    assert np.array_equal(y2, y) and np.array_equal(s2, s)

    dxr, dw, db = F.add_layer_norm_backward(dy, dsum, s, ns, mean, rstd, w)
    rdx, rdw, rdb = reference.add_layer_norm_backward(dy, dsum, s, ns, w, EPS)
    assert_close(dxr, rdx, dtype, scale=np.abs(rdx).max())
    lead_axes = tuple(range(len(shape) - len(ns)))
    xhat = reference.layer_norm_forward(s, ns, None, None, EPS)[0]
    assert_reduction_close(dw, rdw, dy.astype(np.float64) * xhat, lead_axes, dtype)
    assert_reduction_close(db, rdb, dy, lead_axes, dtype)
    # == layer_norm_backward at s (+ dsum)
    ldx, _ldw, _ldb = F.layer_norm_backward(dy, s, ns, mean, rstd, w)
    if dsum is not None:
        ldx = ldx + dsum
    assert_close(dxr, ldx, dtype, scale=np.abs(ldx).max())


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("d", [600, 2047, 2048, 2100])
def test_layer_norm_backward_one_or_two_rows_per_pass(rng, d, dtype, threads):
    """Long rows go two per sums pass from row_norm.pair_rows_min_d on (a speed choice):
    dx has the same bits either way, dweight and dbias (summed in another order) both
    match the float64 reference."""
    import cnorm
    from cnorm._kernels import row_norm
    from cnorm.reference.layernorm import layer_norm_backward

    x = (rng.standard_normal((37, d)) * 2 + 0.5).astype(dtype)
    dy = rng.standard_normal((37, d)).astype(dtype)
    w = rng.uniform(0.5, 2, d).astype(dtype)
    _, mean, rstd = F.native_layer_norm(x, (d,), w, None, EPS)
    ref = layer_norm_backward(dy, x, (d,), mean, rstd, w)
    xhat = (x.astype(np.float64) - mean[:, None]) * rstd[:, None]
    old, old_threads = row_norm._set_pair_rows_min(2048), cnorm.get_num_threads()
    cnorm.set_num_threads(threads)
    try:
        got = {}
        for min_d in (1, 1 << 40):  # every row pair on, every row alone
            row_norm._set_pair_rows_min(min_d)
            got[min_d] = F.layer_norm_backward(dy, x, (d,), mean, rstd, w)
    finally:
        row_norm._set_pair_rows_min(old)
        cnorm.set_num_threads(old_threads)
    np.testing.assert_array_equal(got[1][0], got[1 << 40][0])
    for dx, dw, db in got.values():
        assert_close(dx, ref[0], dtype)
        assert_reduction_close(dw, ref[1], dy * xhat, 0, dtype)
        assert_reduction_close(db, ref[2], dy, 0, dtype)
