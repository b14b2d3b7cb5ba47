/* The elementwise loops of half storage (half.h; the float32 loops of the same name and
   the derivations of their formulas are in elementwise.h): out = the formula of the
   widened inputs, rounded once (CN_H_EACH; CN_H_EACH_COLS with per-element coefficients).
   Included by half.h. */

#define CN_AFFINE(x, hi, lo, scale, beta) ((((x) - (hi)) - (lo)) * (scale) + (beta))
#define CN_LN_ROW(x, w, b) (((((x) - hi) - lo) * rs) * (w) + (b))
#define CN_BN_GRAD(g, x, hi, lo, invstd, k1, mean_dy, mean_dy_xhat) \
    ((k1) * (((g) - (mean_dy)) - (mean_dy_xhat) * ((((x) - (hi)) - (lo)) * (invstd))))
#define CN_ROW_GRAD(dy, x, w) \
    (rstd * ((((dy) * (w)) - mean_g) - mean_gxhat * ((((x) - hi) - lo) * rstd)))
#define CN_BN_GRAD_COL(g, xv) \
    CN_BN_GRAD(g, xv, hi[i], lo[i], invstd[i], k1[i], mean_dy[i], mean_dy_xhat[i])
#define CN_BN_GRAD_COL_V(g, xv)                                                             \
    CN_BN_GRAD(g, xv, load(hi + i), load(lo + i), load(invstd + i), load(k1 + i),          \
               load(mean_dy + i), load(mean_dy_xhat + i))
#define CN_AFFINE_COL(xv) CN_AFFINE(xv, hi[i], lo[i], scale[i], beta[i])
#define CN_AFFINE_COL_V(xv) \
    CN_AFFINE(xv, load(hi + i), load(lo + i), load(scale + i), load(beta + i))
#define relu(v) CN_FN(relu)(v)
#if CN_VEC
/* relu_v's bits (loops.h: v where v > 0 or NaN, else +0) in one compare: not v <= 0 */
CN_HHELPER V CN_FN(relu_nle)(V v) { return (V)((M)v & ~(M)(v <= 0)); }
#define relu_v(v) CN_FN(relu_nle)(v)
#else
#define relu_v(v) CN_FN(relu_v)(v)
#endif
#define mask_grad(g, y) CN_FN(mask_grad)(g, y)
#define mask_grad_v(g, y) CN_FN(mask_grad_v)(g, y)

/* y = ((x - hi) - lo) * scale + beta, one channel's run (then the ReLU when fused): the
   body of affine and runs_affine */
CN_HBODY void CN_FN(affine_in)(X* CN_RESTRICT y, const X* CN_RESTRICT x, ptrdiff_t n, T hi,
                               T lo, T scale, T beta, int stream, int relu)
{
    const int ov = (const void*)y != (const void*)x;
    if (relu)
        CN_H_EACH_OV(y, n, relu(CN_AFFINE(XS(x), hi, lo, scale, beta)),
                     relu_v(CN_AFFINE(XV(x), hi, lo, scale, beta)), ov);
    else
        CN_H_EACH_OV(y, n, CN_AFFINE(XS(x), hi, lo, scale, beta),
                     CN_AFFINE(XV(x), hi, lo, scale, beta), ov);
}

CN_HLOOP void CN_FN(affine)(X* CN_RESTRICT y, const X* CN_RESTRICT x, ptrdiff_t n, T hi, T lo,
                            T scale, T beta, int stream, int relu)
{
    CN_FN(affine_in)(y, x, n, hi, lo, scale, beta, stream, relu);
}

/* affine of nrows consecutive runs of n values, run p with the coefficients hi[p], lo[p],
   scale[p], beta[p]: a row of planes of consecutive channels in one call (S = 196: one
   call per row, not per plane), never streamed */
CN_HLOOP void CN_FN(runs_affine)(X* CN_RESTRICT y, const X* CN_RESTRICT x, ptrdiff_t n,
                                 ptrdiff_t nrows, const T* CN_RESTRICT hi, const T* CN_RESTRICT lo,
                                 const T* CN_RESTRICT scale, const T* CN_RESTRICT beta, int relu)
{
    ptrdiff_t p;
    for (p = 0; p < nrows; p++)
        CN_FN(affine_in)(y + p * n, x + p * n, n, hi[p], lo[p], scale[p], beta[p], 0, relu);
}

/* the same with per-element coefficients: a row of an (N, C) batch, n = C */
CN_HLOOP void CN_FN(affine_cols)(X* CN_RESTRICT y, const X* CN_RESTRICT x, ptrdiff_t n,
                                 const T* CN_RESTRICT hi, const T* CN_RESTRICT lo,
                                 const T* CN_RESTRICT scale, const T* CN_RESTRICT beta,
                                 int stream, int relu)
{
    if (relu)
        CN_H_EACH_COLS(y, n, relu(CN_AFFINE_COL(XS(x))), relu_v(CN_AFFINE_COL_V(XV(x))));
    else
        CN_H_EACH_COLS(y, n, CN_AFFINE_COL(XS(x)), CN_AFFINE_COL_V(XV(x)));
}

