/* The loops of half storage: loops.h instantiated for a half dtype (CN_HALF 1 float16,
   2 bfloat16; see there), T = float. Included by loops.h only.

   Each loop is the float32 loop of the same name (reduce.h, elementwise.h) with its
   storage arrays (x, dy, ym; y, dx, out) of type X, the half bits: its loads widen
   (exactly) and its stores round once to nearest even, in the loop itself. The float32
   operations, their order and the lanes are those of the float32 loop, so the result is
   that loop's on the widened values, rounded: the same bits as staging the data in
   float32 first, without the stage's extra passes. Coefficients and partials (w, b, hi,
   tw, ...) stay float.

   Conversions: the avx2 build 8 lanes at a time (F16C vcvtph2ps / vcvtps2ph; bfloat16 by
   16-bit shifts, cn_bf16x8_*, and its loops 16 at a time: cn_bf16x16_*, below); the base build on ARM by NEON vcvt_f32_f16 / vcvt_f16_f32,
   elsewhere bfloat16 by vector shifts and float16 lane by lane; the scalar build with the
   helpers of simd.h. All give the same bits (test_simd_table's harness, test_half). */

#if CN_VB == 32 && CN_CAN_STREAM
#define CN_H_AVX2 1
#define CN_H_TARGET __attribute__((target("avx2,f16c")))
#else
#define CN_H_AVX2 0
#define CN_H_TARGET CN_TARGET
#endif
/* the avx512 build: 16 lanes a step (vcvtph2ps / vcvtps2ph zmm; bfloat16 widened by
   vpmovzxwd and a shift, narrowed by the rounding of the other builds and vpmovdw) */
#if CN_VB == 64 && CN_CAN_STREAM
#define CN_H_AVX512 1
#else
#define CN_H_AVX512 0
#endif
#if CN_VB == 16 && CN_GNU && defined(__aarch64__) && CN_HALF == 1
#define CN_H_NEON 1
#else
#define CN_H_NEON 0
#endif
#define CN_HLOOP CN_H_TARGET CN_NOINLINE static
#define CN_HHELPER CN_H_TARGET static CN_INLINE
/* a loop's body inlined in the loop that walks several runs (runs_stats, runs_affine) */
#if CN_GNU
#define CN_HBODY CN_H_TARGET static CN_INLINE __attribute__((always_inline))
#else
#define CN_HBODY CN_HHELPER
#endif
#define X uint16_t

/* ---- conversions ------------------------------------------------------------------- */

/* one value widened / rounded to the half type: the loops' tails and every value of a
   row narrower than a vector (a channels-last BatchNorm of 4 channels is all tails). In
   the avx2 build float16 takes F16C's scalar forms, the same bits as the vector ones
   (and as the C99 helpers) in 1 instruction instead of ~20 with branches. */
#if (CN_H_AVX2 || CN_H_AVX512) && CN_HALF == 1
CN_HHELPER T CN_FN(wid)(X h) { return _cvtsh_ss(h); }
CN_HHELPER X CN_FN(nar)(T v) { return (X)_cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT); }
#else
CN_HHELPER T CN_FN(wid)(X h) { return CN_HALF == 1 ? cn_f16_to_f32(h) : cn_bf16_to_f32(h); }
CN_HHELPER X CN_FN(nar)(T v) { return CN_HALF == 1 ? cn_f32_to_f16(v) : cn_f32_to_bf16(v); }
#endif

#if CN_VEC
typedef uint32_t CN_FN(bits) __attribute__((vector_size(CN_VB)));
#define U CN_FN(bits)

/* the bfloat16 bits of v's lanes (in the low halves), rounded to nearest even; a NaN
   quieted, its sign and top payload kept (cn_f32_to_bf16) */
CN_HHELPER U CN_FN(bf16_round)(V v)
{
    const U u = (U)v, nan = (U)((u & 0x7fffffffu) > 0x7f800000u);
    return (((u + 0x7fffu + ((u >> 16) & 1u)) >> 16) & ~nan) | (((u >> 16) | 0x40u) & nan);
}
#endif

#if CN_H_AVX512 && CN_HALF == 2
/* bfloat16 in the avx512 build: one word permute each way (vpermw), where a zero-extend
   and a shift, or a shift and vpmovdw, cost twice the uops. Widened: word j into the high
   half of lane j. Narrowed: bf16_round's bits, kept in the high halves (the rounding add,
   or a NaN's quiet bit ORed in), those 16 words picked. */
