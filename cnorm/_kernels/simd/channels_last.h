/* The loops of channels-last GroupNorm / InstanceNorm (channels_last.pyx): x is a block
 * of nrows positions s by n contiguous channels, x[r * ld + c]. Included by loops.h for
 * every dtype (T = float or double; CN_HALF: the storage ST is float16 / bfloat16 bits).
 *
 * Every value is computed in float64 (but the statistics and the backward of float32
 * storage: channels_last_f32.h), one accumulator per channel, the rows added in
 * order: the vector lanes are channels, so a channel's sum is the same chain of float64
 * additions in every build and for every vector width (the scalar loops of the pyx had
 * the same chain: the bits are theirs). Loads widen exactly; stores round once to
 * nearest even from the float64 value (half: round to odd to float32 first, which keeps
 * the sticky bit, then to the half type).
 *
 * An array marked "first" (y, dy: an InstanceNorm output, a channels-first grad_output)
 * is channels-first instead, element (r, c) at p[c * nrows + r]: its lanes are gathered
 * or scattered one by one, the conversions stay vector ones.
 */

#if CN_VB == 32 && CN_CAN_STREAM
#define CN_CL_AVX2 1
#define CN_CL_TARGET __attribute__((target("avx2,f16c")))
#else
#define CN_CL_AVX2 0
#define CN_CL_TARGET CN_TARGET
#endif
#if CN_VB == 64 && CN_CAN_STREAM
#define CN_CL_AVX512 1
#else
#define CN_CL_AVX512 0
#endif
#if CN_GNU
#define CN_CL_INLINE CN_CL_TARGET __attribute__((always_inline)) static CN_INLINE
#else
#define CN_CL_INLINE CN_CL_TARGET static CN_INLINE
#endif
#define CN_HLOOP CN_CL_TARGET CN_NOINLINE static
#if CN_HALF
#define ST uint16_t
#else
#define ST T
#endif

/* DV: DW doubles (the vector of the build; a double in the scalar build) */
#if CN_VEC
typedef double CN_FN(cl_dv) __attribute__((vector_size(CN_VB)));
typedef int64_t CN_FN(cl_dm) __attribute__((vector_size(CN_VB)));
typedef float CN_FN(cl_fv) __attribute__((vector_size(CN_VB / 2)));
typedef int32_t CN_FN(cl_fm) __attribute__((vector_size(CN_VB / 2)));
typedef uint32_t CN_FN(cl_uv) __attribute__((vector_size(CN_VB / 2)));
typedef uint16_t CN_FN(cl_hv) __attribute__((vector_size(CN_VB / 4)));
#define DV CN_FN(cl_dv)
#define DM CN_FN(cl_dm)
#define FV CN_FN(cl_fv)
#define FM CN_FN(cl_fm)
#define UV CN_FN(cl_uv)
#define HV CN_FN(cl_hv)
#define DW ((ptrdiff_t)(CN_VB / 8))
#else
#define DV double
#define DW ((ptrdiff_t)1)
#endif

/* ---- one value: widened / rounded (the tail channels, the scalar build) ------------- */

CN_CL_INLINE double CN_FN(cl_ldx_1)(const ST* p, ptrdiff_t cs)
{
    (void)cs;
#if CN_HALF == 1
    return (double)cn_f16_to_f32(*p);
#elif CN_HALF == 2
    return (double)cn_bf16_to_f32(*p);
#else
    return (double)*p;
#endif
}

CN_CL_INLINE void CN_FN(cl_stx_1)(ST* p, ptrdiff_t cs, double v)
{
    (void)cs;
#if CN_HALF == 1
    *p = cn_f32_to_f16(cn_f64_to_f32_odd(v));
#elif CN_HALF == 2
    *p = cn_f32_to_bf16(cn_f64_to_f32_odd(v));
#else
    *p = (T)v;
#endif
}

CN_CL_INLINE double CN_FN(cl_ldd_1)(const double* p) { return *p; }
CN_CL_INLINE void CN_FN(cl_std_1)(double* p, double v) { *p = v; }

/* ---- DW values: vector conversions --------------------------------------------------- */

#if CN_VEC
/* DW doubles at p (the per-channel sums and coefficients) */
CN_CL_INLINE DV CN_FN(cl_ldd_v)(const double* p) { DV v; memcpy(&v, p, sizeof v); return v; }
CN_CL_INLINE void CN_FN(cl_std_v)(double* p, DV v) { memcpy(p, &v, sizeof v); }

