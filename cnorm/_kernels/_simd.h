/* Inner loops of the cnorm kernels, for float (suffix _f) and double (suffix _d).
 *
 * Why C: the reductions need independent lane accumulators held in registers, which
 * GCC does not derive from Cython's scalar code without -ffast-math. Each reduction
 * keeps a 64-byte "bundle" of lanes (16 floats / 8 doubles): 4 SSE vectors in the
 * baseline build, 2 AVX vectors in the AVX2 build. Lane j always accumulates the
 * elements i + j, so both builds give the same bits (with -ffp-contract=off: no FMA
 * contraction) and the choice of build never changes a result.
 *
 * Every loop is compiled twice on x86-64 with GCC/Clang: baseline (SSE2) and AVX2
 * (target attribute); cn_simd_init() picks one at import, from the CPU and the
 * CNORM_SIMD environment variable ("baseline" forces SSE2). Elsewhere (ARM, other
 * compilers) only the baseline exists (NEON with 16-byte vectors on ARM).
 *
 * Conventions (llm.c style): outputs first, then inputs, then sizes; n is a length in
 * elements; "d" is x - mean formed as (x - hi) - lo (see split_mean in _stats.pxd).
 */
#ifndef CNORM_SIMD_H
#define CNORM_SIMD_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <float.h>

/* float32 block sums of squares below this are redone in float64 (f32_sums_unsafe) */
#define CN_TINY_SUM_SQUARES 1e-28
#define CN_TINY_SHIFT 1e-12

#if defined(__GNUC__)
#define CN_RESTRICT __restrict__
#define CN_NOINLINE __attribute__((noinline))
#else
#define CN_RESTRICT
#define CN_NOINLINE
#endif

#if defined(__GNUC__) && defined(__x86_64__) && (!defined(__clang__) || __clang_major__ >= 9)
#define CN_HAVE_AVX2_BUILD 1
#define CN_ATTR_AVX2 __attribute__((target("avx2"), noinline))
#else
#define CN_HAVE_AVX2_BUILD 0
#endif

#define CN_BUNDLE_BYTES 64
#define CN_PASTE_(a, b) a##b
#define CN_PASTE(a, b) CN_PASTE_(a, b)

/* Sum of the lanes of a bundle by a fixed pairwise tree, in the lane precision (a
   serial float64 chain over 16 lanes costs ~64 cycles: too much for short rows). */
static inline double cn_tree_f(float* a)        /* 16 lanes */
{
    float b[8], c[4];
    int j;
    for (j = 0; j < 8; j++) b[j] = a[j] + a[j + 8];
    for (j = 0; j < 4; j++) c[j] = b[j] + b[j + 4];
    return (double)((c[0] + c[2]) + (c[1] + c[3]));
}

static inline double cn_tree_d(double* a)       /* 8 lanes */
{
    double c[4];
    int j;
    for (j = 0; j < 4; j++) c[j] = a[j] + a[j + 4];
    return (c[0] + c[2]) + (c[1] + c[3]);
}

/* ---------------------------------------------------------------------------------- */
/* One instantiation of every loop. ISA: name suffix; VB: vector bytes (0 = no vector  */
/* extensions: scalar lanes in the same order); ATTR: function attributes.             */
#if defined(__GNUC__)
#define CN_VEC_TYPEDEF(T, VB) typedef T V __attribute__((vector_size(VB)));
#define CN_REDUCE_VEC(T, VB, INIT, BODY, SPILL)                                            \
    {                                                                                      \
        CN_VEC_TYPEDEF(T, VB)                                                              \
        enum { K = CN_BUNDLE_BYTES / VB, W = VB / (int)sizeof(T) };                        \
        int k;                                                                             \
        INIT                                                                               \
        for (; i + L <= n; i += L)                                                         \
            for (k = 0; k < K; k++) { const ptrdiff_t o = i + k * W; BODY }                \
        SPILL                                                                              \
    }

#endif

/* The elementwise formulas, with LD(p) = element i of p (scalar or vector). */
#define CN_AFFINE_EXPR(LD) (((LD(x) - hi) - lo) * scale + beta)
#define CN_AFFINE_COLS_EXPR(LD) (((LD(x) - LD(hi)) - LD(lo)) * LD(scale) + LD(beta))
#define CN_LN_ROW_EXPR(LD) ((((LD(x) - hi) - lo) * rs) * LD(w) + LD(b))
/* Gradients are formed from O(1) terms, x̂ = (x - mean) * invstd first: coefficients such
   as invstd^3 would over- or underflow float32 for data of scale 1e±13 and beyond. */
#define CN_GRAD_EXPR(LD) (k1 * ((LD(dy) - mdy) - k2 * (((LD(x) - hi) - lo) * s)))
#define CN_GRAD_COLS_EXPR(LD) \
    (LD(k1) * ((LD(dy) - LD(mdy)) - LD(k2) * (((LD(x) - LD(hi)) - LD(lo)) * LD(s))))
#define CN_ADD_EXPR(LD) (LD(a) + LD(b))
#define CN_SEG_GRAD_EXPR(LD) (ka * ((LD(dy) * w - kb) - kc * (((LD(x) - hi) - lo) * ka)))
#define CN_LN_GRAD_EXPR(LD) (k0 * ((LD(dy) * LD(w) - c1) - c2 * (((LD(x) - hi) - lo) * k0)))

#define CN_LD_SCALAR(p) ((p)[i])

/* ReLU of a value and "g where y > 0, else 0", for scalars (suffix CN_LD_SCALAR) and
   vectors (suffix CN_LD_VEC); an EXPR picks the form with CN_PASTE(CN_RELU_, LD).
   NaN stays NaN through the ReLU (as torch.relu) and a NaN y masks its gradient out. */
