/* The float32 statistics and backward of float32 storage (channels_last.pyx's narrow path): included by
 * channels_last.h, once per (dtype, build), after its helpers; float32 storage (T = float,
 * no CN_HALF) defines everything, half storage (CN_HALF: ST half bits, T = float) the
 * forward only, its lanes widened exactly in the loads and each output rounded once, to
 * nearest even, from the float32 value (torch's arithmetic for half storage). Not loops
 * of the table (simd/signatures.py): cl_sums, cl_devs, cl_affine, cl_grad_sums and
 * cl_grad call them when their flag CN_CL_WIDE is clear. */

#if CN_T_BYTES == 4
/* not CN_HLOOP: tests/test_simd_table.py reads those heads as the table's loops */
#define CN_CL_F32_LOOP CN_CL_TARGET CN_NOINLINE static
#define CN_CL_F32_ROWS ((ptrdiff_t)64) /* rows summed in float32, then added in float64 */
#if CN_VEC
typedef float CN_FN(cl_f8) __attribute__((vector_size(CN_VB)));
#define F8 CN_FN(cl_f8)
#define FW ((ptrdiff_t)(CN_VB / 4))
#if CN_HALF
typedef uint16_t CN_FN(cl_h8) __attribute__((vector_size(CN_VB / 2)));
typedef uint32_t CN_FN(cl_u8) __attribute__((vector_size(CN_VB)));
#define H8 CN_FN(cl_h8)
#define U8 CN_FN(cl_u8)
#endif
/* FW values at p[j * cs] as floats (cs == 1: one load; half storage: widened exactly) */
CN_CL_INLINE F8 CN_FN(cl_ldf_v)(const ST* p, ptrdiff_t cs)
{
    ptrdiff_t j;
#if !CN_HALF
    F8 v;
    if (cs == 1)
        memcpy(&v, p, sizeof v);
    else
        for (j = 0; j < FW; j++) v[j] = p[j * cs];
    return v;
#else
    H8 h;
    if (cs == 1)
        memcpy(&h, p, sizeof h);
    else
        for (j = 0; j < FW; j++) h[j] = p[j * cs];
#if CN_HALF == 2 && CN_CL_AVX2
    {
        __m128i bits;
        memcpy(&bits, &h, sizeof bits);
        return (F8)_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16);
    }
#elif CN_HALF == 2 && CN_CL_AVX512
    {
        __m256i bits;
        memcpy(&bits, &h, sizeof bits);
        return (F8)_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16);
    }
#elif CN_HALF == 2
    return (F8)(__builtin_convertvector(h, U8) << 16);
#elif CN_CL_AVX2
    {
        __m128i bits;
        memcpy(&bits, &h, sizeof bits);
        return (F8)_mm256_cvtph_ps(bits);
    }
#elif CN_CL_AVX512
    {
        __m256i bits;
        memcpy(&bits, &h, sizeof bits);
        return (F8)_mm512_cvtph_ps(bits);
    }
#else
    {
        F8 v;
        memset(&v, 0, sizeof v);
        for (j = 0; j < FW; j++) v[j] = cn_f16_to_f32(h[j]);
        return v;
    }
#endif
#endif
}
CN_CL_INLINE F8 CN_FN(cl_zf_v)(void)
{
    F8 v;
    memset(&v, 0, sizeof v);
    return v;
}
/* FW floats stored at p (half storage: each rounded once to nearest even, as
   cn_f32_to_f16 / cn_f32_to_bf16) */
CN_CL_INLINE void CN_FN(cl_stf_v)(ST* p, F8 v)
{
#if !CN_HALF
    memcpy(p, &v, sizeof v);
#elif CN_HALF == 2
    const U8 u = (U8)v, nan = (U8)((u & 0x7fffffffu) > 0x7f800000u);
    const U8 r = (((u + 0x7fffu + ((u >> 16) & 1u)) >> 16) & ~nan) | (((u >> 16) | 0x40u) & nan);
#if CN_CL_AVX2
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32((__m256i)r, (__m256i)r), 0x08);
    memcpy(p, &packed, sizeof(H8));
