/* The (N, C) tile reductions of half storage (BatchNorm with S = 1: BatchNorm1d and every
   channels-last BatchNorm2d/3d as (N*H*W, C)); the float32 loops of the same name are in
   reduce.h. Included by half.h after half_elementwise.h.

   The tile is read in place (row stride ld, in elements) and widened in the loads. Each
   channel's sums take the float32 loop's operations in its order (rows in fours or twos,
   the same parentheses), W channels per vector instead of the compiler's choice: one
   lane per channel, nothing summed across lanes, so the bits are those of the float32
   loop on the widened tile (the staged design's bits, without its stage). */

/* the rows a, b, c, d of a tile, widened: element i (scalar) or W of them (vector) */
#define CN_C4S(op) op(CN_FN(wid)(a[i]), CN_FN(wid)(b[i]), CN_FN(wid)(c[i]), CN_FN(wid)(d[i]))
#define CN_C4V(op) op(LDV(a), LDV(b), LDV(c), LDV(d))
#define CN_SUM4(va, vb, vc, vd) (((va) + (vb)) + ((vc) + (vd)))
#define SHV(p) load((p) + i)           /* W float coefficients */
#define LDV(p) CN_FN(ldx)((p) + i)     /* W storage values, widened */

/* s = sum over the nrows rows of x (one channel per element, n channels) */
CN_HLOOP void CN_FN(cols_sum)(T* CN_RESTRICT s, const X* CN_RESTRICT x, ptrdiff_t ld,
                              ptrdiff_t nrows, ptrdiff_t n)
{
    ptrdiff_t i, r = 0;
    for (i = 0; i < n; i++) s[i] = 0;
    for (; r + 4 <= nrows; r += 4) {
        const X *a = x + r * ld, *b = a + ld, *c = b + ld, *d = c + ld;
        for (i = 0; i <= n - W; i += W) store(s + i, load(s + i) + CN_C4V(CN_SUM4));
        for (; i < n; i++) s[i] += CN_C4S(CN_SUM4);
    }
    for (; r < nrows; r++) {
        const X* a = x + r * ld;
        for (i = 0; i <= n - W; i += W) store(s + i, load(s + i) + CN_FN(ldx)(a + i));
        for (; i < n; i++) s[i] += CN_FN(wid)(a[i]);
    }
}

/* s1 = sum over rows of (x - shift), s2 = sum of (x - shift)^2 */
CN_HLOOP void CN_FN(cols_dev)(T* CN_RESTRICT s1, T* CN_RESTRICT s2, const X* CN_RESTRICT x,
                              ptrdiff_t ld, ptrdiff_t nrows, const T* CN_RESTRICT shift,
                              ptrdiff_t n)
{
    ptrdiff_t i, r = 0;
    for (i = 0; i < n; i++) s1[i] = s2[i] = 0;
    for (; r + 4 <= nrows; r += 4) {
        const X *a = x + r * ld, *b = a + ld, *c = b + ld, *d = c + ld;
        for (i = 0; i <= n - W; i += W) {
            const V sh = SHV(shift);
            const V da = LDV(a) - sh, db = LDV(b) - sh, dc = LDV(c) - sh, dd = LDV(d) - sh;
            store(s1 + i, load(s1 + i) + CN_SUM4(da, db, dc, dd));
            store(s2 + i, load(s2 + i) + ((da * da + db * db) + (dc * dc + dd * dd)));
        }
        for (; i < n; i++) {
            const T sh = shift[i];
            const T da = CN_FN(wid)(a[i]) - sh, db = CN_FN(wid)(b[i]) - sh;
            const T dc = CN_FN(wid)(c[i]) - sh, dd = CN_FN(wid)(d[i]) - sh;
            s1[i] += CN_SUM4(da, db, dc, dd);
            s2[i] += (da * da + db * db) + (dc * dc + dd * dd);
        }
    }
    for (; r < nrows; r++) {
        const X* a = x + r * ld;
        for (i = 0; i <= n - W; i += W) {
            const V da = LDV(a) - SHV(shift);
            store(s1 + i, load(s1 + i) + da);
            store(s2 + i, load(s2 + i) + da * da);
        }
        for (; i < n; i++) {
            const T da = CN_FN(wid)(a[i]) - shift[i];
            s1[i] += da;
            s2[i] += da * da;
        }
    }
}

