/* The reductions of half storage (half.h; the float32 loops of the same name are in
   reduce.h): the same lanes and order, each storage load widened (a bundle by
   CN_H_BUNDLE: in order, or bfloat16 on avx2 the even and odd elements, whose lanes
   CN_H_LANES puts back in order). Included by half.h. */

/* sum(x) (the body of block_sum, inlined in runs_stats too) */
CN_HBODY double CN_FN(block_sum_in)(const X* CN_RESTRICT x, ptrdiff_t n)
{
    V acc[K];
    T lanes[L];
    ptrdiff_t i = 0, k;
    for (k = 0; k < K; k++) acc[k] = splat(0);
    CN_H_UNROLL for (; i <= n - L; i += L)
        for (k = 0; k < K; k++) acc[k] += CN_H_BUNDLE(x + i, k);
    CN_H_LANES(lanes, acc);
    for (; i < n; i++) lanes[i % L] += XS(x);
    return tree(lanes);
}

CN_HLOOP double CN_FN(block_sum)(const X* CN_RESTRICT x, ptrdiff_t n)
{
    return CN_FN(block_sum_in)(x, n);
}

/* s1 = sum(x - shift), s2 = sum((x - shift)^2) (the body of block_dev) */
CN_HBODY void CN_FN(block_dev_in)(double* s1, double* s2, const X* CN_RESTRICT x,
                                    ptrdiff_t n, T shift)
{
    V p[K], q[K];
    const V vs = splat(shift);
    T a1[L], a2[L];
    ptrdiff_t i = 0, k;
    for (k = 0; k < K; k++) p[k] = q[k] = splat(0);
    CN_H_UNROLL for (; i <= n - L; i += L)
        for (k = 0; k < K; k++) {
            V v = CN_H_BUNDLE(x + i, k) - vs;
            p[k] += v;
            q[k] += v * v;
        }
    CN_H_LANES(a1, p);
    CN_H_LANES(a2, q);
    for (; i < n; i++) {
        T d = XS(x) - shift;
        a1[i % L] += d;
        a2[i % L] += d * d;
    }
    *s1 = tree(a1);
    *s2 = tree(a2);
}

CN_HLOOP void CN_FN(block_dev)(double* s1, double* s2, const X* CN_RESTRICT x, ptrdiff_t n,
                               T shift)
{
    CN_FN(block_dev_in)(s1, s2, x, n, shift);
}

/* common.block_stats of nrows consecutive runs of n (1 <= n <= BLOCK) half values at x:
   reduce.h's runs_stats (m2[p] = -1: the float64 redo is the caller's), with the bodies
   of block_sum and block_dev inlined: one call for a row of short planes or a
   channel's blocks, the same operations, so the same bits. */
CN_HLOOP void CN_FN(runs_stats)(double* CN_RESTRICT mean, double* CN_RESTRICT m2,
                                const X* CN_RESTRICT x, ptrdiff_t n, ptrdiff_t nrows)
{
    const double inv_n = 1.0 / (double)n;
    ptrdiff_t p;
    for (p = 0; p < nrows; p++) {
        const X* r = x + p * n;
        const T shift = (T)(CN_FN(block_sum_in)(r, n) * inv_n);
        double s1, s2, corr;
        CN_FN(block_dev_in)(&s1, &s2, r, n, shift);
        if (cn_f32_sums_unsafe(s1, s2, shift)) {
            mean[p] = 0;
            m2[p] = -1;
            continue;
        }
        corr = s1 * s1 * inv_n;
        mean[p] = shift + s1 * inv_n;
        m2[p] = s2 > corr ? s2 - corr : 0.0;
    }
}

/* s_dy = sum(g), s_dyd = sum(g * d); g = dy, masked by ym > 0 when ym is given */
CN_HLOOP void CN_FN(bn_grad_sums)(double* s_dy, double* s_dyd, const X* CN_RESTRICT dy,
                                  const X* CN_RESTRICT x, ptrdiff_t n, T hi, T lo,
                                  const X* CN_RESTRICT ym)
{
    V p[K], q[K];
    const V vh = splat(hi), vl = splat(lo);
    T a1[L], a2[L];
    ptrdiff_t i = 0, k;
    for (k = 0; k < K; k++) p[k] = q[k] = splat(0);
    CN_H_UNROLL for (; i <= n - L; i += L)
        for (k = 0; k < K; k++) {
            V g = CN_H_BUNDLE(dy + i, k);
            V d = (CN_H_BUNDLE(x + i, k) - vh) - vl;
            if (ym)
                g = CN_FN(mask_grad_v)(g, CN_H_BUNDLE(ym + i, k));
            p[k] += g;
            q[k] += g * d;
        }
    CN_H_LANES(a1, p);
    CN_H_LANES(a2, q);
    for (; i < n; i++) {
        T d = (XS(x) - hi) - lo;
        T g = ym ? CN_FN(mask_grad)(XS(dy), XS(ym)) : XS(dy);
        a1[i % L] += g;
        a2[i % L] += g * d;
    }
    *s_dy = tree(a1);
    *s_dyd = tree(a2);
}