#elif CN_CL_AVX512
    const __m256i packed = _mm512_cvtepi32_epi16((__m512i)r);
    memcpy(p, &packed, sizeof(H8));
#else
    const H8 h = __builtin_convertvector(r, H8);
    memcpy(p, &h, sizeof h);
#endif
#elif CN_CL_AVX2
    const __m128i bits = _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT);
    memcpy(p, &bits, sizeof bits);
#elif CN_CL_AVX512
    const __m256i bits = _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT);
    memcpy(p, &bits, sizeof bits);
#else
    H8 h;
    ptrdiff_t j;
    for (j = 0; j < FW; j++) h[j] = cn_f32_to_f16(v[j]);
    memcpy(p, &h, sizeof h);
#endif
}
/* FW doubles as floats (the coefficients); the halves joined in registers on avx2 (joined
   in memory, GCC keeps the vector there and reloads it in every iteration) */
CN_CL_INLINE F8 CN_FN(cl_cvf_v)(const double* p)
{
    const FV a = CN_CL_D2F(CN_FN(cl_ldd_v)(p)), b = CN_CL_D2F(CN_FN(cl_ldd_v)(p + DW));
#if CN_CL_AVX2
    return (F8)_mm256_set_m128((__m128)b, (__m128)a);
#elif CN_CL_AVX512
    return (F8)_mm512_insertf32x8(_mm512_castps256_ps512((__m256)a), (__m256)b, 1);
#else
    F8 v;
    memcpy(&v, &a, sizeof a);
    memcpy((char*)&v + sizeof a, &b, sizeof b);
    return v;
#endif
}
/* s[j] += (double)v[j]: a block's float32 sums into the float64 ones */
CN_CL_INLINE void CN_FN(cl_addf_v)(double* s, F8 v)
{
    FV a, b;
#if CN_CL_AVX2
    a = (FV)_mm256_castps256_ps128((__m256)v);
    b = (FV)_mm256_extractf128_ps((__m256)v, 1);
#elif CN_CL_AVX512
    a = (FV)_mm512_castps512_ps256((__m512)v);
    b = (FV)_mm512_extractf32x8_ps((__m512)v, 1);
#else
    memcpy(&a, &v, sizeof a);
    memcpy(&b, (const char*)&v + sizeof a, sizeof b);
#endif
    CN_FN(cl_std_v)(s, CN_FN(cl_ldd_v)(s) + CN_CL_F2D(a));
    CN_FN(cl_std_v)(s + DW, CN_FN(cl_ldd_v)(s + DW) + CN_CL_F2D(b));
}
#else
#define F8 float
#define FW ((ptrdiff_t)1)
#define cl_ldf_v cl_ldf_1
#define cl_stf_v cl_stf_1
#define cl_cvf_v cl_cvf_1
#define cl_addf_v cl_addf_1
#define cl_zf_v cl_zf_1
#endif
CN_CL_INLINE float CN_FN(cl_zf_1)(void) { return 0.0f; }
CN_CL_INLINE float CN_FN(cl_ldf_1)(const ST* p, ptrdiff_t cs)
{
    (void)cs;
#if CN_HALF == 1
    return cn_f16_to_f32(*p);
#elif CN_HALF == 2
    return cn_bf16_to_f32(*p);
#else
    return *p;
#endif
}
CN_CL_INLINE void CN_FN(cl_stf_1)(ST* p, float v)
{
#if CN_HALF == 1
    *p = cn_f32_to_f16(v);
#elif CN_HALF == 2
    *p = cn_f32_to_bf16(v);
#else
    *p = v;
#endif
}
CN_CL_INLINE float CN_FN(cl_cvf_1)(const double* p) { return (float)*p; }
CN_CL_INLINE void CN_FN(cl_addf_1)(double* s, float v) { *s += (double)v; }
#define LDF(w, p, cs) CN_FN(cl_ldf_##w)(p, cs)
#define CVF(w, p) CN_FN(cl_cvf_##w)(p)
/* KB vectors of channels at a time: as many as their coefficients leave registers for */
#define CN_CL_F32_BLOCKS(BODY, KB)                                                         \
    do {                                                                                   \
        ptrdiff_t c = 0;                                                                   \
        for (; c + KB * FW <= n; c += KB * FW) BODY(KB, v, F8, FW)                         \
        for (; c + FW <= n; c += FW) BODY(1, v, F8, FW)                                    \
        for (; c < n; c++) BODY(1, 1, float, 1)                                            \
    } while (0)
