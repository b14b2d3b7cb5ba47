/* The reductions of loops.h (see there): a contiguous block summed over the lanes of
   a bundle, and (N, C) tiles with one lane per channel. Included by loops.h only. */

/* ---- reductions over a contiguous block ----------------------------------------------- */

/* sum(x) */
CN_LOOP double CN_FN(block_sum)(const T* CN_RESTRICT x, ptrdiff_t n)
{
    V acc[K];
    T lanes[L];
    ptrdiff_t i = 0, k;
    for (k = 0; k < K; k++) acc[k] = splat(0);
    for (; i + L <= n; i += L)
        for (k = 0; k < K; k++) acc[k] += load(x + i + k * W);
    memcpy(lanes, acc, sizeof lanes);
    for (; i < n; i++) lanes[i % L] += x[i];
    return tree(lanes);
}

/* s1 = sum(x - shift), s2 = sum((x - shift)^2) */
CN_LOOP void CN_FN(block_dev)(double* s1, double* s2, const T* CN_RESTRICT x, ptrdiff_t n,
                              T shift)
{
    V p[K], q[K];
    const V vs = splat(shift);
    T a1[L], a2[L];
    ptrdiff_t i = 0, k;
    for (k = 0; k < K; k++) p[k] = q[k] = splat(0);
    for (; i + L <= n; i += L)
        for (k = 0; k < K; k++) {
            V v = load(x + i + k * W) - vs;
            p[k] += v;
            q[k] += v * v;
        }
    memcpy(a1, p, sizeof a1);
    memcpy(a2, q, sizeof a2);
    for (; i < n; i++) {
        T d = x[i] - shift;
        a1[i % L] += d;
        a2[i % L] += d * d;
    }
    *s1 = tree(a1);
    *s2 = tree(a2);
}

/* common.block_stats of nrows consecutive runs of n (1 <= n <= BLOCK) values at x: run p's
   mean and M2 in mean[p], m2[p], or m2[p] = -1 where its float32 sums need the float64
   redo (cn_f32_sums_unsafe; the caller redoes it). One call for a channel's blocks or
   a row of short planes: the same operations as block_sum, block_dev and block_stats. */
CN_LOOP void CN_FN(runs_stats)(double* CN_RESTRICT mean, double* CN_RESTRICT m2,
                               const T* CN_RESTRICT x, ptrdiff_t n, ptrdiff_t nrows)
{
    const double inv_n = 1.0 / (double)n;
    ptrdiff_t p;
    for (p = 0; p < nrows; p++) {
        const T* r = x + p * n;
        const T shift = (T)(CN_FN(block_sum)(r, n) * inv_n);
        double s1, s2, corr;
        CN_FN(block_dev)(&s1, &s2, r, n, shift);
#if CN_T_BYTES == 4
        if (cn_f32_sums_unsafe(s1, s2, shift)) {
            mean[p] = 0;
            m2[p] = -1;
            continue;
        }
#endif
        corr = s1 * s1 * inv_n;
        mean[p] = shift + s1 * inv_n;
        m2[p] = s2 > corr ? s2 - corr : 0.0;
    }
}

/* batch-norm backward sums: s_dy = sum(g), s_dyd = sum(g * d), with g = dy, or
   g = (ym > 0 ? dy : 0) when ym (the output of a fused BN + ReLU) is given */