/* s1 = sum over rows of g, s2 = sum of g * d, d = (x - hi) - lo; g = dy, masked by
   ym > 0 when ym is given (fused BN + ReLU) */
CN_HLOOP void CN_FN(bn_grad_sums_cols)(
    T* CN_RESTRICT s1, T* CN_RESTRICT s2, const X* CN_RESTRICT dy, const X* CN_RESTRICT x,
    ptrdiff_t ld, ptrdiff_t nrows, const T* CN_RESTRICT hi, const T* CN_RESTRICT lo, ptrdiff_t n,
    const X* CN_RESTRICT ym)
{
    ptrdiff_t i, r = 0;
    for (i = 0; i < n; i++) s1[i] = s2[i] = 0;
    for (; ym && r < nrows; r++) {     /* masked: a row at a time (then r = nrows) */
        const X *xa = x + r * ld, *ga = dy + r * ld, *ya = ym + r * ld;
        for (i = 0; i <= n - W; i += W) {
            const V g = CN_FN(mask_grad_v)(LDV(ga), LDV(ya));
            const V da = (LDV(xa) - SHV(hi)) - SHV(lo);
            store(s1 + i, load(s1 + i) + g);
            store(s2 + i, load(s2 + i) + g * da);
        }
        for (; i < n; i++) {
            const T g = CN_FN(mask_grad)(CN_FN(wid)(ga[i]), CN_FN(wid)(ya[i]));
            const T da = (CN_FN(wid)(xa[i]) - hi[i]) - lo[i];
            s1[i] += g;
            s2[i] += g * da;
        }
    }
    for (; r + 2 <= nrows; r += 2) {
        const X *xa = x + r * ld, *xb = xa + ld, *ga = dy + r * ld, *gb = ga + ld;
        for (i = 0; i <= n - W; i += W) {
            const V h = SHV(hi), l = SHV(lo), gva = LDV(ga), gvb = LDV(gb);
            const V da = (LDV(xa) - h) - l, db = (LDV(xb) - h) - l;
            store(s1 + i, load(s1 + i) + (gva + gvb));
            store(s2 + i, load(s2 + i) + (gva * da + gvb * db));
        }
        for (; i < n; i++) {
            const T da = (CN_FN(wid)(xa[i]) - hi[i]) - lo[i];
            const T db = (CN_FN(wid)(xb[i]) - hi[i]) - lo[i];
            const T gva = CN_FN(wid)(ga[i]), gvb = CN_FN(wid)(gb[i]);
            s1[i] += gva + gvb;
            s2[i] += gva * da + gvb * db;
        }
    }
    for (; r < nrows; r++) {
        const X *xa = x + r * ld, *ga = dy + r * ld;
        for (i = 0; i <= n - W; i += W) {
            const V da = (LDV(xa) - SHV(hi)) - SHV(lo), g = LDV(ga);
            store(s1 + i, load(s1 + i) + g);
            store(s2 + i, load(s2 + i) + g * da);
        }
        for (; i < n; i++) {
            const T da = (CN_FN(wid)(xa[i]) - hi[i]) - lo[i], g = CN_FN(wid)(ga[i]);
            s1[i] += g;
            s2[i] += g * da;
        }
    }
}

/* four rows (stride ld) of an (N, C) batch at once: each vector of coefficients loaded
   once for the four (affine_cols, bn_grad_cols of half.h row by row: the same formula
   per element, so the same bits) */