/* STMT with dy's strides: os between rows, oc between channels (first & 1: channels-first) */
#define CN_CL_F32_DY_LAYOUTS(STMT)                                                         \
    do {                                                                                   \
        if (first & 1) {                                                                   \
            const ptrdiff_t os = 1, oc = nrows;                                            \
            STMT;                                                                          \
        } else {                                                                           \
            const ptrdiff_t os = ld, oc = 1;                                               \
            STMT;                                                                          \
        }                                                                                  \
    } while (0)
#define CN_CL_F32_DY(w, WW, r, k) LDF(w, dy + (r) * os + (c + (k) * WW) * oc, oc)

#if CN_VEC
/* FW floats of a float32 array (the partial sums, the coefficients of a tile) */
CN_CL_INLINE F8 CN_FN(cl_ldp_v)(const float* p)
{
    F8 v;
    memcpy(&v, p, sizeof v);
    return v;
}
CN_CL_INLINE void CN_FN(cl_stp_v)(float* p, F8 v) { memcpy(p, &v, sizeof v); }
#else
#define cl_ldp_v cl_ldp_1
#define cl_stp_v cl_stp_1
#endif
/* non-temporal stores of whole vectors (float32 storage, y or dx aligned to CN_VB: the
   loops check), plain ones for the channels past the last whole vector */
#if CN_VEC && CN_STREAMS && !CN_HALF && CN_VB >= 32
#define CN_CL_F32_NT 1
/* vectors per channel block of the streamed loops: whole cache lines (192 or 64 bytes), so
   each line's write-combining buffer fills at once (a block of 1.5 lines left half lines
   for 16 rows: avx2 ran 1.5x slower than with plain stores) */
#define CN_CL_F32_NT_KB (CN_VB == 64 ? 3 : 64 / CN_VB)
CN_CL_INLINE void CN_FN(cl_stnt_v)(ST* p, F8 v) { CN_STORE_NT(p, v); }
#else
#define CN_CL_F32_NT 0
#define CN_CL_F32_NT_KB 1
#define cl_stnt_v cl_stf_v
#endif
#define cl_stnt_1 cl_stf_1
CN_CL_INLINE float CN_FN(cl_ldp_1)(const float* p) { return *p; }
CN_CL_INLINE void CN_FN(cl_stp_1)(float* p, float v) { *p = v; }
#define LDP(w, p) CN_FN(cl_ldp_##w)(p)
#define STP(w, p, v) CN_FN(cl_stp_##w)(p, v)

/* The passes walk the rows in tiles of CN_CL_F32_TR rows by CN_CL_F32_TC channels, the
   channel blocks of a tile in turn, so the input is read in address order (a 16 KiB window
   at a time), not in one sweep of stride ld per channel block: those sweeps over a whole
   sample read each row's lines out of order, four to six times over (GroupNorm(32, 256)
   channels_last (32, 256, 28, 28): pass 1 ran at a third of the copy bandwidth). A
   reduction carries each channel's float32 sum of its CN_CL_F32_ROWS-row block in a
   partial array between tiles: the same chain of additions per channel as one sweep, the
   same bits. TILE: once per tile's channels [cb, ce) (coefficients as floats), ZERO and
   FLUSH: before and after each row block. */