/* LayerNorm forward: y = xhat * w + b, xhat = d * rs */
CN_HLOOP void CN_FN(ln_row)(X* CN_RESTRICT y, const X* CN_RESTRICT x, const T* CN_RESTRICT w,
                            const T* CN_RESTRICT b, ptrdiff_t n, T hi, T lo, T rs, int stream)
{
    CN_H_EACH_COLS(y, n, CN_LN_ROW(XS(x), w[i], b[i]), CN_LN_ROW(XV(x), load(w + i), load(b + i)));
}

/* BatchNorm input gradient: dx = k1 * ((g - mean_dy) - mean_dy_xhat * xhat) */
CN_HLOOP void CN_FN(bn_grad)(X* CN_RESTRICT dx, const X* CN_RESTRICT dy, const X* CN_RESTRICT x,
                             ptrdiff_t n, T hi, T lo, T invstd, T k1, T mean_dy, T mean_dy_xhat,
                             int stream, const X* CN_RESTRICT ym)
{
    const int ov = (const void*)dx != (const void*)dy && (const void*)dx != (const void*)x
                   && (const void*)dx != (const void*)ym;
    if (ym)
        CN_H_EACH_OV(dx, n,
                     CN_BN_GRAD(mask_grad(XS(dy), XS(ym)), XS(x), hi, lo, invstd, k1, mean_dy,
                                mean_dy_xhat),
                     CN_BN_GRAD(mask_grad_v(XV(dy), XV(ym)), XV(x), hi, lo, invstd, k1, mean_dy,
                                mean_dy_xhat), ov);
    else
        CN_H_EACH_OV(dx, n, CN_BN_GRAD(XS(dy), XS(x), hi, lo, invstd, k1, mean_dy, mean_dy_xhat),
                     CN_BN_GRAD(XV(dy), XV(x), hi, lo, invstd, k1, mean_dy, mean_dy_xhat), ov);
}

/* the same with per-element coefficients: a row of an (N, C) batch, n = C */
CN_HLOOP void CN_FN(bn_grad_cols)(X* CN_RESTRICT dx, const X* CN_RESTRICT dy, const X* CN_RESTRICT x,
                                  ptrdiff_t n, const T* CN_RESTRICT hi, const T* CN_RESTRICT lo,
                                  const T* CN_RESTRICT invstd, const T* CN_RESTRICT k1,
                                  const T* CN_RESTRICT mean_dy, const T* CN_RESTRICT mean_dy_xhat,
                                  int stream, const X* CN_RESTRICT ym)
{
    if (ym)
        CN_H_EACH_COLS(dx, n, CN_BN_GRAD_COL(mask_grad(XS(dy), XS(ym)), XS(x)),
                  CN_BN_GRAD_COL_V(mask_grad_v(XV(dy), XV(ym)), XV(x)));
    else
        CN_H_EACH_COLS(dx, n, CN_BN_GRAD_COL(XS(dy), XS(x)), CN_BN_GRAD_COL_V(XV(dy), XV(x)));
}

/* one LayerNorm row's input gradient, g = dy * w:
   dx = rstd * ((g - mean_g) - mean_gxhat * xhat) */
CN_HLOOP void CN_FN(ln_grad_row)(X* CN_RESTRICT dx, const X* CN_RESTRICT dy,
                                 const X* CN_RESTRICT x, const T* CN_RESTRICT w, ptrdiff_t n,
                                 T hi, T lo, T rstd, T mean_g, T mean_gxhat, int stream)
{
    CN_H_EACH_COLS(dx, n, CN_ROW_GRAD(XS(dy), XS(x), w[i]), CN_ROW_GRAD(XV(dy), XV(x), load(w + i)));
}

/* one channel's segment of a GroupNorm / InstanceNorm row: one weight w */
CN_HLOOP void CN_FN(gn_grad_segment)(X* CN_RESTRICT dx, const X* CN_RESTRICT dy,
                                     const X* CN_RESTRICT x, ptrdiff_t n, T hi, T lo, T rstd,
                                     T w, T mean_g, T mean_gxhat, int stream)
{
    CN_H_EACH(dx, n, CN_ROW_GRAD(XS(dy), XS(x), w), CN_ROW_GRAD(XV(dy), XV(x), w));
}

/* out = a + b rounded (the fused residual add) */
CN_HLOOP void CN_FN(residual_add)(X* CN_RESTRICT out, const X* CN_RESTRICT a,
                                  const X* CN_RESTRICT b, ptrdiff_t n, int stream)
{
    CN_H_EACH(out, n, XS(a) + XS(b), XV(a) + XV(b));
}

#undef CN_AFFINE_COL
#undef CN_AFFINE_COL_V
#undef relu
#undef relu_v
#undef mask_grad
#undef mask_grad_v