#define CN_RELU_CN_LD_SCALAR(v)                                                            \
    (__extension__({ __typeof__(v) t_ = (v); (t_ > 0 || t_ != t_) ? t_ : (__typeof__(t_))0; }))
#define CN_MASK_CN_LD_SCALAR(g, yv) ((yv) > 0 ? (g) : (__typeof__(g))0)
#define CN_RELU_CN_LD_VEC(v)                                                               \
    (__extension__({ V t_ = (v); __typeof__(t_ > 0) m_ = (t_ > 0) | (t_ != t_);            \
                     (V)((__typeof__(m_))t_ & m_); }))
#define CN_MASK_CN_LD_VEC(g, yv)                                                           \
    (__extension__({ V g_ = (g); (V)((__typeof__(g_ > 0))g_ & ((yv) > 0)); }))

#define CN_AFFINE_RELU_EXPR(LD) CN_PASTE(CN_RELU_, LD)(CN_AFFINE_EXPR(LD))
#define CN_AFFINE_COLS_RELU_EXPR(LD) CN_PASTE(CN_RELU_, LD)(CN_AFFINE_COLS_EXPR(LD))
#define CN_GRAD_MASKED_EXPR(LD)                                                            \
    (k1 * ((CN_PASTE(CN_MASK_, LD)(LD(dy), LD(ym)) - mdy) - k2 * (((LD(x) - hi) - lo) * s)))
#define CN_GRAD_COLS_MASKED_EXPR(LD)                                                       \
    (LD(k1) * ((CN_PASTE(CN_MASK_, LD)(LD(dy), LD(ym)) - LD(mdy))                          \
               - LD(k2) * (((LD(x) - LD(hi)) - LD(lo)) * LD(s))))

#if CN_HAVE_AVX2_BUILD || (defined(__GNUC__) && defined(__SSE2__))
#include <immintrin.h>
#include <stdint.h>
#define CN_CAN_STREAM 1
/* a non-temporal store of one vector of VB bytes (p aligned to VB) */
#define CN_STREAM_STORE_16(p, v) _mm_stream_si128((__m128i*)(void*)(p), (__m128i)(v))
#define CN_STREAM_STORE_32(p, v) _mm256_stream_si256((__m256i*)(void*)(p), (__m256i)(v))

#else
#define CN_CAN_STREAM 0
#endif

#if defined(__GNUC__) && CN_CAN_STREAM
#define CN_ELEMWISE(T, VB, out, n, stream, EXPR)                                           \
    ptrdiff_t i = 0;                                                                       \
    if (stream) {                                                                          \
        CN_VEC_TYPEDEF(T, VB)                                                              \
        enum { W = VB / (int)sizeof(T) };                                                  \
        for (; i < n && ((uintptr_t)(out + i) % VB) != 0; i++) out[i] = EXPR(CN_LD_SCALAR);\
        for (; i + W <= n; i += W) {                                                       \
            V r_ = EXPR(CN_LD_VEC);                                                        \
            CN_PASTE(CN_STREAM_STORE_, VB)(out + i, r_);                                   \
        }                                                                                  \
    }                                                                                      \
    for (; i < n; i++) out[i] = EXPR(CN_LD_SCALAR);
/* element i.. i+W-1 of p as a vector */
#define CN_LD_VEC(p) (__extension__({ V v_; memcpy(&v_, (p) + i, sizeof v_); v_; }))
#else
#define CN_ELEMWISE(T, VB, out, n, stream, EXPR)                                           \
    ptrdiff_t i;                                                                           \
    (void)(stream);                                                                        \
    for (i = 0; i < n; i++) out[i] = EXPR(CN_LD_SCALAR);
#endif

#define CN_DEFINE_LOOPS(T, S, ISA, VB, ATTR)                                               \
                                                                                           \
/* sum of x[0:n] in T precision over L independent lanes */                              \
ATTR static double cn_sum_##S##_##ISA(const T* CN_RESTRICT x, ptrdiff_t n)                \
{                                                                                          \
    enum { L = CN_BUNDLE_BYTES / sizeof(T) };                                              \
    T acc[L] = {0};                                                                        \
    ptrdiff_t i = 0;                                                                       \
    double s = 0;                                                                          \
    CN_REDUCE_VEC(T, VB,                                                                   \
        V va[K]; for (k = 0; k < K; k++) va[k] = (V){0};,                                  \
        V v; memcpy(&v, x + o, VB); va[k] += v;,                                           \
        memcpy(acc, va, sizeof va);)                                                       \
    for (; i < n; i++) acc[i % L] += x[i];                                                 \
    s = cn_tree_##S(acc);                                                              \
    return s;                                                                              \
}                                                                                          \
                                                                                           \
/* s1 = sum(x - shift), s2 = sum((x - shift)^2), in T precision over lanes */             \
ATTR static void cn_dev_##S##_##ISA(double* s1, double* s2, const T* CN_RESTRICT x,       \
                                    ptrdiff_t n, T shift)                                  \
{                                                                                          \
    enum { L = CN_BUNDLE_BYTES / sizeof(T) };                                              \
    T a1[L] = {0}, a2[L] = {0};                                                            \
    ptrdiff_t i = 0;                                                                       \
    double r1 = 0, r2 = 0;                                                                 \
    CN_REDUCE_VEC(T, VB,                                                                   \
        V p[K]; V q[K]; V vs = (V){0} + shift;                                              \
        for (k = 0; k < K; k++) p[k] = q[k] = (V){0};,                                     \
        V v; memcpy(&v, x + o, VB); v -= vs; p[k] += v; q[k] += v * v;,                    \
        memcpy(a1, p, sizeof p); memcpy(a2, q, sizeof q);)                                 \
    for (; i < n; i++) { T d = x[i] - shift; a1[i % L] += d; a2[i % L] += d * d; }        \
    r1 = cn_tree_##S(a1);                                                              \
    r2 = cn_tree_##S(a2);                                                              \
    *s1 = r1; *s2 = r2;                                                                    \
}                                                                                          \
                                                                                           \