#define CN_CL_F32_TR ((ptrdiff_t)16)
#define CN_CL_F32_TC ((ptrdiff_t)256)
#define CN_CL_F32_TILES(BODY, KB, ST_, TILE, ZERO, FLUSH)                                     \
    do {                                                                                   \
        ptrdiff_t cb, r0, t0, c;                                                           \
        for (cb = 0; cb < n; cb += CN_CL_F32_TC) {                                         \
            const ptrdiff_t ce = n - cb < CN_CL_F32_TC ? n : cb + CN_CL_F32_TC;            \
            TILE;                                                                          \
            for (r0 = 0; r0 < nrows; r0 += CN_CL_F32_ROWS) {                               \
                const ptrdiff_t r1 = nrows - r0 < CN_CL_F32_ROWS ? nrows : r0 + CN_CL_F32_ROWS; \
                ZERO;                                                                      \
                for (t0 = r0; t0 < r1; t0 += CN_CL_F32_TR) {                               \
                    const ptrdiff_t t1 = r1 - t0 < CN_CL_F32_TR ? r1 : t0 + CN_CL_F32_TR;  \
                    for (c = cb; c + KB * FW <= ce; c += KB * FW) BODY(KB, v, F8, FW, ST_) \
                    for (; c + FW <= ce; c += FW) BODY(1, v, F8, FW, ST_)                  \
                    for (; c < ce; c++) BODY(1, 1, float, 1, ST_)                          \
                }                                                                          \
                FLUSH;                                                                     \
            }                                                                              \
        }                                                                                  \
    } while (0)
/* the partial sums p of the tile's channels: zeroed, added to the float64 sums s */
#define CN_CL_F32_ZERO(p) memset((p), 0, (size_t)(ce - cb) * sizeof(float))
#define CN_CL_F32_FLUSH(s, p)                                                              \
    do {                                                                                   \
        ptrdiff_t j = cb;                                                                  \
        for (; j + FW <= ce; j += FW) CN_FN(cl_addf_v)((s) + j, LDP(v, (p) + j - cb));     \
        for (; j < ce; j++) CN_FN(cl_addf_1)((s) + j, (p)[j - cb]);                        \
    } while (0)
/* the floats of the tile's coefficients: f[c - cb] = (float)(sign * d[c]) */
#define CN_CL_F32_COEFS(f, d, sign)                                                        \
    do {                                                                                   \
        ptrdiff_t j;                                                                       \
        for (j = cb; j < ce; j++) (f)[j - cb] = sign((float)(d)[j]);                       \
    } while (0)
#define CN_CL_F32_NOTHING ((void)0)

/* ---- the forward's statistics (cl_sums, cl_devs without CN_CL_WIDE): float32 sums of
   CN_CL_F32_ROWS rows per channel, each block's sums then added to the float64 ones */

/* pass 1: s[c] += sum of x[r, c] */
#define CN_CL_F32_XSUMS(KB, w, VT, WW, S)                                                    \
    {                                                                                      \
        ptrdiff_t k, r;                                                                    \
        VT a[KB];                                                                          \
        for (k = 0; k < KB; k++) a[k] = LDP(w, p1 + c - cb + k * WW);                      \
        for (r = t0; r < t1; r++)                                                          \
            for (k = 0; k < KB; k++) a[k] += LDF(w, x + r * ld + c + k * WW, 1);           \
        for (k = 0; k < KB; k++) STP(w, p1 + c - cb + k * WW, a[k]);                       \
    }

CN_CL_F32_LOOP void CN_FN(cl_sums_f32)(double* CN_RESTRICT s, const ST* CN_RESTRICT x,
                                       ptrdiff_t ld, ptrdiff_t nrows, ptrdiff_t n)
{
    float p1[CN_CL_F32_TC];
    CN_CL_F32_TILES(CN_CL_F32_XSUMS, 4, cl_stf, CN_CL_F32_NOTHING, CN_CL_F32_ZERO(p1),
                    CN_CL_F32_FLUSH(s, p1));
}

/* the shared body of pass 2 and of the backward's sums: p1[c] += P, p2[c] += P * Q over the
   tile's rows, P and Q the expressions of row r, vector k (nh[k] = -hi of the channels) */
