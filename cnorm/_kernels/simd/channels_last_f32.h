/* The float32 statistics and backward of float32 storage (channels_last.pyx's narrow path): included by
 * channels_last.h, once per (dtype, build), after its helpers; only float32 storage
 * (T = float, no CN_HALF) defines anything. Not loops of the table (simd/signatures.py):
 * cl_sums, cl_devs, cl_affine, cl_grad_sums and cl_grad call them when their flag CN_CL_WIDE is
 * clear. The forward here too (cl_sums_f32, cl_devs_f32, cl_affine_f32). */

#if !CN_HALF && CN_T_BYTES == 4
/* not CN_HLOOP: tests/test_simd_table.py reads those heads as the table's loops */
#define CN_CL_F32_LOOP CN_CL_TARGET CN_NOINLINE static
#define CN_CL_F32_ROWS ((ptrdiff_t)64) /* rows summed in float32, then added in float64 */
#if CN_VEC
typedef float CN_FN(cl_f8) __attribute__((vector_size(CN_VB)));
#define F8 CN_FN(cl_f8)
#define FW ((ptrdiff_t)(CN_VB / 4))
/* FW floats at p[j * cs] (cs == 1: one load) */
CN_CL_INLINE F8 CN_FN(cl_ldf_v)(const float* p, ptrdiff_t cs)
{
    F8 v;
    ptrdiff_t j;
    if (cs == 1)
        memcpy(&v, p, sizeof v);
    else
        for (j = 0; j < FW; j++) v[j] = p[j * cs];
    return v;
}
CN_CL_INLINE F8 CN_FN(cl_zf_v)(void)
{
    F8 v;
    memset(&v, 0, sizeof v);
    return v;
}
CN_CL_INLINE void CN_FN(cl_stf_v)(float* p, F8 v) { memcpy(p, &v, sizeof v); }
/* FW doubles as floats (the coefficients); the halves joined in registers on avx2 (joined
   in memory, GCC keeps the vector there and reloads it in every iteration) */
