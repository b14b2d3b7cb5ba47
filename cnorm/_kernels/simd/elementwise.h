/* The elementwise loops of loops.h (see there). Included by loops.h only. */

/* ---- elementwise loops ---------------------------------------------------------------
   out[i] = FORMULA(element i), the formula written once as a macro of values so that the
   scalar loop and the streaming vector loop compute the same thing. With stream != 0 the
   aligned middle of out is written with non-temporal stores: a large output then goes
   straight to memory instead of being read in first (write-allocate), a third less
   memory traffic for a pass that is bound by it. */
#if CN_STREAMS
#if CN_VB == 64
#define CN_STORE_NT(p, v) _mm512_stream_si512((__m512i*)(void*)(p), (__m512i)(v))
#elif CN_VB == 32
#define CN_STORE_NT(p, v) _mm256_stream_si256((__m256i*)(void*)(p), (__m256i)(v))
#else
#define CN_STORE_NT(p, v) _mm_stream_si128((__m128i*)(void*)(p), (__m128i)(v))
#endif
/* the misaligned head in scalars, then whole vectors streamed; the caller does the tail */
#define CN_STREAM_HEAD(out, i, n, SCALAR, VECTOR)                                         \
    for (; i < n && ((uintptr_t)((out) + i) % CN_VB) != 0; i++) (out)[i] = SCALAR;         \
    for (; i + W <= n; i += W) CN_STORE_NT((out) + i, VECTOR);
#else
#define CN_STREAM_HEAD(out, i, n, SCALAR, VECTOR)
#endif

/* BatchNorm normalize: y = d * scale + beta (then the ReLU when fused) */
#define CN_AFFINE(x, hi, lo, scale, beta) ((((x) - (hi)) - (lo)) * (scale) + (beta))

/* y = ((x - hi) - lo) * scale + beta, one channel's run */
CN_LOOP void CN_FN(affine)(T* CN_RESTRICT y, const T* CN_RESTRICT x, ptrdiff_t n, T hi, T lo,
                           T scale, T beta, int stream, int relu)
{
    ptrdiff_t i = 0;
    if (relu) {
        if (stream) {
            CN_STREAM_HEAD(y, i, n, CN_FN(relu)(CN_AFFINE(x[i], hi, lo, scale, beta)),
                           CN_FN(relu_v)(CN_AFFINE(load(x + i), hi, lo, scale, beta)))
        }
        for (; i < n; i++) y[i] = CN_FN(relu)(CN_AFFINE(x[i], hi, lo, scale, beta));
        return;
    }
    if (stream) {
        CN_STREAM_HEAD(y, i, n, CN_AFFINE(x[i], hi, lo, scale, beta),
                       CN_AFFINE(load(x + i), hi, lo, scale, beta))
    }
    for (; i < n; i++) y[i] = CN_AFFINE(x[i], hi, lo, scale, beta);
}

/* affine of nrows consecutive runs of n values, run p with the coefficients hi[p], lo[p],
   scale[p], beta[p] (a row of planes of consecutive channels), never streamed */
CN_LOOP void CN_FN(runs_affine)(T* CN_RESTRICT y, const T* CN_RESTRICT x, ptrdiff_t n,
                                ptrdiff_t nrows, const T* CN_RESTRICT hi, const T* CN_RESTRICT lo,
                                const T* CN_RESTRICT scale, const T* CN_RESTRICT beta, int relu)
{
    ptrdiff_t p;
    for (p = 0; p < nrows; p++)
        CN_FN(affine)(y + p * n, x + p * n, n, hi[p], lo[p], scale[p], beta[p], 0, relu);
}