#define CN_CL_F32_PAIR_SUMS(KB, w, VT, WW, P, Q)                                           \
    {                                                                                      \
        ptrdiff_t k, r;                                                                    \
        VT nh[KB], a1[KB], a2[KB];                                                         \
        for (k = 0; k < KB; k++) {                                                         \
            nh[k] = LDP(w, fnh + c - cb + k * WW);                                         \
            a1[k] = LDP(w, p1 + c - cb + k * WW);                                          \
            a2[k] = LDP(w, p2 + c - cb + k * WW);                                          \
        }                                                                                  \
        for (r = t0; r < t1; r++)                                                          \
            for (k = 0; k < KB; k++) {                                                     \
                const VT p_ = (P);                                                         \
                a1[k] += p_;                                                               \
                a2[k] += p_ * (Q);                                                         \
            }                                                                              \
        for (k = 0; k < KB; k++) {                                                         \
            STP(w, p1 + c - cb + k * WW, a1[k]);                                           \
            STP(w, p2 + c - cb + k * WW, a2[k]);                                           \
        }                                                                                  \
    }
#define CN_CL_F32_XDEV(w, WW) (LDF(w, x + r * ld + c + k * WW, 1) + nh[k])

/* pass 2: d = x - hi[c] (hi = (float)shift[c], x + (-hi)); s1[c] += d, s2[c] += d * d */
#define CN_CL_F32_DEVS(KB, w, VT, WW, S) CN_CL_F32_PAIR_SUMS(KB, w, VT, WW, CN_CL_F32_XDEV(w, WW), p_)

CN_CL_F32_LOOP void CN_FN(cl_devs_f32)(double* CN_RESTRICT s1, double* CN_RESTRICT s2,
                                       const ST* CN_RESTRICT x, ptrdiff_t ld,
                                       ptrdiff_t nrows, const double* shift, ptrdiff_t n)
{
    float p1[CN_CL_F32_TC], p2[CN_CL_F32_TC], fnh[CN_CL_F32_TC];
    CN_CL_F32_TILES(CN_CL_F32_DEVS, 4, cl_stf, CN_CL_F32_COEFS(fnh, shift, -),
                    CN_CL_F32_ZERO(p1); CN_CL_F32_ZERO(p2),
                    CN_CL_F32_FLUSH(s1, p1); CN_CL_F32_FLUSH(s2, p2));
}

/* pass 3 (cl_affine, y channels-last): y = (x - hi[c]) * scale[c] + beta[c], every factor
   as a float (the caller folds lo = mean - hi into beta); KB (1 to 3) vectors, their
   coefficients named, as in cl_grad_f32 */
