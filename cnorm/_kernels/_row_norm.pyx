"""Row-norm kernels: statistics per row of a C-contiguous (M, D) buffer.

One walk serves four norms:
* LayerNorm: rows of D = prod(normalized_shape), one affine weight per element;
* RMSNorm: the same without centering (mean 0, variance = mean of squares);
* GroupNorm / InstanceNorm: rows of D = channels_per_group * S (one (n, group)), one affine
  weight per channel, i.e. per segment of S elements of the row (InstanceNorm: one channel
  per group);
* LayerNorm of x + residual: the sum is written once and normalized while in cache.

Each thread owns a contiguous range of rows. A row's statistics are computed while the
row is in cache (the exact block statistics of _stats.pxd), then the row is transformed;
mean and rstd are kept (float64) for backward. The backward pass accumulates the weight
and bias gradients per thread (in the input precision over ROWS_PER_FLUSH rows, then in
float64) and reduces the thread buffers in thread order afterwards: no races, no atomics,
and the same bits on every run for a given thread count. Entry points check every buffer
(_buffers.pxd).
"""

cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdlib cimport calloc, free, malloc

from ._buffers cimport check_array, check_dims, data_or_null, input_typenum
from ._openmp cimport n_threads_for, split_start
from ._simd cimport (STREAM_MIN_RUN, cn_simd_init, cn_simd_set, cn_stream_fence,
                     cn_stream_min_bytes, vadd,
                     vaffine, vdot_dev, vln_grad_row, vln_grad_sums, vln_grad_sums2, vln_row,
                     vseg_grad)
from ._stats cimport BLOCK, segment_stats, split_mean, sum_squares
from ._types cimport floating

cnp.import_array()
include "_simd_control.pxi"


cdef enum:
    ROWS_PER_FLUSH = 32     # rows summed in the input precision before a float64 flush


cdef inline bint _use_stream(Py_ssize_t n_elements, Py_ssize_t run, size_t itemsize) noexcept nogil:
    return n_elements * <Py_ssize_t>itemsize >= cn_stream_min_bytes and run >= STREAM_MIN_RUN


cdef inline double _row_stats(const floating* xr, Py_ssize_t D, bint center,
                              double* mean) noexcept nogil:
    """Mean (0 when not centering) and biased variance (mean of squares) of one row."""
    cdef double count = 0, m2 = 0
    mean[0] = 0
    if center:
        segment_stats(xr, D, &count, mean, &m2)
        return m2 / D
    return sum_squares(xr, D) / D


# ---------------------------------------------------------------------------------------
# LayerNorm / RMSNorm / add + LayerNorm
# ---------------------------------------------------------------------------------------

