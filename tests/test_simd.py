"""SIMD builds and non-temporal ("streaming") stores: every norm gives identical bits with
every vector build the CPU runs (base, avx2, avx512), with every long-enough run streamed
and with none."""

import numpy as np
import pytest
from _internals import KERNEL_MODULES, NEVER, set_simd, set_stream_min_bytes
from conftest import DTYPES, offset_data
from norms import norm_cases


def _set_all(simd, stream_min):
    active = [set_simd(mod, simd) for mod in KERNEL_MODULES]
    assert active == [simd] * len(KERNEL_MODULES)
    for mod in KERNEL_MODULES:
        set_stream_min_bytes(mod, stream_min)


def _everything(norm, case, x, douts, training):
    """Every output of forward and backward, with and without the affine parameters,
    and the running statistics updated in place."""
    out = []
    for affine in (True, False):
        p = norm.params(np.random.default_rng(7), case, x.dtype, affine=affine)
        outs, saved = norm.forward(x, case, p, training)
        grads = norm.backward(douts, x, case, p, saved, training)
        out += list(outs) + list(norm.stats_of(saved)) + [grads[k] for k in sorted(grads)]
        out += [p[k] for k in ("running_mean", "running_var") if p[k] is not None]
    return out


@pytest.mark.parametrize("norm, case, dtype, training", norm_cases("simd", modes=True, dtypes=DTYPES))
def test_simd_and_streaming_identical_bits(kernel_switches, num_threads, norm, case, dtype, training):
    shape = case.shape
    rng = np.random.default_rng(sum(shape) * 7 + len(shape))
    x = offset_data(rng, shape, 1e3, 2.0, dtype)
    douts = tuple(rng.standard_normal(shape).astype(dtype) for _ in range(norm.n_outputs()))
    ref = _everything(norm, case, x, douts, training)  # default build, default streaming threshold
    for simd in kernel_switches:
        for stream_min in (0, NEVER):  # 0: every long-enough run streamed; never
            _set_all(simd, stream_min)
            out = _everything(norm, case, x, douts, training)
            for i, (a, b) in enumerate(zip(ref, out)):
                assert np.array_equal(a, b), (
                    f"{norm.name} {shape}: output {i} differs with simd={simd}, stream_min_bytes={stream_min}"
                )


def test_simd_switches_restored(kernel_switches):
    """The switches report what they set; the fixture restores the defaults."""
    for simd in kernel_switches:
        for mod in KERNEL_MODULES:
            assert set_simd(mod, simd) == simd
    for mod in KERNEL_MODULES:
        old = set_stream_min_bytes(mod, 123)
        assert set_stream_min_bytes(mod, old) == 123
