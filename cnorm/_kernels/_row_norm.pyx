"""Row-norm kernels (LayerNorm): statistics per row of a C-contiguous (M, D) buffer.

Each thread owns a contiguous range of rows. A row's statistics are computed while the
row is in cache (the exact block statistics of _stats.pxd), then the row is transformed;
mean and rstd are kept (float64) for backward. The backward pass accumulates dweight and
dbias per thread (in the input precision over ROWS_PER_FLUSH rows, then in float64) and
reduces the thread buffers in thread order afterwards: no races, no atomics, and the same
bits on every run for a given thread count. Entry points check every buffer (_buffers.pxd).
"""

cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdlib cimport free, malloc

from ._buffers cimport check_array, data_or_null, input_typenum
from ._openmp cimport n_threads_for, split_start
from ._simd cimport (STREAM_MIN_RUN, cn_simd_init, cn_simd_set, cn_stream_min_bytes, vln_grad_row,
                     vln_grad_sums, vln_grad_sums2, vln_row)
from ._stats cimport BLOCK, segment_stats, split_mean
from ._types cimport floating

cnp.import_array()
cn_simd_init()


def _set_simd(bint use_avx2):
    """Use the AVX2 (True, when the CPU has it) or the baseline loops; returns which runs.
    Both give the same bits: the tests check that."""
    return bool(cn_simd_set(use_avx2))


def _set_stream_min_bytes(Py_ssize_t n):
    """Outputs of at least n bytes are written with non-temporal stores; returns the old
    threshold (for benchmarks and tests)."""
    global cn_stream_min_bytes
    old = cn_stream_min_bytes
    cn_stream_min_bytes = n
    return old

cdef enum:
    ROWS_PER_FLUSH = 32     # rows summed in the input precision before a float64 flush


cdef void _forward_rows(floating* y,              # OUT (M, D)
                        double* mean,             # OUT (M,)
                        double* rstd,             # OUT (M,)
                        const floating* x,        # IN  (M, D)
                        const floating* weight,   # IN  (D,)
                        const floating* bias,     # IN  (D,)
                        Py_ssize_t D, double eps,
                        Py_ssize_t r0, Py_ssize_t r1, bint stream) noexcept nogil:
    cdef Py_ssize_t r
    cdef double count, mu, m2, rs
    cdef floating hi, lo
    cdef const floating* xr
    cdef floating* yr
    for r in range(r0, r1):
        xr = x + r * D
        yr = y + r * D
        count = 0
        mu = 0
        m2 = 0
        segment_stats(xr, D, &count, &mu, &m2)
        rs = 1.0 / sqrt(m2 / D + eps)
        mean[r] = mu
        rstd[r] = rs
        split_mean(mu, &hi, &lo)
        vln_row(yr, xr, weight, bias, D, hi, lo, <floating>rs, stream)


