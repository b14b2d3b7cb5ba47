"""The SIMD builds of the kernels (scalar: portable C99 with the lanes as scalars; base:
16-byte vectors; avx2: 32-byte vectors; avx512: 64-byte vectors) give the same bits for every norm, forward and
backward, with and without non-temporal stores: they keep the lanes in the same order."""

import numpy as np
import pytest

import cnorm.functional as F
from cnorm._kernels import batch_norm, row_norm

MODULES = (batch_norm, row_norm)
NEVER = 1 << 62


@pytest.fixture
def builds():
    """The builds the CPU runs; restores each module's build and streaming threshold."""
    saved = [(mod._simd_build(), mod._set_stream_min_bytes(NEVER)) for mod in MODULES]
    for mod, (_, stream) in zip(MODULES, saved):
        mod._set_stream_min_bytes(stream)
    try:
        yield batch_norm._simd_builds()
    finally:
        for mod, (build, stream) in zip(MODULES, saved):
            mod._set_simd_build(build)
            mod._set_stream_min_bytes(stream)


def _everything(x, dy, r):
    """Outputs of every norm on x (N, C, *) with gradient dy and residual r."""
    C = x.shape[1]
    w = np.linspace(0.5, 1.5, C).astype(x.dtype)
    b = np.linspace(-1, 1, C).astype(x.dtype)
    out = []
    for relu in (False, True):
        rm, rv = np.zeros(C, x.dtype), np.ones(C, x.dtype)
        y, mean, invstd = F.native_batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5, relu=relu)
        out += [y, mean, invstd, rm, rv]
        out += (
            F.batch_norm_relu_backward(dy, x, w, mean, invstd, True, y)
            if relu
            else F.batch_norm_backward(dy, x, w, mean, invstd, True)
        )
        out += F.native_batch_norm(x, w, b, rm, rv, False, 0.1, 1e-5, relu=relu)
        out += F.batch_norm_backward(dy, x, w, mean, invstd, False)
    ns = x.shape[-1:]
    y, mean, rstd = F.native_layer_norm(x, ns, None, None, 1e-5)
    out += [y, mean, rstd, *F.layer_norm_backward(dy, x, ns, mean, rstd, None)]
    y, rrms = F.native_rms_norm(x, ns, None, 1e-6)
    out += [y, rrms, *F.rms_norm_backward(dy, x, ns, rrms, None)]
    out += F.native_add_layer_norm(x, r, ns, None, None, 1e-5)
    y, mean, rstd = F.native_group_norm(x, 1 if C % 2 else 2, w, b, 1e-5)
    out += [y, mean, rstd, *F.group_norm_backward(dy, x, 1 if C % 2 else 2, mean, rstd, w)]
    return out


try:
    import ml_dtypes

    HALF = [np.float16, ml_dtypes.bfloat16]
except ImportError:  # pragma: no cover
    HALF = [np.float16]


# float16 / bfloat16: the half conversions of every build too (F16C in avx2 and avx512, scalar C99)
@pytest.mark.parametrize(
    "dtype", [np.float32, np.float64, *HALF], ids=["f32", "f64", "f16", "bf16"][: 2 + len(HALF)]
)
@pytest.mark.parametrize("shape", [(4, 8, 1001), (2, 6, 24, 24), (40, 1030), (3, 5, 7)], ids=str)
def test_builds_give_identical_bits(builds, shape, dtype):
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 2 + 1e3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    r = rng.standard_normal(shape).astype(dtype)
    ref = None
    for build in builds:
        for stream_min in (0, NEVER):
            for mod in MODULES:
                assert mod._set_simd_build(build) == build
                mod._set_stream_min_bytes(stream_min)
            out = _everything(x, dy, r)
            if ref is None:
                ref = out
                continue
            for i, (a, b) in enumerate(zip(ref, out)):
                assert np.array_equal(a, b, equal_nan=True), (
                    f"output {i} differs: build {build}, stream_min_bytes {stream_min}"
                )


def test_builds_listed_and_selectable(builds):
    assert builds[0] == "scalar"
    for mod in MODULES:
        assert mod._simd_builds() == builds
        for build in builds:
            assert mod._set_simd_build(build) == build
        assert mod._set_simd_build("no such build") == builds[-1]


@pytest.mark.parametrize("dtype", HALF, ids=["f16", "bf16"][: len(HALF)])
@pytest.mark.parametrize("shape", [(4, 8, 2048), (8192, 8)], ids=["runs", "cols"])
def test_every_half_pattern_same_bits_in_every_build(builds, shape, dtype):
    """All 65,536 bit patterns (NaNs, infinities, subnormals, rounding ties after the affine)
    widened and narrowed by each build's conversions: the eval BatchNorm is elementwise, so
    every output is one pattern's; compared as bits, the NaN payloads included."""
    x = np.arange(1 << 16, dtype=np.uint16).view(dtype).reshape(shape)
    C = shape[1]
    rng = np.random.default_rng(16)
    w, b = (rng.standard_normal(C) * 3).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    rm, rv = rng.standard_normal(C).astype(np.float32), (rng.random(C) + 0.1).astype(np.float32)
    ref = None
    for build in builds:
        for stream_min in (0, NEVER):
            for mod in MODULES:
                mod._set_simd_build(build)
                mod._set_stream_min_bytes(stream_min)
            y = F.native_batch_norm(x, w, b, rm.copy(), rv.copy(), False, 0.1, 1e-5)[0]
            bits = np.asarray(y).view(np.uint16)
            if ref is None:
                ref = bits.copy()
                continue
            diff = np.flatnonzero(bits != ref)
            assert diff.size == 0, (
                f"build {build}, stream_min_bytes {stream_min}: {diff.size} outputs differ, "
                f"first at input pattern {diff[0]:#06x}"
            )
