/* The conversions of half storage (float16, bfloat16 as uint16_t bits) to and from the
   compute type T of loops.h (see there). Included by loops.h only.

   Widening is exact; narrowing rounds to nearest even, once (from double through a
   float rounded to odd: cn_f64_to_f32_odd). The avx2 and avx512 builds convert 8 lanes at a time
   (F16C vcvtph2ps / vcvtps2ph; bfloat16 by 16-bit shifts, rounded 16 at a time: cn_bf16x8_*,
   cn_bf16x16_*), the other builds element by
   element with the scalar helpers of simd.h; both give the same bits (tests check every
   float16 value and the rounding edges). */

#if (CN_VB == 32 || CN_VB == 64) && CN_CAN_STREAM && CN_T_BYTES == 4   /* avx2, avx512 */
#define CN_CVT_AVX2 1
#define CN_CVT_TARGET __attribute__((target("avx2,f16c")))
#else
#define CN_CVT_AVX2 0
#define CN_CVT_TARGET CN_TARGET
#endif
#define CN_CVT_LOOP CN_CVT_TARGET CN_NOINLINE static

#if CN_T_BYTES == 4
#define CN_NARROW(v) (v)
#else
#define CN_NARROW(v) cn_f64_to_f32_odd(v)
#endif


/* out = float16 bits h, widened */
CN_CVT_LOOP void CN_FN(from_f16)(T* CN_RESTRICT out, const uint16_t* CN_RESTRICT h, ptrdiff_t n)
{
    ptrdiff_t i = 0;
#if CN_CVT_AVX2
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(const void*)(h + i))));
#endif
    for (; i < n; i++) out[i] = cn_f16_to_f32(h[i]);
}

/* h = x rounded to float16 */
CN_CVT_LOOP void CN_FN(to_f16)(uint16_t* CN_RESTRICT h, const T* CN_RESTRICT x, ptrdiff_t n)
{
    ptrdiff_t i = 0;
#if CN_CVT_AVX2
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i*)(void*)(h + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; i++) h[i] = cn_f32_to_f16(CN_NARROW(x[i]));
}

/* out = bfloat16 bits h, widened */
CN_CVT_LOOP void CN_FN(from_bf16)(T* CN_RESTRICT out, const uint16_t* CN_RESTRICT h, ptrdiff_t n)
{
    ptrdiff_t i = 0;
#if CN_CVT_AVX2
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, cn_bf16x8_load(h + i));
#endif
    for (; i < n; i++) out[i] = cn_bf16_to_f32(h[i]);
}

/* h = x rounded to bfloat16 */
CN_CVT_LOOP void CN_FN(to_bf16)(uint16_t* CN_RESTRICT h, const T* CN_RESTRICT x, ptrdiff_t n)
{
    ptrdiff_t i = 0;
#if CN_CVT_AVX2
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i*)(void*)(h + i),
                            cn_bf16x16_round(_mm256_loadu_ps(x + i), _mm256_loadu_ps(x + i + 8)));
    for (; i + 8 <= n; i += 8) cn_bf16x8_store(h + i, _mm256_loadu_ps(x + i));
#endif
    for (; i < n; i++) h[i] = cn_f32_to_bf16(CN_NARROW(x[i]));
}

#undef CN_CVT_AVX2
#undef CN_CVT_TARGET
#undef CN_CVT_LOOP
#undef CN_NARROW