/* batch-norm backward sums: s_dy = sum(g), s_dyd = sum(g * ((x - hi) - lo)), with         \
   g = dy, or g = (y > 0 ? dy : 0) when ym (the output of a fused BN + ReLU) is given */   \
ATTR static void cn_dot_dev_##S##_##ISA(double* s_dy, double* s_dyd,                      \
                                        const T* CN_RESTRICT dy, const T* CN_RESTRICT x,   \
                                        ptrdiff_t n, T hi, T lo, const T* CN_RESTRICT ym)  \
{                                                                                          \
    enum { L = CN_BUNDLE_BYTES / sizeof(T) };                                              \
    T a1[L] = {0}, a2[L] = {0};                                                            \
    ptrdiff_t i = 0;                                                                       \
    if (ym) {                                                                              \
        CN_REDUCE_VEC(T, VB,                                                               \
            V p[K]; V q[K]; V vh = (V){0} + hi; V vl = (V){0} + lo;                        \
            for (k = 0; k < K; k++) p[k] = q[k] = (V){0};,                                 \
            V v; V g; V yv; memcpy(&v, x + o, VB); memcpy(&g, dy + o, VB);                 \
            memcpy(&yv, ym + o, VB); g = CN_MASK_CN_LD_VEC(g, yv);                         \
            v = (v - vh) - vl; p[k] += g; q[k] += g * v;,                                  \
            memcpy(a1, p, sizeof p); memcpy(a2, q, sizeof q);)                             \
    } else {                                                                               \
        CN_REDUCE_VEC(T, VB,                                                               \
            V p[K]; V q[K]; V vh = (V){0} + hi; V vl = (V){0} + lo;                        \
            for (k = 0; k < K; k++) p[k] = q[k] = (V){0};,                                 \
            V v; V g; memcpy(&v, x + o, VB); memcpy(&g, dy + o, VB);                       \
            v = (v - vh) - vl; p[k] += g; q[k] += g * v;,                                  \
            memcpy(a1, p, sizeof p); memcpy(a2, q, sizeof q);)                             \
    }                                                                                      \
    for (; i < n; i++) {                                                                   \
        T d = (x[i] - hi) - lo;                                                            \
        T g = ym ? CN_MASK_CN_LD_SCALAR(dy[i], ym[i]) : dy[i];                             \
        a1[i % L] += g; a2[i % L] += g * d;                                                \
    }                                                                                      \
    *s_dy = cn_tree_##S(a1);                                                               \
    *s_dyd = cn_tree_##S(a2);                                                              \
}                                                                                          \
                                                                                           \
/* LayerNorm backward sums of one row, g = dy * w, d = (x - hi) - lo:                     \
   s_g = sum(g), s_gd = sum(g * d); and the dweight/dbias partials                        \
   tw += dy * (d * rs), tb += dy */                                                        \
ATTR static void cn_ln_grad_sums_##S##_##ISA(double* s_g, double* s_gd,                   \
                                             T* CN_RESTRICT tw, T* CN_RESTRICT tb,         \
                                             const T* CN_RESTRICT dy,                      \
                                             const T* CN_RESTRICT x,                       \
                                             const T* CN_RESTRICT w, ptrdiff_t n,          \
                                             T hi, T lo, T rs)                             \
{                                                                                          \
    enum { L = CN_BUNDLE_BYTES / sizeof(T) };                                              \
    T a1[L] = {0}, a2[L] = {0};                                                            \
    ptrdiff_t i = 0;                                                                       \
    double r1 = 0, r2 = 0;                                                                 \
    CN_REDUCE_VEC(T, VB,                                                                   \
        V p[K]; V q[K]; V vh = (V){0} + hi; V vl = (V){0} + lo; V vr = (V){0} + rs;       \
        for (k = 0; k < K; k++) p[k] = q[k] = (V){0};,                                     \
        V v; V g; V gw; V t;                                                               \
        memcpy(&v, x + o, VB); memcpy(&g, dy + o, VB); memcpy(&gw, w + o, VB);             \
        v = (v - vh) - vl; gw = g * gw; p[k] += gw; q[k] += gw * v;                        \
        memcpy(&t, tw + o, VB); t += g * (v * vr); memcpy(tw + o, &t, VB);                 \
        memcpy(&t, tb + o, VB); t += g; memcpy(tb + o, &t, VB);,                           \
        memcpy(a1, p, sizeof p); memcpy(a2, q, sizeof q);)                                 \
    for (; i < n; i++) {                                                                   \
        T d = (x[i] - hi) - lo;                                                            \
        T g = dy[i] * w[i];                                                                \
        a1[i % L] += g; a2[i % L] += g * d;                                                \
        tw[i] += dy[i] * (d * rs); tb[i] += dy[i];                                         \
    }                                                                                      \
    r1 = cn_tree_##S(a1);                                                              \
    r2 = cn_tree_##S(a2);                                                              \
    *s_g = r1; *s_gd = r2;                                                                 \
}                                                                                          \
                                                                                           \
/* the same for two rows at once (row sums bit-identical to the one-row version): the    \
   dweight/dbias partials are loaded and stored once per two rows,                         \
   tw += dy0 * xhat0 + dy1 * xhat1, tb += dy0 + dy1 */                                     \
