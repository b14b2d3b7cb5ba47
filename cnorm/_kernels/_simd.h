/* Inner loops of the cnorm kernels, for float (suffix _f) and double (suffix _d).
 *
 * Why C: the reductions need independent lane accumulators held in registers, which
 * GCC does not derive from Cython's scalar code without -ffast-math. GCC/Clang vector
 * extensions give a fixed 64-byte "vector" (16 floats / 8 doubles) that the compiler
 * lowers to 4 SSE or 2 AVX registers: the summation order is the same on every CPU, so
 * results do not depend on which clone runs (with -ffp-contract=off: no FMA contraction).
 *
 * On x86-64 with GCC or Clang >= 14 every function is compiled twice (target_clones):
 * baseline SSE2 and AVX2, picked at load time. CNORM_NO_DISPATCH turns that off.
 * Other compilers get the plain-C fallback (same lane order, scalar code).
 *
 * Conventions (llm.c style): outputs first, then inputs, then sizes; n is a length in
 * elements; "d" is x - mean formed as (x - hi) - lo (see split_mean in _stats.pxd).
 */
#ifndef CNORM_SIMD_H
#define CNORM_SIMD_H

#include <stddef.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(CNORM_NO_DISPATCH) \
    && (!defined(__clang__) || __clang_major__ >= 14) && defined(__linux__)
#define CN_DISPATCH __attribute__((target_clones("avx2", "default"), noinline))
#else
#define CN_DISPATCH
#endif

#if defined(__GNUC__)
#define CN_RESTRICT __restrict__
#define CN_HAVE_VEC 1
#else
#define CN_RESTRICT
#define CN_HAVE_VEC 0
#endif

/* A "bundle" is 4 native 16-byte vectors = CN_LANES_x independent lanes (16 floats or
   8 doubles): 4 registers hide the add latency; 16 bytes is native on every x86-64 (SSE2)
   and ARM (NEON), so no generic-vector lowering through the stack. */
#define CN_VEC_BYTES 16
#define CN_BUNDLE 4

#if CN_HAVE_VEC
#define CN_VEC_DECL(T, S) typedef T cn_vec_##S __attribute__((vector_size(CN_VEC_BYTES)));
#else
#define CN_VEC_DECL(T, S)
#endif

/* repeat a statement for the 4 vectors k = 0..3 of a bundle */
#define CN_X4(M) M(0) M(1) M(2) M(3)