/* raw storage lanes at p[j * cs] (cs == 1: one load) */
#define CN_CL_GATHER(raw, p, cs)                                                           \
    do {                                                                                   \
        if ((cs) == 1)                                                                     \
            memcpy(&(raw), (p), sizeof(raw));                                              \
        else {                                                                             \
            ptrdiff_t j_;                                                                  \
            for (j_ = 0; j_ < DW; j_++) (raw)[j_] = (p)[j_ * (cs)];                      \
        }                                                                                  \
    } while (0)
#define CN_CL_SCATTER(p, cs, raw)                                                          \
    do {                                                                                   \
        if ((cs) == 1)                                                                     \
            memcpy((p), &(raw), sizeof(raw));                                              \
        else {                                                                             \
            ptrdiff_t j_;                                                                  \
            for (j_ = 0; j_ < DW; j_++) (p)[j_ * (cs)] = (raw)[j_];                      \
        }                                                                                  \
    } while (0)

/* float <-> double lanes: the AVX2 instructions (GCC 12 splits the generic ones in two) */
#if CN_CL_AVX2
#define CN_CL_F2D(f) ((DV)_mm256_cvtps_pd((__m128)(f)))
#define CN_CL_D2F(d) ((FV)_mm256_cvtpd_ps((__m256d)(d)))
#elif CN_CL_AVX512
#define CN_CL_F2D(f) ((DV)_mm512_cvtps_pd((__m256)(f)))
#define CN_CL_D2F(d) ((FV)_mm512_cvtpd_ps((__m512d)(d)))
#else
#define CN_CL_F2D(f) __builtin_convertvector((f), DV)
#define CN_CL_D2F(d) __builtin_convertvector((d), FV)
#endif

/* the lanes of a double mask as int32 lanes */
CN_CL_INLINE FM CN_FN(cl_narrow_mask)(DM m)
{
#if CN_CL_AVX2
    const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    const __m256i low = _mm256_permutevar8x32_epi32((__m256i)m, even);
    return (FM)_mm256_castsi256_si128(low);
#elif CN_CL_AVX512
    return (FM)_mm512_cvtepi64_epi32((__m512i)m);
#else
    return __builtin_convertvector(m, FM);
#endif
}

#if CN_HALF
/* float32 rounded to odd from each lane: the truncation of d (the nearest float, one ulp
   back where it rounded away from zero) with the last bit set where inexact. A NaN may
   get its last bit set: the half types drop that bit (cn_f32_to_f16, cn_f32_to_bf16),
   so the half bits are those of cn_f64_to_f32_odd. */
CN_CL_INLINE FV CN_FN(cl_odd)(DV d)
{
    const FV f = CN_CL_D2F(d);
    const DV back = CN_CL_F2D(f);
    const DM abs_mask = (DM){0} + INT64_MAX;
    const FM inexact = CN_FN(cl_narrow_mask)(back != d);
    const FM away = CN_FN(cl_narrow_mask)(((DM)back & abs_mask) > ((DM)d & abs_mask));
    return (FV)(((FM)f + away) | (inexact & 1));
}
#endif

CN_CL_INLINE DV CN_FN(cl_ldx_v)(const ST* p, ptrdiff_t cs)
{
#if !CN_HALF && CN_T_BYTES == 8
    DV v;
    CN_CL_GATHER(v, p, cs);
    return v;
#elif !CN_HALF
    FV f;
    CN_CL_GATHER(f, p, cs);
    return CN_CL_F2D(f);
#else
    HV h;
    CN_CL_GATHER(h, p, cs);
#if CN_HALF == 2 && CN_CL_AVX2
    {
        __m128i bits = _mm_setzero_si128();
        memcpy(&bits, &h, sizeof h);
        return (DV)_mm256_cvtps_pd(_mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(bits), 16)));
    }
#elif CN_HALF == 2 && CN_CL_AVX512
    {
        __m128i bits;
        memcpy(&bits, &h, sizeof h);
        return (DV)_mm512_cvtps_pd(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16)));
    }
#elif CN_HALF == 2
    return CN_CL_F2D((FV)(__builtin_convertvector(h, UV) << 16));
