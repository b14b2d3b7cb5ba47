# Cython view of the vectorized inner loops in _simd.h, with one fused name per loop.
# See _simd.h for what each computes; "d" is x - mean formed as (x - hi) - lo.

from ._types cimport floating

cdef enum:
    # Non-temporal stores only pay on long contiguous runs (each run peels to alignment)
    STREAM_MIN_RUN = 512

cdef extern from "_simd.h" nogil:
    int cn_simd_init()          # pick the AVX2 or baseline loops (once per module, at import)
    int cn_simd_set(int use_avx2)
    Py_ssize_t cn_stream_min_bytes   # outputs this large use non-temporal stores
    double cn_sum_f(const float* x, Py_ssize_t n)
    double cn_sum_d(const double* x, Py_ssize_t n)
    void cn_dev_f(double* s1, double* s2, const float* x, Py_ssize_t n, float shift)
    void cn_dev_d(double* s1, double* s2, const double* x, Py_ssize_t n, double shift)
    void cn_dot_dev_f(double* s_dy, double* s_dyd, const float* dy, const float* x,
                      Py_ssize_t n, float hi, float lo)
    void cn_dot_dev_d(double* s_dy, double* s_dyd, const double* dy, const double* x,
                      Py_ssize_t n, double hi, double lo)
    void cn_ln_grad_sums_f(double* s_g, double* s_gd, float* tw, float* tb, const float* dy,
                           const float* x, const float* w, Py_ssize_t n,
                           float hi, float lo, float rs)
    void cn_ln_grad_sums_d(double* s_g, double* s_gd, double* tw, double* tb, const double* dy,
                           const double* x, const double* w, Py_ssize_t n,
                           double hi, double lo, double rs)
    void cn_ln_grad_sums2_f(double* s_g, double* s_gd, float* tw, float* tb, const float* dy0,
                            const float* dy1, const float* x0, const float* x1, const float* w,
                            Py_ssize_t n, float hi0, float lo0, float rs0, float hi1,
                            float lo1, float rs1)
    void cn_ln_grad_sums2_d(double* s_g, double* s_gd, double* tw, double* tb,
                            const double* dy0, const double* dy1, const double* x0,
                            const double* x1, const double* w, Py_ssize_t n, double hi0,
                            double lo0, double rs0, double hi1, double lo1, double rs1)
    void cn_affine_f(float* y, const float* x, Py_ssize_t n, float hi, float lo,
                     float scale, float beta, int stream)
    void cn_affine_d(double* y, const double* x, Py_ssize_t n, double hi, double lo,
                     double scale, double beta, int stream)
    void cn_affine_cols_f(float* y, const float* x, Py_ssize_t n, const float* hi,
                          const float* lo, const float* scale, const float* beta, int stream)
    void cn_affine_cols_d(double* y, const double* x, Py_ssize_t n, const double* hi,
                          const double* lo, const double* scale, const double* beta, int stream)
    void cn_affine_cols4_f(float* y, const float* x, Py_ssize_t ld, Py_ssize_t n,
                           const float* hi, const float* lo, const float* scale,
                           const float* beta)
    void cn_affine_cols4_d(double* y, const double* x, Py_ssize_t ld, Py_ssize_t n,
                           const double* hi, const double* lo, const double* scale,
                           const double* beta)
    void cn_grad_cols4_f(float* dx, const float* dy, const float* x, Py_ssize_t ld,
                         Py_ssize_t n, const float* hi, const float* lo, const float* k1,
                         const float* mdy, const float* k2)
    void cn_grad_cols4_d(double* dx, const double* dy, const double* x, Py_ssize_t ld,
                         Py_ssize_t n, const double* hi, const double* lo, const double* k1,
                         const double* mdy, const double* k2)
    void cn_ln_row_f(float* y, const float* x, const float* w, const float* b, Py_ssize_t n,
                     float hi, float lo, float rs, int stream)
    void cn_ln_row_d(double* y, const double* x, const double* w, const double* b,
                     Py_ssize_t n, double hi, double lo, double rs, int stream)
    void cn_grad_f(float* dx, const float* dy, const float* x, Py_ssize_t n,
                   float hi, float lo, float k1, float mdy, float k2, int stream)
    void cn_grad_d(double* dx, const double* dy, const double* x, Py_ssize_t n,
                   double hi, double lo, double k1, double mdy, double k2, int stream)
    void cn_grad_cols_f(float* dx, const float* dy, const float* x, Py_ssize_t n,
                        const float* hi, const float* lo, const float* k1, const float* mdy,
                        const float* k2, int stream)
    void cn_grad_cols_d(double* dx, const double* dy, const double* x, Py_ssize_t n,
                        const double* hi, const double* lo, const double* k1,
                        const double* mdy, const double* k2, int stream)
    void cn_ln_grad_row_f(float* dx, const float* dy, const float* x, const float* w,
                          Py_ssize_t n, float hi, float lo, float k0, float c1, float c2, int stream)
    void cn_ln_grad_row_d(double* dx, const double* dy, const double* x, const double* w,
                          Py_ssize_t n, double hi, double lo, double k0, double c1, double c2, int stream)
    void cn_cols_sum_f(float* s, const float* x, Py_ssize_t ld, Py_ssize_t nrows, Py_ssize_t n)
    void cn_cols_sum_d(double* s, const double* x, Py_ssize_t ld, Py_ssize_t nrows, Py_ssize_t n)
    void cn_cols_dev_f(float* s1, float* s2, const float* x, Py_ssize_t ld, Py_ssize_t nrows,
                       const float* shift, Py_ssize_t n)
    void cn_cols_dev_d(double* s1, double* s2, const double* x, Py_ssize_t ld, Py_ssize_t nrows,
                       const double* shift, Py_ssize_t n)
    void cn_cols_grad_sums_f(float* s1, float* s2, const float* dy, const float* x,
                             Py_ssize_t ld, Py_ssize_t nrows, const float* hi, const float* lo,
                             Py_ssize_t n)
    void cn_cols_grad_sums_d(double* s1, double* s2, const double* dy, const double* x,
                             Py_ssize_t ld, Py_ssize_t nrows, const double* hi,
                             const double* lo, Py_ssize_t n)
    void cn_col_merge_f(double* mean, double* m2, const float* shift, const float* s1,
                        const float* s2, Py_ssize_t n, double count_a, double nb)
    void cn_col_merge_d(double* mean, double* m2, const double* shift, const double* s1,
                        const double* s2, Py_ssize_t n, double count_a, double nb)
    int cn_any_above_f(const float* s2, Py_ssize_t n, float limit)
    int cn_any_above_d(const double* s2, Py_ssize_t n, double limit)


