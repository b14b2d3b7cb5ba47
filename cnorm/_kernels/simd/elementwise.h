/* The elementwise loops of loops.h (see there). Included by loops.h only. */

/* ---- elementwise loops ---------------------------------------------------------------
   out[i] = FORMULA(element i), the formula written once as a macro of values so that the
   scalar loop and the streaming vector loop compute the same thing. With stream != 0 the
   aligned middle of out is written with non-temporal stores: a large output then goes
   straight to memory instead of being read in first (write-allocate), a third less
   memory traffic for a pass that is bound by it. */
#if CN_STREAMS
#if CN_VB == 32
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
