"""The bfloat16 loops of the avx2 build step 16 values at a time (simd/half.h, the
cn_bf16x16_* helpers of simd/simd.h): one 32-byte load read as its even and odd
elements, or as two ordered vectors; one rounding for both with its NaN test once per
step; one 32-byte store, plain or streamed (aligned first by single values and one
16-byte store). Checked here on runs of every length around the step and at every
2-byte offset: exact ties, both signs of zero, infinities, NaNs (quiet and signaling,
with payloads), subnormals and overflow to infinity, against NumPy's rounding of the
float32 result and the bits of every other build, streamed and not, at 1 and 2 threads."""

import numpy as np
import pytest

import cnorm
from cnorm._kernels import batch_norm as bn_kernels
from cnorm._kernels import row_norm as row_kernels

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
KIND = {F16: 1, BF16: 2}
# 1 + 2^-8 (bfloat16) / 1 + 2^-11 (float16): x * TIE is exact in float32 and often falls
# exactly halfway between two half values
TIE = {BF16: 1 + 2.0**-8, F16: 1 + 2.0**-11}
SPECIAL_BITS = {
    BF16: [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x7F81, 0xFFFF, 0x0001, 0x807F, 0x0080, 0x7F7F],
    F16: [0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0xFE01, 0x7C01, 0xFFFF, 0x0001, 0x83FF, 0x0400, 0x7BFF],
}
LENGTHS = [1, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 47, 48, 49, 63, 64, 65, 100]


@pytest.fixture
def restore():
    saved = (cnorm.get_num_threads(), bn_kernels._simd_build(), row_kernels._simd_build())
    yield
    cnorm.set_num_threads(saved[0])
    bn_kernels._set_simd_build(saved[1])
    row_kernels._set_simd_build(saved[2])
    for mod in (bn_kernels, row_kernels):
        mod._set_stream_min_bytes(10 << 20)


def _bits(dtype, n, seed):
    """n half values: random ones, a quarter replaced by the specials."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 4).astype(np.float32).astype(dtype).view(np.uint16)
    pick = rng.random(n) < 0.25
    x[pick] = rng.choice(np.array(SPECIAL_BITS[dtype], np.uint16), int(pick.sum()))
    return x


def _same(a, b, dtype):
    """The same bits, NaNs compared by position."""
    fa, fb = a.view(dtype).astype(np.float32), b.view(dtype).astype(np.float32)
    nan = np.isnan(fa)
    assert np.array_equal(nan, np.isnan(fb))
    assert np.array_equal(a[~nan], b[~nan])


def _scaled(x, C, S, dtype, scale):
    """y = x * scale per channel (mean 0, invstd 1, bias 0): x * scale rounded once."""
    N = x.size // (C * S)
    w = np.full(C, scale, np.float32)
    return bn_kernels.batch_norm_elemt(
        x, N, C, S, np.zeros(C), np.ones(C), w, np.zeros(C, np.float32), False, KIND[dtype]
    )


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_ties_and_specials_round_as_numpy_at_every_length_and_offset(restore, dtype):
    for build in bn_kernels._simd_builds():
        bn_kernels._set_simd_build(build)
        for stream in (0, 1 << 60):  # every output streamed / none
            bn_kernels._set_stream_min_bytes(stream)
            for S in LENGTHS:
                for offset in range(4):  # the run starts 2 * offset bytes into the buffer
                    buf = _bits(dtype, 3 * S + offset, S * 7 + offset)
                    x = buf[offset:]
                    for scale in (TIE[dtype], 2.0**100 if dtype == BF16 else 2.0**10, 1.0):
                        got = _scaled(x, 3, S, dtype, scale)
                        with np.errstate(over="ignore", invalid="ignore"):
                            want = (
                                x.view(dtype).astype(np.float32) * np.float32(scale) + np.float32(0)
                            ).astype(dtype)
                        _same(got, want.view(np.uint16), dtype)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("threads", [1, 2])
def test_every_half_loop_gives_the_scalar_builds_bits(restore, dtype, threads):
    """BatchNorm (train, eval, backward: the affine, reductions and gradient loops),
    GroupNorm (the segment loops) and LayerNorm (the per-element ones) at every build."""
    cnorm.set_num_threads(threads)
    kind = KIND[dtype]
    rng = np.random.default_rng(threads)
    results = {}
    for build in bn_kernels._simd_builds():
        bn_kernels._set_simd_build(build)
        row_kernels._set_simd_build(build)
        for stream in (0, 1 << 60):
            bn_kernels._set_stream_min_bytes(stream)
            row_kernels._set_stream_min_bytes(stream)
            out = []
            for N, C, S in [(3, 2, 33), (2, 3, 100), (2, 2, 1031)]:
                x, dy = _bits(dtype, N * C * S, S), _bits(dtype, N * C * S, S + 1)
                w = (np.random.default_rng(S).random(C) + 0.5).astype(np.float32)
                b = np.random.default_rng(S + 2).standard_normal(C).astype(np.float32)
                rm, rv = b.copy(), w.copy()
                for relu in (False, True):
                    y, mean, invstd = bn_kernels.batch_norm_forward_train(
                        x, N, C, S, w, b, rm, rv, 0.1, 1e-5, relu, kind
                    )
                    out += [y, mean, invstd]
                    out += bn_kernels.batch_norm_forward_eval(x, N, C, S, w, b, rm, rv, 1e-5, relu, kind)[:1]
                    out += bn_kernels.batch_norm_backward(
                        dy, x, N, C, S, mean, invstd, w, True, y if relu else None, kind
                    )
                out += row_kernels.group_norm_forward(x, N, C, 1, S, w, b, 1e-5, kind)
                mean, rstd = out[-3], out[-2]
                out += row_kernels.group_norm_backward(dy, x, N, C, 1, S, mean, rstd, w, kind)
                wr = rng.random(S).astype(np.float32) + 0.5
                y, mean, rstd = row_kernels.layer_norm_forward(x, N * C, S, wr, wr, 1e-5, kind)
                out += [y, mean, rstd]
                out += row_kernels.layer_norm_backward(dy, x, N * C, S, mean, rstd, wr, kind)
            results[build, stream] = out
    ref = results["scalar", 1 << 60]
    for key, out in results.items():
        for a, b in zip(ref, out):
            if a.dtype == np.uint16:
                _same(a, b, dtype)
            else:
                assert np.array_equal(a, b, equal_nan=True), key


def test_narrow_float32_ties_of_every_exponent():
    """narrow_half (bfloat16, 16 at a time in the avx2 build): the three patterns around
    each tie, both parities of the kept bit, every exponent and sign, NaN payloads."""
    hi = np.arange(1 << 16, dtype=np.uint32) << 16
    u = np.concatenate([hi | 0x7FFF, hi | 0x8000, hi | 0x8001, hi | 0xFFFF, hi])
    x = u.view(np.float32)
    for start in range(3):  # a few alignments and lengths of the tail
        got = row_kernels.narrow_half(x[start:], 2)
        nan = np.isnan(x[start:])
        with np.errstate(invalid="ignore"):
            want = x[start:].astype(BF16).view(np.uint16)
        assert np.array_equal(got[~nan], want[~nan])
        g = got[nan]  # quiet, same sign, payload truncated
        assert np.array_equal(g, (u[start:][nan] >> 16).astype(np.uint16) | 0x40)