cdef inline double vsum(const floating* x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return cn_sum_f(x, n)
    else:
        return cn_sum_d(x, n)

cdef inline void vdev(double* s1, double* s2, const floating* x, Py_ssize_t n,
                      floating shift) noexcept nogil:
    if floating is float:
        cn_dev_f(s1, s2, x, n, shift)
    else:
        cn_dev_d(s1, s2, x, n, shift)

cdef inline void vdot_dev(double* s_dy, double* s_dyd, const floating* dy, const floating* x,
                          Py_ssize_t n, floating hi, floating lo) noexcept nogil:
    if floating is float:
        cn_dot_dev_f(s_dy, s_dyd, dy, x, n, hi, lo)
    else:
        cn_dot_dev_d(s_dy, s_dyd, dy, x, n, hi, lo)

cdef inline void vln_grad_sums(double* s_g, double* s_gd, floating* tw, floating* tb,
                               const floating* dy, const floating* x, const floating* w,
                               Py_ssize_t n, floating hi, floating lo,
                               floating rs) noexcept nogil:
    if floating is float:
        cn_ln_grad_sums_f(s_g, s_gd, tw, tb, dy, x, w, n, hi, lo, rs)
    else:
        cn_ln_grad_sums_d(s_g, s_gd, tw, tb, dy, x, w, n, hi, lo, rs)

cdef inline void vln_grad_sums2(double* s_g, double* s_gd, floating* tw, floating* tb,
                                const floating* dy0, const floating* dy1, const floating* x0,
                                const floating* x1, const floating* w, Py_ssize_t n,
                                floating hi0, floating lo0, floating rs0, floating hi1,
                                floating lo1, floating rs1) noexcept nogil:
    if floating is float:
        cn_ln_grad_sums2_f(s_g, s_gd, tw, tb, dy0, dy1, x0, x1, w, n, hi0, lo0, rs0, hi1, lo1,
                           rs1)
    else:
        cn_ln_grad_sums2_d(s_g, s_gd, tw, tb, dy0, dy1, x0, x1, w, n, hi0, lo0, rs0, hi1, lo1,
                           rs1)

cdef inline void vaffine(floating* y, const floating* x, Py_ssize_t n, floating hi,
                         floating lo, floating scale, floating beta, bint stream) noexcept nogil:
    if floating is float:
        cn_affine_f(y, x, n, hi, lo, scale, beta, stream)
    else:
        cn_affine_d(y, x, n, hi, lo, scale, beta, stream)

cdef inline void vaffine_cols(floating* y, const floating* x, Py_ssize_t n,
                              const floating* hi, const floating* lo, const floating* scale,
                              const floating* beta, bint stream) noexcept nogil:
    if floating is float:
        cn_affine_cols_f(y, x, n, hi, lo, scale, beta, stream)
    else:
        cn_affine_cols_d(y, x, n, hi, lo, scale, beta, stream)

cdef inline void vaffine_cols4(floating* y, const floating* x, Py_ssize_t ld, Py_ssize_t n,
                               const floating* hi, const floating* lo, const floating* scale,
                               const floating* beta) noexcept nogil:
    if floating is float:
        cn_affine_cols4_f(y, x, ld, n, hi, lo, scale, beta)
    else:
        cn_affine_cols4_d(y, x, ld, n, hi, lo, scale, beta)

cdef inline void vgrad_cols4(floating* dx, const floating* dy, const floating* x, Py_ssize_t ld,
                             Py_ssize_t n, const floating* hi, const floating* lo,
                             const floating* k1, const floating* mdy,
                             const floating* k2) noexcept nogil:
    if floating is float:
        cn_grad_cols4_f(dx, dy, x, ld, n, hi, lo, k1, mdy, k2)
    else:
        cn_grad_cols4_d(dx, dy, x, ld, n, hi, lo, k1, mdy, k2)

cdef inline void vln_row(floating* y, const floating* x, const floating* w, const floating* b,
                         Py_ssize_t n, floating hi, floating lo, floating rs, bint stream) noexcept nogil:
    if floating is float:
        cn_ln_row_f(y, x, w, b, n, hi, lo, rs, stream)
    else:
        cn_ln_row_d(y, x, w, b, n, hi, lo, rs, stream)

cdef inline void vgrad(floating* dx, const floating* dy, const floating* x, Py_ssize_t n,
                       floating hi, floating lo, floating k1, floating mdy,
                       floating k2, bint stream) noexcept nogil:
    if floating is float:
        cn_grad_f(dx, dy, x, n, hi, lo, k1, mdy, k2, stream)
    else:
        cn_grad_d(dx, dy, x, n, hi, lo, k1, mdy, k2, stream)

cdef inline void vgrad_cols(floating* dx, const floating* dy, const floating* x, Py_ssize_t n,
                            const floating* hi, const floating* lo, const floating* k1,
                            const floating* mdy, const floating* k2, bint stream) noexcept nogil:
    if floating is float:
        cn_grad_cols_f(dx, dy, x, n, hi, lo, k1, mdy, k2, stream)
    else:
        cn_grad_cols_d(dx, dy, x, n, hi, lo, k1, mdy, k2, stream)

cdef inline void vln_grad_row(floating* dx, const floating* dy, const floating* x,
                              const floating* w, Py_ssize_t n, floating hi, floating lo,
                              floating k0, floating c1, floating c2, bint stream) noexcept nogil:
    if floating is float:
        cn_ln_grad_row_f(dx, dy, x, w, n, hi, lo, k0, c1, c2, stream)
    else:
        cn_ln_grad_row_d(dx, dy, x, w, n, hi, lo, k0, c1, c2, stream)

cdef inline void vcols_sum(floating* s, const floating* x, Py_ssize_t ld, Py_ssize_t nrows,
                           Py_ssize_t n) noexcept nogil:
    if floating is float:
        cn_cols_sum_f(s, x, ld, nrows, n)
    else:
        cn_cols_sum_d(s, x, ld, nrows, n)

cdef inline void vcols_dev(floating* s1, floating* s2, const floating* x, Py_ssize_t ld,
                           Py_ssize_t nrows, const floating* shift, Py_ssize_t n) noexcept nogil:
    if floating is float:
        cn_cols_dev_f(s1, s2, x, ld, nrows, shift, n)
    else:
        cn_cols_dev_d(s1, s2, x, ld, nrows, shift, n)

cdef inline void vcols_grad_sums(floating* s1, floating* s2, const floating* dy,
                                 const floating* x, Py_ssize_t ld, Py_ssize_t nrows,
                                 const floating* hi, const floating* lo,
                                 Py_ssize_t n) noexcept nogil:
    if floating is float:
        cn_cols_grad_sums_f(s1, s2, dy, x, ld, nrows, hi, lo, n)
    else:
        cn_cols_grad_sums_d(s1, s2, dy, x, ld, nrows, hi, lo, n)

cdef inline void vcol_merge(double* mean, double* m2, const floating* shift, const floating* s1,
                            const floating* s2, Py_ssize_t n, double count_a,
                            double nb) noexcept nogil:
    if floating is float:
        cn_col_merge_f(mean, m2, shift, s1, s2, n, count_a, nb)
    else:
        cn_col_merge_d(mean, m2, shift, s1, s2, n, count_a, nb)

cdef inline bint vany_above(const floating* s2, Py_ssize_t n, floating limit) noexcept nogil:
    if floating is float:
        return cn_any_above_f(s2, n, limit)
    else:
        return cn_any_above_d(s2, n, limit)