#if CN_H_AVX2 && CN_HALF == 2
/* p[0:2W] = v0, v1 rounded to bfloat16: cn_bf16x8_round's bits (NaN quieted), the two
   vectors packed by one vpackusdw (bfloat16 rounding is integer work: half the packing) */
CN_HHELPER void CN_FN(stx2)(X* p, V v0, V v1)
{
    const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7fff);
    const __m256i quiet = _mm256_set1_epi32(0x40);
    const __m256i u0 = (__m256i)v0, u1 = (__m256i)v1;
    const __m256i h0 = _mm256_srli_epi32(u0, 16), h1 = _mm256_srli_epi32(u1, 16);
    __m256i r0 = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u0, bias), _mm256_and_si256(h0, one)), 16);
    __m256i r1 = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u1, bias), _mm256_and_si256(h1, one)), 16);
    r0 = _mm256_blendv_epi8(r0, _mm256_or_si256(h0, quiet),
                            _mm256_castps_si256(_mm256_cmp_ps((__m256)v0, (__m256)v0, _CMP_UNORD_Q)));
    r1 = _mm256_blendv_epi8(r1, _mm256_or_si256(h1, quiet),
                            _mm256_castps_si256(_mm256_cmp_ps((__m256)v1, (__m256)v1, _CMP_UNORD_Q)));
    _mm256_storeu_si256((__m256i*)(void*)p,
                        _mm256_permute4x64_epi64(_mm256_packus_epi32(r0, r1), 0xd8));
}
/* two vectors of channels per step: the coefficients of both loaded once for four rows */
#define CN_AFFINE4_PAIRS(FV)                                                                \
    for (; i <= n - 2 * W; i += 2 * W) {                                                   \
        const V h = SHV(hi), l = SHV(lo), sc = SHV(scale), b = SHV(beta);                  \
        const V h1 = SHV(hi + W), l1 = SHV(lo + W), sc1 = SHV(scale + W), b1 = SHV(beta + W); \
        for (r = 0; r < 4; r++)                                                            \
            CN_FN(stx2)(y + r * ld + i, FV(CN_AFFINE(LDV(x + r * ld), h, l, sc, b)),       \
                        FV(CN_AFFINE(LDV(x + r * ld + W), h1, l1, sc1, b1)));              \
    }
#else
#define CN_AFFINE4_PAIRS(FV)
#endif

#if CN_VEC
/* v[j] = p[j % n] for j < W, n dividing W (the constant cases: one broadcast each) */
CN_HHELPER V CN_FN(periodic)(const T* CN_RESTRICT p, ptrdiff_t n)
{
    V v;
    ptrdiff_t j;
    if (n == 1)
        for (j = 0; j < W; j++) v[j] = p[0];
    else if (n == 2)
        for (j = 0; j < W; j++) v[j] = p[j % 2];
    else if (n == 4)
        for (j = 0; j < W; j++) v[j] = p[j % 4];
    else
        for (j = 0; j < W; j++) v[j] = p[j % n];
    return v;
}
/* rows narrower than a vector (a channels-last BatchNorm of 1, 2 or 4 channels: all
   tails otherwise), back to back (ld == n): the 4n values as whole vectors, each lane's
   coefficients those of its channel, the same formula per element (the same bits) */
#define CN_AFFINE4_NARROW(FV)                                                              \
    if (ld == n && n < W && W % n == 0 && (4 * n) % W == 0) {                              \
        const V h = CN_FN(periodic)(hi, n), l = CN_FN(periodic)(lo, n);                    \
        const V sc = CN_FN(periodic)(scale, n), b = CN_FN(periodic)(beta, n);              \
        for (i = 0; i < 4 * n; i += W) CN_FN(stx)(y + i, FV(CN_AFFINE(LDV(x), h, l, sc, b))); \
        break;                                                                             \
    }
#else
#define CN_AFFINE4_NARROW(FV)
#endif