CN_LOOP void CN_FN(bn_grad_sums)(double* s_dy, double* s_dyd, const T* CN_RESTRICT dy,
                                 const T* CN_RESTRICT x, ptrdiff_t n, T hi, T lo,
                                 const T* CN_RESTRICT ym)
{
    V p[K], q[K];
    const V vh = splat(hi), vl = splat(lo);
    T a1[L], a2[L];
    ptrdiff_t i = 0, k;
    for (k = 0; k < K; k++) p[k] = q[k] = splat(0);
    if (ym) {
        for (; i + L <= n; i += L)
            for (k = 0; k < K; k++) {
                const ptrdiff_t o = i + k * W;
                V g = CN_FN(mask_grad_v)(load(dy + o), load(ym + o));
                V d = (load(x + o) - vh) - vl;
                p[k] += g;
                q[k] += g * d;
            }
    } else {
        for (; i + L <= n; i += L)
            for (k = 0; k < K; k++) {
                const ptrdiff_t o = i + k * W;
                V g = load(dy + o);
                V d = (load(x + o) - vh) - vl;
                p[k] += g;
                q[k] += g * d;
            }
    }
    memcpy(a1, p, sizeof a1);
    memcpy(a2, q, sizeof a2);
    for (; i < n; i++) {
        T d = (x[i] - hi) - lo;
        T g = ym ? CN_FN(mask_grad)(dy[i], ym[i]) : dy[i];
        a1[i % L] += g;
        a2[i % L] += g * d;
    }
    *s_dy = tree(a1);
    *s_dyd = tree(a2);
}

/* LayerNorm backward sums of one row, g = dy * w: s_g = sum(g), s_gd = sum(g * d);
   and the dweight/dbias partials tw += dy * xhat (xhat = d * rs), tb += dy */
CN_LOOP void CN_FN(ln_grad_sums)(double* s_g, double* s_gd, T* CN_RESTRICT tw,
                                 T* CN_RESTRICT tb, const T* CN_RESTRICT dy,
                                 const T* CN_RESTRICT x, const T* CN_RESTRICT w, ptrdiff_t n,
                                 T hi, T lo, T rs)
{
    V p[K], q[K];
    const V vh = splat(hi), vl = splat(lo), vr = splat(rs);
    T a1[L], a2[L];
    ptrdiff_t i = 0, k;
    for (k = 0; k < K; k++) p[k] = q[k] = splat(0);
    for (; i + L <= n; i += L)
        for (k = 0; k < K; k++) {
            const ptrdiff_t o = i + k * W;
            V g = load(dy + o);
            V d = (load(x + o) - vh) - vl;
            V gw = g * load(w + o);
            p[k] += gw;
            q[k] += gw * d;
            store(tw + o, load(tw + o) + g * (d * vr));
            store(tb + o, load(tb + o) + g);
        }
    memcpy(a1, p, sizeof a1);
    memcpy(a2, q, sizeof a2);
    for (; i < n; i++) {
        T d = (x[i] - hi) - lo;
        T g = dy[i] * w[i];
        a1[i % L] += g;
        a2[i % L] += g * d;
        tw[i] += dy[i] * (d * rs);
        tb[i] += dy[i];
    }
    *s_g = tree(a1);
    *s_gd = tree(a2);
}

/* the same for two rows at once (each row's sums bit-identical to ln_grad_sums): the
   dweight/dbias partials are loaded and stored once per two rows,
   tw += dy0 * xhat0 + dy1 * xhat1, tb += dy0 + dy1; s_g, s_gd: (2,) */
CN_LOOP void CN_FN(ln_grad_sums2)(double* s_g, double* s_gd, T* CN_RESTRICT tw,
                                  T* CN_RESTRICT tb, const T* CN_RESTRICT dy0,
                                  const T* CN_RESTRICT dy1, const T* CN_RESTRICT x0,
                                  const T* CN_RESTRICT x1, const T* CN_RESTRICT w,
                                  ptrdiff_t n, T hi0, T lo0, T rs0, T hi1, T lo1, T rs1)
{
    V p0[K], q0[K], p1[K], q1[K];
    const V h0 = splat(hi0), l0 = splat(lo0), r0 = splat(rs0);
    const V h1 = splat(hi1), l1 = splat(lo1), r1 = splat(rs1);
    T a0[L], b0[L], a1[L], b1[L];
    ptrdiff_t i = 0, k;
    for (k = 0; k < K; k++) p0[k] = q0[k] = p1[k] = q1[k] = splat(0);
    for (; i + L <= n; i += L)
        for (k = 0; k < K; k++) {
            const ptrdiff_t o = i + k * W;
            V g0 = load(dy0 + o), g1 = load(dy1 + o), wv = load(w + o);
            V d0 = (load(x0 + o) - h0) - l0, d1 = (load(x1 + o) - h1) - l1;
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
        T d0 = (x0[i] - hi0) - lo0, d1 = (x1[i] - hi1) - lo1;
        T g0 = dy0[i] * w[i], g1 = dy1[i] * w[i];
        a0[i % L] += g0;
        b0[i % L] += g0 * d0;
        a1[i % L] += g1;
        b1[i % L] += g1 * d1;
        tw[i] += dy0[i] * (d0 * rs0) + dy1[i] * (d1 * rs1);
        tb[i] += dy0[i] + dy1[i];
    }
    s_g[0] = tree(a0);
    s_gd[0] = tree(b0);
    s_g[1] = tree(a1);
    s_gd[1] = tree(b1);
}