ATTR static void cn_ln_grad_sums2_##S##_##ISA(double* s_g, double* s_gd,                  \
                                              T* CN_RESTRICT tw, T* CN_RESTRICT tb,        \
                                              const T* CN_RESTRICT dy0,                    \
                                              const T* CN_RESTRICT dy1,                    \
                                              const T* CN_RESTRICT x0,                     \
                                              const T* CN_RESTRICT x1,                     \
                                              const T* CN_RESTRICT w, ptrdiff_t n,         \
                                              T hi0, T lo0, T rs0, T hi1, T lo1, T rs1)    \
{                                                                                          \
    enum { L = CN_BUNDLE_BYTES / sizeof(T) };                                              \
    T a1[L] = {0}, a2[L] = {0}, b1[L] = {0}, b2[L] = {0};                                  \
    ptrdiff_t i = 0;                                                                       \
    const T* CN_RESTRICT x = x0;                                                           \
    CN_REDUCE_VEC(T, VB,                                                                   \
        V p[K]; V q[K]; V pp[K]; V qq[K];                                                  \
        V h0 = (V){0} + hi0; V l0 = (V){0} + lo0; V r0 = (V){0} + rs0;                    \
        V h1 = (V){0} + hi1; V l1 = (V){0} + lo1; V r1 = (V){0} + rs1;                    \
        for (k = 0; k < K; k++) p[k] = q[k] = pp[k] = qq[k] = (V){0};,                     \
        V v0; V v1; V g0; V g1; V gw; V t;                                                 \
        memcpy(&v0, x0 + o, VB); memcpy(&g0, dy0 + o, VB); memcpy(&gw, w + o, VB);         \
        memcpy(&v1, x1 + o, VB); memcpy(&g1, dy1 + o, VB);                                 \
        v0 = (v0 - h0) - l0; v1 = (v1 - h1) - l1;                                          \
        p[k] += g0 * gw; q[k] += (g0 * gw) * v0; pp[k] += g1 * gw; qq[k] += (g1 * gw) * v1;\
        memcpy(&t, tw + o, VB); t += g0 * (v0 * r0) + g1 * (v1 * r1); memcpy(tw + o, &t, VB);\
        memcpy(&t, tb + o, VB); t += g0 + g1; memcpy(tb + o, &t, VB);,                     \
        memcpy(a1, p, sizeof p); memcpy(a2, q, sizeof q);                                  \
        memcpy(b1, pp, sizeof pp); memcpy(b2, qq, sizeof qq);)                             \
    (void)x;                                                                               \
    for (; i < n; i++) {                                                                   \
        T d0 = (x0[i] - hi0) - lo0, d1 = (x1[i] - hi1) - lo1;                              \
        T g0 = dy0[i] * w[i], g1 = dy1[i] * w[i];                                          \
        a1[i % L] += g0; a2[i % L] += g0 * d0; b1[i % L] += g1; b2[i % L] += g1 * d1;      \
        tw[i] += dy0[i] * (d0 * rs0) + dy1[i] * (d1 * rs1); tb[i] += dy0[i] + dy1[i];      \
    }                                                                                      \
    s_g[0] = cn_tree_##S(a1); s_gd[0] = cn_tree_##S(a2);                                   \
    s_g[1] = cn_tree_##S(b1); s_gd[1] = cn_tree_##S(b2);                                   \
}                                                                                          \
                                                                                           \
/* ---- elementwise loops: out[i] = EXPR(i) over n elements ----                            \
   EXPR is written once with an accessor LD(p) (element i of p) and used for the scalar    \
   loop and, when stream != 0, for a vector loop with non-temporal stores: a large output  \
   then goes straight to memory instead of being read in first (write-allocate), a third  \
   less memory traffic for a pass that is bound by it. */                                  \
                                                                                           \
/* y = ((x - hi) - lo) * scale + beta */                                                   \
ATTR static void cn_affine_##S##_##ISA(T* CN_RESTRICT y, const T* CN_RESTRICT x,          \
                                       ptrdiff_t n, T hi, T lo, T scale, T beta,           \
                                       int stream, int relu)                               \
{                                                                                          \
    if (relu) { CN_ELEMWISE(T, VB, y, n, stream, CN_AFFINE_RELU_EXPR) }                    \
    else { CN_ELEMWISE(T, VB, y, n, stream, CN_AFFINE_EXPR) }                              \
}                                                                                          \
                                                                                           \
/* the same with per-element coefficients (a row of an (N, C) batch) */                    \
ATTR static void cn_affine_cols_##S##_##ISA(T* CN_RESTRICT y, const T* CN_RESTRICT x,     \
                                            ptrdiff_t n, const T* CN_RESTRICT hi,          \
                                            const T* CN_RESTRICT lo,                       \
                                            const T* CN_RESTRICT scale,                    \
                                            const T* CN_RESTRICT beta, int stream,         \
                                            int relu)                                      \
{                                                                                          \
    if (relu) { CN_ELEMWISE(T, VB, y, n, stream, CN_AFFINE_COLS_RELU_EXPR) }               \
    else { CN_ELEMWISE(T, VB, y, n, stream, CN_AFFINE_COLS_EXPR) }                         \
}                                                                                          \
                                                                                           \
/* four rows (stride ld) of an (N, C) batch at once: each coefficient is loaded once for  \
   four outputs (the one-row loop is bound by its five loads per element) */               \
ATTR static void cn_affine_cols4_##S##_##ISA(T* CN_RESTRICT y, const T* CN_RESTRICT x,    \
                                             ptrdiff_t ld, ptrdiff_t n,                    \
                                             const T* CN_RESTRICT hi,                      \
                                             const T* CN_RESTRICT lo,                      \
                                             const T* CN_RESTRICT scale,                   \
                                             const T* CN_RESTRICT beta, int relu)          \
{                                                                                          \
    ptrdiff_t i, r;                                                                        \
    if (relu) {                                                                            \
        for (i = 0; i < n; i++) {                                                          \
            const T h = hi[i], l = lo[i], s = scale[i], b = beta[i];                       \
            for (r = 0; r < 4; r++)                                                        \
                y[r * ld + i] = CN_RELU_CN_LD_SCALAR(((x[r * ld + i] - h) - l) * s + b);   \
        }                                                                                  \
        return;                                                                            \
    }                                                                                      \
    for (i = 0; i < n; i++) {                                                              \
        const T h = hi[i], l = lo[i], s = scale[i], b = beta[i];                           \
        for (r = 0; r < 4; r++) y[r * ld + i] = ((x[r * ld + i] - h) - l) * s + b;         \
    }                                                                                      \
}                                                                                          \
                                                                                           \