CN_CL_INLINE F8 CN_FN(cl_cvf_v)(const double* p)
{
    const FV a = CN_CL_D2F(CN_FN(cl_ldd_v)(p)), b = CN_CL_D2F(CN_FN(cl_ldd_v)(p + DW));
#if CN_CL_AVX2
    return (F8)_mm256_set_m128((__m128)b, (__m128)a);
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
CN_CL_INLINE float CN_FN(cl_ldf_1)(const float* p, ptrdiff_t cs) { (void)cs; return *p; }
CN_CL_INLINE void CN_FN(cl_stf_1)(float* p, float v) { *p = v; }
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
#define CN_CL_F32_LAYOUTS(BODY, KB)                                                        \
    do {                                                                                   \
        if (first & 1) {                                                                   \
            const ptrdiff_t os = 1, oc = nrows;                                            \
            CN_CL_F32_BLOCKS(BODY, KB);                                                    \
        } else {                                                                           \
            const ptrdiff_t os = ld, oc = 1;                                               \
            CN_CL_F32_BLOCKS(BODY, KB);                                                    \
        }                                                                                  \
    } while (0)
#define CN_CL_F32_DY(w, WW, r, k) LDF(w, dy + (r) * os + (c + (k) * WW) * oc, oc)

/* ---- the forward's statistics (cl_sums, cl_devs without CN_CL_WIDE): float32 sums of
   CN_CL_F32_ROWS rows per channel, each block's sums then added to the float64 ones */

/* pass 1: s[c] += sum of x[r, c] */
#define CN_CL_F32_XSUMS(KB, w, VT, WW)                                                     \
    {                                                                                      \
        ptrdiff_t k, r, r0;                                                                \
        VT a[KB];                                                                          \
        for (r0 = 0; r0 < nrows; r0 += CN_CL_F32_ROWS) {                                   \
            const ptrdiff_t r1 = nrows - r0 < CN_CL_F32_ROWS ? nrows : r0 + CN_CL_F32_ROWS; \
            for (k = 0; k < KB; k++) a[k] = CN_FN(cl_zf_##w)();                            \
            for (r = r0; r < r1; r++)                                                      \
                for (k = 0; k < KB; k++) a[k] += LDF(w, x + r * ld + c + k * WW, 1);       \
            for (k = 0; k < KB; k++) CN_FN(cl_addf_##w)(s + c + k * WW, a[k]);             \
        }                                                                                  \
    }

CN_CL_F32_LOOP void CN_FN(cl_sums_f32)(double* CN_RESTRICT s, const float* CN_RESTRICT x,
                                       ptrdiff_t ld, ptrdiff_t nrows, ptrdiff_t n)
{
    CN_CL_F32_BLOCKS(CN_CL_F32_XSUMS, 4);
}

/* pass 2: d = x - hi[c] (hi = (float)shift[c], x + (-hi)); s1[c] += d, s2[c] += d * d */
#define CN_CL_F32_DEVS(KB, w, VT, WW)                                                      \
    {                                                                                      \
        ptrdiff_t k, r, r0;                                                                \
        VT nh[KB], a1[KB], a2[KB];                                                         \
        for (k = 0; k < KB; k++) nh[k] = -CVF(w, shift + c + k * WW);                      \
        for (r0 = 0; r0 < nrows; r0 += CN_CL_F32_ROWS) {                                   \
            const ptrdiff_t r1 = nrows - r0 < CN_CL_F32_ROWS ? nrows : r0 + CN_CL_F32_ROWS; \
            for (k = 0; k < KB; k++) a1[k] = a2[k] = CN_FN(cl_zf_##w)();                   \
            for (r = r0; r < r1; r++)                                                      \
                for (k = 0; k < KB; k++) {                                                 \
                    const VT d = LDF(w, x + r * ld + c + k * WW, 1) + nh[k];               \
                    a1[k] += d;                                                            \
                    a2[k] += d * d;                                                        \
                }                                                                          \
            for (k = 0; k < KB; k++) {                                                     \
                CN_FN(cl_addf_##w)(s1 + c + k * WW, a1[k]);                                \
                CN_FN(cl_addf_##w)(s2 + c + k * WW, a2[k]);                                \
            }                                                                              \
        }                                                                                  \
    }

CN_CL_F32_LOOP void CN_FN(cl_devs_f32)(double* CN_RESTRICT s1, double* CN_RESTRICT s2,
                                       const float* CN_RESTRICT x, ptrdiff_t ld,
                                       ptrdiff_t nrows, const double* shift, ptrdiff_t n)
{
    CN_CL_F32_BLOCKS(CN_CL_F32_DEVS, 4);
}

/* pass 3 (cl_affine, y channels-last): y = (x - hi[c]) * scale[c] + beta[c], every factor
   as a float (the caller folds lo = mean - hi into beta); KB (1 to 3) vectors, their
   coefficients named, as in cl_grad_f32 */
#define CN_CL_F32_Y(w, i, nh, sc, be)                                                      \
    CN_FN(cl_stf_##w)(y + (i), (LDF(w, x + (i), 1) + (nh)) * (sc) + (be))
#define CN_CL_F32_AFFINE(KB, w, VT, WW)                                                    \
    {                                                                                      \
        ptrdiff_t r;                                                                       \
        const VT nh0 = -CVF(w, mean + c), sc0 = CVF(w, scale + c), be0 = CVF(w, beta + c); \
        const VT nh1 = KB > 1 ? -CVF(w, mean + c + WW) : nh0;                              \
        const VT sc1 = KB > 1 ? CVF(w, scale + c + WW) : sc0;                              \
        const VT be1 = KB > 1 ? CVF(w, beta + c + WW) : be0;                               \
        const VT nh2 = KB > 2 ? -CVF(w, mean + c + 2 * WW) : nh0;                          \
        const VT sc2 = KB > 2 ? CVF(w, scale + c + 2 * WW) : sc0;                          \
        const VT be2 = KB > 2 ? CVF(w, beta + c + 2 * WW) : be0;                           \
        for (r = 0; r < nrows; r++) {                                                      \
            const ptrdiff_t i = r * ld + c;                                                \
            CN_CL_F32_Y(w, i, nh0, sc0, be0);                                              \
            if (KB > 1) CN_CL_F32_Y(w, i + WW, nh1, sc1, be1);                             \
            if (KB > 2) CN_CL_F32_Y(w, i + 2 * WW, nh2, sc2, be2);                         \
        }                                                                                  \
    }

CN_CL_F32_LOOP void CN_FN(cl_affine_f32)(float* CN_RESTRICT y, const float* CN_RESTRICT x,
                                         ptrdiff_t ld, ptrdiff_t nrows, const double* mean,
                                         const double* scale, const double* beta, ptrdiff_t n)
{
    CN_CL_F32_BLOCKS(CN_CL_F32_AFFINE, 3);
}

/* s_dy[c] += sum of dy, s_dyd[c] += sum of dy * (x - hi[c]), blocks of CN_CL_F32_ROWS */
#define CN_CL_F32_SUMS(KB, w, VT, WW)                                                      \
    {                                                                                      \
        ptrdiff_t k, r, r0;                                                                \
        VT nh[KB], a1[KB], a2[KB];                                                         \
        for (k = 0; k < KB; k++) nh[k] = -CVF(w, mean + c + k * WW);                       \
        for (r0 = 0; r0 < nrows; r0 += CN_CL_F32_ROWS) {                                   \
            const ptrdiff_t r1 = nrows - r0 < CN_CL_F32_ROWS ? nrows : r0 + CN_CL_F32_ROWS; \
            for (k = 0; k < KB; k++) a1[k] = a2[k] = CN_FN(cl_zf_##w)();                          \
            for (r = r0; r < r1; r++)                                                      \
                for (k = 0; k < KB; k++) {                                                 \
                    const VT g = CN_CL_F32_DY(w, WW, r, k);                                   \
                    a1[k] += g;                                                            \
                    a2[k] += g * (LDF(w, x + r * ld + c + k * WW, 1) + nh[k]);             \
                }                                                                          \
            for (k = 0; k < KB; k++) {                                                     \
                CN_FN(cl_addf_##w)(s_dy + c + k * WW, a1[k]);                              \
                CN_FN(cl_addf_##w)(s_dyd + c + k * WW, a2[k]);                             \
            }                                                                              \
        }                                                                                  \
    }

CN_CL_F32_LOOP void CN_FN(cl_grad_sums_f32)(double* CN_RESTRICT s_dy, double* CN_RESTRICT s_dyd,
                                      const float* CN_RESTRICT dy, const float* CN_RESTRICT x,
                                      ptrdiff_t ld, ptrdiff_t nrows, const double* mean,
                                      ptrdiff_t n, int first)
{
    CN_CL_F32_LAYOUTS(CN_CL_F32_SUMS, 4);
}

/* dx = (alpha[c] * dy + beta[c] * (x - hi[c])) + gamma[c], every factor as a float; KB
   (1 to 3) vectors, their coefficients named (in arrays GCC keeps them on the stack) */
#define CN_CL_F32_DX(w, VT, WW, i, g, al, be, ga, nh)                                      \
    CN_FN(cl_stf_##w)(dx + (i), ((al) * (g) + (be) * (LDF(w, x + (i), 1) + (nh))) + (ga))
#define CN_CL_F32_GRAD(KB, w, VT, WW)                                                      \
    {                                                                                      \
        ptrdiff_t r;                                                                       \
        const VT al0 = CVF(w, alpha + c), be0 = CVF(w, beta + c);                          \
        const VT ga0 = CVF(w, gamma + c), nh0 = -CVF(w, mean + c);                         \
        const VT al1 = KB > 1 ? CVF(w, alpha + c + WW) : al0;                              \
        const VT be1 = KB > 1 ? CVF(w, beta + c + WW) : be0;                               \
        const VT ga1 = KB > 1 ? CVF(w, gamma + c + WW) : ga0;                              \
        const VT nh1 = KB > 1 ? -CVF(w, mean + c + WW) : nh0;                              \
        const VT al2 = KB > 2 ? CVF(w, alpha + c + 2 * WW) : al0;                          \
        const VT be2 = KB > 2 ? CVF(w, beta + c + 2 * WW) : be0;                           \
        const VT ga2 = KB > 2 ? CVF(w, gamma + c + 2 * WW) : ga0;                          \
        const VT nh2 = KB > 2 ? -CVF(w, mean + c + 2 * WW) : nh0;                          \
        for (r = 0; r < nrows; r++) {                                                      \
            const ptrdiff_t i = r * ld + c;                                                \
            const VT g0 = CN_CL_F32_DY(w, WW, r, 0);                                       \
            CN_CL_F32_DX(w, VT, WW, i, g0, al0, be0, ga0, nh0);                            \
            if (KB > 1) {                                                                  \
                const VT g1 = CN_CL_F32_DY(w, WW, r, 1);                                   \
                CN_CL_F32_DX(w, VT, WW, i + WW, g1, al1, be1, ga1, nh1);                   \
            }                                                                              \
            if (KB > 2) {                                                                  \
                const VT g2 = CN_CL_F32_DY(w, WW, r, 2);                                   \
                CN_CL_F32_DX(w, VT, WW, i + 2 * WW, g2, al2, be2, ga2, nh2);               \
            }                                                                              \
        }                                                                                  \
    }

CN_CL_F32_LOOP void CN_FN(cl_grad_f32)(float* CN_RESTRICT dx, const float* CN_RESTRICT dy,
                                 const float* CN_RESTRICT x, ptrdiff_t ld, ptrdiff_t nrows,
                                 const double* alpha, const double* beta, const double* gamma,
                                 const double* mean, ptrdiff_t n, int first)
{
    CN_CL_F32_LAYOUTS(CN_CL_F32_GRAD, 3);
}

#undef CN_CL_F32_LOOP
#undef CN_CL_F32_ROWS
#undef F8
#undef FW
#undef cl_ldf_v
#undef cl_stf_v
#undef cl_cvf_v
#undef cl_addf_v
#undef cl_zf_v
#undef LDF
#undef CVF
#undef CN_CL_F32_BLOCKS
#undef CN_CL_F32_LAYOUTS
#undef CN_CL_F32_DY
#undef CN_CL_F32_SUMS
#undef CN_CL_F32_XSUMS
#undef CN_CL_F32_DEVS
#undef CN_CL_F32_Y
#undef CN_CL_F32_AFFINE
#undef CN_CL_F32_GRAD
#undef CN_CL_F32_DX
#endif
