/* The conversions of half storage (float16, bfloat16 as uint16_t bits) to and from the
   compute type T of loops.h (see there). Included by loops.h only.

   Widening is exact; narrowing rounds to nearest even, once (from double through a
   float rounded to odd: cn_f64_to_f32_odd). The avx2 build converts 8 lanes at a time
   (F16C vcvtph2ps / vcvtps2ph; bfloat16 by 16-bit shifts), the other builds element by
   element with the scalar helpers of simd.h; both give the same bits (tests check every
   float16 value and the rounding edges). */

#if CN_VB == 32 && CN_CAN_STREAM && CN_T_BYTES == 4
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

#if CN_CVT_AVX2
/* 8 bfloat16 -> 8 float: the bits shifted into the high half */
CN_CVT_TARGET static CN_INLINE __m256 CN_FN(bf16x8_load)(const uint16_t* h)
{
    __m128i v = _mm_loadu_si128((const __m128i*)(const void*)h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

/* 8 float -> 8 bfloat16, rounded to nearest even; NaN quieted (cn_f32_to_bf16) */
CN_CVT_TARGET static CN_INLINE void CN_FN(bf16x8_store)(uint16_t* h, __m256 f)
{
    const __m256i u = _mm256_castps_si256(f), one = _mm256_set1_epi32(1);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
    __m256i q = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                     _mm256_set1_epi32(0x7f800000));
    r = _mm256_blendv_epi8(r, q, nan);
    _mm_storeu_si128((__m128i*)(void*)h,
                     _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
}
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
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, CN_FN(bf16x8_load)(h + i));
#endif
    for (; i < n; i++) out[i] = cn_bf16_to_f32(h[i]);
}

/* h = x rounded to bfloat16 */
CN_CVT_LOOP void CN_FN(to_bf16)(uint16_t* CN_RESTRICT h, const T* CN_RESTRICT x, ptrdiff_t n)
{
    ptrdiff_t i = 0;
#if CN_CVT_AVX2
    for (; i + 8 <= n; i += 8) CN_FN(bf16x8_store)(h + i, _mm256_loadu_ps(x + i));
#endif
    for (; i < n; i++) h[i] = cn_f32_to_bf16(CN_NARROW(x[i]));
}

#undef CN_CVT_AVX2
#undef CN_CVT_TARGET
#undef CN_CVT_LOOP
#undef CN_NARROW