/* the same with per-element coefficients: a row of an (N, C) batch, n = C */
CN_LOOP void CN_FN(affine_cols)(T* CN_RESTRICT y, const T* CN_RESTRICT x, ptrdiff_t n,
                                const T* CN_RESTRICT hi, const T* CN_RESTRICT lo,
                                const T* CN_RESTRICT scale, const T* CN_RESTRICT beta,
                                int stream, int relu)
{
    ptrdiff_t i = 0;
    if (relu) {
        if (stream) {
            CN_STREAM_HEAD(y, i, n, CN_FN(relu)(CN_AFFINE(x[i], hi[i], lo[i], scale[i], beta[i])),
                           CN_FN(relu_v)(CN_AFFINE(load(x + i), load(hi + i), load(lo + i),
                                                   load(scale + i), load(beta + i))))
        }
        for (; i < n; i++) y[i] = CN_FN(relu)(CN_AFFINE(x[i], hi[i], lo[i], scale[i], beta[i]));
        return;
    }
    if (stream) {
        CN_STREAM_HEAD(y, i, n, CN_AFFINE(x[i], hi[i], lo[i], scale[i], beta[i]),
                       CN_AFFINE(load(x + i), load(hi + i), load(lo + i), load(scale + i),
                                 load(beta + i)))
    }
    for (; i < n; i++) y[i] = CN_AFFINE(x[i], hi[i], lo[i], scale[i], beta[i]);
}

/* four rows (stride ld) of an (N, C) batch at once: each coefficient is loaded once for
   four outputs (the one-row loop is bound by its five loads per element) */
CN_LOOP void CN_FN(affine_cols4)(T* CN_RESTRICT y, const T* CN_RESTRICT x, ptrdiff_t ld,
                                 ptrdiff_t n, const T* CN_RESTRICT hi, const T* CN_RESTRICT lo,
                                 const T* CN_RESTRICT scale, const T* CN_RESTRICT beta, int relu)
{
    ptrdiff_t i, r;
    if (relu) {
        for (i = 0; i < n; i++) {
            const T h = hi[i], l = lo[i], s = scale[i], b = beta[i];
            for (r = 0; r < 4; r++)
                y[r * ld + i] = CN_FN(relu)(CN_AFFINE(x[r * ld + i], h, l, s, b));
        }
        return;
    }
    for (i = 0; i < n; i++) {
        const T h = hi[i], l = lo[i], s = scale[i], b = beta[i];
        for (r = 0; r < 4; r++) y[r * ld + i] = CN_AFFINE(x[r * ld + i], h, l, s, b);
    }
}

/* LayerNorm forward: y = xhat * w + b, xhat = d * rs */
#define CN_LN_ROW(x, w, b) (((((x) - hi) - lo) * rs) * (w) + (b))

CN_LOOP void CN_FN(ln_row)(T* CN_RESTRICT y, const T* CN_RESTRICT x, const T* CN_RESTRICT w,
                           const T* CN_RESTRICT b, ptrdiff_t n, T hi, T lo, T rs, int stream)
{
    ptrdiff_t i = 0;
    if (stream) {
        CN_STREAM_HEAD(y, i, n, CN_LN_ROW(x[i], w[i], b[i]),
                       CN_LN_ROW(load(x + i), load(w + i), load(b + i)))
    }
    for (; i < n; i++) y[i] = CN_LN_ROW(x[i], w[i], b[i]);
}

/* BatchNorm input gradient (derived in batch_norm.pyx), xhat = d * invstd:
     dx = k1 * ((g - mean_dy) - mean_dy_xhat * xhat),   k1 = weight * invstd,
   g = dy, or the ReLU-masked dy of a fused BN + ReLU. Gradients are formed from O(1)
   terms, xhat first: coefficients such as invstd^3 would over- or underflow float32 for
   data of scale 1e±13 and beyond. */
#define CN_BN_GRAD(g, x, hi, lo, invstd, k1, mean_dy, mean_dy_xhat) \
    ((k1) * (((g) - (mean_dy)) - (mean_dy_xhat) * ((((x) - (hi)) - (lo)) * (invstd))))

