/* The vectorized inner loops of the cnorm kernels: configuration, builds, selection.
 *
 * Why C: the reductions need independent lane accumulators held in registers, which
 * GCC does not derive from Cython's scalar code without -ffast-math. Each reduction
 * keeps a 64-byte "bundle" of lanes (16 floats / 8 doubles). Lane j always accumulates
 * the elements i + j, so every build gives the same bits (with -ffp-contract=off: no
 * FMA contraction) and the choice of build never changes a result.
 *
 * The loops are written once, in loops.h, over an element type T and a vector type V;
 * dispatch.h (generated at build time from signatures.py) includes loops.h once per
 * (dtype, build) that this compiler can make:
 *   scalar  plain C99, V = T: the bundle as 16 (8) scalar lanes; every compiler
 *   base    GNU vector extension, 16-byte vectors (SSE2 on x86-64, NEON on ARM)
 *   avx2    32-byte vectors, x86-64 GCC/Clang only (target attribute)
 *   avx512  64-byte vectors (AVX-512 F/BW/DQ/VL), x86-64 GCC >= 7 / Clang
 * cn_simd_init() picks the best one the CPU runs at import (CNORM_SIMD=scalar|baseline|
 * avx2|avx512 caps it); the tests switch builds to check that they give the same bits.
 * Define CNORM_PORTABLE_C to compile as a non-GNU compiler would (no extensions).
 */
#ifndef CNORM_SIMD_H
#define CNORM_SIMD_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && !defined(CNORM_PORTABLE_C)
#define CN_GNU 1
#else
#define CN_GNU 0
#endif

#if CN_GNU
#define CN_RESTRICT __restrict__
#define CN_NOINLINE __attribute__((noinline))
#elif defined(_MSC_VER)
#define CN_RESTRICT __restrict
#define CN_NOINLINE __declspec(noinline)
#else
#define CN_RESTRICT restrict
#define CN_NOINLINE
#endif

#if defined(_MSC_VER) && !defined(__cplusplus)
#define CN_INLINE __inline
#else
#define CN_INLINE inline
#endif

#if CN_GNU && defined(__x86_64__) && (!defined(__clang__) || __clang_major__ >= 9)
#define CN_HAVE_AVX2_BUILD 1
#else
#define CN_HAVE_AVX2_BUILD 0
#endif
#if CN_HAVE_AVX2_BUILD && (defined(__clang__) || __GNUC__ >= 7)
#define CN_HAVE_AVX512_BUILD 1
#else
#define CN_HAVE_AVX512_BUILD 0
#endif

/* non-temporal stores: x86-64 with the vector extension (the base, avx2 and avx512 builds) */
#if CN_GNU && (defined(__SSE2__) || defined(__x86_64__))
#include <immintrin.h>
#define CN_CAN_STREAM 1
#else
#define CN_CAN_STREAM 0
#endif

#define CN_BUNDLE_BYTES 64
#define CN_NAME_(name, s, build) cn_##name##_##s##_##build
#define CN_NAME(name, s, build) CN_NAME_(name, s, build)

/* float32 block sums of squares outside [CN_TINY_SUM_SQUARES, FLT_MAX] are redone in
   float64: above, the squares overflowed (|x - mean| > ~1e19); below, they lost digits
   in the subnormal range (|x - mean| < ~1e-15) or vanished altogether (all-zero squares
   with a tiny shift: the block may hold tiny distinct values, not a constant). Blocks
   of one constant (|c| >= CN_TINY_SHIFT) stay in float32. */
#define CN_TINY_SUM_SQUARES 1e-28
#define CN_TINY_SHIFT 1e-12

/* 1 when float32 block sums (s1 of deviations from shift, s2 of their squares)
   overflowed, are NaN, or are too small to keep every digit. Written so that the common
   case costs two comparisons and the loop over channels of cols_any_unsafe vectorizes. */
static CN_INLINE int cn_f32_sums_unsafe(double s1, double s2, double shift)
{
    return (s2 >= CN_TINY_SUM_SQUARES && s2 <= FLT_MAX)
               ? 0
               : (!(s2 <= FLT_MAX)) | (s2 > 0) | (s1 != 0) | (fabs(shift) < CN_TINY_SHIFT);
}

/* Sum of the lanes of a bundle by a fixed pairwise tree, in the lane precision (a
   serial float64 chain over 16 lanes costs ~64 cycles: too much for short rows). */
