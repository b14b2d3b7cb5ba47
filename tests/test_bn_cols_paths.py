"""BatchNorm's (N, C) rows go through one of two loops of the normalize and input-gradient
passes: four rows per coefficient load (the ``_cols4`` loops, for short rows) or one row at
a time (long rows: one memory stream each). The row width that picks them is a speed
choice only (``batch_norm.set_cols4_max_channels``): both must give the same bits, for
every dtype, with and without the fused ReLU, streamed or not, at 1 and 2 threads."""

import numpy as np
import pytest

import cnorm
from cnorm._kernels import batch_norm as bn_kernels

ml_dtypes = pytest.importorskip("ml_dtypes")
EPS = 1e-5
# C around the vector widths and the default switch; M not a multiple of 4 (the row tail)
SHAPES = [(7, 1), (9, 5), (13, 8), (30, 31), (33, 32), (18, 33), (11, 64), (6, 257), (4099, 48)]
SHAPES += [(9, 1024), (5, 1030)]  # rows 4 KiB apart, and just past
DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16]


@pytest.fixture
def restore():
    saved = (cnorm.get_num_threads(), bn_kernels.set_cols4_max_channels(0))
    bn_kernels.set_cols4_max_channels(saved[1])
    yield
    cnorm.set_num_threads(saved[0])
    bn_kernels.set_cols4_max_channels(saved[1])


def _outputs(x, dy, w, b):
    """Every output of the (N, C) normalize and input-gradient passes."""
    n, c = x.shape
    kind = {np.dtype(np.float16): 1, np.dtype(ml_dtypes.bfloat16): 2}.get(x.dtype, 0)
    if kind:
        x, dy = x.view(np.uint16), dy.view(np.uint16)
    rm, rv = np.zeros(c, w.dtype), np.ones(c, w.dtype)
    y, mean, invstd = bn_kernels.batch_norm_forward_train(x, n, c, 1, w, b, rm, rv, 0.1, EPS, False, kind)
    yr = bn_kernels.batch_norm_forward_train(x, n, c, 1, w, b, None, None, 0.1, EPS, True, kind)[0]
    ye = bn_kernels.batch_norm_forward_eval(x, n, c, 1, w, b, rm, rv, EPS, False, kind)[0]
    dx = bn_kernels.batch_norm_backward(dy, x, n, c, 1, mean, invstd, w, True, None, kind)[0]
    dxr = bn_kernels.batch_norm_backward(dy, x, n, c, 1, mean, invstd, w, True, yr, kind)[0]
    dxe = bn_kernels.batch_norm_backward(dy, x, n, c, 1, mean, invstd, w, False, None, kind)[0]
    return [y, yr, ye, dx, dxr, dxe]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_four_rows_and_one_row_give_the_same_bits(restore, shape, dtype, threads):
    rng = np.random.default_rng(sum(shape))
    n, c = shape
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    pdt = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    w, b = rng.uniform(0.5, 2, c).astype(pdt), rng.standard_normal(c).astype(pdt)
    cnorm.set_num_threads(threads)
    bn_kernels.set_cols4_max_channels(1 << 40)  # every row four at a time
    four = _outputs(x, dy, w, b)
    bn_kernels.set_cols4_max_channels(0)  # every row on its own
    one = _outputs(x, dy, w, b)
    for a, o in zip(four, one):
        assert a.dtype == o.dtype
        np.testing.assert_array_equal(a.view(np.uint8), o.view(np.uint8))


