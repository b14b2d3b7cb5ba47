"""Thread control and determinism of the parallel kernels."""

import numpy as np
import pytest

import cnorm
import cnorm.functional as F


def test_openmp_enabled_is_bool():
    assert isinstance(cnorm.openmp_enabled(), bool)


def test_get_num_threads_positive_int():
    n = cnorm.get_num_threads()
    assert isinstance(n, int) and n >= 1


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_set_get_round_trip(restore_threads, n):
    cnorm.set_num_threads(n)
    if cnorm.openmp_enabled():
        assert cnorm.get_num_threads() == n
    else:
        assert cnorm.get_num_threads() == 1


def test_set_num_threads_one_always_one(restore_threads):
    cnorm.set_num_threads(1)
    assert cnorm.get_num_threads() == 1


@pytest.mark.parametrize("bad", [0, -1])
def test_set_num_threads_rejects_non_positive(restore_threads, bad):
    with pytest.raises(ValueError):
        cnorm.set_num_threads(bad)


def test_threadpoolctl_limits_apply(restore_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not cnorm.openmp_enabled():
        pytest.skip("serial build")
    cnorm.set_num_threads(2)
    assert cnorm.get_num_threads() == 2
    with threadpoolctl.threadpool_limits(1):
        assert cnorm.get_num_threads() == 1
        # still computes correctly under the limit
        x = np.random.default_rng(0).normal(size=(64, 8, 16, 16)).astype(np.float32)
        y = cnorm.BatchNorm2d(8)(x)
        assert np.isfinite(y).all()
    assert cnorm.get_num_threads() == 2


# Inputs big enough to be split across threads (well above the per-thread grain).
BIG_BN = [(256, 1024), (16, 64, 33, 33), (4, 3, 160, 160), (2, 8, 16, 32, 32)]
BIG_LN = [((512, 1024), (1024,)), ((64, 4096), (4096,)), ((8, 32, 64, 48), (64, 48))]


def bn_all(x, dy, training):
    C = x.shape[1]
    rng = np.random.default_rng(1)
    w = rng.normal(1, 0.5, C).astype(x.dtype)
    b = rng.normal(0, 0.5, C).astype(x.dtype)
    rm = rng.normal(size=C).astype(x.dtype)
    rv = rng.uniform(0.5, 2, C).astype(x.dtype)
    y, mean, invstd = F.native_batch_norm(x, w, b, rm, rv, training, 0.1, 1e-5)
    dx, dw, db = F.batch_norm_backward(dy, x, w, mean, invstd, training)
    return [y, mean, invstd, dx, dw, db, rm, rv]


def ln_all(x, dy, ns):
    rng = np.random.default_rng(2)
    w = rng.normal(1, 0.5, ns).astype(x.dtype)
    b = rng.normal(0, 0.5, ns).astype(x.dtype)
    y, mean, rstd = F.native_layer_norm(x, ns, w, b, 1e-5)
    dx, dw, db = F.layer_norm_backward(dy, x, ns, mean, rstd, w)
    return [y, mean, rstd, dx, dw, db]


def make(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(0.5, 2.0, shape)).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    return x, dy


def with_threads(n, fn, *args):
    cnorm.set_num_threads(n)
    return fn(*args)


RTOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-13}


def compare_threads(fn, args, dtype):
    one = with_threads(1, fn, *args)
    two = with_threads(2, fn, *args)
    rtol = RTOL[np.dtype(dtype)]
    for i, (a, b) in enumerate(zip(one, two)):
        scale = np.abs(a).max(initial=1.0)
        np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * scale, err_msg=f"output {i}")
    # repeated calls with the same thread count: bitwise identical
    again = with_threads(2, fn, *args)
    for i, (a, b) in enumerate(zip(two, again)):
        np.testing.assert_array_equal(b, a, err_msg=f"output {i} (repeat)")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", BIG_BN, ids=str)
def test_batch_norm_one_vs_two_threads(restore_threads, shape, dtype, training):
    x, dy = make(shape, dtype, 3)
    compare_threads(bn_all, (x, dy, training), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", BIG_LN, ids=lambda c: f"{c[0]}-{c[1]}")
def test_layer_norm_one_vs_two_threads(restore_threads, case, dtype):
    shape, ns = case
    x, dy = make(shape, dtype, 4)
    compare_threads(ln_all, (x, dy, ns), dtype)


def test_module_results_bitwise_repeatable(restore_threads):
    cnorm.set_num_threads(2)
    x, dy = make((32, 16, 24, 24), np.float32, 5)
    outs = []
    for _ in range(3):
        m = cnorm.BatchNorm2d(16)
        y = m(x)
        dx = m.backward(dy)
        outs.append((y, dx, m.weight_grad, m.bias_grad, m.running_mean, m.running_var))
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            np.testing.assert_array_equal(a, b)