cdef void _backward_rows(floating* dx,             # OUT (M, D)
                         double* dweight,          # OUT (D,) this thread's partial, float64
                         double* dbias,            # OUT (D,) this thread's partial, float64
                         floating* tw,             # scratch (D,)
                         floating* tb,             # scratch (D,)
                         const floating* dy,       # IN  (M, D)
                         const floating* x,        # IN  (M, D)
                         const double* mean,       # IN  (M,)
                         const double* rstd,       # IN  (M,)
                         const floating* weight,   # IN  (D,)
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
    for j in range(D):
        dweight[j] = 0
        dbias[j] = 0
        tw[j] = 0
        tb[j] = 0
    r = r0
    while r < r1:
        n_rows = 2 if r + 1 < r1 else 1          # two rows share the dweight/dbias updates
        for q in range(n_rows):
            split_mean(mean[r + q], &hi[q], &lo[q])
            rs[q] = <floating>rstd[r + q]
            sum_g[q] = 0
            sum_gd[q] = 0
        # pass 1: sum g and sum g*(x - mean), g = dy*weight; the dweight/dbias partials
        for k_b in range((D + BLOCK - 1) // BLOCK):     # short sums, merged in float64
            b = k_b * BLOCK
            len_b = D - b if D - b < BLOCK else BLOCK
            if n_rows == 2:
                vln_grad_sums2(s_g, s_gd, tw + b, tb + b, dy + r * D + b, dy + (r + 1) * D + b,
                               x + r * D + b, x + (r + 1) * D + b, weight + b, len_b,
                               hi[0], lo[0], rs[0], hi[1], lo[1], rs[1])
            else:
                vln_grad_sums(s_g, s_gd, tw + b, tb + b, dy + r * D + b, x + r * D + b,
                              weight + b, len_b, hi[0], lo[0], rs[0])
            for q in range(n_rows):
                sum_g[q] += s_g[q]
                sum_gd[q] += s_gd[q]
        # pass 2 (rows in cache): dx = rstd*(g - mean(g) - xhat*mean(g*xhat))
        #                            = rstd*dy*weight - c1 - c2*(x - mean)
        for q in range(n_rows):
            rsd = rstd[r + q]
            vln_grad_row(dx + (r + q) * D, dy + (r + q) * D, x + (r + q) * D, weight, D,
                         hi[q], lo[q], rs[q], <floating>(rsd * sum_g[q] / D),
                         <floating>(rsd * rsd * rsd * sum_gd[q] / D), stream)
        r += n_rows
        if (r - r0) % ROWS_PER_FLUSH == 0 or r == r1:
            for j in range(D):
                dweight[j] += tw[j]
                dbias[j] += tb[j]
                tw[j] = 0
                tb[j] = 0


# ---------------------------------------------------------------------------------------
# Python entry points: every buffer is checked (type, size, layout) before use
# ---------------------------------------------------------------------------------------

cdef inline cnp.ndarray _empty(Py_ssize_t n, int typenum):
    cdef cnp.npy_intp dim = n
    return cnp.PyArray_EMPTY(1, &dim, typenum, 0)


cdef inline cnp.ndarray _empty_like(cnp.ndarray x):
    return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(x), cnp.PyArray_DIMS(x), cnp.PyArray_TYPE(x), 0)


cdef int _forward_impl(floating* y, double* mean, double* rstd, const floating* x,
                       const floating* weight, const floating* bias,
                       Py_ssize_t M, Py_ssize_t D, double eps) except -1 nogil:
    cdef int n_threads = n_threads_for(M * D), t
    cdef Py_ssize_t j
    cdef bint stream = (M * D * <Py_ssize_t>sizeof(floating) >= cn_stream_min_bytes
                        and D >= STREAM_MIN_RUN)
    cdef floating* ones_zeros = NULL
    if weight == NULL or bias == NULL:      # absent affine parameters: 1 and 0
        ones_zeros = <floating*>malloc(2 * D * sizeof(floating) + 1)
        if ones_zeros == NULL:
            with gil:
                raise MemoryError()
        for j in range(D):
            ones_zeros[j] = 1
            ones_zeros[D + j] = 0
        if weight == NULL:
            weight = ones_zeros
        if bias == NULL:
            bias = ones_zeros + D
    if n_threads == 1:      # no parallel region: it costs ~1 us
        _forward_rows(y, mean, rstd, x, weight, bias, D, eps, 0, M, stream)
    else:
        for t in prange(n_threads, schedule='static', num_threads=n_threads):
            _forward_rows(y, mean, rstd, x, weight, bias, D, eps,
                          split_start(M, t, n_threads), split_start(M, t + 1, n_threads), stream)
    free(ones_zeros)
    return 0


def forward(cnp.ndarray x, Py_ssize_t M, Py_ssize_t D, weight, bias, double eps):
    """LayerNorm of x viewed as (M, D). Returns (y like x, mean (M,), rstd (M,)) with
    float64 statistics. weight and bias: None or D contiguous elements (any shape)."""
    cdef int typenum = input_typenum(x, "input")
    if M < 0 or D < 0:
        raise ValueError("negative dimension")
    check_array(x, M * D, typenum, False, "input")
    check_array(weight, D, typenum, False, "weight")
    check_array(bias, D, typenum, False, "bias")
    cdef cnp.ndarray y = _empty_like(x)
    cdef cnp.ndarray mean = _empty(M, cnp.NPY_DOUBLE), rstd = _empty(M, cnp.NPY_DOUBLE)
    cdef void* py = cnp.PyArray_DATA(y)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = data_or_null(weight)
    cdef void* pb = data_or_null(bias)
    cdef double* pm = <double*>cnp.PyArray_DATA(mean)
    cdef double* ps = <double*>cnp.PyArray_DATA(rstd)
    if typenum == cnp.NPY_FLOAT:
        with nogil:
            _forward_impl(<float*>py, pm, ps, <const float*>px, <const float*>pw,
                          <const float*>pb, M, D, eps)
    else:
        with nogil:
            _forward_impl(<double*>py, pm, ps, <const double*>px, <const double*>pw,
                          <const double*>pb, M, D, eps)
    return y, mean, rstd


cdef int _backward_impl(floating* dx, floating* dweight, floating* dbias,
                        const floating* dy, const floating* x,
                        const double* mean, const double* rstd, const floating* weight,
                        Py_ssize_t M, Py_ssize_t D) except -1 nogil:
    cdef int n_threads = n_threads_for(2 * M * D), t
    cdef Py_ssize_t j
    cdef bint stream = (M * D * <Py_ssize_t>sizeof(floating) >= cn_stream_min_bytes
                        and D >= STREAM_MIN_RUN)
    cdef double sw, sb
    cdef floating* ones = NULL
    # per thread: dweight, dbias partials (float64) then two input-precision scratch rows
    cdef char* scratch = <char*>malloc(n_threads * D * 2 * (sizeof(double) + sizeof(floating)) + 1)
    cdef double* part
    cdef floating* tmp
    if scratch == NULL:
        with gil:
            raise MemoryError()
    part = <double*>scratch
    tmp = <floating*>(scratch + n_threads * D * 2 * sizeof(double))
    if weight == NULL:
        ones = <floating*>malloc(D * sizeof(floating) + 1)
        if ones == NULL:
            free(scratch)
            with gil:
                raise MemoryError()
        for j in range(D):
            ones[j] = 1
        weight = ones
    if n_threads == 1:      # no parallel region: it costs ~1 us
        _backward_rows(dx, part, part + D, tmp, tmp + D, dy, x, mean, rstd, weight, D, 0, M,
                       stream)
    else:
        for t in prange(n_threads, schedule='static', num_threads=n_threads):
            _backward_rows(dx, part + 2 * D * t, part + 2 * D * t + D,
                           tmp + 2 * D * t, tmp + 2 * D * t + D, dy, x, mean, rstd, weight, D,
                           split_start(M, t, n_threads), split_start(M, t + 1, n_threads),
                           stream)
    for j in range(D):
        sw = 0
        sb = 0
        for t in range(n_threads):
            sw += part[2 * D * t + j]
            sb += part[2 * D * t + D + j]
        dweight[j] = <floating>sw
        dbias[j] = <floating>sb
    free(ones)
    free(scratch)
    return 0


def backward(cnp.ndarray dy, cnp.ndarray x, Py_ssize_t M, Py_ssize_t D,
             cnp.ndarray mean, cnp.ndarray rstd, weight):
    """Returns (dx like x, dweight (D,), dbias (D,)) in the input dtype."""
    cdef int typenum = input_typenum(x, "input")
    if M < 0 or D < 0:
        raise ValueError("negative dimension")
    check_array(x, M * D, typenum, False, "input")
    check_array(dy, M * D, typenum, False, "grad_output")
    check_array(mean, M, cnp.NPY_DOUBLE, False, "mean")
    check_array(rstd, M, cnp.NPY_DOUBLE, False, "rstd")
    check_array(weight, D, typenum, False, "weight")
    cdef cnp.ndarray dx = _empty_like(x)
    cdef cnp.ndarray dw = _empty(D, typenum), db = _empty(D, typenum)
    cdef void* pdx = cnp.PyArray_DATA(dx)
    cdef void* pdw = cnp.PyArray_DATA(dw)
    cdef void* pdb = cnp.PyArray_DATA(db)
    cdef void* pdy = cnp.PyArray_DATA(dy)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = data_or_null(weight)
    cdef const double* pm = <const double*>cnp.PyArray_DATA(mean)
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