/* LayerNorm row: y = (((x - hi) - lo) * rs) * w + b */                                    \
ATTR static void cn_ln_row_##S##_##ISA(T* CN_RESTRICT y, const T* CN_RESTRICT x,          \
                                       const T* CN_RESTRICT w, const T* CN_RESTRICT b,     \
                                       ptrdiff_t n, T hi, T lo, T rs, int stream)          \
{                                                                                          \
    CN_ELEMWISE(T, VB, y, n, stream, CN_LN_ROW_EXPR)                                       \
}                                                                                          \
                                                                                           \
/* batch-norm input gradient: dx = k1 * (dy - mdy) + k2 * ((x - hi) - lo) */              \
ATTR static void cn_grad_##S##_##ISA(T* CN_RESTRICT dx, const T* CN_RESTRICT dy,          \
                                     const T* CN_RESTRICT x, ptrdiff_t n,                  \
                                     T hi, T lo, T s, T k1, T mdy, T k2, int stream,       \
                                     const T* CN_RESTRICT ym)                              \
{                                                                                          \
    if (ym) { CN_ELEMWISE(T, VB, dx, n, stream, CN_GRAD_MASKED_EXPR) }                     \
    else { CN_ELEMWISE(T, VB, dx, n, stream, CN_GRAD_EXPR) }                               \
}                                                                                          \
                                                                                           \
ATTR static void cn_grad_cols_##S##_##ISA(T* CN_RESTRICT dx, const T* CN_RESTRICT dy,     \
                                          const T* CN_RESTRICT x, ptrdiff_t n,             \
                                          const T* CN_RESTRICT hi,                         \
                                          const T* CN_RESTRICT lo,                         \
                                          const T* CN_RESTRICT s,                          \
                                          const T* CN_RESTRICT k1,                         \
                                          const T* CN_RESTRICT mdy,                        \
                                          const T* CN_RESTRICT k2, int stream,             \
                                          const T* CN_RESTRICT ym)                         \
{                                                                                          \
    if (ym) { CN_ELEMWISE(T, VB, dx, n, stream, CN_GRAD_COLS_MASKED_EXPR) }                \
    else { CN_ELEMWISE(T, VB, dx, n, stream, CN_GRAD_COLS_EXPR) }                          \
}                                                                                          \
                                                                                           \
ATTR static void cn_grad_cols4_##S##_##ISA(T* CN_RESTRICT dx, const T* CN_RESTRICT dy,    \
                                           const T* CN_RESTRICT x, ptrdiff_t ld,           \
                                           ptrdiff_t n, const T* CN_RESTRICT hi,           \
                                           const T* CN_RESTRICT lo,                        \
                                           const T* CN_RESTRICT s,                         \
                                           const T* CN_RESTRICT k1,                        \
                                           const T* CN_RESTRICT mdy,                       \
                                           const T* CN_RESTRICT k2,                        \
                                           const T* CN_RESTRICT ym)                        \
{                                                                                          \
    ptrdiff_t i, r;                                                                        \
    if (ym) {                                                                              \
        for (i = 0; i < n; i++) {                                                          \
            const T h = hi[i], l = lo[i], v = s[i], a = k1[i], m = mdy[i], c = k2[i];      \
            for (r = 0; r < 4; r++)                                                        \
                dx[r * ld + i] = a * ((CN_MASK_CN_LD_SCALAR(dy[r * ld + i], ym[r * ld + i]) - m) \
                                      - c * (((x[r * ld + i] - h) - l) * v));              \
        }                                                                                  \
        return;                                                                            \
    }                                                                                      \
    for (i = 0; i < n; i++) {                                                              \
        const T h = hi[i], l = lo[i], v = s[i], a = k1[i], m = mdy[i], c = k2[i];          \
        for (r = 0; r < 4; r++)                                                            \
            dx[r * ld + i] = a * ((dy[r * ld + i] - m) - c * (((x[r * ld + i] - h) - l) * v)); \
    }                                                                                      \
}                                                                                          \
                                                                                           \
/* LayerNorm input gradient: dx = k0 * (dy * w) - c1 - c2 * ((x - hi) - lo) */            \
ATTR static void cn_ln_grad_row_##S##_##ISA(T* CN_RESTRICT dx, const T* CN_RESTRICT dy,   \
                                            const T* CN_RESTRICT x,                        \
                                            const T* CN_RESTRICT w, ptrdiff_t n,           \
                                            T hi, T lo, T k0, T c1, T c2, int stream)      \
{                                                                                          \
    CN_ELEMWISE(T, VB, dx, n, stream, CN_LN_GRAD_EXPR)                                     \
}                                                                                          \
                                                                                           \
/* out = a + b (the fused residual add) */                                                 \
ATTR static void cn_add_##S##_##ISA(T* CN_RESTRICT out, const T* CN_RESTRICT a,           \
                                    const T* CN_RESTRICT b, ptrdiff_t n, int stream)       \
{                                                                                          \
    CN_ELEMWISE(T, VB, out, n, stream, CN_ADD_EXPR)                                        \
}                                                                                          \
                                                                                           \
/* dx = ka * dy - kb - kc * ((x - hi) - lo): a row-norm gradient over a segment with one  \
   affine weight (GroupNorm / InstanceNorm channels) */                                    \
