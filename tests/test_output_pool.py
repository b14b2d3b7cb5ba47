"""The kernels' large outputs come from a pool of freed output buffers
(cnorm/_kernels/pool.pyx): recycled buffers give the same results, a buffer lives as long
as any array or tensor on it, and the pool's bound holds."""

import gc

import numpy as np
import pytest
from _internals import POOL_MIN_BYTES, pool_kept_bytes

import cnorm
import cnorm.functional as CF

ROWS = (POOL_MIN_BYTES // 4 // 64 + 1, 64)  # a float32 output just above the floor


@pytest.fixture
def pool_on():
    old = cnorm.set_output_pool_bytes(64 * 2**20)
    yield
    cnorm.set_output_pool_bytes(old)


def _x(shape=ROWS, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_a_freed_output_is_recycled_with_the_same_results(pool_on):
    x = _x()
    first = CF.layer_norm(x, (64,)).copy()
    cnorm.set_output_pool_bytes(0)  # empty it
    cnorm.set_output_pool_bytes(64 * 2**20)
    y = CF.layer_norm(x, (64,))
    y.fill(np.nan)  # garbage in the buffer the next output gets
    del y
    gc.collect()
    assert pool_kept_bytes() >= x.nbytes
    kept = pool_kept_bytes()
    y = CF.layer_norm(x, (64,))
    assert pool_kept_bytes() == kept - x.nbytes  # it took the freed buffer
    np.testing.assert_array_equal(y, first)


def test_small_outputs_do_not_use_the_pool(pool_on):
    cnorm.set_output_pool_bytes(0)
    cnorm.set_output_pool_bytes(64 * 2**20)
    y = CF.layer_norm(_x((8, 64)), (64,))
    del y
    assert pool_kept_bytes() == 0


def test_a_buffer_lives_as_long_as_its_views(pool_on):
    x = _x()
    y = CF.layer_norm(x, (64,))
    expected = y.copy()
    view = y[::2]
    del y
    for seed in range(3):  # other outputs of the same size must not get this buffer
        CF.layer_norm(_x(seed=seed + 1), (64,))
    np.testing.assert_array_equal(view, expected[::2])


def test_a_torch_tensor_keeps_its_buffer(pool_on):
    torch = pytest.importorskip("torch")
    import cnorm.torch as ct

    m = ct.LayerNorm(64)
    x = torch.from_numpy(_x())
    with torch.no_grad():
        y = m(x)
    expected = y.clone()
    for seed in range(3):
        with torch.no_grad():
            m(torch.from_numpy(_x(seed=seed + 1)))
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_the_bound_holds_and_zero_frees_everything(pool_on):
    cnorm.set_output_pool_bytes(0)
    cnorm.set_output_pool_bytes(POOL_MIN_BYTES * 3)
    outs = [CF.layer_norm(_x(seed=s), (64,)) for s in range(6)]
    del outs
    gc.collect()
    assert 0 < pool_kept_bytes() <= POOL_MIN_BYTES * 3
    assert cnorm.set_output_pool_bytes(0) == POOL_MIN_BYTES * 3
    assert pool_kept_bytes() == 0
    y = CF.layer_norm(_x(), (64,))  # pool off: a plain array
    assert y.base is None


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1"])
def test_bad_bounds_raise(bad):
    with pytest.raises(ValueError, match="non-negative integer"):
        cnorm.set_output_pool_bytes(bad)


@pytest.mark.parametrize("extra_rows", [0, 1, 3])
def test_pooled_outputs_start_on_a_cache_line(pool_on, extra_rows):
    """Pooled blocks are 64-byte aligned (malloc's 16 would split every other 32-byte
    vector store across two cache lines)."""
    x = _x((ROWS[0] + extra_rows, 64))
    ys = [CF.layer_norm(x, (64,)) for _ in range(3)]  # fresh blocks and recycled ones
    del ys[0]
    ys.append(CF.layer_norm(x, (64,)))
    for y in ys:
        assert y.nbytes >= POOL_MIN_BYTES
        assert y.ctypes.data % 64 == 0