CN_HHELPER V CN_FN(bf16_wid16)(const X* p)
{
    /* word 2j + 1 <- word j (the even words zeroed by the mask) */
    const __m512i odd_from = _mm512_set_epi32(15 << 16, 14 << 16, 13 << 16, 12 << 16,
                                              11 << 16, 10 << 16, 9 << 16, 8 << 16,
                                              7 << 16, 6 << 16, 5 << 16, 4 << 16,
                                              3 << 16, 2 << 16, 1 << 16, 0);
    const __m512i h = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(const void*)p));
    return (V)_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, odd_from, h);
}

CN_HHELPER __m256i CN_FN(bf16_nar16)(V v)
{
    /* word j <- word 2j + 1 (the upper 16 words: don't care) */
    const __m512i high_words = _mm512_set_epi32(0x1f001d, 0x1b0019, 0x170015, 0x130011,
                                                0xf000d, 0xb0009, 0x70005, 0x30001,
                                                0x1f001d, 0x1b0019, 0x170015, 0x130011,
                                                0xf000d, 0xb0009, 0x70005, 0x30001);
    const __m512i u = _mm512_castps_si512((__m512)v);
    const __mmask16 nan = _mm512_cmp_ps_mask((__m512)v, (__m512)v, _CMP_UNORD_Q);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb);
    r = _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x400000));
    return _mm512_castsi512_si256(_mm512_permutexvar_epi16(high_words, r));
}
#endif

/* W values at p, widened */
CN_HHELPER V CN_FN(ldx)(const X* p)
{
#if CN_H_AVX2 && CN_HALF == 1
    return (V)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(const void*)p));
#elif CN_H_AVX2
    return (V)cn_bf16x8_load(p);
#elif CN_H_AVX512 && CN_HALF == 1
    return (V)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(const void*)p));
#elif CN_H_AVX512
    return CN_FN(bf16_wid16)(p);
#elif CN_H_NEON
    return (V)vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
#elif CN_VEC && CN_HALF == 2
    U u = {0};
    ptrdiff_t j;
    for (j = 0; j < W; j++) u[j] = p[j];
    return (V)(u << 16);
#elif CN_VEC
    V v = {0};
    ptrdiff_t j;
    for (j = 0; j < W; j++) v[j] = CN_FN(wid)(p[j]);
    return v;
#else
    return CN_FN(wid)(*p);
#endif
}

/* p[0:W] = v rounded (cn_f32_to_f16 / cn_f32_to_bf16 per lane) */
CN_HHELPER void CN_FN(stx)(X* p, V v)
{
#if CN_H_AVX2 && CN_HALF == 1
    _mm_storeu_si128((__m128i*)(void*)p, _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT));
#elif CN_H_AVX2
    cn_bf16x8_store(p, (__m256)v);
#elif CN_H_AVX512 && CN_HALF == 1
    _mm256_storeu_si256((__m256i*)(void*)p, _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT));
#elif CN_H_AVX512
    _mm256_storeu_si256((__m256i*)(void*)p, CN_FN(bf16_nar16)(v));
#elif CN_H_NEON
    vst1_u16(p, vreinterpret_u16_f16(vcvt_f16_f32((float32x4_t)v)));
#elif CN_VEC && CN_HALF == 2
    const U r = CN_FN(bf16_round)(v);
    ptrdiff_t j;
    for (j = 0; j < W; j++) p[j] = (X)r[j];
#elif CN_VEC
    ptrdiff_t j;
    for (j = 0; j < W; j++) p[j] = CN_FN(nar)(v[j]);
#else
    *p = CN_FN(nar)(v);
#endif
}

/* bfloat16 in the avx2 build: 2W values per step (cn_bf16x16_*, simd.h), the loads one
   32-byte read, the stores one 32-byte write, the rounding's NaN test one per step. The
   loops whose coefficients are the same for every element (CN_H_EACH) and the reductions
   take the even and the odd elements of the step as their two vectors (no shuffles:
   shifts and masks of 32-bit lanes); those with per-element coefficients
   (CN_H_EACH_COLS) two vectors in order. Each element gets the same operations either way. */
#if CN_H_AVX2 && CN_HALF == 2
#define CN_H_PAIRS 1
#else
#define CN_H_PAIRS 0
#endif

#if CN_H_PAIRS
/* W values of the storage array at p: part 0 in order (ldx), 1 / 2 the even / odd
   elements of the 2W from p */