/* ---- (N, C) tiles, one lane per channel ------------------------------------------------
   nrows rows of n channels (stride ld) stream four at a time through a loop over
   channels (the compiler vectorizes it), so each accumulator is loaded and stored once
   per four rows. Per channel the order is fixed: rows in groups of four,
   ((r0 + r1) + (r2 + r3)), then the leftover rows one by one. Outputs: (n,) each. */

/* s = sum over rows of x */
CN_LOOP void CN_FN(cols_sum)(T* CN_RESTRICT s, const T* CN_RESTRICT x, ptrdiff_t ld,
                             ptrdiff_t nrows, ptrdiff_t n)
{
    ptrdiff_t i, r = 0;
    for (i = 0; i < n; i++) s[i] = 0;
    for (; r + 4 <= nrows; r += 4) {
        const T* CN_RESTRICT a = x + r * ld;
        const T* CN_RESTRICT b = a + ld;
        const T* CN_RESTRICT c = b + ld;
        const T* CN_RESTRICT d = c + ld;
        for (i = 0; i < n; i++) s[i] += (a[i] + b[i]) + (c[i] + d[i]);
    }
    for (; r < nrows; r++) {
        const T* CN_RESTRICT a = x + r * ld;
        for (i = 0; i < n; i++) s[i] += a[i];
    }
}

/* s1 = sum over rows of (x - shift), s2 = sum of (x - shift)^2 */
CN_LOOP void CN_FN(cols_dev)(T* CN_RESTRICT s1, T* CN_RESTRICT s2, const T* CN_RESTRICT x,
                             ptrdiff_t ld, ptrdiff_t nrows, const T* CN_RESTRICT shift, ptrdiff_t n)
{
    ptrdiff_t i, r = 0;
    for (i = 0; i < n; i++) s1[i] = s2[i] = 0;
    for (; r + 4 <= nrows; r += 4) {
        const T* CN_RESTRICT a = x + r * ld;
        const T* CN_RESTRICT b = a + ld;
        const T* CN_RESTRICT c = b + ld;
        const T* CN_RESTRICT d = c + ld;
        for (i = 0; i < n; i++) {
            T da = a[i] - shift[i], db = b[i] - shift[i];
            T dc = c[i] - shift[i], dd = d[i] - shift[i];
            s1[i] += (da + db) + (dc + dd);
            s2[i] += (da * da + db * db) + (dc * dc + dd * dd);
        }
    }
    for (; r < nrows; r++) {
        const T* CN_RESTRICT a = x + r * ld;
        for (i = 0; i < n; i++) {
            T da = a[i] - shift[i];
            s1[i] += da;
            s2[i] += da * da;
        }
    }
}

/* s1 = sum over rows of g, s2 = sum of g * d; g = dy, masked by ym > 0 when ym is
   given (fused BN + ReLU) */