/* one LayerNorm row, g = dy * w: s_g = sum(g), s_gd = sum(g * d); tw += dy * (d * rs),
   tb += dy */
CN_HLOOP void CN_FN(ln_grad_sums)(double* s_g, double* s_gd, T* CN_RESTRICT tw,
                                  T* CN_RESTRICT tb, const X* CN_RESTRICT dy,
                                  const X* CN_RESTRICT x, const T* CN_RESTRICT w, ptrdiff_t n,
                                  T hi, T lo, T rs)
{
    const V vh = splat(hi), vl = splat(lo), vr = splat(rs);
    V p[K], q[K];
    T a1[L], a2[L];
    ptrdiff_t k, i = 0;
    for (k = 0; k < K; k++) p[k] = q[k] = splat(0);
    for (; i <= n - L; i += L)
        for (k = 0; k < K; k++) {
            const ptrdiff_t o = i + k * W;
            V g = CN_FN(ldx)(dy + o), d = (CN_FN(ldx)(x + o) - vh) - vl, gw = g * load(w + o);
            p[k] += gw;
            q[k] += gw * d;
            store(tw + o, load(tw + o) + g * (d * vr));
            store(tb + o, load(tb + o) + g);
        }
    memcpy(a1, p, sizeof a1);
    memcpy(a2, q, sizeof a2);
    for (; i < n; i++) {
        T g = XS(dy), d = (XS(x) - hi) - lo;
        a1[i % L] += g * w[i];
        a2[i % L] += (g * w[i]) * d;
        tw[i] += g * (d * rs);
        tb[i] += g;
    }
    *s_g = tree(a1);
    *s_gd = tree(a2);
}

/* two rows at once (each row's sums those of ln_grad_sums): s_g, s_gd (2,);
   tw += dy0 * xhat0 + dy1 * xhat1, tb += dy0 + dy1 */
CN_HLOOP void CN_FN(ln_grad_sums2)(double* s_g, double* s_gd, T* CN_RESTRICT tw,
                                   T* CN_RESTRICT tb, const X* CN_RESTRICT dy0,
                                   const X* CN_RESTRICT dy1, const X* CN_RESTRICT x0,
                                   const X* CN_RESTRICT x1, const T* CN_RESTRICT w,
                                   ptrdiff_t n, T hi0, T lo0, T rs0, T hi1, T lo1, T rs1)
{
    V p0[K], q0[K], p1[K], q1[K];
    const V h0 = splat(hi0), l0 = splat(lo0), r0 = splat(rs0);
    const V h1 = splat(hi1), l1 = splat(lo1), r1 = splat(rs1);
    T a0[L], b0[L], a1[L], b1[L];
    ptrdiff_t i = 0, k;
    for (k = 0; k < K; k++) p0[k] = q0[k] = p1[k] = q1[k] = splat(0);
    for (; i <= n - L; i += L)
        for (k = 0; k < K; k++) {
            const ptrdiff_t o = i + k * W;
            V g0 = CN_FN(ldx)(dy0 + o), g1 = CN_FN(ldx)(dy1 + o), wv = load(w + o);
            V d0 = (CN_FN(ldx)(x0 + o) - h0) - l0, d1 = (CN_FN(ldx)(x1 + o) - h1) - l1;
            p0[k] += g0 * wv;
            q0[k] += (g0 * wv) * d0;
            p1[k] += g1 * wv;
            q1[k] += (g1 * wv) * d1;
            store(tw + o, load(tw + o) + (g0 * (d0 * r0) + g1 * (d1 * r1)));
            store(tb + o, load(tb + o) + (g0 + g1));
        }
    memcpy(a0, p0, sizeof a0);
    memcpy(b0, q0, sizeof b0);
    memcpy(a1, p1, sizeof a1);
    memcpy(b1, q1, sizeof b1);
    for (; i < n; i++) {
        T g0 = XS(dy0), g1 = XS(dy1), d0 = (XS(x0) - hi0) - lo0, d1 = (XS(x1) - hi1) - lo1;
        a0[i % L] += g0 * w[i];
        b0[i % L] += (g0 * w[i]) * d0;
        a1[i % L] += g1 * w[i];
        b1[i % L] += (g1 * w[i]) * d1;
        tw[i] += g0 * (d0 * rs0) + g1 * (d1 * rs1);
        tb[i] += g0 + g1;
    }
    s_g[0] = tree(a0);
    s_gd[0] = tree(b0);
    s_g[1] = tree(a1);
    s_gd[1] = tree(b1);
}