static CN_INLINE double cn_tree_f(const float* a)      /* 16 lanes */
{
    float b[8], c[4];
    int j;
    for (j = 0; j < 8; j++) b[j] = a[j] + a[j + 8];
    for (j = 0; j < 4; j++) c[j] = b[j] + b[j + 4];
    return (double)((c[0] + c[2]) + (c[1] + c[3]));
}

static CN_INLINE double cn_tree_d(const double* a)     /* 8 lanes */
{
    double c[4];
    int j;
    for (j = 0; j < 4; j++) c[j] = a[j] + a[j + 4];
    return (c[0] + c[2]) + (c[1] + c[3]);
}
#define CN_TREE_(s) cn_tree_##s
#define CN_TREE(s) CN_TREE_(s)

/* ---- half storage (float16, bfloat16): conversions to and from the compute type -----
   Scalar C99, bit-identical to the vector conversions of convert.h (F16C vcvtph2ps /
   vcvtps2ph, bfloat16 by 16-bit shifts): widening is exact, narrowing rounds to nearest
   even, once; a NaN stays a quiet NaN of the same sign with its payload truncated. */
static CN_INLINE uint32_t cn_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static CN_INLINE float cn_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static CN_INLINE float cn_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f)              /* inf, NaN (quieted, as vcvtph2ps does) */
        return cn_bits_f32(sign | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0));
    if (e != 0)
        return cn_bits_f32(sign | ((e + 112) << 23) | (m << 13));
    return cn_bits_f32(sign | cn_f32_bits((float)m * 5.9604644775390625e-08f)); /* m * 2^-24 */
}

static CN_INLINE uint16_t cn_f32_to_f16(float f)
{
    uint32_t u = cn_f32_bits(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    uint32_t m, q, rem, half;
    int shift;
    if (a > 0x7f800000u)        /* NaN: quiet, payload truncated */
        return (uint16_t)(sign | 0x7e00u | ((a & 0x7fffffu) >> 13));
    if (a >= 0x477ff000u)       /* >= 65520 = max + half an ulp: inf (and inf itself) */
        return (uint16_t)(sign | 0x7c00u);
    if (a >= 0x38800000u)       /* normal: round at bit 13, rebias the exponent */
        return (uint16_t)(sign | ((a + 0x0fffu + ((a >> 13) & 1u) - 0x38000000u) >> 13));
    /* subnormal or zero: round(|f| * 2^24) to nearest even, in integers */
    shift = 126 - (int)(a >> 23);
    if (shift > 24)
        return (uint16_t)sign;
    m = (a & 0x7fffffu) | 0x800000u;
    q = m >> shift;
    rem = m & ((1u << shift) - 1);
    half = 1u << (shift - 1);
    q += (rem > half) | ((rem == half) & q);
    return (uint16_t)(sign | q);
}

static CN_INLINE float cn_bf16_to_f32(uint16_t h) { return cn_bits_f32((uint32_t)h << 16); }

static CN_INLINE uint16_t cn_f32_to_bf16(float f)
{
    uint32_t u = cn_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)   /* NaN: quiet (rounding could carry it to inf) */
        return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* double -> float rounded to odd: then rounding that float to a half type is the one
   correct rounding of the double (round-to-odd keeps the sticky bit; 24 >= 11 + 2 bits) */
static CN_INLINE float cn_f64_to_f32_odd(double d)
{
    float f = (float)d;
    uint32_t u;
    if ((double)f == d || d != d)
        return f;
    u = cn_f32_bits(f);
    if (!(u & 1u))
        u = fabs((double)f) > fabs(d) ? u - 1 : u + 1;
    return cn_bits_f32(u);
}

#if CN_HAVE_AVX2_BUILD && CN_CAN_STREAM
/* 8 bfloat16 -> 8 float: the bits shifted into the high half */
__attribute__((target("avx2"))) static CN_INLINE __m256 cn_bf16x8_load(const uint16_t* h)
{
    __m128i v = _mm_loadu_si128((const __m128i*)(const void*)h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

/* The bfloat16 rounding of 8 floats (bits u) in the high 16 bits of each lane, the low 16
   bits garbage: u + 0x7fff + lsb carries into the kept bits exactly when the dropped ones
   exceed half an ulp, or equal it with the kept lsb odd (to nearest even). Finite values
   and infinities only: a NaN may carry into its exponent or sign. */
__attribute__((target("avx2"))) static CN_INLINE __m256i cn_bf16x8_round_high(__m256i u)
{
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    return _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb);
}

/* the same for every value: a NaN quieted, its payload truncated (u | quiet bit) */
__attribute__((target("avx2"))) static CN_INLINE __m256i cn_bf16x8_round_high_nan(__m256 f)
{
    const __m256i u = _mm256_castps_si256(f);
    return _mm256_blendv_epi8(cn_bf16x8_round_high(u), _mm256_or_si256(u, _mm256_set1_epi32(0x400000)),
                              _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q)));
}