#define CN_COLS_BLOCK 256
CN_LOOP void CN_FN(bn_grad_sums_cols)(T* CN_RESTRICT s1, T* CN_RESTRICT s2,
                                      const T* CN_RESTRICT dy, const T* CN_RESTRICT x,
                                      ptrdiff_t ld, ptrdiff_t nrows, const T* CN_RESTRICT hi,
                                      const T* CN_RESTRICT lo, ptrdiff_t n,
                                      const T* CN_RESTRICT ym)
{
    ptrdiff_t i, r = 0;
    for (i = 0; i < n; i++) s1[i] = s2[i] = 0;
    if (ym) {
        for (r = 0; r < nrows; r++) {
            const T* CN_RESTRICT xa = x + r * ld;
            const T* CN_RESTRICT ga = dy + r * ld;
            const T* CN_RESTRICT ya = ym + r * ld;
            for (i = 0; i < n; i++) {
                T da = (xa[i] - hi[i]) - lo[i], g = CN_FN(mask_grad)(ga[i], ya[i]);
                s1[i] += g;
                s2[i] += g * da;
            }
        }
        return;
    }
    for (; r + 2 <= nrows; r += 2) {
        /* rows a, b in pairs, but a block of row a first, then the same block of row b
           (the products of a kept in t): one memory stream per array at a time, which
           measured faster than reading both rows in one loop; the same operations */
        ptrdiff_t b0, nb;
        for (b0 = 0; b0 < n; b0 += CN_COLS_BLOCK) {
            const T* CN_RESTRICT xa = x + r * ld + b0;
            const T* CN_RESTRICT xb = xa + ld;
            const T* CN_RESTRICT ga = dy + r * ld + b0;
            const T* CN_RESTRICT gb = ga + ld;
            const T* CN_RESTRICT h = hi + b0;
            const T* CN_RESTRICT l = lo + b0;
            T* CN_RESTRICT u1 = s1 + b0;
            T* CN_RESTRICT u2 = s2 + b0;
            T t[CN_COLS_BLOCK];
            nb = n - b0 < CN_COLS_BLOCK ? n - b0 : CN_COLS_BLOCK;
            for (i = 0; i < nb; i++) t[i] = ga[i] * ((xa[i] - h[i]) - l[i]);
            for (i = 0; i < nb; i++) {
                T db = (xb[i] - h[i]) - l[i];
                u1[i] += ga[i] + gb[i];
                u2[i] += t[i] + gb[i] * db;
            }
        }
    }
    for (; r < nrows; r++) {
        const T* CN_RESTRICT xa = x + r * ld;
        const T* CN_RESTRICT ga = dy + r * ld;
        for (i = 0; i < n; i++) {
            T da = (xa[i] - hi[i]) - lo[i];
            s1[i] += ga[i];
            s2[i] += ga[i] * da;
        }
    }
}

/* merge a tile's per-channel block statistics (shift, s1 = sum(x - shift),
   s2 = sum((x - shift)^2) over nb rows) into (mean, m2) of the count_a rows before
   (Chan; all channels share the counts, so this is one vector loop). mean, m2 start
   at 0. */
CN_LOOP void CN_FN(cols_merge)(double* CN_RESTRICT mean, double* CN_RESTRICT m2,
                               const T* CN_RESTRICT shift, const T* CN_RESTRICT s1,
                               const T* CN_RESTRICT s2, ptrdiff_t n, double count_a, double nb)
{
    const double inv_nb = 1.0 / nb, frac = nb / (count_a + nb), w = count_a * frac;
    ptrdiff_t i;
    for (i = 0; i < n; i++) {
        double q = s1[i], mb = shift[i] + q * inv_nb, m2b = s2[i] - q * q * inv_nb;
        double delta = mb - mean[i];
        m2b = m2b > 0 ? m2b : 0;
        mean[i] += delta * frac;
        m2[i] += m2b + delta * delta * w;
    }
}

/* 1 when the float32 sums of some channel need a float64 redo (cn_f32_sums_unsafe) */
CN_LOOP int CN_FN(cols_any_unsafe)(const T* CN_RESTRICT s1, const T* CN_RESTRICT s2,
                                   const T* CN_RESTRICT shift, ptrdiff_t n)
{
    ptrdiff_t i;
    int bad = 0;
    for (i = 0; i < n; i++) bad |= cn_f32_sums_unsafe(s1[i], s2[i], shift[i]);
    return bad;
}
