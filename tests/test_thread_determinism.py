"""Issue 14, "the same bits whatever the thread count": every result (outputs, returned
statistics, gradients, updated running statistics) with cnorm.set_num_threads(t) for
t = 2, 3, 5, 8 is bitwise equal to t = 1, for every norm, float32 and float64, and in
half storage (float16, and bfloat16 where ml_dtypes is installed; half inputs with half
parameters and running statistics).

Inputs have >= ~300k elements, so that the kernels split them over all 8 threads (OpenMP
runs 8 threads even on a 2-core machine), in both directions: many short rows (work split
across rows, reductions over rows for dweight/dbias and for BatchNorm (N, C)) and a few
long rows (work split inside a row or channel).
"""

import functools

import numpy as np
import pytest

import cnorm
import cnorm.functional as F

THREADS = [1, 2, 3, 5, 8]
try:
    import ml_dtypes

    _BF16 = [np.dtype(ml_dtypes.bfloat16)]
except ImportError:  # bfloat16 is optional
    _BF16 = []
DTYPES = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16), *_BF16]

pytestmark = pytest.mark.skipif(not cnorm.openmp_enabled(), reason="serial build")


@functools.lru_cache(maxsize=4)
def _data(shape, dtype, seed, loc=0.5):
    """(x, dy), made once for every thread count of a test (cnorm never modifies inputs)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32) * 2.0 + loc
    if len(shape) > 2:  # different channel means
        x += rng.normal(0, 3, (1, shape[1]) + (1,) * (len(shape) - 2)).astype(np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    x, dy = x.astype(dtype), dy.astype(dtype)
    x.setflags(write=False)
    dy.setflags(write=False)
    return x, dy


def _vec(c, dtype, seed, loc=1.0):
    return np.random.default_rng(seed).normal(loc, 0.5, c).astype(dtype)


def bn(shape, relu=False, training=True):
    def run(dtype):
        x, dy = _data(shape, dtype, 1)
        c = shape[1]
        w, b = _vec(c, dtype, 2), _vec(c, dtype, 3, 0.0)
        rm, rv = _vec(c, dtype, 4, 0.0), np.abs(_vec(c, dtype, 5)) + 0.5
        fwd = F.native_batch_norm_relu if relu else F.native_batch_norm
        y, mean, invstd = fwd(x, w, b, rm, rv, training, 0.1, 1e-5)
        if relu:
            grads = F.batch_norm_relu_backward(dy, x, w, mean, invstd, training, y)
        else:
            grads = F.batch_norm_backward(dy, x, w, mean, invstd, training)
        return [y, mean, invstd, rm, rv, *grads]

    return run


def ln(shape, d):
    def run(dtype):
        x, dy = _data(shape, dtype, 6)
        w, b = _vec(d, dtype, 7), _vec(d, dtype, 8, 0.0)
        y, mean, rstd = F.native_layer_norm(x, (d,), w, b, 1e-5)
        return [y, mean, rstd, *F.layer_norm_backward(dy, x, (d,), mean, rstd, w)]

    return run


def rms(shape, d):
    def run(dtype):
        x, dy = _data(shape, dtype, 9)
        w = _vec(d, dtype, 10)
        y, rrms = F.native_rms_norm(x, (d,), w, None)
        return [y, rrms, *F.rms_norm_backward(dy, x, (d,), rrms, w)]

    return run


def add_ln(shape, d):
    def run(dtype):
        x, dy = _data(shape, dtype, 11)
        r, dsum = _data(shape, dtype, 12)
        w, b = _vec(d, dtype, 13), _vec(d, dtype, 14, 0.0)
        y, s, mean, rstd = F.native_add_layer_norm(x, r, (d,), w, b, 1e-5)
        return [y, s, mean, rstd, *F.add_layer_norm_backward(dy, dsum, s, (d,), mean, rstd, w)]

    return run


def gn(shape, groups):
    def run(dtype):
        x, dy = _data(shape, dtype, 15)
        c = shape[1]
        w, b = _vec(c, dtype, 16), _vec(c, dtype, 17, 0.0)
        y, mean, rstd = F.native_group_norm(x, groups, w, b, 1e-5)
        return [y, mean, rstd, *F.group_norm_backward(dy, x, groups, mean, rstd, w)]

    return run


def inorm(shape, use_input_stats=True):
    def run(dtype):
        x, dy = _data(shape, dtype, 18)
        c = shape[1]
        w, b = _vec(c, dtype, 19), _vec(c, dtype, 20, 0.0)
        rm, rv = _vec(c, dtype, 21, 0.0), np.abs(_vec(c, dtype, 22)) + 0.5
        y, mean, invstd = F.native_instance_norm(x, w, b, rm, rv, use_input_stats, 0.1, 1e-5)
        grads = F.instance_norm_backward(dy, x, w, mean, invstd, use_input_stats)
        return [y, mean, invstd, rm, rv, *grads]

    return run


def sync_blocks(shape):
    def run(dtype):
        x, dy = _data(shape, dtype, 23)
        count, mean, m2 = F.batch_norm_stats(x)
        invstd = 1.0 / np.sqrt(m2 / count + 1e-5)
        y = F.batch_norm_elemt(x, mean, invstd, None, None)
        sum_dy, sum_dy_xhat = F.batch_norm_backward_reduce(dy, x, mean, invstd)
        dx = F.batch_norm_backward_elemt(dy, x, mean, invstd, None, sum_dy, sum_dy_xhat, count)
        return [mean, m2, y, sum_dy, sum_dy_xhat, dx]

    return run


def module(make, shape, steps=2):
    """A module's forward/backward twice: outputs, gradients, accumulated weight/bias
    gradients and running statistics."""

    def run(dtype):
        m = make(dtype)
        out = []
        for step in range(steps):
            x, dy = _data(shape, dtype, 24 + step)
            y = m(x)
            out += [y, m.backward(dy)]
        for name in ("weight_grad", "bias_grad", "running_mean", "running_var"):
            if getattr(m, name, None) is not None:
                out.append(getattr(m, name))
        return out

    return run


CASES = {
    "batch_norm (4096, 96)": bn((4096, 96)),
    "batch_norm (4096, 96) eval": bn((4096, 96), training=False),
    "batch_norm (16, 8, 50, 50)": bn((16, 8, 50, 50)),
    "batch_norm (2, 3, 256, 256)": bn((2, 3, 256, 256)),
    "batch_norm (32, 4, 2500)": bn((32, 4, 2500)),
    "batch_norm (8, 64, 24, 24) split by channel": bn((8, 64, 24, 24)),
    "batch_norm (100, 3000) several channel tiles": bn((100, 3000)),
    "batch_norm_relu (4096, 96)": bn((4096, 96), relu=True),
    "batch_norm_relu (2, 3, 256, 256)": bn((2, 3, 256, 256), relu=True),
    "layer_norm (8000, 48)": ln((8000, 48), 48),
    "layer_norm (8, 40000)": ln((8, 40000), 40000),
    "layer_norm (300, 1024)": ln((300, 1024), 1024),
    "rms_norm (8000, 48)": rms((8000, 48), 48),
    "rms_norm (8, 40000)": rms((8, 40000), 40000),
    "add_layer_norm (8000, 48)": add_ln((8000, 48), 48),
    "add_layer_norm (8, 40000)": add_ln((8, 40000), 40000),
    "group_norm (8, 32, 32, 40) G=8": gn((8, 32, 32, 40), 8),
    "group_norm (2, 4, 200, 200) G=2": gn((2, 4, 200, 200), 2),
    "group_norm (2000, 16, 10) G=4": gn((2000, 16, 10), 4),
    "group_norm (3, 6, 20000) G=3, long rows": gn((3, 6, 20000), 3),
    "instance_norm (8, 16, 50, 50)": inorm((8, 16, 50, 50)),
    "instance_norm (2, 2, 300, 300)": inorm((2, 2, 300, 300)),
    "instance_norm (2000, 16, 10)": inorm((2000, 16, 10)),
    "instance_norm eval (8, 16, 50, 50)": inorm((8, 16, 50, 50), use_input_stats=False),
    "sync blocks (4096, 96)": sync_blocks((4096, 96)),
    "sync blocks (2, 3, 256, 256)": sync_blocks((2, 3, 256, 256)),
    "BatchNorm1d module (4096, 96)": module(
        lambda dt: cnorm.BatchNorm1d(96, momentum=None, dtype=dt), (4096, 96)
    ),
    "LayerNorm module (8000, 48)": module(lambda dt: cnorm.LayerNorm(48, dtype=dt), (8000, 48)),
    "GroupNorm module (8, 32, 32, 40)": module(lambda dt: cnorm.GroupNorm(8, 32, dtype=dt), (8, 32, 32, 40)),
    "RMSNorm module (8000, 48)": module(lambda dt: cnorm.RMSNorm(48, dtype=dt), (8000, 48)),
    "InstanceNorm2d module (8, 16, 50, 50)": module(
        lambda dt: cnorm.InstanceNorm2d(16, affine=True, track_running_stats=True, dtype=dt), (8, 16, 50, 50)
    ),
    "BatchNormReLU1d module (4096, 96)": module(lambda dt: cnorm.BatchNormReLU1d(96, dtype=dt), (4096, 96)),
}


def _bits(a):
    a = np.ascontiguousarray(a)
    return a.dtype.str, a.shape, a.tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=[d.name for d in DTYPES])
@pytest.mark.parametrize("case", list(CASES))
def test_same_bits_for_every_thread_count(restore_threads, case, dtype):
    run = CASES[case]
    results = {}
    for t in THREADS:
        cnorm.set_num_threads(t)
        assert cnorm.get_num_threads() == t
        results[t] = [_bits(a) for a in run(dtype)]
    differ = []
    for t in THREADS[1:]:
        for i, (a, b) in enumerate(zip(results[1], results[t])):
            if a != b:
                differ.append(f"output {i} with {t} threads")
    assert not differ, f"{case} {np.dtype(dtype).name}: differs from 1 thread: " + ", ".join(differ)