#define CN_AFFINE4(F, FV)                                                                   \
    do {                                                                                   \
        CN_AFFINE4_NARROW(FV)                                                              \
        CN_AFFINE4_PAIRS(FV)                                                               \
        for (; i <= n - W; i += W) {                                                       \
            const V h = SHV(hi), l = SHV(lo), sc = SHV(scale), b = SHV(beta);              \
            for (r = 0; r < 4; r++)                                                        \
                CN_FN(stx)(y + r * ld + i, FV(CN_AFFINE(LDV(x + r * ld), h, l, sc, b)));   \
        }                                                                                  \
        for (; i < n; i++)                                                                 \
            for (r = 0; r < 4; r++)                                                        \
                y[r * ld + i] = CN_FN(nar)(                                                \
                    F(CN_AFFINE(CN_FN(wid)(x[r * ld + i]), hi[i], lo[i], scale[i], beta[i]))); \
    } while (0)
#define CN_SAME(v) (v)

CN_HLOOP void CN_FN(affine_cols4)(X* CN_RESTRICT y, const X* CN_RESTRICT x, ptrdiff_t ld,
                                  ptrdiff_t n, const T* CN_RESTRICT hi, const T* CN_RESTRICT lo,
                                  const T* CN_RESTRICT scale, const T* CN_RESTRICT beta,
                                  int relu)
{
    ptrdiff_t i = 0, r;
    if (relu)       /* the test out of the loops, as affine_cols */
        CN_AFFINE4(CN_FN(relu), CN_FN(relu_v));
    else
        CN_AFFINE4(CN_SAME, CN_SAME);
}

#define CN_GRAD4(GV, GS)                                                                    \
    do {                                                                                   \
        for (; i <= n - W; i += W) {                                                       \
            const V h = SHV(hi), l = SHV(lo), is = SHV(invstd), a = SHV(k1);               \
            const V m = SHV(mean_dy), c = SHV(mean_dy_xhat);                               \
            for (r = 0; r < 4; r++) {                                                      \
                const ptrdiff_t o = r * ld + i;                                            \
                CN_FN(stx)(dx + o, CN_BN_GRAD(GV, CN_FN(ldx)(x + o), h, l, is, a, m, c));  \
            }                                                                              \
        }                                                                                  \
        for (; i < n; i++)                                                                 \
            for (r = 0; r < 4; r++) {                                                      \
                const ptrdiff_t o = r * ld + i;                                            \
                dx[o] = CN_FN(nar)(CN_BN_GRAD(GS, CN_FN(wid)(x[o]), hi[i], lo[i], invstd[i], \
                                              k1[i], mean_dy[i], mean_dy_xhat[i]));        \
            }                                                                              \
    } while (0)

CN_HLOOP void CN_FN(bn_grad_cols4)(
    X* CN_RESTRICT dx, const X* CN_RESTRICT dy, const X* CN_RESTRICT x, ptrdiff_t ld, ptrdiff_t n,
    const T* CN_RESTRICT hi, const T* CN_RESTRICT lo, const T* CN_RESTRICT invstd,
    const T* CN_RESTRICT k1, const T* CN_RESTRICT mean_dy, const T* CN_RESTRICT mean_dy_xhat,
    const X* CN_RESTRICT ym)
{
    ptrdiff_t i = 0, r;
    if (ym)         /* the test out of the loops, as bn_grad_cols */
        CN_GRAD4(CN_FN(mask_grad_v)(CN_FN(ldx)(dy + o), CN_FN(ldx)(ym + o)),
                 CN_FN(mask_grad)(CN_FN(wid)(dy[o]), CN_FN(wid)(ym[o])));
    else
        CN_GRAD4(CN_FN(ldx)(dy + o), CN_FN(wid)(dy[o]));
}

#undef CN_C4S
#undef CN_AFFINE4
#undef CN_AFFINE4_PAIRS
#undef CN_AFFINE4_NARROW
#undef CN_GRAD4
#undef CN_SAME
#undef CN_C4V
#undef CN_SUM4
#undef SHV
#undef LDV