ATTR static void cn_seg_grad_##S##_##ISA(T* CN_RESTRICT dx, const T* CN_RESTRICT dy,      \
                                         const T* CN_RESTRICT x, ptrdiff_t n, T hi, T lo,  \
                                         T ka, T w, T kb, T kc, int stream)                \
{                                                                                          \
    CN_ELEMWISE(T, VB, dx, n, stream, CN_SEG_GRAD_EXPR)                                    \
}                                                                                          \
                                                                                           \
/* (N, C) tiles, one lane per channel: rows stream by four at a time through an           \
   elementwise loop (the compiler vectorizes it across channels), so each accumulator is  \
   loaded and stored once per four rows. Per channel the order is fixed: rows in groups   \
   of four, ((r0 + r1) + (r2 + r3)), then the leftover rows one by one.  */               \
/* s = sum over rows of x */                                                               \
ATTR static void cn_cols_sum_##S##_##ISA(T* CN_RESTRICT s, const T* CN_RESTRICT x,        \
                                         ptrdiff_t ld, ptrdiff_t nrows, ptrdiff_t n)       \
{                                                                                          \
    ptrdiff_t i, r = 0;                                                                    \
    for (i = 0; i < n; i++) s[i] = 0;                                                      \
    for (; r + 4 <= nrows; r += 4) {                                                       \
        const T* CN_RESTRICT a = x + r * ld; const T* CN_RESTRICT b = a + ld;              \
        const T* CN_RESTRICT c = b + ld; const T* CN_RESTRICT d = c + ld;                  \
        for (i = 0; i < n; i++) s[i] += (a[i] + b[i]) + (c[i] + d[i]);                     \
    }                                                                                      \
    for (; r < nrows; r++) {                                                               \
        const T* CN_RESTRICT a = x + r * ld;                                               \
        for (i = 0; i < n; i++) s[i] += a[i];                                              \
    }                                                                                      \
}                                                                                          \
                                                                                           \
/* s1 = sum over rows of (x - shift), s2 = sum of (x - shift)^2 */                         \
ATTR static void cn_cols_dev_##S##_##ISA(T* CN_RESTRICT s1, T* CN_RESTRICT s2,            \
                                         const T* CN_RESTRICT x, ptrdiff_t ld,             \
                                         ptrdiff_t nrows, const T* CN_RESTRICT shift,      \
                                         ptrdiff_t n)                                      \
{                                                                                          \
    ptrdiff_t i, r = 0;                                                                    \
    for (i = 0; i < n; i++) s1[i] = s2[i] = 0;                                             \
    for (; r + 4 <= nrows; r += 4) {                                                       \
        const T* CN_RESTRICT a = x + r * ld; const T* CN_RESTRICT b = a + ld;              \
        const T* CN_RESTRICT c = b + ld; const T* CN_RESTRICT d = c + ld;                  \
        for (i = 0; i < n; i++) {                                                          \
            T da = a[i] - shift[i], db = b[i] - shift[i];                                  \
            T dc = c[i] - shift[i], dd = d[i] - shift[i];                                  \
            s1[i] += (da + db) + (dc + dd);                                                \
            s2[i] += (da * da + db * db) + (dc * dc + dd * dd);                            \
        }                                                                                  \
    }                                                                                      \
    for (; r < nrows; r++) {                                                               \
        const T* CN_RESTRICT a = x + r * ld;                                               \
        for (i = 0; i < n; i++) { T da = a[i] - shift[i]; s1[i] += da; s2[i] += da * da; } \
    }                                                                                      \
}                                                                                          \
                                                                                           \
/* s1 = sum over rows of g, s2 = sum of g * ((x - hi) - lo); g = dy, masked by y > 0 when  \
   ym is given */                                                                          \
ATTR static void cn_cols_grad_sums_##S##_##ISA(T* CN_RESTRICT s1, T* CN_RESTRICT s2,      \
                                               const T* CN_RESTRICT dy,                    \
                                               const T* CN_RESTRICT x, ptrdiff_t ld,       \
                                               ptrdiff_t nrows, const T* CN_RESTRICT hi,   \
                                               const T* CN_RESTRICT lo, ptrdiff_t n,       \
                                               const T* CN_RESTRICT ym)                    \
{                                                                                          \
    ptrdiff_t i, r = 0;                                                                    \
    for (i = 0; i < n; i++) s1[i] = s2[i] = 0;                                             \
    if (ym) {                                                                              \
        for (r = 0; r < nrows; r++) {                                                      \
            const T* CN_RESTRICT xa = x + r * ld; const T* CN_RESTRICT ga = dy + r * ld;   \
            const T* CN_RESTRICT ya = ym + r * ld;                                         \
            for (i = 0; i < n; i++) {                                                      \
                T da = (xa[i] - hi[i]) - lo[i], g = CN_MASK_CN_LD_SCALAR(ga[i], ya[i]);    \
                s1[i] += g; s2[i] += g * da;                                               \
            }                                                                              \
        }                                                                                  \
        return;                                                                            \
    }                                                                                      \
    for (; r + 2 <= nrows; r += 2) {                                                       \
        const T* CN_RESTRICT xa = x + r * ld; const T* CN_RESTRICT xb = xa + ld;           \
        const T* CN_RESTRICT ga = dy + r * ld; const T* CN_RESTRICT gb = ga + ld;          \
        for (i = 0; i < n; i++) {                                                          \
            T da = (xa[i] - hi[i]) - lo[i], db = (xb[i] - hi[i]) - lo[i];                  \
            s1[i] += ga[i] + gb[i];                                                        \
            s2[i] += ga[i] * da + gb[i] * db;                                              \
        }                                                                                  \
    }                                                                                      \
    for (; r < nrows; r++) {                                                               \
        const T* CN_RESTRICT xa = x + r * ld; const T* CN_RESTRICT ga = dy + r * ld;       \
        for (i = 0; i < n; i++) {                                                          \
            T da = (xa[i] - hi[i]) - lo[i];                                                \
            s1[i] += ga[i]; s2[i] += ga[i] * da;                                           \
        }                                                                                  \
    }                                                                                      \
}                                                                                          \
                                                                                           \