cdef void _forward_rows(floating* y,              # OUT (M, D)
                        double* mean,             # OUT (M,)
                        double* rstd,             # OUT (M,)
                        floating* s,              # OUT (M, D) x + res, or NULL
                        const floating* x,        # IN  (M, D)
                        const floating* res,      # IN  (M, D) residual, or NULL
                        const floating* weight,   # IN  (D,) or NULL (ones)
                        const floating* bias,     # IN  (D,) or NULL (zeros)
                        const floating* defaults, # IN  BLOCK ones then BLOCK zeros
                        Py_ssize_t D, double eps, bint center,
                        Py_ssize_t r0, Py_ssize_t r1, bint stream) noexcept nogil:
    cdef Py_ssize_t r, b, k_b, len_b
    cdef double mu, rs
    cdef floating hi, lo
    cdef const floating* xr
    for r in range(r0, r1):
        xr = x + r * D
        if res != NULL:     # the sum stays in cache for the statistics: no streaming here
            vadd(s + r * D, xr, res + r * D, D, False)
            xr = s + r * D
        rs = 1.0 / sqrt(_row_stats(xr, D, center, &mu) + eps)
        mean[r] = mu
        rstd[r] = rs
        split_mean(mu, &hi, &lo)
        for k_b in range((D + BLOCK - 1) // BLOCK):     # absent params: BLOCK-sized defaults
            b = k_b * BLOCK
            len_b = D - b if D - b < BLOCK else BLOCK
            vln_row(y + r * D + b, xr + b, weight + b if weight != NULL else defaults,
                    bias + b if bias != NULL else defaults + BLOCK, len_b, hi, lo,
                    <floating>rs, stream)
    if stream:     # once per thread, after all its streamed stores
        cn_stream_fence()


cdef void _backward_rows(floating* dx,             # OUT (M, D)
                         double* dweight,          # OUT (D,) this thread's partial, float64
                         double* dbias,            # OUT (D,) this thread's partial, float64
                         floating* tw,             # scratch (D,)
                         floating* tb,             # scratch (D,)
                         const floating* dy,       # IN  (M, D)
                         const floating* x,        # IN  (M, D)
                         const double* mean,       # IN  (M,), NULL for RMSNorm (no centering)
                         const double* rstd,       # IN  (M,)
                         const floating* weight,   # IN  (D,) or NULL (ones)
                         const floating* ones,     # IN  (BLOCK,)
                         Py_ssize_t D, Py_ssize_t r0, Py_ssize_t r1,
                         bint stream) noexcept nogil:
    cdef Py_ssize_t r, j, b, len_b, k_b, q, n_rows
    cdef floating hi[2]
    cdef floating lo[2]
    cdef floating rs[2]
    cdef double sum_g[2]
    cdef double sum_gd[2]
    cdef double s_g[2]
    cdef double s_gd[2]
    cdef double rsd
    cdef const floating* wb
    for j in range(D):
        dweight[j] = 0
        dbias[j] = 0
        tw[j] = 0
        tb[j] = 0
    r = r0
    while r < r1:
        n_rows = 2 if r + 1 < r1 else 1          # two rows share the dweight/dbias updates
        for q in range(n_rows):
            split_mean(mean[r + q] if mean != NULL else 0.0, &hi[q], &lo[q])
            rs[q] = <floating>rstd[r + q]
            sum_g[q] = 0
            sum_gd[q] = 0
        # pass 1: sum g and sum g*(x - mean), g = dy*weight; the dweight/dbias partials
        for k_b in range((D + BLOCK - 1) // BLOCK):     # short sums, merged in float64
            b = k_b * BLOCK
            len_b = D - b if D - b < BLOCK else BLOCK
            wb = weight + b if weight != NULL else ones
            if n_rows == 2:
                vln_grad_sums2(s_g, s_gd, tw + b, tb + b, dy + r * D + b, dy + (r + 1) * D + b,
                               x + r * D + b, x + (r + 1) * D + b, wb, len_b,
                               hi[0], lo[0], rs[0], hi[1], lo[1], rs[1])
            else:
                vln_grad_sums(s_g, s_gd, tw + b, tb + b, dy + r * D + b, x + r * D + b,
                              wb, len_b, hi[0], lo[0], rs[0])
            for q in range(n_rows):
                sum_g[q] += s_g[q]
                sum_gd[q] += s_gd[q]
        # pass 2 (rows in cache): dx = rstd*(g - mean(g) - xhat*mean(g*xhat))
        # (RMSNorm: no mean(g) term)
        for q in range(n_rows):
            rsd = rstd[r + q]
            for k_b in range((D + BLOCK - 1) // BLOCK):
                b = k_b * BLOCK
                len_b = D - b if D - b < BLOCK else BLOCK
                vln_grad_row(dx + (r + q) * D + b, dy + (r + q) * D + b, x + (r + q) * D + b,
                             weight + b if weight != NULL else ones, len_b, hi[q], lo[q], rs[q],
                             <floating>(sum_g[q] / D) if mean != NULL else 0,
                             <floating>(rsd * sum_gd[q] / D), stream)
        r += n_rows
        if (r - r0) % ROWS_PER_FLUSH == 0 or r == r1:
            for j in range(D):
                dweight[j] += tw[j]
                dbias[j] += tb[j]
                tw[j] = 0
                tb[j] = 0
    if stream:     # once per thread, after all its streamed stores
        cn_stream_fence()


cdef floating* _ones_zeros(const floating* like, Py_ssize_t n) noexcept nogil:
    """n ones then n zeros of like's type: the weight and bias of an absent affine (NULL on
    OOM)."""
    cdef floating* a = <floating*>malloc(2 * n * sizeof(floating) + 1)
    cdef Py_ssize_t j
    if a != NULL:
        for j in range(n):
            a[j] = 1
            a[n + j] = 0
    return a


cdef int _forward_impl(floating* y, double* mean, double* rstd, floating* s,
                       const floating* x, const floating* res,
                       const floating* weight, const floating* bias,
                       Py_ssize_t M, Py_ssize_t D, double eps, bint center) except -1 nogil:
    cdef int n_threads = n_threads_for(M * D), t
    cdef bint stream = _use_stream(M * D, D, sizeof(floating))
    cdef floating* defaults = _ones_zeros(x, BLOCK)     # O(1): never a row-sized temporary
    if defaults == NULL:
        with gil:
            raise MemoryError()
    if n_threads == 1:      # no parallel region: it costs ~1 us
        _forward_rows(y, mean, rstd, s, x, res, weight, bias, defaults, D, eps, center, 0, M,
                      stream)
    else:
        for t in prange(n_threads, schedule='static', num_threads=n_threads):
            _forward_rows(y, mean, rstd, s, x, res, weight, bias, defaults, D, eps, center,
                          split_start(M, t, n_threads), split_start(M, t + 1, n_threads), stream)
    free(defaults)
    return 0


cdef int _backward_impl(floating* dx, floating* dweight, floating* dbias,
                        const floating* dy, const floating* x,
                        const double* mean, const double* rstd, const floating* weight,
                        Py_ssize_t M, Py_ssize_t D) except -1 nogil:
    cdef int n_threads = n_threads_for(2 * M * D), t
    cdef Py_ssize_t j
    cdef bint stream = _use_stream(M * D, D, sizeof(floating))
    cdef double sw, sb
    cdef floating* defaults = NULL
    # per thread: dweight, dbias partials (float64) then two input-precision scratch rows
    cdef char* scratch = <char*>malloc(n_threads * D * 2 * (sizeof(double) + sizeof(floating)) + 1)
    cdef double* part
    cdef floating* tmp
    if scratch == NULL:
        with gil:
            raise MemoryError()
    part = <double*>scratch
    tmp = <floating*>(scratch + n_threads * D * 2 * sizeof(double))
    defaults = _ones_zeros(x, BLOCK)        # an absent weight reads ones: O(1) memory
    if defaults == NULL:
        free(scratch)
        with gil:
            raise MemoryError()
    if n_threads == 1:      # no parallel region: it costs ~1 us
        _backward_rows(dx, part, part + D, tmp, tmp + D, dy, x, mean, rstd, weight, defaults,
                       D, 0, M, stream)
    else:
        for t in prange(n_threads, schedule='static', num_threads=n_threads):
            _backward_rows(dx, part + 2 * D * t, part + 2 * D * t + D,
                           tmp + 2 * D * t, tmp + 2 * D * t + D, dy, x, mean, rstd, weight,
                           defaults, D, split_start(M, t, n_threads),
                           split_start(M, t + 1, n_threads), stream)
    for j in range(D):
        sw = 0
        sb = 0
        for t in range(n_threads):
            sw += part[2 * D * t + j]
            sb += part[2 * D * t + D + j]
        dweight[j] = <floating>sw
        if dbias != NULL:
            dbias[j] = <floating>sb
    free(defaults)
    free(scratch)
    return 0


# ---------------------------------------------------------------------------------------
# GroupNorm / InstanceNorm: rows of G groups, one affine weight per channel (segment)
# ---------------------------------------------------------------------------------------

cdef void _group_forward_rows(floating* y,            # OUT (N*G, Cg*S)
                              double* mean,           # OUT (N*G,)
                              double* rstd,           # OUT (N*G,)
                              double* var,            # OUT (N*G,) biased
                              const floating* x,      # IN  (N*G, Cg*S)
                              const floating* weight, # IN  (G*Cg,)
                              const floating* bias,   # IN  (G*Cg,)
                              Py_ssize_t G, Py_ssize_t Cg, Py_ssize_t S, double eps,
                              Py_ssize_t r0, Py_ssize_t r1, bint stream) noexcept nogil:
    cdef Py_ssize_t r, j, c, D = Cg * S
    cdef double mu, v, rs
    cdef floating hi, lo
    for r in range(r0, r1):
        v = _row_stats(x + r * D, D, True, &mu)
        rs = 1.0 / sqrt(v + eps)
        mean[r] = mu
        rstd[r] = rs
        var[r] = v
        split_mean(mu, &hi, &lo)
        c = (r % G) * Cg
        for j in range(Cg):
            vaffine(y + r * D + j * S, x + r * D + j * S, S, hi, lo,
                    <floating>(rs * weight[c + j]), bias[c + j], stream, False)
    if stream:     # once per thread, after all its streamed stores
        cn_stream_fence()


cdef void _group_backward_rows(floating* dx,            # OUT (N*G, Cg*S)
                               double* dweight,         # OUT (C,) this thread's partial
                               double* dbias,           # OUT (C,) this thread's partial
                               double* seg,             # scratch (2, Cg)
                               const floating* dy,      # IN  (N*G, Cg*S)
                               const floating* x,       # IN  (N*G, Cg*S)
                               const double* mean,      # IN  (N*G,)
                               const double* rstd,      # IN  (N*G,)
                               const floating* weight,  # IN  (C,)
                               Py_ssize_t G, Py_ssize_t Cg, Py_ssize_t S,
                               Py_ssize_t r0, Py_ssize_t r1, bint stream) noexcept nogil:
    cdef Py_ssize_t r, j, c, b, len_b, k_b, o, D = Cg * S
    cdef double rs, w, sum_g, sum_gd, s1, s2
    cdef floating hi, lo
    for r in range(r0, r1):
        split_mean(mean[r], &hi, &lo)
        rs = rstd[r]
        c = (r % G) * Cg
        sum_g = 0
        sum_gd = 0
        # pass 1: per channel segment, sum dy and sum dy*(x - mean) (short sums, float64)
        for j in range(Cg):
            o = r * D + j * S
            seg[j] = 0
            seg[Cg + j] = 0
            for k_b in range((S + BLOCK - 1) // BLOCK):
                b = k_b * BLOCK
                len_b = S - b if S - b < BLOCK else BLOCK
                vdot_dev(&s1, &s2, dy + o + b, x + o + b, len_b, hi, lo, NULL)
                seg[j] += s1
                seg[Cg + j] += s2
            w = weight[c + j]
            dbias[c + j] += seg[j]
            dweight[c + j] += seg[Cg + j] * rs
            sum_g += w * seg[j]                  # g = dy * weight of the channel
            sum_gd += w * seg[Cg + j]
        # pass 2 (row in cache): dx = rstd*(g - mean(g) - xhat*mean(g*xhat)) per segment
        for j in range(Cg):
            o = r * D + j * S
            vseg_grad(dx + o, dy + o, x + o, S, hi, lo, <floating>rs, weight[c + j],
                      <floating>(sum_g / D), <floating>(rs * sum_gd / D), stream)
    if stream:     # once per thread, after all its streamed stores
        cn_stream_fence()


cdef int _group_forward_impl(floating* y, double* mean, double* rstd, double* var,
                             const floating* x, const floating* weight,
                             const floating* bias, Py_ssize_t N, Py_ssize_t G,
                             Py_ssize_t Cg, Py_ssize_t S, double eps) except -1 nogil:
    cdef Py_ssize_t M = N * G, C = G * Cg
    cdef int n_threads = n_threads_for(M * Cg * S), t
    cdef bint stream = _use_stream(M * Cg * S, S, sizeof(floating))
    cdef floating* defaults = NULL
    if weight == NULL or bias == NULL:
        defaults = _ones_zeros(x, C)
        if defaults == NULL:
            with gil:
                raise MemoryError()
        if weight == NULL:
            weight = defaults
        if bias == NULL:
            bias = defaults + C
    if n_threads == 1:
        _group_forward_rows(y, mean, rstd, var, x, weight, bias, G, Cg, S, eps, 0, M, stream)
    else:
        for t in prange(n_threads, schedule='static', num_threads=n_threads):
            _group_forward_rows(y, mean, rstd, var, x, weight, bias, G, Cg, S, eps,
                                split_start(M, t, n_threads), split_start(M, t + 1, n_threads),
                                stream)
    free(defaults)
    return 0


cdef int _group_backward_impl(floating* dx, floating* dweight, floating* dbias,
                              const floating* dy, const floating* x, const double* mean,
                              const double* rstd, const floating* weight, Py_ssize_t N,
                              Py_ssize_t G, Py_ssize_t Cg, Py_ssize_t S) except -1 nogil:
    cdef Py_ssize_t M = N * G, C = G * Cg, c
    cdef int n_threads = n_threads_for(2 * M * Cg * S), t
    cdef bint stream = _use_stream(M * Cg * S, S, sizeof(floating))
    cdef double sw, sb
    cdef floating* defaults = NULL
    # per thread: dweight, dbias partials (C each) and the per-segment sums (2 * Cg)
    cdef double* part = <double*>calloc(n_threads * (2 * C + 2 * Cg) + 1, sizeof(double))
    if part == NULL:
        with gil:
            raise MemoryError()
    if weight == NULL:
        defaults = _ones_zeros(x, C)
        if defaults == NULL:
            free(part)
            with gil:
                raise MemoryError()
        weight = defaults
    if n_threads == 1:
        _group_backward_rows(dx, part, part + C, part + 2 * C, dy, x, mean, rstd, weight,
                             G, Cg, S, 0, M, stream)
    else:
        for t in prange(n_threads, schedule='static', num_threads=n_threads):
            _group_backward_rows(dx, part + t * (2 * C + 2 * Cg),
                                 part + t * (2 * C + 2 * Cg) + C,
                                 part + t * (2 * C + 2 * Cg) + 2 * C, dy, x, mean, rstd,
                                 weight, G, Cg, S, split_start(M, t, n_threads),
                                 split_start(M, t + 1, n_threads), stream)
    for c in range(C):
        sw = 0
        sb = 0
        for t in range(n_threads):
            sw += part[t * (2 * C + 2 * Cg) + c]
            sb += part[t * (2 * C + 2 * Cg) + C + c]
        dweight[c] = <floating>sw
        dbias[c] = <floating>sb
    free(defaults)
    free(part)
    return 0


# ---------------------------------------------------------------------------------------
# Python entry points: every buffer is checked (type, size, layout) before use
# ---------------------------------------------------------------------------------------

cdef inline cnp.ndarray _empty(Py_ssize_t n, int typenum):
    cdef cnp.npy_intp dim = n
    return cnp.PyArray_EMPTY(1, &dim, typenum, 0)


cdef inline cnp.ndarray _empty_like(cnp.ndarray x):
    return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(x), cnp.PyArray_DIMS(x), cnp.PyArray_TYPE(x), 0)


cdef inline int _check_rows(object x, Py_ssize_t M, Py_ssize_t D) except -1:
    """x: float32/float64, C-contiguous, M*D elements; returns its type number."""
    cdef int typenum = input_typenum(x, "input")
    check_dims(M, D, 1, 1)
    check_array(x, M * D, typenum, False, "input")
    return typenum


cdef object _row_forward(cnp.ndarray x, res, Py_ssize_t M, Py_ssize_t D, weight, bias,
                         double eps, bint center):
    cdef int typenum = _check_rows(x, M, D)
    check_array(res, M * D, typenum, False, "residual")
    check_array(weight, D, typenum, False, "weight")
    check_array(bias, D, typenum, False, "bias")
    cdef cnp.ndarray y = _empty_like(x)
    cdef cnp.ndarray s = _empty_like(x) if res is not None else None
    cdef cnp.ndarray mean = _empty(M, cnp.NPY_DOUBLE), rstd = _empty(M, cnp.NPY_DOUBLE)
    cdef void* py = cnp.PyArray_DATA(y)
    cdef void* ps_out = data_or_null(s)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pr = data_or_null(res)
    cdef void* pw = data_or_null(weight)
    cdef void* pb = data_or_null(bias)
    cdef double* pm = <double*>cnp.PyArray_DATA(mean)
    cdef double* ps = <double*>cnp.PyArray_DATA(rstd)
    if typenum == cnp.NPY_FLOAT:
        with nogil:
            _forward_impl(<float*>py, pm, ps, <float*>ps_out, <const float*>px,
                          <const float*>pr, <const float*>pw, <const float*>pb, M, D, eps,
                          center)
    else:
        with nogil:
            _forward_impl(<double*>py, pm, ps, <double*>ps_out, <const double*>px,
                          <const double*>pr, <const double*>pw, <const double*>pb, M, D, eps,
                          center)
    return y, s, mean, rstd


def forward(cnp.ndarray x not None, Py_ssize_t M, Py_ssize_t D, weight, bias, double eps):
    """LayerNorm of x viewed as (M, D). Returns (y like x, mean (M,), rstd (M,)) with
    float64 statistics. weight and bias: None or D contiguous elements (any shape)."""
    y, _, mean, rstd = _row_forward(x, None, M, D, weight, bias, eps, True)
    return y, mean, rstd


def add_forward(cnp.ndarray x not None, residual, Py_ssize_t M, Py_ssize_t D, weight, bias,
                double eps):
    """LayerNorm of s = x + residual (both (M, D)), in one pass over memory. Returns
    (y, s, mean, rstd); the backward is `backward` applied to s."""
    if residual is None:
        raise TypeError("residual must be a NumPy array")
    return _row_forward(x, residual, M, D, weight, bias, eps, True)


def rms_forward(cnp.ndarray x not None, Py_ssize_t M, Py_ssize_t D, weight, double eps):
    """RMSNorm of x viewed as (M, D): y = x / sqrt(mean(x**2) + eps) * weight. Returns
    (y, rrms (M,)) with rrms = 1/sqrt(mean(x**2) + eps) in float64."""
    y, _, _, rrms = _row_forward(x, None, M, D, weight, None, eps, False)
    return y, rrms


cdef object _row_backward(cnp.ndarray dy, cnp.ndarray x, Py_ssize_t M, Py_ssize_t D,
                          mean, cnp.ndarray rstd, weight, bint with_bias):
    cdef int typenum = _check_rows(x, M, D)
    if dy is None or rstd is None:
        raise TypeError("grad_output and rstd must be NumPy arrays")
    check_array(dy, M * D, typenum, False, "grad_output")
    check_array(mean, M, cnp.NPY_DOUBLE, False, "mean")
    check_array(rstd, M, cnp.NPY_DOUBLE, False, "rstd")
    check_array(weight, D, typenum, False, "weight")
    cdef cnp.ndarray dx = _empty_like(x)
    cdef cnp.ndarray dw = _empty(D, typenum)
    cdef cnp.ndarray db = _empty(D, typenum) if with_bias else None
    cdef void* pdx = cnp.PyArray_DATA(dx)
    cdef void* pdw = cnp.PyArray_DATA(dw)
    cdef void* pdb = data_or_null(db)
    cdef void* pdy = cnp.PyArray_DATA(dy)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = data_or_null(weight)
    cdef const double* pm = <const double*>data_or_null(mean)
    cdef const double* ps = <const double*>cnp.PyArray_DATA(rstd)
    if typenum == cnp.NPY_FLOAT:
        with nogil:
            _backward_impl(<float*>pdx, <float*>pdw, <float*>pdb, <const float*>pdy,
                           <const float*>px, pm, ps, <const float*>pw, M, D)
    else:
        with nogil:
            _backward_impl(<double*>pdx, <double*>pdw, <double*>pdb, <const double*>pdy,
                           <const double*>px, pm, ps, <const double*>pw, M, D)
    return dx, dw, db


def backward(cnp.ndarray dy not None, cnp.ndarray x not None, Py_ssize_t M, Py_ssize_t D,
             cnp.ndarray mean not None, cnp.ndarray rstd not None, weight):
    """LayerNorm backward. Returns (dx like x, dweight (D,), dbias (D,)) in the input dtype."""
    return _row_backward(dy, x, M, D, mean, rstd, weight, True)


def rms_backward(cnp.ndarray dy not None, cnp.ndarray x not None, Py_ssize_t M, Py_ssize_t D,
                 cnp.ndarray rrms not None, weight):
    """RMSNorm backward. Returns (dx like x, dweight (D,)) in the input dtype."""
    dx, dw, _ = _row_backward(dy, x, M, D, None, rrms, weight, False)
    return dx, dw


cdef inline int _check_groups(object x, Py_ssize_t N, Py_ssize_t G, Py_ssize_t Cg,
                              Py_ssize_t S) except -1:
    check_dims(N, G, Cg, S)
    return _check_rows(x, N * G, Cg * S)


def group_forward(cnp.ndarray x not None, Py_ssize_t N, Py_ssize_t G, Py_ssize_t Cg, Py_ssize_t S,
                  weight, bias, double eps):
    """GroupNorm of x viewed as (N, G, Cg, S) with per-channel (G*Cg) weight and bias.
    Returns (y, mean, rstd, var), float64 statistics of shape (N*G,) (var biased).
    InstanceNorm is G = C, Cg = 1."""
    cdef int typenum = _check_groups(x, N, G, Cg, S)
    check_array(weight, G * Cg, typenum, False, "weight")
    check_array(bias, G * Cg, typenum, False, "bias")
    cdef Py_ssize_t M = N * G
    cdef cnp.ndarray y = _empty_like(x)
    cdef cnp.ndarray mean = _empty(M, cnp.NPY_DOUBLE), rstd = _empty(M, cnp.NPY_DOUBLE)
    cdef cnp.ndarray var = _empty(M, cnp.NPY_DOUBLE)
    cdef void* py = cnp.PyArray_DATA(y)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = data_or_null(weight)
    cdef void* pb = data_or_null(bias)
    cdef double* pm = <double*>cnp.PyArray_DATA(mean)
    cdef double* ps = <double*>cnp.PyArray_DATA(rstd)
    cdef double* pv = <double*>cnp.PyArray_DATA(var)
    if M * Cg * S == 0:         # an empty row has no statistics (torch gives nan)
        mean.fill(float("nan"))
        rstd.fill(float("nan"))
        var.fill(float("nan"))
        return y, mean, rstd, var
    if typenum == cnp.NPY_FLOAT:
        with nogil:
            _group_forward_impl(<float*>py, pm, ps, pv, <const float*>px, <const float*>pw,
                                <const float*>pb, N, G, Cg, S, eps)
    else:
        with nogil:
            _group_forward_impl(<double*>py, pm, ps, pv, <const double*>px, <const double*>pw,
                                <const double*>pb, N, G, Cg, S, eps)
    return y, mean, rstd, var


def group_backward(cnp.ndarray dy not None, cnp.ndarray x not None, Py_ssize_t N, Py_ssize_t G, Py_ssize_t Cg,
                   Py_ssize_t S, cnp.ndarray mean not None, cnp.ndarray rstd not None, weight):
    """GroupNorm backward. Returns (dx like x, dweight (C,), dbias (C,)) in the input dtype."""
    cdef int typenum = _check_groups(x, N, G, Cg, S)
    check_array(dy, N * G * Cg * S, typenum, False, "grad_output")
    check_array(mean, N * G, cnp.NPY_DOUBLE, False, "mean")
    check_array(rstd, N * G, cnp.NPY_DOUBLE, False, "rstd")
    check_array(weight, G * Cg, typenum, False, "weight")
    cdef cnp.ndarray dx = _empty_like(x)
    cdef cnp.ndarray dw = _empty(G * Cg, typenum), db = _empty(G * Cg, typenum)
    cdef void* pdx = cnp.PyArray_DATA(dx)
    cdef void* pdw = cnp.PyArray_DATA(dw)
    cdef void* pdb = cnp.PyArray_DATA(db)
    cdef void* pdy = cnp.PyArray_DATA(dy)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = data_or_null(weight)
    cdef const double* pm = <const double*>cnp.PyArray_DATA(mean)
    cdef const double* ps = <const double*>cnp.PyArray_DATA(rstd)
    if N * G * Cg * S == 0:     # empty rows have no statistics: zero parameter gradients
        dw.fill(0)
        db.fill(0)
        return dx, dw, db
    if typenum == cnp.NPY_FLOAT:
        with nogil:
            _group_backward_impl(<float*>pdx, <float*>pdw, <float*>pdb, <const float*>pdy,
                                 <const float*>px, pm, ps, <const float*>pw, N, G, Cg, S)
    else:
        with nogil:
            _group_backward_impl(<double*>pdx, <double*>pdw, <double*>pdb, <const double*>pdy,
                                 <const double*>px, pm, ps, <const double*>pw, N, G, Cg, S)
    return dx, dw, db