/* ---------------------------------------------------------------------------------- */
#define CN_DEFINE_LOOPS(T, S)                                                              \
CN_VEC_DECL(T, S)                                                                          \
enum { CN_LANES_##S = CN_BUNDLE * CN_VEC_BYTES / sizeof(T) };                                          \
                                                                                           \
/* sum of x[0:n] in T precision over CN_LANES independent lanes */                        \
static CN_DISPATCH double cn_sum_##S(const T* CN_RESTRICT x, ptrdiff_t n)                 \
{                                                                                          \
    enum { L = CN_LANES_##S };                                                             \
    T acc[L] = {0};                                                                        \
    ptrdiff_t i = 0;                                                                       \
    int j;                                                                                 \
    double s = 0;                                                                          \
    CN_VEC_SUM_BODY(T, S)                                                                  \
    for (; i < n; i++) acc[i % L] += x[i];                                                 \
    for (j = 0; j < L; j++) s += acc[j];                                                   \
    return s;                                                                              \
}                                                                                          \
                                                                                           \
/* s1 = sum(x - shift), s2 = sum((x - shift)^2), in T precision over lanes */             \
static CN_DISPATCH void cn_dev_##S(double* s1, double* s2, const T* CN_RESTRICT x,        \
                                   ptrdiff_t n, T shift)                                   \
{                                                                                          \
    enum { L = CN_LANES_##S };                                                             \
    T a1[L] = {0}, a2[L] = {0};                                                            \
    ptrdiff_t i = 0;                                                                       \
    int j;                                                                                 \
    double r1 = 0, r2 = 0;                                                                 \
    CN_VEC_DEV_BODY(T, S)                                                                  \
    for (; i < n; i++) { T d = x[i] - shift; a1[i % L] += d; a2[i % L] += d * d; }        \
    for (j = 0; j < L; j++) { r1 += a1[j]; r2 += a2[j]; }                                  \
    *s1 = r1; *s2 = r2;                                                                    \
}                                                                                          \
                                                                                           \
/* batch-norm backward sums: s_dy = sum(dy), s_dyd = sum(dy * ((x - hi) - lo)) */          \
static CN_DISPATCH void cn_dot_dev_##S(double* s_dy, double* s_dyd,                       \
                                       const T* CN_RESTRICT dy, const T* CN_RESTRICT x,    \
                                       ptrdiff_t n, T hi, T lo)                            \
{                                                                                          \
    enum { L = CN_LANES_##S };                                                             \
    T a1[L] = {0}, a2[L] = {0};                                                            \
    ptrdiff_t i = 0;                                                                       \
    int j;                                                                                 \
    double r1 = 0, r2 = 0;                                                                 \
    CN_VEC_DOT_BODY(T, S)                                                                  \
    for (; i < n; i++) {                                                                   \
        T d = (x[i] - hi) - lo;                                                            \
        a1[i % L] += dy[i]; a2[i % L] += dy[i] * d;                                        \
    }                                                                                      \
    for (j = 0; j < L; j++) { r1 += a1[j]; r2 += a2[j]; }                                  \
    *s_dy = r1; *s_dyd = r2;                                                               \
}                                                                                          \
                                                                                           \
/* LayerNorm backward sums of one row, g = dy * w, d = (x - hi) - lo:                     \
   s_g = sum(g), s_gd = sum(g * d); and the dweight/dbias partials                        \
   tw += dy * (d * rs), tb += dy */                                                        \
static CN_DISPATCH void cn_ln_grad_sums_##S(double* s_g, double* s_gd,                    \
                                            T* CN_RESTRICT tw, T* CN_RESTRICT tb,          \
                                            const T* CN_RESTRICT dy,                       \
                                            const T* CN_RESTRICT x,                        \
                                            const T* CN_RESTRICT w, ptrdiff_t n,           \
                                            T hi, T lo, T rs)                              \
{                                                                                          \
    enum { L = CN_LANES_##S };                                                             \
    T a1[L] = {0}, a2[L] = {0};                                                            \
    ptrdiff_t i = 0;                                                                       \
    int j;                                                                                 \
    double r1 = 0, r2 = 0;                                                                 \
    CN_VEC_LN_BODY(T, S)                                                                   \
    for (; i < n; i++) {                                                                   \
        T d = (x[i] - hi) - lo;                                                            \
        T g = dy[i] * w[i];                                                                \
        a1[i % L] += g; a2[i % L] += g * d;                                                \
        tw[i] += dy[i] * (d * rs); tb[i] += dy[i];                                         \
    }                                                                                      \
    for (j = 0; j < L; j++) { r1 += a1[j]; r2 += a2[j]; }                                  \
    *s_g = r1; *s_gd = r2;                                                                 \
}                                                                                          \
                                                                                           \
/* y = ((x - hi) - lo) * scale + beta */                                                   \
static CN_DISPATCH void cn_affine_##S(T* CN_RESTRICT y, const T* CN_RESTRICT x,           \
                                      ptrdiff_t n, T hi, T lo, T scale, T beta)            \
{                                                                                          \
    ptrdiff_t i;                                                                           \
    for (i = 0; i < n; i++) y[i] = ((x[i] - hi) - lo) * scale + beta;                      \
}                                                                                          \
                                                                                           \
/* the same with per-element coefficients (a row of an (N, C) batch) */                    \
static CN_DISPATCH void cn_affine_cols_##S(T* CN_RESTRICT y, const T* CN_RESTRICT x,      \
                                           ptrdiff_t n, const T* CN_RESTRICT hi,           \
                                           const T* CN_RESTRICT lo,                        \
                                           const T* CN_RESTRICT scale,                     \
                                           const T* CN_RESTRICT beta)                      \
{                                                                                          \
    ptrdiff_t i;                                                                           \
    for (i = 0; i < n; i++) y[i] = ((x[i] - hi[i]) - lo[i]) * scale[i] + beta[i];         \
}                                                                                          \
                                                                                           \
/* LayerNorm row: y = (((x - hi) - lo) * rs) * w + b */                                    \
static CN_DISPATCH void cn_ln_row_##S(T* CN_RESTRICT y, const T* CN_RESTRICT x,           \
                                      const T* CN_RESTRICT w, const T* CN_RESTRICT b,      \
                                      ptrdiff_t n, T hi, T lo, T rs)                       \
{                                                                                          \
    ptrdiff_t i;                                                                           \
    for (i = 0; i < n; i++) y[i] = (((x[i] - hi) - lo) * rs) * w[i] + b[i];               \
}                                                                                          \
                                                                                           \