CN_LOOP void CN_FN(bn_grad)(T* CN_RESTRICT dx, const T* CN_RESTRICT dy, const T* CN_RESTRICT x,
                            ptrdiff_t n, T hi, T lo, T invstd, T k1, T mean_dy, T mean_dy_xhat,
                            int stream, const T* CN_RESTRICT ym)
{
    ptrdiff_t i = 0;
    if (ym) {
        if (stream) {
            CN_STREAM_HEAD(dx, i, n,
                           CN_BN_GRAD(CN_FN(mask_grad)(dy[i], ym[i]), x[i], hi, lo, invstd, k1,
                                      mean_dy, mean_dy_xhat),
                           CN_BN_GRAD(CN_FN(mask_grad_v)(load(dy + i), load(ym + i)), load(x + i),
                                      hi, lo, invstd, k1, mean_dy, mean_dy_xhat))
        }
        for (; i < n; i++)
            dx[i] = CN_BN_GRAD(CN_FN(mask_grad)(dy[i], ym[i]), x[i], hi, lo, invstd, k1, mean_dy,
                               mean_dy_xhat);
        return;
    }
    if (stream) {
        CN_STREAM_HEAD(dx, i, n, CN_BN_GRAD(dy[i], x[i], hi, lo, invstd, k1, mean_dy, mean_dy_xhat),
                       CN_BN_GRAD(load(dy + i), load(x + i), hi, lo, invstd, k1, mean_dy,
                                  mean_dy_xhat))
    }
    for (; i < n; i++) dx[i] = CN_BN_GRAD(dy[i], x[i], hi, lo, invstd, k1, mean_dy, mean_dy_xhat);
}

/* the same with per-element coefficients: a row of an (N, C) batch, n = C */
#define CN_BN_GRAD_COL(g, xv, j) \
    CN_BN_GRAD(g, xv, hi[j], lo[j], invstd[j], k1[j], mean_dy[j], mean_dy_xhat[j])
#define CN_BN_GRAD_COL_V(g, xv, j)                                                          \
    CN_BN_GRAD(g, xv, load(hi + j), load(lo + j), load(invstd + j), load(k1 + j),          \
               load(mean_dy + j), load(mean_dy_xhat + j))

CN_LOOP void CN_FN(bn_grad_cols)(T* CN_RESTRICT dx, const T* CN_RESTRICT dy,
                                 const T* CN_RESTRICT x, ptrdiff_t n, const T* CN_RESTRICT hi,
                                 const T* CN_RESTRICT lo, const T* CN_RESTRICT invstd,
                                 const T* CN_RESTRICT k1, const T* CN_RESTRICT mean_dy,
                                 const T* CN_RESTRICT mean_dy_xhat, int stream,
                                 const T* CN_RESTRICT ym)
{
    ptrdiff_t i = 0;
    if (ym) {
        if (stream) {
            CN_STREAM_HEAD(dx, i, n, CN_BN_GRAD_COL(CN_FN(mask_grad)(dy[i], ym[i]), x[i], i),
                           CN_BN_GRAD_COL_V(CN_FN(mask_grad_v)(load(dy + i), load(ym + i)),
                                            load(x + i), i))
        }
        for (; i < n; i++) dx[i] = CN_BN_GRAD_COL(CN_FN(mask_grad)(dy[i], ym[i]), x[i], i);
        return;
    }
    if (stream) {
        CN_STREAM_HEAD(dx, i, n, CN_BN_GRAD_COL(dy[i], x[i], i),
                       CN_BN_GRAD_COL_V(load(dy + i), load(x + i), i))
    }
    for (; i < n; i++) dx[i] = CN_BN_GRAD_COL(dy[i], x[i], i);
}

/* four rows (stride ld) of an (N, C) batch at once (see affine_cols4) */
CN_LOOP void CN_FN(bn_grad_cols4)(T* CN_RESTRICT dx, const T* CN_RESTRICT dy,
                                  const T* CN_RESTRICT x, ptrdiff_t ld, ptrdiff_t n,
                                  const T* CN_RESTRICT hi, const T* CN_RESTRICT lo,
                                  const T* CN_RESTRICT invstd, const T* CN_RESTRICT k1,
                                  const T* CN_RESTRICT mean_dy, const T* CN_RESTRICT mean_dy_xhat,
                                  const T* CN_RESTRICT ym)
{
    ptrdiff_t i, r;
    if (ym) {
        for (i = 0; i < n; i++) {
            const T h = hi[i], l = lo[i], s = invstd[i], a = k1[i], m = mean_dy[i];
            const T c = mean_dy_xhat[i];
            for (r = 0; r < 4; r++)
                dx[r * ld + i] = CN_BN_GRAD(CN_FN(mask_grad)(dy[r * ld + i], ym[r * ld + i]),
                                            x[r * ld + i], h, l, s, a, m, c);
        }
        return;
    }
    for (i = 0; i < n; i++) {
        const T h = hi[i], l = lo[i], s = invstd[i], a = k1[i], m = mean_dy[i];
        const T c = mean_dy_xhat[i];
        for (r = 0; r < 4; r++)
            dx[r * ld + i] = CN_BN_GRAD(dy[r * ld + i], x[r * ld + i], h, l, s, a, m, c);
    }
}