#elif CN_CL_AVX2
    {
        __m128i bits = _mm_setzero_si128();
        memcpy(&bits, &h, sizeof h);
        return (DV)_mm256_cvtps_pd(_mm_cvtph_ps(bits));
    }
#elif CN_CL_AVX512
    {
        __m128i bits;
        memcpy(&bits, &h, sizeof h);
        return (DV)_mm512_cvtps_pd(_mm256_cvtph_ps(bits));
    }
#else
    {
        FV f;
        ptrdiff_t j;
        for (j = 0; j < DW; j++) f[j] = cn_f16_to_f32(h[j]);
        return CN_CL_F2D(f);
    }
#endif
#endif
}

CN_CL_INLINE void CN_FN(cl_stx_v)(ST* p, ptrdiff_t cs, DV v)
{
#if !CN_HALF && CN_T_BYTES == 8
    CN_CL_SCATTER(p, cs, v);
#elif !CN_HALF
    FV f = CN_CL_D2F(v);
    CN_CL_SCATTER(p, cs, f);
#else
    const FV f = CN_FN(cl_odd)(v);
    HV h;
#if CN_HALF == 2
    {   /* cn_f32_to_bf16 per lane: nearest even, NaN quieted */
        const UV u = (UV)f, nan = (UV)((u & 0x7fffffffu) > 0x7f800000u);
        const UV r = (((u + 0x7fffu + ((u >> 16) & 1u)) >> 16) & ~nan)
                     | (((u >> 16) | 0x40u) & nan);
#if CN_CL_AVX2
        const __m128i packed = _mm_packus_epi32((__m128i)r, (__m128i)r);
        memcpy(&h, &packed, sizeof h);
#elif CN_CL_AVX512
        const __m128i packed = _mm256_cvtepi32_epi16((__m256i)r);
        memcpy(&h, &packed, sizeof h);
#else
        h = __builtin_convertvector(r, HV);
#endif
    }
#elif CN_CL_AVX2
    {
        const __m128i bits = _mm_cvtps_ph((__m128)f, _MM_FROUND_TO_NEAREST_INT);
        memcpy(&h, &bits, sizeof h);
    }
#elif CN_CL_AVX512
    {
        const __m128i bits = _mm256_cvtps_ph((__m256)f, _MM_FROUND_TO_NEAREST_INT);
        memcpy(&h, &bits, sizeof h);
    }
#else
    {
        ptrdiff_t j;
        for (j = 0; j < DW; j++) h[j] = cn_f32_to_f16(f[j]);
    }
#endif
    CN_CL_SCATTER(p, cs, h);
#endif
}
#else
#define cl_ldd_v cl_ldd_1
#define cl_std_v cl_std_1
#define cl_ldx_v cl_ldx_1
#define cl_stx_v cl_stx_1
#endif

/* The channel blocks of a loop: 4 vectors of channels at a time (their accumulators in
   registers over all the rows), then one vector, then the channels left one by one.
   BODY(KB, w, VT, WW): KB units of WW channels in values of type VT, the helpers of
   width w (v: vectors, 1: one value). */
#define CN_CL_BLOCKS(BODY)                                                                 \
    do {                                                                                   \
        ptrdiff_t c = 0;                                                                   \
        for (; c + 4 * DW <= n; c += 4 * DW) BODY(4, v, DV, DW)                            \
        for (; c + DW <= n; c += DW) BODY(1, v, DV, DW)                                    \
        for (; c < n; c++) BODY(1, 1, double, 1)                                           \
    } while (0)
#define LDD(w, p) CN_FN(cl_ldd_##w)(p)
#define STD(w, p, v) CN_FN(cl_std_##w)(p, v)
#define LDX(w, p, cs) CN_FN(cl_ldx_##w)(p, cs)
#define STX(w, p, cs, v) CN_FN(cl_stx_##w)(p, cs, v)
/* BODY for the array that may be channels-first: rows at os, channels at oc */
#define CN_CL_LAYOUTS(BODY)                                                                \
    do {                                                                                   \
        if (first) {                                                                       \
            const ptrdiff_t os = 1, oc = nrows;                                            \
            CN_CL_BLOCKS(BODY);                                                            \
        } else {                                                                           \
            const ptrdiff_t os = ld, oc = 1;                                               \
            CN_CL_BLOCKS(BODY);                                                            \
        }                                                                                  \
    } while (0)