/* batch-norm input gradient: dx = k1 * (dy - mdy) + k2 * ((x - hi) - lo) */              \
static CN_DISPATCH void cn_grad_##S(T* CN_RESTRICT dx, const T* CN_RESTRICT dy,           \
                                    const T* CN_RESTRICT x, ptrdiff_t n,                   \
                                    T hi, T lo, T k1, T mdy, T k2)                         \
{                                                                                          \
    ptrdiff_t i;                                                                           \
    for (i = 0; i < n; i++) dx[i] = k1 * (dy[i] - mdy) + k2 * ((x[i] - hi) - lo);         \
}                                                                                          \
                                                                                           \
static CN_DISPATCH void cn_grad_cols_##S(T* CN_RESTRICT dx, const T* CN_RESTRICT dy,      \
                                         const T* CN_RESTRICT x, ptrdiff_t n,              \
                                         const T* CN_RESTRICT hi, const T* CN_RESTRICT lo, \
                                         const T* CN_RESTRICT k1,                          \
                                         const T* CN_RESTRICT mdy,                         \
                                         const T* CN_RESTRICT k2)                          \
{                                                                                          \
    ptrdiff_t i;                                                                           \
    for (i = 0; i < n; i++)                                                                \
        dx[i] = k1[i] * (dy[i] - mdy[i]) + k2[i] * ((x[i] - hi[i]) - lo[i]);              \
}                                                                                          \
                                                                                           \
/* LayerNorm input gradient: dx = k0 * (dy * w) - c1 - c2 * ((x - hi) - lo) */            \
static CN_DISPATCH void cn_ln_grad_row_##S(T* CN_RESTRICT dx, const T* CN_RESTRICT dy,    \
                                           const T* CN_RESTRICT x, const T* CN_RESTRICT w, \
                                           ptrdiff_t n, T hi, T lo, T k0, T c1, T c2)      \
{                                                                                          \
    ptrdiff_t i;                                                                           \
    for (i = 0; i < n; i++) dx[i] = k0 * (dy[i] * w[i]) - c1 - c2 * ((x[i] - hi) - lo);   \
}                                                                                          \
                                                                                           \
/* column accumulators of an (N, C) tile, one lane per channel */                          \
static CN_DISPATCH void cn_col_add_##S(T* CN_RESTRICT s, const T* CN_RESTRICT row,        \
                                       ptrdiff_t n)                                        \
{                                                                                          \
    ptrdiff_t i;                                                                           \
    for (i = 0; i < n; i++) s[i] += row[i];                                                \
}                                                                                          \
                                                                                           \
static CN_DISPATCH void cn_col_dev_##S(T* CN_RESTRICT s1, T* CN_RESTRICT s2,              \
                                       const T* CN_RESTRICT row,                           \
                                       const T* CN_RESTRICT shift, ptrdiff_t n)            \
{                                                                                          \
    ptrdiff_t i;                                                                           \
    for (i = 0; i < n; i++) { T d = row[i] - shift[i]; s1[i] += d; s2[i] += d * d; }      \
}                                                                                          \
                                                                                           \
static CN_DISPATCH void cn_col_grad_sums_##S(T* CN_RESTRICT s1, T* CN_RESTRICT s2,        \
                                             const T* CN_RESTRICT dy,                      \
                                             const T* CN_RESTRICT x,                       \
                                             const T* CN_RESTRICT hi,                      \
                                             const T* CN_RESTRICT lo, ptrdiff_t n)         \
{                                                                                          \
    ptrdiff_t i;                                                                           \
    for (i = 0; i < n; i++) {                                                              \
        T d = (x[i] - hi[i]) - lo[i];                                                      \
        s1[i] += dy[i]; s2[i] += dy[i] * d;                                                \
    }                                                                                      \
}

/* Vector bodies of the reductions: whole bundles of L lanes, leaving i at the tail.
   Lane j of the bundle accumulates the elements i + j, exactly as the scalar tails do. */