/* LayerNorm / GroupNorm input gradient (derived in row_norm.pyx), g = dy * w,
   xhat = d * rstd:   dx = rstd * ((g - mean_g) - mean_gxhat * xhat) */
#define CN_ROW_GRAD(dy, x, w) \
    (rstd * ((((dy) * (w)) - mean_g) - mean_gxhat * ((((x) - hi) - lo) * rstd)))

/* one LayerNorm row: a weight per element */
CN_LOOP void CN_FN(ln_grad_row)(T* CN_RESTRICT dx, const T* CN_RESTRICT dy,
                                const T* CN_RESTRICT x, const T* CN_RESTRICT w, ptrdiff_t n,
                                T hi, T lo, T rstd, T mean_g, T mean_gxhat, int stream)
{
    ptrdiff_t i = 0;
    if (stream) {
        CN_STREAM_HEAD(dx, i, n, CN_ROW_GRAD(dy[i], x[i], w[i]),
                       CN_ROW_GRAD(load(dy + i), load(x + i), load(w + i)))
    }
    for (; i < n; i++) dx[i] = CN_ROW_GRAD(dy[i], x[i], w[i]);
}

/* one channel's segment of a GroupNorm / InstanceNorm row: one weight w */
CN_LOOP void CN_FN(gn_grad_segment)(T* CN_RESTRICT dx, const T* CN_RESTRICT dy,
                                    const T* CN_RESTRICT x, ptrdiff_t n, T hi, T lo, T rstd, T w,
                                    T mean_g, T mean_gxhat, int stream)
{
    ptrdiff_t i = 0;
    if (stream) {
        CN_STREAM_HEAD(dx, i, n, CN_ROW_GRAD(dy[i], x[i], w),
                       CN_ROW_GRAD(load(dy + i), load(x + i), w))
    }
    for (; i < n; i++) dx[i] = CN_ROW_GRAD(dy[i], x[i], w);
}

/* out = a + b (the fused residual add) */
CN_LOOP void CN_FN(residual_add)(T* CN_RESTRICT out, const T* CN_RESTRICT a,
                                 const T* CN_RESTRICT b, ptrdiff_t n, int stream)
{
    ptrdiff_t i = 0;
    if (stream) {
        CN_STREAM_HEAD(out, i, n, a[i] + b[i], load(a + i) + load(b + i))
    }
    for (; i < n; i++) out[i] = a[i] + b[i];
}

/* ---- several short rows per call (n < 512: one block, no streaming) ---------------------
   The per-row work of the row walks of row_norm.pyx, done here for a run of rows so that
   a short row does not pay a walk step and three dispatched calls: the same operations
   in the same order as there (block_stats or sum_squares, chan_merge into an empty
   partial, split_mean, ln_row / ln_grad_sums2, ln_grad_row), so the bits are those of
   the one-row path. */

/* mean = hi + lo (split_mean of common.pxd) */
CN_HELPER void CN_FN(split)(double mean, T* hi, T* lo)
{
    *hi = (T)mean;
    *lo = (T)(mean - (double)*hi);
}

/* LayerNorm (center) / RMSNorm forward of nrows rows of n: y, mean, rstd (mean 0 when
   not centering). Returns the rows done: it stops before a row whose statistics need
   the caller's slow path (float32 sums to redo in float64, float64 variances that
   over- or underflowed). */