/* (N, C) tiles: merge the tile's per-channel block statistics (shift, s1 = sum(x-shift),    \
   s2 = sum((x-shift)^2) over nb rows) into (mean, m2) after count_a rows (Chan; all      \
   channels share the counts, so this is one vector loop). mean, m2 start at 0. */        \
ATTR static void cn_col_merge_##S##_##ISA(double* CN_RESTRICT mean, double* CN_RESTRICT m2, \
                                          const T* CN_RESTRICT shift,                      \
                                          const T* CN_RESTRICT s1,                         \
                                          const T* CN_RESTRICT s2, ptrdiff_t n,            \
                                          double count_a, double nb)                       \
{                                                                                          \
    const double inv_nb = 1.0 / nb, frac = nb / (count_a + nb), w = count_a * frac;        \
    ptrdiff_t i;                                                                           \
    for (i = 0; i < n; i++) {                                                              \
        double q = s1[i], mb = shift[i] + q * inv_nb, m2b = s2[i] - q * q * inv_nb;        \
        double delta = mb - mean[i];                                                       \
        m2b = m2b > 0 ? m2b : 0;                                                           \
        mean[i] += delta * frac;                                                           \
        m2[i] += m2b + delta * delta * w;                                                  \
    }                                                                                      \
}                                                                                          \
                                                                                           \
/* 1 when, for some channel, float32 sums need a float64 redo: s2 overflowed or is NaN,   \
   or the squares are subnormal-small (see f32_sums_unsafe in _stats.pxd) */              \
ATTR static int cn_any_unsafe_##S##_##ISA(const T* CN_RESTRICT s1, const T* CN_RESTRICT s2, \
                                          const T* CN_RESTRICT shift, ptrdiff_t n)         \
{                                                                                          \
    ptrdiff_t i;                                                                           \
    int bad = 0;                                                                           \
    for (i = 0; i < n; i++)                                                                \
        bad |= !(s2[i] <= FLT_MAX)                                                         \
               | ((s2[i] < CN_TINY_SUM_SQUARES)                                            \
                  & ((s2[i] > 0) | (s1[i] != 0)                                            \
                     | ((shift[i] < CN_TINY_SHIFT) & (shift[i] > -CN_TINY_SHIFT))));        \
    return bad;                                                                            \
}

#if !defined(__GNUC__)      /* no vector extensions: the same lanes, scalar */
#define CN_REDUCE_VEC(T, VB, INIT, BODY, SPILL)
#endif

CN_DEFINE_LOOPS(float, f, base, 16, CN_NOINLINE)
CN_DEFINE_LOOPS(double, d, base, 16, CN_NOINLINE)
#if CN_HAVE_AVX2_BUILD
CN_DEFINE_LOOPS(float, f, avx2, 32, CN_ATTR_AVX2)
CN_DEFINE_LOOPS(double, d, avx2, 32, CN_ATTR_AVX2)
#endif

/* ---------------------------------------------------------------------------------- */
/* dispatch: 1 when the AVX2 build runs. Set once at import (cn_simd_init); the tests   */
/* flip it to check that both builds give the same bits.                               */
static int cn_use_avx2 = 0;
/* outputs of at least this many bytes are written with non-temporal stores: input and
   output then exceed a typical L3 (an 8 MB output still fits with its input in 32 MB and
   gets slower streamed; 12 MB and up got 15-25% faster here). CNORM_STREAM_MIN_BYTES
   overrides, 0 disables. */
static ptrdiff_t cn_stream_min_bytes = (ptrdiff_t)10 << 20;

/* Orders the non-temporal stores of this thread before what follows: once per thread
   at the end of a streamed pass (a fence per row would drain the write-combining buffers
   over and over). */
static inline void cn_stream_fence(void)
{
#if CN_CAN_STREAM
    _mm_sfence();
#endif
}

static int cn_simd_init(void)
{
    const char* stream_env = getenv("CNORM_STREAM_MIN_BYTES");
    if (stream_env && *stream_env) {
        long long v = atoll(stream_env);
        cn_stream_min_bytes = v > 0 ? (ptrdiff_t)v : PTRDIFF_MAX;
    }
#if CN_HAVE_AVX2_BUILD
    const char* env = getenv("CNORM_SIMD");
    __builtin_cpu_init();
    cn_use_avx2 = __builtin_cpu_supports("avx2") && !(env && strcmp(env, "baseline") == 0);
#endif
    return cn_use_avx2;
}

static int cn_simd_set(int use_avx2)
{
#if CN_HAVE_AVX2_BUILD
    __builtin_cpu_init();
    cn_use_avx2 = use_avx2 && __builtin_cpu_supports("avx2");
#else
    (void)use_avx2;
#endif
    return cn_use_avx2;
}

#if CN_HAVE_AVX2_BUILD
#define CN_PICK(name, S) (cn_use_avx2 ? name##_##S##_avx2 : name##_##S##_base)
#else
#define CN_PICK(name, S) name##_##S##_base
#endif