#if CN_HAVE_VEC
#define CN_W (CN_VEC_BYTES / (int)sizeof(*x))
#define CN_DECL4(S, a) CN_VEC(S) a##0 = {0}, a##1 = {0}, a##2 = {0}, a##3 = {0};
#define CN_SPILL4(a, arr)                                                                  \
    memcpy(arr, &a##0, CN_VEC_BYTES); memcpy(arr + CN_W, &a##1, CN_VEC_BYTES);             \
    memcpy(arr + 2 * CN_W, &a##2, CN_VEC_BYTES); memcpy(arr + 3 * CN_W, &a##3, CN_VEC_BYTES);
#define CN_VEC(S) cn_vec_##S

#define CN_SUM_K(k) { __typeof__(p0) v; memcpy(&v, x + i + k * CN_W, CN_VEC_BYTES); p##k += v; }
#define CN_VEC_SUM_BODY(T, S)                                                              \
    {                                                                                      \
        CN_DECL4(S, p)                                                                     \
        for (; i + L <= n; i += L) { CN_X4(CN_SUM_K) }                                     \
        CN_SPILL4(p, acc)                                                                  \
    }

#define CN_DEV_K(k) {                                                                      \
        __typeof__(p0) v; memcpy(&v, x + i + k * CN_W, CN_VEC_BYTES);                          \
        v -= vs; p##k += v; q##k += v * v; }
#define CN_VEC_DEV_BODY(T, S)                                                              \
    {                                                                                      \
        CN_DECL4(S, p) CN_DECL4(S, q)                                                      \
        CN_VEC(S) vs = (CN_VEC(S)){0} + shift;                                             \
        for (; i + L <= n; i += L) { CN_X4(CN_DEV_K) }                                     \
        CN_SPILL4(p, a1) CN_SPILL4(q, a2)                                                  \
    }

#define CN_DOT_K(k) {                                                                      \
        __typeof__(p0) v, g;                                                                   \
        memcpy(&v, x + i + k * CN_W, CN_VEC_BYTES); memcpy(&g, dy + i + k * CN_W, CN_VEC_BYTES); \
        v = (v - vh) - vl; p##k += g; q##k += g * v; }
#define CN_VEC_DOT_BODY(T, S)                                                              \
    {                                                                                      \
        CN_DECL4(S, p) CN_DECL4(S, q)                                                      \
        CN_VEC(S) vh = (CN_VEC(S)){0} + hi, vl = (CN_VEC(S)){0} + lo;                      \
        for (; i + L <= n; i += L) { CN_X4(CN_DOT_K) }                                     \
        CN_SPILL4(p, a1) CN_SPILL4(q, a2)                                                  \
    }

#define CN_LN_K(k) {                                                                       \
        const ptrdiff_t o = i + k * CN_W;                                                  \
        __typeof__(p0) v, g, gw, t;                                                            \
        memcpy(&v, x + o, CN_VEC_BYTES); memcpy(&g, dy + o, CN_VEC_BYTES);                 \
        memcpy(&gw, w + o, CN_VEC_BYTES);                                                  \
        v = (v - vh) - vl; gw = g * gw; p##k += gw; q##k += gw * v;                        \
        memcpy(&t, tw + o, CN_VEC_BYTES); t += g * (v * vr); memcpy(tw + o, &t, CN_VEC_BYTES); \
        memcpy(&t, tb + o, CN_VEC_BYTES); t += g; memcpy(tb + o, &t, CN_VEC_BYTES); }
#define CN_VEC_LN_BODY(T, S)                                                               \
    {                                                                                      \
        CN_DECL4(S, p) CN_DECL4(S, q)                                                      \
        CN_VEC(S) vh = (CN_VEC(S)){0} + hi, vl = (CN_VEC(S)){0} + lo,                      \
                  vr = (CN_VEC(S)){0} + rs;                                                \
        for (; i + L <= n; i += L) { CN_X4(CN_LN_K) }                                      \
        CN_SPILL4(p, a1) CN_SPILL4(q, a2)                                                  \
    }
#else  /* scalar fallback: the same lanes, in the same order */
#define CN_VEC_SUM_BODY(T, S)                                                              \
    for (; i + L <= n; i += L) for (j = 0; j < L; j++) acc[j] += x[i + j];
#define CN_VEC_DEV_BODY(T, S)                                                              \
    for (; i + L <= n; i += L)                                                             \
        for (j = 0; j < L; j++) { T d = x[i + j] - shift; a1[j] += d; a2[j] += d * d; }
#define CN_VEC_DOT_BODY(T, S)                                                              \
    for (; i + L <= n; i += L)                                                             \
        for (j = 0; j < L; j++) {                                                          \
            T d = (x[i + j] - hi) - lo; a1[j] += dy[i + j]; a2[j] += dy[i + j] * d;        \
        }
#define CN_VEC_LN_BODY(T, S)                                                               \
    for (; i + L <= n; i += L)                                                             \
        for (j = 0; j < L; j++) {                                                          \
            T d = (x[i + j] - hi) - lo; T g = dy[i + j] * w[i + j];                        \
            a1[j] += g; a2[j] += g * d;                                                    \
            tw[i + j] += dy[i + j] * (d * rs); tb[i + j] += dy[i + j];                     \
        }
#endif

CN_DEFINE_LOOPS(float, f)
CN_DEFINE_LOOPS(double, d)

#endif /* CNORM_SIMD_H */