/* 8 float -> 8 bfloat16 bits, rounded to nearest even; NaN quieted (cn_f32_to_bf16) */
__attribute__((target("avx2"))) static CN_INLINE __m128i cn_bf16x8_round(__m256 f)
{
    const __m256i r = _mm256_srli_epi32(cn_bf16x8_round_high_nan(f), 16);
    return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

__attribute__((target("avx2"))) static CN_INLINE void cn_bf16x8_store(uint16_t* h, __m256 f)
{
    _mm_storeu_si128((__m128i*)(void*)h, cn_bf16x8_round(f));
}

/* Two vectors at a time, for one 32-byte store: a, b rounded (cn_bf16x8_round_high; a
   NaN in either, rare, takes the NaN-quieting form for both: one compare and test) */
__attribute__((target("avx2"))) static CN_INLINE void cn_bf16x16_round_high(__m256i* ra, __m256i* rb,
                                                                            __m256 a, __m256 b)
{
    const __m256 nan = _mm256_cmp_ps(a, b, _CMP_UNORD_Q);
    if (__builtin_expect(_mm256_testz_ps(nan, nan), 1)) {
        *ra = cn_bf16x8_round_high(_mm256_castps_si256(a));
        *rb = cn_bf16x8_round_high(_mm256_castps_si256(b));
    } else {
        *ra = cn_bf16x8_round_high_nan(a);
        *rb = cn_bf16x8_round_high_nan(b);
    }
}

/* 16 bfloat16 at h -> its even elements (0, 2, ..., 14) and its odd ones as floats: the
   halves of each 32-bit lane, shifted up or masked (no widening shuffle) */
__attribute__((target("avx2"))) static CN_INLINE __m256 cn_bf16x16_even(const uint16_t* h)
{
    const __m256i v = _mm256_loadu_si256((const __m256i*)(const void*)h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

__attribute__((target("avx2"))) static CN_INLINE __m256 cn_bf16x16_odd(const uint16_t* h)
{
    const __m256i v = _mm256_loadu_si256((const __m256i*)(const void*)h);
    return _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xffff0000u)));
}

/* the inverse: the 16 bfloat16 bits of the rounded even and odd elements, in order. No
   NaN: each lane's kept halves (truncated) and dropped halves gathered by two blends, then
   16-bit words: up by one where dropped | kept lsb > 0x8000 (cn_bf16x8_round_high's
   carry: more than half an ulp, or half with the kept lsb odd). A NaN: each vector by
   cn_bf16x8_round_high_nan, the rounded halves merged by one blend. */
__attribute__((target("avx2"))) static CN_INLINE __m256i cn_bf16x16_round_eo(__m256 even, __m256 odd)
{
    const __m256 nan = _mm256_cmp_ps(even, odd, _CMP_UNORD_Q);
    const __m256i ue = _mm256_castps_si256(even), uo = _mm256_castps_si256(odd);
    if (__builtin_expect(_mm256_testz_ps(nan, nan), 1)) {
        const __m256i one = _mm256_set1_epi16(1);
        const __m256i kept = _mm256_blend_epi16(_mm256_srli_epi32(ue, 16), uo, 0xaa);
        const __m256i dropped = _mm256_blend_epi16(ue, _mm256_slli_epi32(uo, 16), 0xaa);
        const __m256i t = _mm256_or_si256(dropped, _mm256_and_si256(kept, one));
        const __m256i up = _mm256_min_epu16(_mm256_subs_epu16(t, _mm256_set1_epi16((short)0x8000)), one);
        return _mm256_add_epi16(kept, up);
    }
    return _mm256_blend_epi16(_mm256_srli_epi32(cn_bf16x8_round_high_nan(even), 16),
                              cn_bf16x8_round_high_nan(odd), 0xaa);
}

/* the 16 bfloat16 bits of a (elements 0..7) and b (8..15) rounded, in order (one pack,
   its 64-bit quarters put back in order) */
