"""cnorm.functional.channels_last: batch, group and instance norm of (N, *spatial, C) arrays
(the NumPy side of the torch drop-in's channels_last support), against the channels-first
functions on the same values."""

import numpy as np
import pytest

import cnorm
import cnorm.functional as F

CL = F.channels_last
TOL = {np.float32: 2e-5, np.float64: 1e-12}


def first(a):
    """(N, *S, C) -> C-contiguous (N, C, *S) copy."""
    return np.ascontiguousarray(np.moveaxis(a, -1, 1))


def last(a):
    """(N, C, *S) -> (N, *S, C) view."""
    return np.moveaxis(a, 1, -1)


def layouts(x):
    """x (N, *S, C) C-contiguous; the same values as a view of a channels-first array;
    and as a strided array that is neither (copied)."""
    odd = np.empty(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)[..., ::2]
    odd[...] = x
    return {"last": x, "first-view": last(first(x)), "strided": odd}


def close(a, b, dtype):
    np.testing.assert_allclose(a, b, rtol=TOL[dtype], atol=TOL[dtype])


SHAPES = [(3, 4, 5, 6), (2, 3, 2, 4, 6), (4, 7, 6), (5, 6)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_group_norm(rng, shape, dtype):
    x = rng.standard_normal(shape).astype(dtype) * 2 + 1
    dy = rng.standard_normal(shape).astype(dtype)
    w, b = rng.standard_normal((2, 6)).astype(dtype)
    y_ref, mean_ref, rstd_ref = F.native_group_norm(first(x), 3, w, b, 1e-5)
    dx_ref, dw_ref, db_ref = F.group_norm_backward(first(dy), first(x), 3, mean_ref, rstd_ref, w)
    for name, xin in layouts(x).items():
        y, mean, rstd = CL.native_group_norm(xin, 3, w, b, 1e-5)
        assert y.shape == shape and mean.shape == (shape[0], 3)
        assert len(shape) == 2 or y.flags.c_contiguous == (name != "first-view"), name  # input layout
        close(first(y), y_ref, dtype)
        close(mean, mean_ref, dtype)
        close(rstd, rstd_ref, dtype)
        for dy_in in (dy, last(first(dy))):  # grad_output in either layout, read as it is
            dx, dw, db = CL.group_norm_backward(dy_in, xin, 3, mean, rstd, w)
            assert dx.shape == shape and dw.dtype == dtype
            close(first(dx), dx_ref, dtype)
            close(dw, dw_ref, dtype)
            close(db, db_ref, dtype)
    y_cf, _, _ = CL.native_group_norm(x, 3, w, b, 1e-5, channels_first_output=True)
    assert np.moveaxis(y_cf, -1, 1).flags.c_contiguous
    close(first(y_cf), y_ref, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES[:3])
@pytest.mark.parametrize("use_input_stats", [True, False])
def test_instance_norm(rng, shape, dtype, use_input_stats):
    x = rng.standard_normal(shape).astype(dtype) * 2 + 1
    dy = rng.standard_normal(shape).astype(dtype)
    w, b = rng.standard_normal((2, 6)).astype(dtype)
    rm0, rv0 = rng.standard_normal(6).astype(dtype), rng.uniform(0.5, 2, 6).astype(dtype)
    rm_ref, rv_ref = rm0.copy(), rv0.copy()
    args = (use_input_stats, 0.1, 1e-5)
    y_ref, m_ref, i_ref = F.native_instance_norm(first(x), w, b, rm_ref, rv_ref, *args)
    dx_ref, dw_ref, db_ref = F.instance_norm_backward(first(dy), first(x), w, m_ref, i_ref, use_input_stats)
    for name, xin in layouts(x).items():
        for out_first in (False, True):
            rm, rv = rm0.copy(), rv0.copy()
            y, m, i = CL.native_instance_norm(xin, w, b, rm, rv, *args, channels_first_output=out_first)
            close(first(y), y_ref, dtype)
            close(rm, rm_ref, dtype)
            close(rv, rv_ref, dtype)
            if out_first and name != "first-view":
                assert np.moveaxis(y, -1, 1).flags.c_contiguous
            dx, dw, db = CL.instance_norm_backward(dy, xin, w, m, i, use_input_stats)
            close(first(dx), dx_ref, dtype)
            close(dw, dw_ref, dtype)
            close(db, db_ref, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm(rng, dtype, training):
    shape = (3, 4, 5, 6)
    x = rng.standard_normal(shape).astype(dtype) * 2 + 1
    dy = rng.standard_normal(shape).astype(dtype)
    w, b = rng.standard_normal((2, 6)).astype(dtype)
    rm0, rv0 = rng.standard_normal(6).astype(dtype), rng.uniform(0.5, 2, 6).astype(dtype)
    rm_ref, rv_ref = rm0.copy(), rv0.copy()
    y_ref, m_ref, i_ref = F.native_batch_norm(first(x), w, b, rm_ref, rv_ref, training, 0.1, 1e-5)
    dx_ref, dw_ref, db_ref = F.batch_norm_backward(first(dy), first(x), w, m_ref, i_ref, training)
    for name, xin in layouts(x).items():
        rm, rv = rm0.copy(), rv0.copy()
        y, m, i = CL.native_batch_norm(xin, w, b, rm, rv, training, 0.1, 1e-5)
        assert y.flags.c_contiguous == (name != "first-view")
        close(first(y), y_ref, dtype)
        close(rm, rm_ref, dtype)
        close(rv, rv_ref, dtype)
        for dy_in in (dy, last(first(dy))):
            dx, dw, db = CL.batch_norm_backward(dy_in, xin, w, m, i, training)
            close(first(dx), dx_ref, dtype)
            close(dw, dw_ref, dtype)
            close(db, db_ref, dtype)


def test_same_bits_for_any_thread_count(rng, restore_threads):
    """One sample, many groups: the work is cut into group blocks, and each group is
    computed whole by one thread; the parameter gradients are summed in sample order."""
    x = rng.standard_normal((1, 40, 40, 64)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    results = []
    for n in (1, 2, 3):
        cnorm.set_num_threads(n)
        y, mean, rstd = CL.native_group_norm(x, 16, None, None, 1e-5)
        results.append((y, mean, rstd) + CL.group_norm_backward(dy, x, 16, mean, rstd, None))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


def test_empty_and_errors():
    x = np.zeros((0, 4, 4, 6), np.float32)
    y, mean, rstd = CL.native_group_norm(x, 3, None, None, 1e-5)
    assert y.shape == x.shape and mean.shape == (0, 3)
    dx, dw, db = CL.group_norm_backward(x, x, 3, mean, rstd, None)
    assert dx.shape == x.shape and not dw.any() and not db.any()
    with pytest.raises(ValueError, match="divisible by num_groups"):
        CL.native_group_norm(np.zeros((2, 3, 5), np.float32), 2, None, None, 1e-5)
    with pytest.raises(ValueError, match="number of channels"):
        CL.native_group_norm(np.zeros((2, 3, 6), np.float32), 3, np.ones(3, np.float32), None, 1e-5)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        CL.native_instance_norm(np.zeros((2, 1, 6), np.float32), None, None, None, None, True, 0.1, 1e-5)
    with pytest.raises(ValueError, match="grad_output has shape"):
        CL.group_norm_backward(np.zeros((2, 4, 5)), np.zeros((2, 4, 6)), 3, np.zeros(6), np.ones(6), None)
    with pytest.raises(TypeError, match="unsupported dtype"):
        CL.native_batch_norm(np.zeros((2, 3, 4), np.int32), None, None, None, None, True, 0.1, 1e-5)
    with pytest.raises(ValueError, match="at least 2D"):
        CL.native_group_norm(np.zeros(4, np.float32), 2, None, None, 1e-5)