/* the KB coefficients of each channel block: a[k] = arr[c + k * WW] */
#define CN_CL_COEF(VT, w, a, arr, KB, WW)                                                  \
    VT a[KB];                                                                              \
    for (k = 0; k < KB; k++) a[k] = LDD(w, (arr) + c + k * WW)

/* ---- float32 storage: statistics and backward in float32 (without CN_CL_WIDE) -------
 * The forward's two statistics passes and the backward's two passes in float32 lanes, twice the channels of a float64 vector
 * (torch's arithmetic; the wide loops' instructions were 2x torch's). Each channel is
 * still its own chain of the same float32 operations, the rows in order: the same bits
 * in every build. x - mean is formed as x - hi (hi = (float)mean: exact near the mean),
 * as x + (-hi), the same bits, x then read by the addition itself;
 * lo = mean - hi is left to the caller (channels_last.pyx), as are the checks that send a
 * sample whose float32 sums or coefficients over- or underflow to the wide loops. */
#define CN_CL_WIDE 2
#define CN_CL_STREAM 4  /* the float32 loops' y / dx by non-temporal stores, where aligned */
#include "channels_last_f32.h"  /* cl_sums_f32, cl_devs_f32, cl_affine_f32, cl_grad_sums_f32, cl_grad_f32 */

/* ---- pass 1 of the forward: s[c] += sum over the rows of x[r, c] --------------------- */

#define CN_CL_SUMS(KB, w, VT, WW)                                                          \
    {                                                                                      \
        ptrdiff_t k, r;                                                                    \
        CN_CL_COEF(VT, w, a, s, KB, WW);                                                   \
        for (r = 0; r < nrows; r++)                                                        \
            for (k = 0; k < KB; k++) a[k] += LDX(w, x + r * ld + c + k * WW, 1);          \
        for (k = 0; k < KB; k++) STD(w, s + c + k * WW, a[k]);                            \
    }

CN_HLOOP void CN_FN(cl_sums)(double* CN_RESTRICT s, const ST* CN_RESTRICT x, ptrdiff_t ld,
                             ptrdiff_t nrows, ptrdiff_t n, int wide)
{
#if CN_T_BYTES == 4    /* float32 storage; half storage too: channels_last_f32.h */
    if (!(wide & CN_CL_WIDE)) {
        CN_FN(cl_sums_f32)(s, x, ld, nrows, n);
        return;
    }
#endif
    (void)wide;
    CN_CL_BLOCKS(CN_CL_SUMS);
}

/* ---- pass 2: d = x - shift[c]; s1[c] += d, s2[c] += d * d ---------------------------- */

/* s1[c] += p, s2[c] += p * q over the rows, with m[k] = mean[c] (the shared shape of
   the forward's pass 2 and the backward's pass 1) */
#define CN_CL_TWO_SUMS(KB, w, VT, WW, S1, S2, MEAN, P, Q)                                  \
    {                                                                                      \
        ptrdiff_t k, r;                                                                    \
        CN_CL_COEF(VT, w, a1, S1, KB, WW);                                                 \
        CN_CL_COEF(VT, w, a2, S2, KB, WW);                                                 \
        CN_CL_COEF(VT, w, m, MEAN, KB, WW);                                                \
        for (r = 0; r < nrows; r++)                                                        \
            for (k = 0; k < KB; k++) {                                                     \
                const VT p = P; /* in order over r: the bits of any width */            \
                a1[k] += p;                                                                \
                a2[k] += p * (Q);                                                          \
            }                                                                              \
        for (k = 0; k < KB; k++) {                                                         \
            STD(w, S1 + c + k * WW, a1[k]);                                                \
            STD(w, S2 + c + k * WW, a2[k]);                                                \
        }                                                                                  \
    }
#define CN_CL_XDEV(w, WW) (LDX(w, x + r * ld + c + k * WW, 1) - m[k])
#define CN_CL_DEVS(KB, w, VT, WW) CN_CL_TWO_SUMS(KB, w, VT, WW, s1, s2, shift, CN_CL_XDEV(w, WW), p)