__attribute__((target("avx2"))) static CN_INLINE __m256i cn_bf16x16_round(__m256 a, __m256 b)
{
    __m256i ra, rb;
    cn_bf16x16_round_high(&ra, &rb, a, b);
    return _mm256_permute4x64_epi64(
        _mm256_packus_epi32(_mm256_srli_epi32(ra, 16), _mm256_srli_epi32(rb, 16)), 0xd8);
}
#endif

#if CN_GNU && defined(__aarch64__)
#include <arm_neon.h>           /* the base build's float16 conversions (half.h) */
#endif

/* the instantiations of loops.h, the per-dtype tables of loops and the dispatchers */
#include "dispatch.h"

/* outputs of at least this many bytes are written with non-temporal stores: input and
   output then exceed a typical L3 (an 8 MB output still fits with its input in 32 MB and
   gets slower streamed; 12 MB and up got 15-25% faster here). An input gradient, whose
   pass also reads x and dy, streams from half this size (common.pxd: streams).
   CNORM_STREAM_MIN_BYTES overrides, 0 disables. */
static ptrdiff_t cn_stream_min_bytes = (ptrdiff_t)10 << 20;

/* Orders the non-temporal stores of this thread before what follows: once per thread
   at the end of a streamed pass (a fence per row would drain the write-combining buffers
   over and over). */
static CN_INLINE void cn_stream_fence(void)
{
#if CN_CAN_STREAM
    _mm_sfence();
#endif
}

/* Asks for the cache lines of [p, p + bytes) ahead of their use (a no-op without GNU C,
   or with cn_prefetch_on = 0: CNORM_PREFETCH=0): a pass working from cache meanwhile
   keeps the memory busy with the next input. */
static int cn_prefetch_on = 1;

static CN_INLINE void cn_prefetch(const void* p, ptrdiff_t bytes)
{
#if CN_GNU
    ptrdiff_t o;
    if (cn_prefetch_on)
        for (o = 0; o < bytes; o += 64) __builtin_prefetch((const char*)p + o, 0, 3);
#else
    (void)p;
    (void)bytes;
#endif
}

/* 1 when this module has the build and the CPU runs it */
static int cn_simd_available(int build)
{
    if (build < 0 || build >= CN_N_BUILDS || cn_loops_f_builds[build] == NULL)
        return 0;
#if CN_HAVE_AVX2_BUILD
    if (build == CN_BUILD_avx2) {
        __builtin_cpu_init();
        /* its half conversions use F16C (every AVX2 CPU has it; checked all the same) */
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
    }
#endif
#if CN_HAVE_AVX512_BUILD
    if (build == CN_BUILD_avx512) {
        __builtin_cpu_init();    /* libgcc / compiler-rt also check that the OS saves zmm */
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("f16c");
    }
#endif
    return 1;
}

/* use the given build when available; returns the build in use */
static int cn_simd_select(int build)
{
    if (cn_simd_available(build))
        cn_use_build(build);
    return cn_build_in_use;
}

/* the best build, or the one CNORM_SIMD names; returns it. Once per module, at import. */
static int cn_simd_init(void)
{
    const char* stream_env = getenv("CNORM_STREAM_MIN_BYTES");
    const char* env = getenv("CNORM_SIMD");
    const char* prefetch_env = getenv("CNORM_PREFETCH");
    int build;
    if (prefetch_env && *prefetch_env)
        cn_prefetch_on = atoi(prefetch_env) != 0;
    if (stream_env && *stream_env) {
        long long v = atoll(stream_env);
        cn_stream_min_bytes = v > 0 ? (ptrdiff_t)v : PTRDIFF_MAX;
    }
    for (build = CN_N_BUILDS - 1; build > 0 && !cn_simd_available(build); build--)
        ;
    if (env && strcmp(env, "baseline") == 0)
        env = "base";
    if (env && *env) {
        int b;
        for (b = 0; b < CN_N_BUILDS; b++)
            if (strcmp(env, cn_build_names[b]) == 0 && cn_simd_available(b))
                build = b < build ? b : build;     /* never a build the CPU cannot run */
    }
    return cn_simd_select(build);
}

/* 1: the avx2 build when the CPU has it; 0: the base build (scalar where there is none).
   Returns 1 when avx2 runs afterwards. */
static int cn_simd_set(int use_avx2)
{
#if CN_HAVE_AVX2_BUILD
    if (use_avx2 && cn_simd_select(CN_BUILD_avx2) == CN_BUILD_avx2)
        return 1;
#endif
    (void)use_avx2;
    cn_simd_select(CN_N_BUILDS > 1 ? 1 : 0);
    return 0;
}

#endif /* CNORM_SIMD_H */