def test_the_two_switches_are_set_and_restored_apart(restore):
    """set_cols4_max_channels(c, grad_c): the normalize and input-gradient switches, the
    previous pair returned (and taken back); mixed choices give the same bits too."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((37, 40)).astype(np.float32)
    dy = rng.standard_normal((37, 40)).astype(np.float32)
    w, b = rng.uniform(0.5, 2, 40).astype(np.float32), rng.standard_normal(40).astype(np.float32)
    bn_kernels.set_cols4_max_channels(1 << 40, 0)
    assert bn_kernels.set_cols4_max_channels(0, 1 << 40) == (1 << 40, 0)
    mixed = _outputs(x, dy, w, b)
    assert bn_kernels.set_cols4_max_channels((1 << 40, 0)) == (0, 1 << 40)
    other = _outputs(x, dy, w, b)
    assert bn_kernels.set_cols4_max_channels(7) == (1 << 40, 0)
    assert bn_kernels.set_cols4_max_channels(0) == (7, 7)
    for a, o in zip(mixed, other):
        np.testing.assert_array_equal(a.view(np.uint8), o.view(np.uint8))


def test_rows_4_kib_apart_go_one_at_a_time(restore):
    """Four rows up to the switches (128 channels by default), but never for row strides
    within 256 bytes of a multiple of 4 KiB (4K aliasing): float32 C = 1024, float64 512."""
    assert bn_kernels.four_rows_choice(64, 4) == (True, True)
    assert bn_kernels.four_rows_choice(128, 8) == (True, True)
    assert bn_kernels.four_rows_choice(256, 4) == (False, False)
    bn_kernels.set_cols4_max_channels(1 << 40)
    assert bn_kernels.four_rows_choice(768, 4) == (True, True)
    assert bn_kernels.four_rows_choice(1024, 4) == (False, False)
    assert bn_kernels.four_rows_choice(1000, 4) == (False, False)  # 4000 bytes
    assert bn_kernels.four_rows_choice(512, 8) == (False, False)
    assert bn_kernels.four_rows_choice(1024, 2) == (True, True)  # half storage: 2 KiB rows
    assert bn_kernels.four_rows_choice(1200, 4) == (True, True)  # 4800 bytes: 704 past 4 KiB
    assert bn_kernels.four_rows_choice(2048, 4) == (False, False)
    bn_kernels.set_cols4_max_channels(1024, 128)
    assert bn_kernels.four_rows_choice(256, 4) == (True, False)


# Rows of fewer than 512 channels go through the elementwise passes several at a time, as
# one row with the coefficients tiled (batch_norm_cols4.pxi, _row_group): up to 128
# elements (C < 32), and to at least 512 when the output is streamed. Each row on its
# own (N = 1) takes the plain one-row loop: stacked, those rows must be the same bits.
GROUP_CS = [1, 3, 4, 5, 16, 31, 32, 33, 64, 100, 511, 512]


def _elementwise(x, dy, w, b, mean, invstd, sums, kind):
    """The (N, C) elementwise passes on fixed coefficients: fused and plain eval normalize,
    the normalize of the eval backward, the training and masked input gradients."""
    n, c = x.shape[0], x.shape[1]
    rm, rv = mean.astype(w.dtype), (1.0 / invstd**2 - EPS).astype(w.dtype)
    y = bn_kernels.batch_norm_forward_eval(x, n, c, 1, w, b, rm, rv, EPS, False, kind)[0]
    yr = bn_kernels.batch_norm_forward_eval(x, n, c, 1, w, b, rm, rv, EPS, True, kind)[0]
    ye = bn_kernels.batch_norm_elemt(x, n, c, 1, mean, invstd, w, b, True, kind)
    dxe = bn_kernels.batch_norm_backward(dy, x, n, c, 1, mean, invstd, w, False, None, kind)[0]
    dxm = bn_kernels.batch_norm_backward(dy, x, n, c, 1, mean, invstd, w, False, yr, kind)[0]
    dx = bn_kernels.batch_norm_backward_elemt(dy, x, n, c, 1, mean, invstd, w, *sums, 1000.0, kind)
    return [y, yr, ye, dxe, dxm, dx]


@pytest.mark.parametrize("streamed", [False, True], ids=["cached", "streamed"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("c", GROUP_CS)
def test_grouped_rows_give_the_bits_of_single_rows(restore, c, dtype, threads, streamed):
    from _internals import NEVER, set_stream_min_bytes

    rng = np.random.default_rng(c)
    n = 2 * -(-512 // c) + 7  # two whole streamed groups per thread and a short one
    x = (rng.standard_normal((n, c)) * 3 + 1).astype(dtype)
    dy = rng.standard_normal((n, c)).astype(dtype)
    pdt = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    w, b = rng.uniform(0.5, 2, c).astype(pdt), rng.standard_normal(c).astype(pdt)
    mean, invstd = rng.standard_normal(c), rng.uniform(0.2, 3, c)
    sums = (rng.standard_normal(c) * 30, rng.standard_normal(c) * 30)
    kind = {np.dtype(np.float16): 1, np.dtype(ml_dtypes.bfloat16): 2}.get(np.dtype(dtype), 0)
    if kind:
        x, dy = x.view(np.uint16), dy.view(np.uint16)
    cnorm.set_num_threads(threads)
    old = set_stream_min_bytes(bn_kernels, 0 if streamed else NEVER)
    try:
        grouped = _elementwise(x, dy, w, b, mean, invstd, sums, kind)
        set_stream_min_bytes(bn_kernels, NEVER)
        rows = [_elementwise(x[i : i + 1], dy[i : i + 1], w, b, mean, invstd, sums, kind) for i in range(n)]
    finally:
        set_stream_min_bytes(bn_kernels, old)
    for k, got in enumerate(grouped):
        want = np.concatenate([r[k] for r in rows])
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8), err_msg=f"output {k}")