CN_HLOOP void CN_FN(cl_devs)(double* CN_RESTRICT s1, double* CN_RESTRICT s2,
                             const ST* CN_RESTRICT x, ptrdiff_t ld, ptrdiff_t nrows,
                             const double* shift, ptrdiff_t n, int wide)
{
#if CN_T_BYTES == 4    /* float32 storage; half storage too: channels_last_f32.h */
    if (!(wide & CN_CL_WIDE)) {
        CN_FN(cl_devs_f32)(s1, s2, x, ld, nrows, shift, n);
        return;
    }
#endif
    (void)wide;
    CN_CL_BLOCKS(CN_CL_DEVS);
}

/* ---- pass 3: y = (x - mean[c]) * scale[c] + beta[c]; y channels-first when first ----- */
/* (float32 storage, y channels-last, without CN_CL_WIDE: cl_affine_f32) */

#define CN_CL_AFFINE_COEFS(VT, w, KB, WW)                                                  \
    CN_CL_COEF(VT, w, m, mean, KB, WW);                                                    \
    CN_CL_COEF(VT, w, sc, scale, KB, WW); /* scale: rstd * w, beta: the bias */            \
    CN_CL_COEF(VT, w, be, beta, KB, WW)
#define CN_CL_AFFINE_AT(w, WW, r) ((LDX(w, x + (r) * ld + c + k * WW, 1) - m[k]) * sc[k] + be[k])

#define CN_CL_AFFINE(KB, w, VT, WW)                                                        \
    {                                                                                      \
        ptrdiff_t k, r;                                                                    \
        CN_CL_AFFINE_COEFS(VT, w, KB, WW);                                                 \
        for (r = 0; r < nrows; r++)                                                        \
            for (k = 0; k < KB; k++)                                                       \
                STX(w, y + r * ld + c + k * WW, 1, CN_CL_AFFINE_AT(w, WW, r));             \
    }

/* y channels-first: the block's values go to a tile of CN_CL_TILE rows per channel
   first, then each channel's run of the tile to y in one copy. Written straight to y,
   every lane would be a store of its own to a row of y (nrows apart: with a power-of-two
   nrows all in one set of the L1 cache, evicted before the next store to the line) */
#define CN_CL_TILE ((ptrdiff_t)32)
#define CN_CL_AFFINE_FIRST(KB, w, VT, WW)                                                  \
    {                                                                                      \
        ptrdiff_t k, r, r0;                                                                \
        ST tile[KB * WW][CN_CL_TILE];                                                      \
        CN_CL_AFFINE_COEFS(VT, w, KB, WW);                                                 \
        for (r0 = 0; r0 < nrows; r0 += CN_CL_TILE) {                                       \
            const ptrdiff_t nr = nrows - r0 < CN_CL_TILE ? nrows - r0 : CN_CL_TILE;        \
            for (r = 0; r < nr; r++)                                                       \
                for (k = 0; k < KB; k++)                                                   \
                    STX(w, &tile[k * WW][r], CN_CL_TILE, CN_CL_AFFINE_AT(w, WW, r0 + r));  \
            for (k = 0; k < KB * WW; k++) {                                                \
                if (nr == CN_CL_TILE)                                                      \
                    memcpy(y + (c + k) * nrows + r0, tile[k], sizeof tile[k]);             \
                else                                                                       \
                    memcpy(y + (c + k) * nrows + r0, tile[k], (size_t)nr * sizeof(ST));   \
            }                                                                              \
        }                                                                                  \
    }

CN_HLOOP void CN_FN(cl_affine)(ST* CN_RESTRICT y, const ST* CN_RESTRICT x, ptrdiff_t ld,
                               ptrdiff_t nrows, const double* mean, const double* scale,
                               const double* beta, ptrdiff_t n, int first)
{
#if CN_T_BYTES == 4    /* float32 storage; half storage too: channels_last_f32.h */
    if (!(first & CN_CL_WIDE)) {
        if (first & 1)
            CN_FN(cl_affine_first_f32)(y, x, ld, nrows, mean, scale, beta, n);
        else
            CN_FN(cl_affine_f32)(y, x, ld, nrows, mean, scale, beta, n, first & CN_CL_STREAM);
        return;
    }
#endif
    first &= 1;
    if (first)
        CN_CL_BLOCKS(CN_CL_AFFINE_FIRST);
    else
        CN_CL_BLOCKS(CN_CL_AFFINE);
}