#define CN_CL_F32_YST(w, S, dst, xp, nh, sc, be)                                           \
    CN_FN(S##_##w)(dst, (LDF(w, xp, 1) + (nh)) * (sc) + (be))
#define CN_CL_F32_YAT(w, dst, xp, nh, sc, be) CN_CL_F32_YST(w, cl_stf, dst, xp, nh, sc, be)
#define CN_CL_F32_Y(w, S, i, nh, sc, be) CN_CL_F32_YST(w, S, y + (i), x + (i), nh, sc, be)
/* the coefficients of KB (1 to 3) vectors of channels from c: nh = -hi, sc, be (F: the
   float of a coefficient from its name and offset) */
#define CN_CL_F32_AFFINE_COEFS(KB, w, VT, WW, F)                                           \
        const VT nh0 = F(w, nh, 0), sc0 = F(w, sc, 0), be0 = F(w, be, 0);                  \
        const VT nh1 = KB > 1 ? F(w, nh, WW) : nh0;                                        \
        const VT sc1 = KB > 1 ? F(w, sc, WW) : sc0;                                        \
        const VT be1 = KB > 1 ? F(w, be, WW) : be0;                                        \
        const VT nh2 = KB > 2 ? F(w, nh, 2 * WW) : nh0;                                    \
        const VT sc2 = KB > 2 ? F(w, sc, 2 * WW) : sc0;                                    \
        const VT be2 = KB > 2 ? F(w, be, 2 * WW) : be0
/* a coefficient from the tile's floats (f##name), or converted from the doubles */
#define CN_CL_F32_TILED(w, name, o) LDP(w, f##name + c - cb + (o))
#define CN_CL_F32_CVF_nh(w, o) (-CVF(w, mean + c + (o)))
#define CN_CL_F32_CVF_sc(w, o) CVF(w, scale + c + (o))
#define CN_CL_F32_CVF_be(w, o) CVF(w, beta + c + (o))
#define CN_CL_F32_CONVERTED(w, name, o) CN_CL_F32_CVF_##name(w, o)
#define CN_CL_F32_AFFINE(KB, w, VT, WW, STORE)                                             \
    {                                                                                      \
        ptrdiff_t r;                                                                       \
        CN_CL_F32_AFFINE_COEFS(KB, w, VT, WW, CN_CL_F32_TILED);                            \
        for (r = t0; r < t1; r++) {                                                        \
            const ptrdiff_t i = r * ld + c;                                                \
            CN_CL_F32_Y(w, STORE, i, nh0, sc0, be0);                                       \
            if (KB > 1) CN_CL_F32_Y(w, STORE, i + WW, nh1, sc1, be1);                      \
            if (KB > 2) CN_CL_F32_Y(w, STORE, i + 2 * WW, nh2, sc2, be2);                  \
        }                                                                                  \
    }

/* stream: non-temporal stores when y and its rows are aligned to cache lines */
#if CN_CL_F32_NT
#define CN_CL_F32_CAN_STREAM(p)                                                            \
    (stream && (uintptr_t)(p) % 64 == 0 && ((size_t)ld * sizeof(ST)) % 64 == 0)
#else
#define CN_CL_F32_CAN_STREAM(p) ((void)stream, 0)
#endif

CN_CL_F32_LOOP void CN_FN(cl_affine_f32)(ST* CN_RESTRICT y, const ST* CN_RESTRICT x,
                                         ptrdiff_t ld, ptrdiff_t nrows, const double* mean,
                                         const double* scale, const double* beta, ptrdiff_t n,
                                         int stream)
{
    float fnh[CN_CL_F32_TC], fsc[CN_CL_F32_TC], fbe[CN_CL_F32_TC];
#define CN_CL_F32_AFFINE_TILES(KB, STORE)                                                  \
    CN_CL_F32_TILES(CN_CL_F32_AFFINE, KB, STORE,                                           \
                    CN_CL_F32_COEFS(fnh, mean, -); CN_CL_F32_COEFS(fsc, scale, );          \
                    CN_CL_F32_COEFS(fbe, beta, ),                                          \
                    CN_CL_F32_NOTHING, CN_CL_F32_NOTHING)
    if (CN_CL_F32_CAN_STREAM(y))
        CN_CL_F32_AFFINE_TILES(CN_CL_F32_NT_KB, cl_stnt);
    else
        CN_CL_F32_AFFINE_TILES(3, cl_stf);
#undef CN_CL_F32_AFFINE_TILES
}

/* the same, y channels-first (element (r, c) at y[c * nrows + r]): CN_CL_F32_TILE rows of
   the block's outputs stored as rows of a tile (whole vectors, half storage rounded in
   the stores), then each channel's column of the tile copied to its run of y */
#define CN_CL_F32_TILE ((ptrdiff_t)32)
#define CN_CL_F32_AFFINE_FIRST(KB, w, VT, WW)                                              \
    {                                                                                      \
        ptrdiff_t r, r0, j;                                                                \
        ST tile[CN_CL_F32_TILE][KB * WW];                                                  \
        CN_CL_F32_AFFINE_COEFS(KB, w, VT, WW, CN_CL_F32_CONVERTED);                        \
        for (r0 = 0; r0 < nrows; r0 += CN_CL_F32_TILE) {                                   \
            const ptrdiff_t nr = nrows - r0 < CN_CL_F32_TILE ? nrows - r0 : CN_CL_F32_TILE; \
            for (r = 0; r < nr; r++) {                                                     \
                const ST* xr = x + (r0 + r) * ld + c;                                      \
                CN_CL_F32_YAT(w, &tile[r][0], xr, nh0, sc0, be0);                          \
                if (KB > 1) CN_CL_F32_YAT(w, &tile[r][WW], xr + WW, nh1, sc1, be1);        \
                if (KB > 2) CN_CL_F32_YAT(w, &tile[r][2 * WW], xr + 2 * WW, nh2, sc2, be2); \
            }                                                                              \
            for (j = 0; j < KB * WW; j++)                                                  \
                for (r = 0; r < nr; r++) y[(c + j) * nrows + r0 + r] = tile[r][j];         \
        }                                                                                  \
    }

CN_CL_F32_LOOP void CN_FN(cl_affine_first_f32)(ST* CN_RESTRICT y, const ST* CN_RESTRICT x,
                                               ptrdiff_t ld, ptrdiff_t nrows,
                                               const double* mean, const double* scale,
                                               const double* beta, ptrdiff_t n)
{
    CN_CL_F32_BLOCKS(CN_CL_F32_AFFINE_FIRST, 3);
}

#if !CN_HALF   /* the backward: float32 storage only */
/* s_dy[c] += sum of dy, s_dyd[c] += sum of dy * (x - hi[c]), blocks of CN_CL_F32_ROWS */
#define CN_CL_F32_SUMS(KB, w, VT, WW, S)                                                   \
    CN_CL_F32_PAIR_SUMS(KB, w, VT, WW, CN_CL_F32_DY(w, WW, r, k), CN_CL_F32_XDEV(w, WW))

CN_CL_F32_LOOP void CN_FN(cl_grad_sums_f32)(double* CN_RESTRICT s_dy, double* CN_RESTRICT s_dyd,
                                      const float* CN_RESTRICT dy, const float* CN_RESTRICT x,
                                      ptrdiff_t ld, ptrdiff_t nrows, const double* mean,
                                      ptrdiff_t n, int first)
{
    float p1[CN_CL_F32_TC], p2[CN_CL_F32_TC], fnh[CN_CL_F32_TC];
#define CN_CL_F32_SUMS_TILES                                                               \
    CN_CL_F32_TILES(CN_CL_F32_SUMS, 4, cl_stf, CN_CL_F32_COEFS(fnh, mean, -),              \
                    CN_CL_F32_ZERO(p1); CN_CL_F32_ZERO(p2),                                \
                    CN_CL_F32_FLUSH(s_dy, p1); CN_CL_F32_FLUSH(s_dyd, p2))
    CN_CL_F32_DY_LAYOUTS(CN_CL_F32_SUMS_TILES);
#undef CN_CL_F32_SUMS_TILES
}

/* dx = (alpha[c] * dy + beta[c] * (x - hi[c])) + gamma[c], every factor as a float; KB
   (1 to 3) vectors, their coefficients named (in arrays GCC keeps them on the stack) */
#define CN_CL_F32_DX(w, S, i, g, al, be, ga, nh)                                           \
    CN_FN(S##_##w)(dx + (i), ((al) * (g) + (be) * (LDF(w, x + (i), 1) + (nh))) + (ga))
#define CN_CL_F32_GRAD(KB, w, VT, WW, STORE)                                               \
    {                                                                                      \
        ptrdiff_t r;                                                                       \
        const VT al0 = LDP(w, fal + c - cb), be0 = LDP(w, fbe + c - cb);                   \
        const VT ga0 = LDP(w, fga + c - cb), nh0 = LDP(w, fnh + c - cb);                   \
        const VT al1 = KB > 1 ? LDP(w, fal + c - cb + WW) : al0;                           \
        const VT be1 = KB > 1 ? LDP(w, fbe + c - cb + WW) : be0;                           \
        const VT ga1 = KB > 1 ? LDP(w, fga + c - cb + WW) : ga0;                           \
        const VT nh1 = KB > 1 ? LDP(w, fnh + c - cb + WW) : nh0;                           \
        const VT al2 = KB > 2 ? LDP(w, fal + c - cb + 2 * WW) : al0;                       \
        const VT be2 = KB > 2 ? LDP(w, fbe + c - cb + 2 * WW) : be0;                       \
        const VT ga2 = KB > 2 ? LDP(w, fga + c - cb + 2 * WW) : ga0;                       \
        const VT nh2 = KB > 2 ? LDP(w, fnh + c - cb + 2 * WW) : nh0;                       \
        for (r = t0; r < t1; r++) {                                                        \
            const ptrdiff_t i = r * ld + c;                                                \
            const VT g0 = CN_CL_F32_DY(w, WW, r, 0);                                       \
            CN_CL_F32_DX(w, STORE, i, g0, al0, be0, ga0, nh0);                            \
            if (KB > 1) {                                                                  \
                const VT g1 = CN_CL_F32_DY(w, WW, r, 1);                                   \
                CN_CL_F32_DX(w, STORE, i + WW, g1, al1, be1, ga1, nh1);                   \
            }                                                                              \
            if (KB > 2) {                                                                  \
                const VT g2 = CN_CL_F32_DY(w, WW, r, 2);                                   \
                CN_CL_F32_DX(w, STORE, i + 2 * WW, g2, al2, be2, ga2, nh2);               \
            }                                                                              \
        }                                                                                  \
    }

CN_CL_F32_LOOP void CN_FN(cl_grad_f32)(float* CN_RESTRICT dx, const float* CN_RESTRICT dy,
                                 const float* CN_RESTRICT x, ptrdiff_t ld, ptrdiff_t nrows,
                                 const double* alpha, const double* beta, const double* gamma,
                                 const double* mean, ptrdiff_t n, int first)
{
    float fal[CN_CL_F32_TC], fbe[CN_CL_F32_TC], fga[CN_CL_F32_TC], fnh[CN_CL_F32_TC];
    const int stream = first & CN_CL_STREAM, nt = CN_CL_F32_CAN_STREAM(dx);
#define CN_CL_F32_GRAD_TILES                                                               \
    if (nt)                                                                                \
        CN_CL_F32_GRAD_TILES_OF(CN_CL_F32_NT_KB, cl_stnt);                                 \
    else                                                                                   \
        CN_CL_F32_GRAD_TILES_OF(3, cl_stf)
#define CN_CL_F32_GRAD_TILES_OF(KB, STORE)                                                 \
    CN_CL_F32_TILES(CN_CL_F32_GRAD, KB, STORE,                                             \
                    CN_CL_F32_COEFS(fal, alpha, ); CN_CL_F32_COEFS(fbe, beta, );           \
                    CN_CL_F32_COEFS(fga, gamma, ); CN_CL_F32_COEFS(fnh, mean, -),          \
                    CN_CL_F32_NOTHING, CN_CL_F32_NOTHING)
    CN_CL_F32_DY_LAYOUTS(CN_CL_F32_GRAD_TILES);
#undef CN_CL_F32_GRAD_TILES
#undef CN_CL_F32_GRAD_TILES_OF
}
#endif

#undef CN_CL_F32_LOOP
#undef CN_CL_F32_ROWS
#undef F8
#undef FW
#undef H8
#undef U8
#undef cl_ldf_v
#undef cl_stf_v
#undef cl_cvf_v
#undef cl_addf_v
#undef cl_zf_v
#undef LDF
#undef CVF
#undef CN_CL_F32_BLOCKS
#undef LDP
#undef STP
#undef cl_ldp_v
#undef cl_stp_v
#undef CN_CL_F32_TR
#undef CN_CL_F32_TC
#undef CN_CL_F32_TILES
#undef CN_CL_F32_ZERO
#undef CN_CL_F32_FLUSH
#undef CN_CL_F32_COEFS
#undef CN_CL_F32_NOTHING
#undef CN_CL_F32_TILED
#undef CN_CL_F32_CVF_nh
#undef CN_CL_F32_CVF_sc
#undef CN_CL_F32_CVF_be
#undef CN_CL_F32_CONVERTED
#undef CN_CL_F32_NT
#undef CN_CL_F32_NT_KB
#undef cl_stnt_v
#undef cl_stnt_1
#undef CN_CL_F32_CAN_STREAM
#undef CN_CL_F32_YST
#undef CN_CL_F32_DY
#undef CN_CL_F32_DY_LAYOUTS
#undef CN_CL_F32_SUMS
#undef CN_CL_F32_XSUMS
#undef CN_CL_F32_DEVS
#undef CN_CL_F32_PAIR_SUMS
#undef CN_CL_F32_XDEV
#undef CN_CL_F32_Y
#undef CN_CL_F32_YAT
#undef CN_CL_F32_AFFINE_COEFS
#undef CN_CL_F32_AFFINE
#undef CN_CL_F32_AFFINE_FIRST
#undef CN_CL_F32_TILE
#undef CN_CL_F32_GRAD
#undef CN_CL_F32_DX
#endif