CN_LOOP ptrdiff_t CN_FN(ln_rows)(T* CN_RESTRICT y, double* CN_RESTRICT mean,
                                 double* CN_RESTRICT rstd, const T* CN_RESTRICT x,
                                 const T* CN_RESTRICT w, const T* CN_RESTRICT b,
                                 ptrdiff_t nrows, ptrdiff_t n, double eps, int center)
{
    const double inv_n = 1.0 / n;
    ptrdiff_t r;
    for (r = 0; r < nrows; r++) {
        const T* CN_RESTRICT xr = x + r * n;
        double s1, s2, mu = 0, m2, v, rs;
        T shift = 0, hi, lo;
        if (center) shift = (T)(CN_FN(block_sum)(xr, n) * inv_n);
        CN_FN(block_dev)(&s1, &s2, xr, n, shift);
#if CN_T_BYTES == 4
        if (cn_f32_sums_unsafe(s1, s2, shift)) return r;
#endif
        if (center) {
            double corr = s1 * s1 * inv_n;
            mu = shift + s1 * inv_n;
            m2 = s2 > corr ? s2 - corr : 0.0;
        } else {
            m2 = 0;
            m2 += s2;
        }
        v = m2 / n;
#if CN_T_BYTES == 8
        if (!(v >= 0x1p-1000 && v <= DBL_MAX)) return r;
#endif
        rs = 1.0 / sqrt(v + eps);
        mean[r] = mu;
        rstd[r] = rs;
        CN_FN(split)(mu, &hi, &lo);
        CN_FN(ln_row)(y + r * n, xr, w, b, n, hi, lo, (T)rs, 0);
    }
    return nrows;
}

/* LayerNorm (mean given) / RMSNorm (mean NULL) backward of nrows rows of n, in pairs
   (a lone last row when nrows is odd): dx, and the dweight/dbias partials added to tw,
   tb (ln_grad_sums2 / ln_grad_sums). */
CN_LOOP void CN_FN(ln_grad_rows)(T* CN_RESTRICT dx, T* CN_RESTRICT tw, T* CN_RESTRICT tb,
                                 const T* CN_RESTRICT dy, const T* CN_RESTRICT x,
                                 const T* CN_RESTRICT w, const double* CN_RESTRICT mean,
                                 const double* CN_RESTRICT rstd, ptrdiff_t nrows, ptrdiff_t n)
{
    ptrdiff_t r, q, i;
    for (r = 0; r < nrows; r += 2) {
        const int pair = r + 1 < nrows;
        T hi[2], lo[2], rs[2];
        double s_g[2], s_gd[2];
        for (q = 0; q <= pair; q++) {
            CN_FN(split)(mean ? mean[r + q] : 0.0, &hi[q], &lo[q]);
            rs[q] = (T)rstd[r + q];
        }
        if (pair)
            CN_FN(ln_grad_sums2)(s_g, s_gd, tw, tb, dy + r * n, dy + (r + 1) * n, x + r * n,
                                 x + (r + 1) * n, w, n, hi[0], lo[0], rs[0], hi[1], lo[1], rs[1]);
        else
            CN_FN(ln_grad_sums)(s_g, s_gd, tw, tb, dy + r * n, x + r * n, w, n, hi[0], lo[0],
                                rs[0]);
        for (q = 0; q <= pair; q++) {
            const T* CN_RESTRICT dyr = dy + (r + q) * n;
            const T* CN_RESTRICT xr = x + (r + q) * n;
            double sum_g = 0, sum_gd = 0, m_gxhat;
            T mean_g = 0;
            sum_g += s_g[q];
            sum_gd += s_gd[q];
            if (mean) mean_g = (T)(sum_g / n);
            m_gxhat = rstd[r + q] * sum_gd / n;
            if (!(fabs(m_gxhat) <= DBL_MAX)) {  /* |x - mean| near DBL_MAX: from O(1) terms */
                double s = 0;
                for (i = 0; i < n; i++) {
                    double g = dyr[i];
                    T d = (xr[i] - hi[q]) - lo[q];
                    g *= w[i];
                    s += g * ((double)d * rstd[r + q]);
                }
                m_gxhat = s / n;
            }
            CN_FN(ln_grad_row)(dx + (r + q) * n, dyr, xr, w, n, hi[q], lo[q], rs[q], mean_g,
                               (T)m_gxhat, 0);
        }
    }
}