/* ---- backward pass 1: g = dy[r, c]; s_dy[c] += g, s_dyd[c] += g * (x - mean[c]) ------ */

#define CN_CL_GRAD_SUMS(KB, w, VT, WW)                                                     \
    CN_CL_TWO_SUMS(KB, w, VT, WW, s_dy, s_dyd, mean, LDX(w, dy + r * os + (c + k * WW) * oc, oc), \
                   CN_CL_XDEV(w, WW))

CN_HLOOP void CN_FN(cl_grad_sums)(double* CN_RESTRICT s_dy, double* CN_RESTRICT s_dyd,
                                  const ST* CN_RESTRICT dy, const ST* CN_RESTRICT x,
                                  ptrdiff_t ld, ptrdiff_t nrows, const double* mean,
                                  ptrdiff_t n, int first)
{
#if !CN_HALF && CN_T_BYTES == 4
    if (!(first & CN_CL_WIDE)) {
        CN_FN(cl_grad_sums_f32)(s_dy, s_dyd, dy, x, ld, nrows, mean, n, first);
        return;
    }
#endif
    first &= 1;
    CN_CL_LAYOUTS(CN_CL_GRAD_SUMS);
}

/* ---- backward pass 2: dx = alpha[c] * dy + beta[c] * (x - mean[c]) + gamma[c] -------- */

#define CN_CL_GRAD(KB, w, VT, WW)                                                          \
    {                                                                                      \
        ptrdiff_t k, r;                                                                    \
        VT m[KB];                                                                          \
        CN_CL_COEF(VT, w, al, alpha, KB, WW);                                              \
        CN_CL_COEF(VT, w, be, beta, KB, WW);                                               \
        CN_CL_COEF(VT, w, ga, gamma, KB, WW);                                              \
        for (k = 0; k < KB; k++) m[k] = LDD(w, mean + c + k * WW); /* x's shift */         \
        for (r = 0; r < nrows; r++)                                                        \
            for (k = 0; k < KB; k++) {                                                     \
                const ptrdiff_t i = r * ld + c + k * WW;                                   \
                VT g = LDX(w, dy + r * os + (c + k * WW) * oc, oc);                        \
                STX(w, dx + i, 1, al[k] * g + be[k] * (LDX(w, x + i, 1) - m[k]) + ga[k]);  \
            }                                                                              \
    }

CN_HLOOP void CN_FN(cl_grad)(ST* CN_RESTRICT dx, const ST* CN_RESTRICT dy,
                             const ST* CN_RESTRICT x, ptrdiff_t ld, ptrdiff_t nrows,
                             const double* alpha, const double* beta, const double* gamma,
                             const double* mean, ptrdiff_t n, int first)
{
#if !CN_HALF && CN_T_BYTES == 4
    if (!(first & CN_CL_WIDE)) {
        CN_FN(cl_grad_f32)(dx, dy, x, ld, nrows, alpha, beta, gamma, mean, n, first);
        return;
    }
#endif
    first &= 1;
    CN_CL_LAYOUTS(CN_CL_GRAD);
}

#undef CN_CL_AVX2
#undef CN_CL_AVX512
#undef CN_CL_TARGET
#undef CN_CL_INLINE
#undef CN_HLOOP
#undef ST
#undef DV
#undef DM
#undef FV
#undef FM
#undef UV
#undef HV
#undef DW
#undef CN_CL_GATHER
#undef CN_CL_SCATTER
#undef CN_CL_F2D
#undef CN_CL_D2F
#undef CN_CL_BLOCKS
#undef CN_CL_LAYOUTS
#undef LDD
#undef STD
#undef LDX
#undef STX
#undef CN_CL_COEF
#undef CN_CL_SUMS
#undef CN_CL_DEVS
#undef CN_CL_TWO_SUMS
#undef CN_CL_XDEV
#undef CN_CL_AFFINE
#undef CN_CL_AFFINE_COEFS
#undef CN_CL_AFFINE_AT
#undef CN_CL_AFFINE_FIRST
#undef CN_CL_TILE
#undef CN_CL_GRAD_SUMS
#undef CN_CL_GRAD
#undef cl_ldd_v
#undef cl_std_v
#undef cl_ldx_v
#undef cl_stx_v
#undef CN_CL_WIDE
#undef CN_CL_STREAM