CN_HHELPER V CN_FN(ldx_part)(const X* p, int part)
{
    return part == 0 ? CN_FN(ldx)(p) : (V)(part == 1 ? cn_bf16x16_even(p) : cn_bf16x16_odd(p));
}

/* a reduction's bundle (K = 2 vectors) at p: vector k the even (k = 0) or odd elements,
   so lane j of acc[k] accumulates element 2j + k; CN_H_LANES puts the lanes back in
   element order (lanes[j] of element j: the order of the other builds) */
#define CN_H_BUNDLE(p, k) CN_FN(ldx_part)(p, (int)(k) + 1)
CN_HHELPER void CN_FN(unbundle)(T* lanes, const V* acc)
{
    const __m256 lo = _mm256_unpacklo_ps((__m256)acc[0], (__m256)acc[1]);  /* 0 1 2 3 | 8 9 10 11 */
    const __m256 hi = _mm256_unpackhi_ps((__m256)acc[0], (__m256)acc[1]);  /* 4 5 6 7 | 12 .. 15 */
    _mm256_storeu_ps(lanes, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(lanes + W, _mm256_permute2f128_ps(lo, hi, 0x31));
}
#define CN_H_LANES(to, acc) CN_FN(unbundle)(to, acc)

CN_HHELPER void CN_FN(st2)(X* p, __m256i bits) { _mm256_storeu_si256((__m256i*)(void*)p, bits); }
CN_HHELPER void CN_FN(st2_nt)(X* p, __m256i bits) { _mm256_stream_si256((__m256i*)(void*)p, bits); }

/* out[i:i + 2W] = VECTOR rounded: on the even and the odd elements (hpart 1, 2) or on
   two vectors in order (i, i + W); ST the store */
#define CN_H_PAIR_EO(out, VECTOR, ST)                                                      \
    do {                                                                                   \
        V even_, odd_;                                                                     \
        {                                                                                  \
            const int hpart = 1;                                                           \
            even_ = (VECTOR);                                                              \
        }                                                                                  \
        {                                                                                  \
            const int hpart = 2;                                                           \
            odd_ = (VECTOR);                                                               \
        }                                                                                  \
        ST((out) + i, cn_bf16x16_round_eo((__m256)even_, (__m256)odd_));                   \
    } while (0)
#define CN_H_PAIR_ORDERED(out, VECTOR, ST)                                                 \
    do {                                                                                   \
        const V first_ = (VECTOR);                                                         \
        V second_;                                                                         \
        i += W;                                                                            \
        second_ = (VECTOR);                                                                \
        i -= W;                                                                            \
        ST((out) + i, cn_bf16x16_round((__m256)first_, (__m256)second_));                  \
    } while (0)
#define CN_H_STEP (2 * W)
#define CN_H_PUT(PAIR, out, VECTOR, nt) PAIR(out, VECTOR, CN_FN(st2##nt))
#else
#define CN_H_STEP W
#define CN_H_PUT(PAIR, out, VECTOR, nt) CN_FN(stx##nt)((out) + i, VECTOR)
#define CN_H_BUNDLE(p, k) CN_FN(ldx)((p) + (k) * W)
#define CN_H_LANES(to, acc) memcpy(to, acc, sizeof(T) * L)
#endif

/* element i of a storage array, widened: one value (XS) or W of them (XV; in a pair
   step of CN_H_EACH the even or odd ones, hpart) */
#define XS(p) CN_FN(wid)((p)[i])
#if CN_H_PAIRS
#define XV(p) CN_FN(ldx_part)((p) + i, hpart)
#else
#define XV(p) CN_FN(ldx)((p) + i)
#endif

/* out[i] = the narrowed value of SCALAR (element by element) or VECTOR (CN_H_STEP at a
   time from the start, or from out's alignment when streamed: avx2) */
#if CN_H_AVX2 || CN_H_AVX512
CN_HHELPER void CN_FN(stx_nt)(X* p, V v)
{
#if CN_H_AVX512 && CN_HALF == 1
    _mm256_stream_si256((__m256i*)(void*)p, _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT));
#elif CN_H_AVX512
    _mm256_stream_si256((__m256i*)(void*)p, CN_FN(bf16_nar16)(v));
#elif CN_HALF == 1
    _mm_stream_si128((__m128i*)(void*)p, _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT));
#else
    _mm_stream_si128((__m128i*)(void*)p, cn_bf16x8_round((__m256)v));