#define CN_DISPATCHERS(T, S)                                                               \
static inline double cn_sum_##S(const T* x, ptrdiff_t n)                                   \
{ return CN_PICK(cn_sum, S)(x, n); }                                                       \
static inline void cn_dev_##S(double* s1, double* s2, const T* x, ptrdiff_t n, T shift)    \
{ CN_PICK(cn_dev, S)(s1, s2, x, n, shift); }                                               \
static inline void cn_dot_dev_##S(double* a, double* b, const T* dy, const T* x,           \
                                  ptrdiff_t n, T hi, T lo, const T* ym)                    \
{ CN_PICK(cn_dot_dev, S)(a, b, dy, x, n, hi, lo, ym); }                                        \
static inline void cn_ln_grad_sums_##S(double* a, double* b, T* tw, T* tb, const T* dy,    \
                                       const T* x, const T* w, ptrdiff_t n,                \
                                       T hi, T lo, T rs)                                   \
{ CN_PICK(cn_ln_grad_sums, S)(a, b, tw, tb, dy, x, w, n, hi, lo, rs); }                    \
static inline void cn_ln_grad_sums2_##S(double* a, double* b, T* tw, T* tb, const T* dy0,   \
                                        const T* dy1, const T* x0, const T* x1, const T* w, \
                                        ptrdiff_t n, T hi0, T lo0, T rs0, T hi1, T lo1,    \
                                        T rs1)                                             \
{ CN_PICK(cn_ln_grad_sums2, S)(a, b, tw, tb, dy0, dy1, x0, x1, w, n, hi0, lo0, rs0, hi1,   \
                               lo1, rs1); }                                                \
static inline void cn_affine_##S(T* y, const T* x, ptrdiff_t n, T hi, T lo, T sc, T be,    \
                                 int stream, int relu)                                     \
{ CN_PICK(cn_affine, S)(y, x, n, hi, lo, sc, be, stream, relu); }                                        \
static inline void cn_affine_cols_##S(T* y, const T* x, ptrdiff_t n, const T* hi,          \
                                      const T* lo, const T* sc, const T* be, int stream,   \
                                      int relu)                                            \
{ CN_PICK(cn_affine_cols, S)(y, x, n, hi, lo, sc, be, stream, relu); }                                   \
static inline void cn_affine_cols4_##S(T* y, const T* x, ptrdiff_t ld, ptrdiff_t n,          \
                                       const T* hi, const T* lo, const T* sc, const T* be,  \
                                       int relu)                                           \
{ CN_PICK(cn_affine_cols4, S)(y, x, ld, n, hi, lo, sc, be, relu); }                              \
static inline void cn_grad_cols4_##S(T* dx, const T* dy, const T* x, ptrdiff_t ld,         \
                                     ptrdiff_t n, const T* hi, const T* lo, const T* s,    \
                                     const T* k1, const T* mdy, const T* k2, const T* ym)  \
{ CN_PICK(cn_grad_cols4, S)(dx, dy, x, ld, n, hi, lo, s, k1, mdy, k2, ym); }                      \
static inline void cn_ln_row_##S(T* y, const T* x, const T* w, const T* b, ptrdiff_t n,    \
                                 T hi, T lo, T rs, int stream)                             \
{ CN_PICK(cn_ln_row, S)(y, x, w, b, n, hi, lo, rs, stream); }                                      \
static inline void cn_grad_##S(T* dx, const T* dy, const T* x, ptrdiff_t n, T hi, T lo,    \
                               T s, T k1, T mdy, T k2, int stream, const T* ym)            \
{ CN_PICK(cn_grad, S)(dx, dy, x, n, hi, lo, s, k1, mdy, k2, stream, ym); }                                \
static inline void cn_grad_cols_##S(T* dx, const T* dy, const T* x, ptrdiff_t n,           \
                                    const T* hi, const T* lo, const T* s, const T* k1,     \
                                    const T* mdy, const T* k2, int stream, const T* ym)    \
{ CN_PICK(cn_grad_cols, S)(dx, dy, x, n, hi, lo, s, k1, mdy, k2, stream, ym); }                           \
static inline void cn_ln_grad_row_##S(T* dx, const T* dy, const T* x, const T* w,          \
                                      ptrdiff_t n, T hi, T lo, T k0, T c1, T c2, int stream)  \
{ CN_PICK(cn_ln_grad_row, S)(dx, dy, x, w, n, hi, lo, k0, c1, c2, stream); }                       \
static inline void cn_add_##S(T* out, const T* a, const T* b, ptrdiff_t n, int stream)      \
{ CN_PICK(cn_add, S)(out, a, b, n, stream); }                                              \
static inline void cn_seg_grad_##S(T* dx, const T* dy, const T* x, ptrdiff_t n, T hi, T lo, \
                                   T ka, T w, T kb, T kc, int stream)                      \
{ CN_PICK(cn_seg_grad, S)(dx, dy, x, n, hi, lo, ka, w, kb, kc, stream); }                     \
static inline void cn_cols_sum_##S(T* s, const T* x, ptrdiff_t ld, ptrdiff_t nrows,         \
                                   ptrdiff_t n)                                            \
{ CN_PICK(cn_cols_sum, S)(s, x, ld, nrows, n); }                                           \
static inline void cn_cols_dev_##S(T* s1, T* s2, const T* x, ptrdiff_t ld, ptrdiff_t nrows, \
                                   const T* shift, ptrdiff_t n)                            \
{ CN_PICK(cn_cols_dev, S)(s1, s2, x, ld, nrows, shift, n); }                               \
static inline void cn_cols_grad_sums_##S(T* s1, T* s2, const T* dy, const T* x,            \
                                         ptrdiff_t ld, ptrdiff_t nrows, const T* hi,       \
                                         const T* lo, ptrdiff_t n, const T* ym)            \
{ CN_PICK(cn_cols_grad_sums, S)(s1, s2, dy, x, ld, nrows, hi, lo, n, ym); }                    \
static inline void cn_col_merge_##S(double* mean, double* m2, const T* shift, const T* s1,   \
                                    const T* s2, ptrdiff_t n, double count_a, double nb)   \
{ CN_PICK(cn_col_merge, S)(mean, m2, shift, s1, s2, n, count_a, nb); }                     \
static inline int cn_any_unsafe_##S(const T* s1, const T* s2, const T* shift, ptrdiff_t n)  \
{ return CN_PICK(cn_any_unsafe, S)(s1, s2, shift, n); }

CN_DISPATCHERS(float, f)
CN_DISPATCHERS(double, d)

#endif /* CNORM_SIMD_H */