#endif
}
#define CN_H_STREAM(PAIR, out, i, n, SCALAR, VECTOR)                                      \
    if (stream) {                                                                          \
        for (; i < n && ((uintptr_t)((out) + i) % (2 * W)) != 0; i++)                      \
            (out)[i] = CN_FN(nar)(SCALAR);     /* to the vector stores' alignment */      \
        if (CN_H_STEP > W && i <= n - W && ((uintptr_t)((out) + i) % 32) != 0) {           \
            CN_FN(stx_nt)((out) + i, VECTOR);  /* to the 32-byte stores' alignment */      \
            i += W;                                                                        \
        }                                                                                  \
        CN_H_STEPS(PAIR, out, i, n, VECTOR, _nt)                                           \
    }
#else
#define CN_H_STREAM(PAIR, out, i, n, SCALAR, VECTOR) (void)stream;
#endif
/* two bundles per trip of a reduction (the same operations, in the same order): these
   loops are instruction-bound */
#if CN_GNU
#define CN_H_UNROLL _Pragma("GCC unroll 2")
#else
#define CN_H_UNROLL
#endif
/* the steps, two per trip, then one */
#define CN_H_STEPS(PAIR, out, i, n, VECTOR, nt)                                           \
    for (; i <= n - 2 * CN_H_STEP; i += 2 * CN_H_STEP) {                                   \
        CN_H_PUT(PAIR, out, VECTOR, nt);                                                   \
        i += CN_H_STEP;                                                                    \
        CN_H_PUT(PAIR, out, VECTOR, nt);                                                   \
        i -= CN_H_STEP;                                                                    \
    }                                                                                      \
    if (i <= n - CN_H_STEP) {                                                              \
        CN_H_PUT(PAIR, out, VECTOR, nt);                                                   \
        i += CN_H_STEP;                                                                    \
    }
/* OV: the tail of a run of at least CN_H_STEP elements may be one step over the last
   CN_H_STEP elements, rewriting the step before it with the same values (each output a
   function of its own element's inputs: the same bits; a run of 196 values then has no
   scalar tail). Only when the output is none of the inputs (OV) and not streamed. */
#define CN_H_EACH_(PAIR, out, n, SCALAR, VECTOR, OV)                                      \
    do {                                                                                   \
        ptrdiff_t i = 0;                                                                   \
        const int hpart = 0;                                                               \
        (void)hpart;                                                                       \
        CN_H_STREAM(PAIR, out, i, n, SCALAR, VECTOR)                                       \
        CN_H_STEPS(PAIR, out, i, n, VECTOR, )                                              \
        if ((OV) && i < n && n >= CN_H_STEP && !stream) {                                  \
            i = n - CN_H_STEP;                                                             \
            CN_H_PUT(PAIR, out, VECTOR, );                                                 \
            i = n;                                                                         \
        }                                                                                  \
        for (; i <= n - W; i += W) CN_FN(stx)((out) + i, VECTOR);                          \
        for (; i < n; i++) (out)[i] = CN_FN(nar)(SCALAR);                                  \
    } while (0)
/* coefficients the same for every element / per element; CN_H_EACH_OV: with the
   overlapping last step when OV */
#define CN_H_EACH(out, n, SCALAR, VECTOR) CN_H_EACH_(CN_H_PAIR_EO, out, n, SCALAR, VECTOR, 0)
#define CN_H_EACH_OV(out, n, SCALAR, VECTOR, OV) \
    CN_H_EACH_(CN_H_PAIR_EO, out, n, SCALAR, VECTOR, OV)
#define CN_H_EACH_COLS(out, n, SCALAR, VECTOR) \
    CN_H_EACH_(CN_H_PAIR_ORDERED, out, n, SCALAR, VECTOR, 0)

#include "half_reduce.h"
#include "half_elementwise.h"
#include "half_cols.h"

#undef CN_H_AVX2
#undef CN_H_AVX512
#undef CN_H_TARGET
#undef CN_H_NEON
#undef CN_HLOOP
#undef CN_HHELPER
#undef CN_HBODY
#undef X
#undef U
#undef XS
#undef XV
#undef CN_H_STREAM
#undef CN_H_EACH
#undef CN_H_EACH_OV
#undef CN_H_EACH_
#undef CN_H_EACH_COLS
#undef CN_H_STEPS
#undef CN_H_UNROLL
#undef CN_H_BUNDLE
#undef CN_H_LANES
#undef CN_H_PAIRS
#undef CN_H_PAIR_EO
#undef CN_H_PAIR_ORDERED
#undef CN_H_STEP
#undef CN_H_PUT
