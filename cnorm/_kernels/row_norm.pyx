"""Row-norm kernels: statistics per row of a C-contiguous (M, D) buffer.

One walk serves four norms:
* LayerNorm: rows of D = prod(normalized_shape), one affine weight per element;
* RMSNorm: the same without centering (mean 0, variance = mean of squares);
* GroupNorm / InstanceNorm: rows of D = channels_per_group * S (one (n, group)), one affine
  weight per channel, i.e. per segment of S elements of the row (InstanceNorm: one channel
  per group);
* LayerNorm of x + residual: the sum is written once and normalized while in cache.

Each thread owns a contiguous range of rows. A row's statistics are computed while the
row is in cache (the exact block statistics of common.pxd), then the row is transformed;
mean and rstd are kept (float64) for backward. The backward pass accumulates the weight
and bias gradients per thread (in the input precision over ROWS_PER_FLUSH rows, then in
float64) and reduces the thread buffers in thread order afterwards: no races, no atomics,
and the same bits on every run for a given thread count. Entry points check every buffer
(common.pxd) and run the row loop of their norm on every thread (common.run_threads).

The input gradient of a row, with xhat = (x - mean) * rstd, y = xhat * w + b and g = dy * w:
mean and rstd depend on every x of the row (d mean/dx = 1/D, d rstd/dx = -rstd^3 (x - mean)/D),
so
    dx = rstd * ((g - mean(g)) - mean(g * xhat) * xhat)
and for RMSNorm (xhat = x * rstd, no mean) the same without mean(g).
"""

cimport numpy as cnp
from libc.math cimport sqrt
from libc.stdlib cimport calloc, free, malloc
from libc.stdint cimport uint16_t
from libc.string cimport memset

from .common cimport (BLOCK, STREAM_MIN_RUN, check_array, check_dims, compute_typenum,
                      data_or_null, empty_1d, empty_like, floating, input_typenum, run_threads,
                      segment_stats, split_mean, split_start, stage_in, stage_out, sum_partials,
                      sum_squares)
from .openmp cimport n_threads_for
from .simd.loops cimport (affine, bn_grad_sums, cn_stream_fence, gn_grad_segment, ln_grad_row,
                          ln_grad_sums, ln_grad_sums2, ln_row, residual_add)

cnp.import_array()
include "simd_control.pxi"


cdef enum:
    ROWS_PER_FLUSH = 32     # rows summed in the input precision before a float64 flush
    STAGE_ROWS = 6          # half storage: rows of float32 per thread (backward: x, dy, dx of two)


# an absent weight reads ones and an absent bias zeros: BLOCK of each, never a row-sized
# temporary
cdef float _defaults_f[2 * BLOCK]
cdef double _defaults_d[2 * BLOCK]


cdef void _fill_defaults() noexcept:
    cdef Py_ssize_t i
    for i in range(BLOCK):
        _defaults_f[i] = 1
        _defaults_f[BLOCK + i] = 0
        _defaults_d[i] = 1
        _defaults_d[BLOCK + i] = 0


_fill_defaults()


cdef struct RowJob:         # one call on x: C-contiguous (M, D) rows of the input dtype
    Py_ssize_t M, D
    int typenum             # of x: NPY_FLOAT or NPY_DOUBLE
    const void* x
    int n_threads
    double eps
    bint center             # LayerNorm (x - mean) or RMSNorm (mean 0)
    bint stream             # non-temporal stores for the (M, D) outputs
    void* out               # OUT (M, D) y (forward) or dx (backward)
    void* sum               # OUT (M, D) x + residual (add + LayerNorm), or NULL
    double* mean            # OUT (M,) forward / IN backward; NULL: RMSNorm backward
    double* rstd            # OUT (M,) forward / IN backward: 1 / sqrt(var + eps)
    double* var             # OUT (M,) the biased variance (GroupNorm)
    const void* residual    # IN  (M, D), or NULL
    const void* dy          # IN  (M, D) grad_output
    const void* weight      # IN  (D,) LayerNorm, (G * Cg,) GroupNorm; NULL: ones
    const void* bias        # IN  like weight; NULL: zeros
    const void* defaults    # IN  (2, BLOCK) ones, zeros of the input dtype
    Py_ssize_t G, Cg, S     # GroupNorm: row r = (n, g): Cg channels of S elements each
    double* part            # scratch (n_threads, 2, D or C): dweight, dbias partials
    void* tmp               # scratch (n_threads, 2, D) of the input dtype (LayerNorm)
    int kind                # half storage (common.pxd): 0 none; 1 float16, 2 bfloat16 bits in
    #                       x, residual, dy, out, sum, computed as float32 (typenum NPY_FLOAT)
    float* stage            # scratch (n_threads, STAGE_ROWS, D) float32 rows (kind != 0)


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

cdef void _layer_norm_forward_rows(const floating* x, void* job, int t,
                                   int n_threads) noexcept nogil:
    """Thread t's rows: y = xhat * weight + bias, xhat = (x - mean) * rstd (RMSNorm:
    x * rstd); with a residual, of the row of x + residual, which is written to j.sum."""
    cdef const RowJob* j = <const RowJob*>job
    cdef Py_ssize_t D = j.D, r, b, k_b, len_b
    cdef floating* y = <floating*>j.out
    cdef floating* s = <floating*>j.sum
    cdef const floating* res = <const floating*>j.residual
    cdef const floating* weight = <const floating*>j.weight
    cdef const floating* bias = <const floating*>j.bias
    cdef const floating* defaults = <const floating*>j.defaults
    cdef double* mean = j.mean
    cdef double* rstd = j.rstd
    cdef double mu, rs, eps = j.eps
    cdef bint center = j.center, stream = j.stream
    cdef floating hi, lo
    cdef const floating* xr
    cdef floating* yr
    cdef int kind = j.kind
    cdef floating* stage = <floating*>j.stage + STAGE_ROWS * D * t     # half: x, sum, y rows
    for r in range(split_start(j.M, t, n_threads), split_start(j.M, t + 1, n_threads)):
        xr = stage_in(kind, stage, j.x, r * D, D) if kind else x + r * D
        yr = stage + 2 * D if kind else y + r * D
        if res != NULL and kind:    # the sum rounded to the half type is normalized, as torch
            residual_add(stage + D, xr, stage_in(kind, stage + 2 * D, j.residual, r * D, D), D,
                         False)
            stage_out(kind, j.sum, r * D, stage + D, D)
            xr = stage_in(kind, stage, j.sum, r * D, D)
        elif res != NULL:   # the sum stays in cache for the statistics: no streaming here
            residual_add(s + r * D, xr, res + r * D, D, False)
            xr = s + r * D
        rs = 1.0 / sqrt(_row_stats(xr, D, center, &mu) + eps)
        mean[r] = mu
        rstd[r] = rs
        split_mean(mu, &hi, &lo)
        for k_b in range((D + BLOCK - 1) // BLOCK):     # absent params: BLOCK-sized defaults
            b = k_b * BLOCK
            len_b = D - b if D - b < BLOCK else BLOCK
            ln_row(yr + b, xr + b, weight + b if weight != NULL else defaults,
                   bias + b if bias != NULL else defaults + BLOCK, len_b, hi, lo,
                   <floating>rs, stream)
        if kind:
            stage_out(kind, j.out, r * D, yr, D)
    if stream:       # once per thread, after all its streamed stores
        cn_stream_fence()


cdef void _layer_norm_backward_rows(const floating* x, void* job, int t,
                                    int n_threads) noexcept nogil:
    """Thread t's rows of the LayerNorm backward (RMSNorm: j.mean is NULL), g = dy * w:
        dx = rstd * ((g - mean(g)) - mean(g * xhat) * xhat)      (RMSNorm: no mean(g))
    and its partials of dweight = sum over rows of dy * xhat, dbias = sum of dy."""
    cdef const RowJob* j = <const RowJob*>job
    cdef Py_ssize_t D = j.D, r, i, b, len_b, k_b, q, n_rows
    cdef Py_ssize_t r0 = split_start(j.M, t, n_threads), r1 = split_start(j.M, t + 1, n_threads)
    cdef floating* dx = <floating*>j.out
    cdef const floating* dy = <const floating*>j.dy
    cdef const floating* weight = <const floating*>j.weight
    cdef const floating* ones = <const floating*>j.defaults
    cdef const double* mean = j.mean
    cdef const double* rstd_64 = j.rstd
    cdef bint stream = j.stream
    cdef double* dweight = j.part + 2 * D * t       # float64 partials of this thread
    cdef double* dbias = dweight + D
    cdef floating* tw = <floating*>j.tmp + 2 * D * t    # input-precision partials
    cdef floating* tb = tw + D
    cdef floating hi[2]
    cdef floating lo[2]
    cdef floating rstd[2]
    cdef double sum_g[2]
    cdef double sum_gd[2]
    cdef double s_g[2]
    cdef double s_gd[2]
    cdef floating mean_g, mean_gxhat
    cdef const floating* wb
    cdef const floating* xq[2]      # the rows r, r + 1 (half storage: widened into stage)
    cdef const floating* dyq[2]
    cdef floating* dxq[2]
    cdef int kind = j.kind
    cdef floating* stage = <floating*>j.stage + STAGE_ROWS * D * t
    for i in range(D):
        dweight[i] = 0
        dbias[i] = 0
        tw[i] = 0
        tb[i] = 0
    r = r0
    while r < r1:
        n_rows = 2 if r + 1 < r1 else 1          # two rows share the dweight/dbias updates
        for q in range(n_rows):
            split_mean(mean[r + q] if mean != NULL else 0.0, &hi[q], &lo[q])
            rstd[q] = <floating>rstd_64[r + q]
            sum_g[q] = 0
            sum_gd[q] = 0
            if kind:
                xq[q] = stage_in(kind, stage + q * D, j.x, (r + q) * D, D)
                dyq[q] = stage_in(kind, stage + (2 + q) * D, j.dy, (r + q) * D, D)
                dxq[q] = stage + (4 + q) * D
            else:
                xq[q] = x + (r + q) * D
                dyq[q] = dy + (r + q) * D
                dxq[q] = dx + (r + q) * D
        # pass 1: sum(g), sum(g * (x - mean)) and the dweight/dbias partials
        for k_b in range((D + BLOCK - 1) // BLOCK):     # short sums, merged in float64
            b = k_b * BLOCK
            len_b = D - b if D - b < BLOCK else BLOCK
            wb = weight + b if weight != NULL else ones
            if n_rows == 2:
                ln_grad_sums2(s_g, s_gd, tw + b, tb + b, dyq[0] + b, dyq[1] + b, xq[0] + b,
                              xq[1] + b, wb, len_b, hi[0], lo[0], rstd[0], hi[1], lo[1], rstd[1])
            else:
                ln_grad_sums(s_g, s_gd, tw + b, tb + b, dyq[0] + b, xq[0] + b, wb, len_b,
                             hi[0], lo[0], rstd[0])
            for q in range(n_rows):
                sum_g[q] += s_g[q]
                sum_gd[q] += s_gd[q]
        # pass 2 (rows in cache): dx
        for q in range(n_rows):
            mean_g = <floating>(sum_g[q] / D) if mean != NULL else 0
            mean_gxhat = <floating>(rstd_64[r + q] * sum_gd[q] / D)
            for k_b in range((D + BLOCK - 1) // BLOCK):
                b = k_b * BLOCK
                len_b = D - b if D - b < BLOCK else BLOCK
                ln_grad_row(dxq[q] + b, dyq[q] + b, xq[q] + b,
                            weight + b if weight != NULL else ones, len_b, hi[q], lo[q],
                            rstd[q], mean_g, mean_gxhat, stream)
            if kind:
                stage_out(kind, j.out, (r + q) * D, dxq[q], D)
        r += n_rows
        if (r - r0) % ROWS_PER_FLUSH == 0 or r == r1:
            for i in range(D):
                dweight[i] += tw[i]
                dbias[i] += tb[i]
                tw[i] = 0
                tb[i] = 0
    if stream:       # once per thread, after all its streamed stores
        cn_stream_fence()


# ---------------------------------------------------------------------------------------
# GroupNorm / InstanceNorm: rows of G groups, one affine weight per channel (segment)
# ---------------------------------------------------------------------------------------

cdef void _group_norm_forward_rows(const floating* x, void* job, int t,
                                   int n_threads) noexcept nogil:
    """Thread t's rows (n, g): y = xhat * weight[c] + bias[c] per channel segment."""
    cdef const RowJob* j = <const RowJob*>job
    cdef Py_ssize_t G = j.G, Cg = j.Cg, S = j.S, D = j.Cg * j.S, r, i, c
    cdef floating* y = <floating*>j.out
    cdef const floating* weight = <const floating*>j.weight
    cdef const floating* bias = <const floating*>j.bias
    cdef double* mean = j.mean
    cdef double* rstd = j.rstd
    cdef double* var = j.var
    cdef double mu, v, rs, eps = j.eps
    cdef bint stream = j.stream
    cdef floating hi, lo
    cdef int kind = j.kind
    cdef floating* stage = <floating*>j.stage + STAGE_ROWS * D * t     # half: x, y rows
    cdef const floating* xr
    cdef floating* yr
    for r in range(split_start(j.M, t, n_threads), split_start(j.M, t + 1, n_threads)):
        xr = stage_in(kind, stage, j.x, r * D, D) if kind else x + r * D
        yr = stage + D if kind else y + r * D
        v = _row_stats(xr, D, True, &mu)
        rs = 1.0 / sqrt(v + eps)
        mean[r] = mu
        rstd[r] = rs
        var[r] = v
        split_mean(mu, &hi, &lo)
        c = (r % G) * Cg
        for i in range(Cg):
            affine(yr + i * S, xr + i * S, S, hi, lo,
                   <floating>(rs * (weight[c + i] if weight != NULL else 1.0)),
                   bias[c + i] if bias != NULL else 0, stream, False)
        if kind:
            stage_out(kind, j.out, r * D, yr, D)
    if stream:       # once per thread, after all its streamed stores
        cn_stream_fence()


cdef void _group_norm_backward_rows(const floating* x, void* job, int t,
                                    int n_threads) noexcept nogil:
    """Thread t's rows (n, g) of the GroupNorm backward, g = dy * weight[c] per channel:
        dx = rstd * ((g - mean(g)) - mean(g * xhat) * xhat)   over the row's segments,
    and its partials of dweight[c] = sum of dy * xhat, dbias[c] = sum of dy."""
    cdef const RowJob* j = <const RowJob*>job
    cdef Py_ssize_t G = j.G, Cg = j.Cg, S = j.S, C = j.G * j.Cg, D = j.Cg * j.S
    cdef Py_ssize_t r, i, c, b, len_b, k_b, o
    cdef floating* dx = <floating*>j.out
    cdef const floating* dy = <const floating*>j.dy
    cdef const floating* weight = <const floating*>j.weight
    cdef double* dweight = j.part + 2 * C * t
    cdef double* dbias = dweight + C
    cdef const double* mean = j.mean
    cdef const double* rstd = j.rstd
    cdef bint stream = j.stream
    cdef double rs, w, sum_g, sum_gd, seg_g, seg_gd, s1, s2
    cdef floating hi, lo
    cdef int kind = j.kind
    cdef floating* stage = <floating*>j.stage + STAGE_ROWS * D * t     # half: x, dy, dx rows
    cdef const floating* xr
    cdef const floating* dyr
    cdef floating* dxr
    for r in range(split_start(j.M, t, n_threads), split_start(j.M, t + 1, n_threads)):
        xr = stage_in(kind, stage, j.x, r * D, D) if kind else x + r * D
        dyr = stage_in(kind, stage + D, j.dy, r * D, D) if kind else dy + r * D
        dxr = stage + 2 * D if kind else dx + r * D
        split_mean(mean[r], &hi, &lo)
        rs = rstd[r]
        c = (r % G) * Cg
        sum_g = 0
        sum_gd = 0
        # pass 1: per channel segment, sum(dy) and sum(dy * (x - mean)) (short sums, float64)
        for i in range(Cg):
            o = i * S
            seg_g = 0
            seg_gd = 0
            for k_b in range((S + BLOCK - 1) // BLOCK):
                b = k_b * BLOCK
                len_b = S - b if S - b < BLOCK else BLOCK
                bn_grad_sums(&s1, &s2, dyr + o + b, xr + o + b, len_b, hi, lo, NULL)
                seg_g += s1
                seg_gd += s2
            w = weight[c + i] if weight != NULL else 1.0
            dbias[c + i] += seg_g
            dweight[c + i] += seg_gd * rs
            sum_g += w * seg_g
            sum_gd += w * seg_gd
        # pass 2 (row in cache): dx, segment by segment
        for i in range(Cg):
            o = i * S
            gn_grad_segment(dxr + o, dyr + o, xr + o, S, hi, lo, <floating>rs,
                            weight[c + i] if weight != NULL else 1, <floating>(sum_g / D),
                            <floating>(rs * sum_gd / D), stream)
        if kind:
            stage_out(kind, j.out, r * D, dxr, D)
    if stream:       # once per thread, after all its streamed stores
        cn_stream_fence()


# ---------------------------------------------------------------------------------------
# Python entry points: every buffer is checked (type, size, layout) before use
# ---------------------------------------------------------------------------------------

cdef inline int _check_rows(object x, Py_ssize_t M, Py_ssize_t D, int kind=0) except -1:
    """x: float32/float64 (or half bits), C-contiguous, M*D elements; returns compute_typenum."""
    cdef int typenum = compute_typenum(x, kind)
    check_dims(M, D, 1, 1)
    check_array(x, M * D, cnp.NPY_UINT16 if kind else typenum, False, "input")
    return typenum


cdef void _start(RowJob* j, cnp.ndarray x, int typenum, Py_ssize_t M, Py_ssize_t D,
                 Py_ssize_t n_elements) noexcept:
    """A zeroed job for x as M rows of D with the defaults of its dtype and the thread
    count for n_elements (the elements the kernel reads)."""
    memset(j, 0, sizeof(RowJob))
    j.M = M
    j.D = D
    j.typenum = typenum
    j.x = cnp.PyArray_DATA(x)
    j.n_threads = n_threads_for(n_elements)
    j.defaults = <void*>_defaults_f if typenum == cnp.NPY_FLOAT else <void*>_defaults_d


cdef tuple _forward_job(RowJob* j, cnp.ndarray x, res, Py_ssize_t M, Py_ssize_t D, weight,
                        bias, double eps, bint center, int kind):
    """The checks, outputs (y, sum or None, mean, rstd) and job of a LayerNorm-type forward
    (half storage: free j.stage)."""
    cdef int typenum = _check_rows(x, M, D, kind)
    check_array(res, M * D, cnp.NPY_UINT16 if kind else typenum, False, "residual")
    check_array(weight, D, typenum, False, "weight")
    check_array(bias, D, typenum, False, "bias")
    cdef cnp.ndarray y = empty_like(x)
    cdef cnp.ndarray s = empty_like(x) if res is not None else None
    cdef cnp.ndarray mean = empty_1d(M, cnp.NPY_DOUBLE), rstd = empty_1d(M, cnp.NPY_DOUBLE)
    _start(j, x, typenum, M, D, M * D)
    j.stream = _use_stream(M * D, D, cnp.PyArray_ITEMSIZE(x))
    j.eps = eps
    j.center = center
    j.out = cnp.PyArray_DATA(y)
    j.sum = data_or_null(s)
    j.mean = <double*>cnp.PyArray_DATA(mean)
    j.rstd = <double*>cnp.PyArray_DATA(rstd)
    j.residual = data_or_null(res)
    j.weight = data_or_null(weight)
    j.bias = data_or_null(bias)
    _start_stage(j, kind)
    return y, s, mean, rstd


def layer_norm_forward(cnp.ndarray x not None, Py_ssize_t M, Py_ssize_t D, weight, bias,
                       double eps, int kind=0):
    """LayerNorm of x viewed as (M, D). Returns (y like x, mean (M,), rstd (M,)) with
    float64 statistics. weight and bias: None or D contiguous elements (any shape).
    kind 1 (float16) / 2 (bfloat16): x and y are half bits (uint16), weight and bias float32."""
    cdef RowJob j
    y, _, mean, rstd = _forward_job(&j, x, None, M, D, weight, bias, eps, True, kind)
    _run_forward(&j)
    return y, mean, rstd


def add_layer_norm_forward(cnp.ndarray x not None, residual, Py_ssize_t M, Py_ssize_t D,
                           weight, bias, double eps, int kind=0):
    """LayerNorm of s = x + residual (both (M, D)), in one pass over memory. Returns
    (y, s, mean, rstd); the backward is layer_norm_backward applied to s. kind: as
    layer_norm_forward (s is rounded to the half type, then normalized)."""
    if residual is None:
        raise TypeError("residual must be a NumPy array")
    cdef RowJob j
    out = _forward_job(&j, x, residual, M, D, weight, bias, eps, True, kind)
    _run_forward(&j)
    return out


def rms_norm_forward(cnp.ndarray x not None, Py_ssize_t M, Py_ssize_t D, weight, double eps, int kind=0):
    """RMSNorm of x viewed as (M, D): y = x / sqrt(mean(x**2) + eps) * weight. Returns
    (y, rrms (M,)) with rrms = 1/sqrt(mean(x**2) + eps) in float64. kind: layer_norm_forward's."""
    cdef RowJob j
    y, _, _, rrms = _forward_job(&j, x, None, M, D, weight, None, eps, False, kind)
    _run_forward(&j)
    return y, rrms


cdef tuple _backward_job(RowJob* j, cnp.ndarray dy, cnp.ndarray x, Py_ssize_t M,
                         Py_ssize_t D, mean, cnp.ndarray rstd, weight, bint with_bias, int kind):
    """The checks, outputs (dx, dweight, dbias or None) and job (with its scratch: free
    j.part and j.stage) of a LayerNorm / RMSNorm (mean None) backward. Half storage:
    dweight and dbias are float64 (rounded once by the caller)."""
    cdef int typenum = _check_rows(x, M, D, kind)
    if dy is None or rstd is None:
        raise TypeError("grad_output and rstd must be NumPy arrays")
    check_array(dy, M * D, cnp.NPY_UINT16 if kind else typenum, False, "grad_output")
    check_array(mean, M, cnp.NPY_DOUBLE, False, "mean")
    check_array(rstd, M, cnp.NPY_DOUBLE, False, "rstd")
    check_array(weight, D, typenum, False, "weight")
    cdef cnp.ndarray dx = empty_like(x)
    cdef cnp.ndarray dw = empty_1d(D, cnp.NPY_DOUBLE if kind else typenum)
    cdef cnp.ndarray db = empty_1d(D, cnp.NPY_DOUBLE if kind else typenum) if with_bias else None
    cdef Py_ssize_t itemsize = sizeof(float) if kind else cnp.PyArray_ITEMSIZE(x)   # of tmp
    _start(j, x, typenum, M, D, 2 * M * D)
    # per thread: the dweight, dbias partials (float64) then two input-precision rows
    j.part = <double*>malloc(j.n_threads * D * 2 * (sizeof(double) + itemsize) + 1)
    if j.part == NULL:
        raise MemoryError()
    j.tmp = <char*>j.part + j.n_threads * D * 2 * sizeof(double)
    j.stream = _use_stream(M * D, D, itemsize)
    j.out = cnp.PyArray_DATA(dx)
    j.dy = cnp.PyArray_DATA(dy)
    j.mean = <double*>data_or_null(mean)
    j.rstd = <double*>cnp.PyArray_DATA(rstd)
    j.weight = data_or_null(weight)
    try:
        _start_stage(j, kind)
    except MemoryError:
        free(j.part)
        raise
    return dx, dw, db


cdef void _finish_backward(RowJob* j, cnp.ndarray dw, db) noexcept:
    """dweight (and dbias) <- the thread partials summed in thread order; frees them."""
    sum_partials(cnp.PyArray_TYPE(dw), cnp.PyArray_DATA(dw), data_or_null(db), j.part, j.D,
                 j.n_threads, 2 * j.D)
    free(j.part)
    free(j.stage)


def layer_norm_backward(cnp.ndarray dy not None, cnp.ndarray x not None, Py_ssize_t M,
                        Py_ssize_t D, cnp.ndarray mean not None, cnp.ndarray rstd not None,
                        weight, int kind=0):
    """LayerNorm backward. Returns (dx like x, dweight (D,), dbias (D,)) in the input dtype
    (half storage, kind != 0: dx half bits, dweight and dbias float64)."""
    cdef RowJob j
    dx, dw, db = _backward_job(&j, dy, x, M, D, mean, rstd, weight, True, kind)
    with nogil:
        run_threads(j.typenum, j.x, &j, j.n_threads,
                    _layer_norm_backward_rows[float], _layer_norm_backward_rows[double])
    _finish_backward(&j, dw, db)
    return dx, dw, db


def rms_norm_backward(cnp.ndarray dy not None, cnp.ndarray x not None, Py_ssize_t M,
                      Py_ssize_t D, cnp.ndarray rrms not None, weight, int kind=0):
    """RMSNorm backward. Returns (dx like x, dweight (D,)) in the input dtype (kind: as LN's)."""
    cdef RowJob j
    dx, dw, _ = _backward_job(&j, dy, x, M, D, None, rrms, weight, False, kind)
    with nogil:
        run_threads(j.typenum, j.x, &j, j.n_threads,
                    _layer_norm_backward_rows[float], _layer_norm_backward_rows[double])
    _finish_backward(&j, dw, None)
    return dx, dw


cdef inline int _check_groups(object x, Py_ssize_t N, Py_ssize_t G, Py_ssize_t Cg,
                              Py_ssize_t S, int kind) except -1:
    check_dims(N, G, Cg, S)
    return _check_rows(x, N * G, Cg * S, kind)


cdef void _group_job(RowJob* j, cnp.ndarray x, int typenum, Py_ssize_t N, Py_ssize_t G,
                     Py_ssize_t Cg, Py_ssize_t S, Py_ssize_t reads) noexcept:
    _start(j, x, typenum, N * G, Cg * S, reads * N * G * Cg * S)
    j.G = G
    j.Cg = Cg
    j.S = S
    j.stream = _use_stream(N * G * Cg * S, S, cnp.PyArray_ITEMSIZE(x))


def group_norm_forward(cnp.ndarray x not None, Py_ssize_t N, Py_ssize_t G, Py_ssize_t Cg,
                       Py_ssize_t S, weight, bias, double eps, int kind=0):
    """GroupNorm of x viewed as (N, G, Cg, S) with per-channel (G*Cg) weight and bias.
    Returns (y, mean, rstd, var), float64 statistics of shape (N*G,) (var biased).
    InstanceNorm is G = C, Cg = 1. kind: as layer_norm_forward."""
    cdef int typenum = _check_groups(x, N, G, Cg, S, kind)
    check_array(weight, G * Cg, typenum, False, "weight")
    check_array(bias, G * Cg, typenum, False, "bias")
    cdef Py_ssize_t M = N * G
    cdef cnp.ndarray y = empty_like(x)
    cdef cnp.ndarray mean = empty_1d(M, cnp.NPY_DOUBLE), rstd = empty_1d(M, cnp.NPY_DOUBLE)
    cdef cnp.ndarray var = empty_1d(M, cnp.NPY_DOUBLE)
    cdef RowJob j
    if M * Cg * S == 0:         # an empty row has no statistics (torch gives nan)
        mean.fill(float("nan"))
        rstd.fill(float("nan"))
        var.fill(float("nan"))
        return y, mean, rstd, var
    _group_job(&j, x, typenum, N, G, Cg, S, 1)
    j.eps = eps
    j.out = cnp.PyArray_DATA(y)
    j.mean = <double*>cnp.PyArray_DATA(mean)
    j.rstd = <double*>cnp.PyArray_DATA(rstd)
    j.var = <double*>cnp.PyArray_DATA(var)
    j.weight = data_or_null(weight)
    j.bias = data_or_null(bias)
    _start_stage(&j, kind)
    with nogil:
        run_threads(j.typenum, j.x, &j, j.n_threads,
                    _group_norm_forward_rows[float], _group_norm_forward_rows[double])
    free(j.stage)
    return y, mean, rstd, var


def group_norm_backward(cnp.ndarray dy not None, cnp.ndarray x not None, Py_ssize_t N,
                        Py_ssize_t G, Py_ssize_t Cg, Py_ssize_t S, cnp.ndarray mean not None,
                        cnp.ndarray rstd not None, weight, int kind=0):
    """GroupNorm backward. Returns (dx like x, dweight (C,), dbias (C,)) in the input dtype
    (kind: as layer_norm_backward)."""
    cdef int typenum = _check_groups(x, N, G, Cg, S, kind)
    check_array(dy, N * G * Cg * S, cnp.NPY_UINT16 if kind else typenum, False, "grad_output")
    check_array(mean, N * G, cnp.NPY_DOUBLE, False, "mean")
    check_array(rstd, N * G, cnp.NPY_DOUBLE, False, "rstd")
    check_array(weight, G * Cg, typenum, False, "weight")
    cdef Py_ssize_t C = G * Cg
    cdef cnp.ndarray dx = empty_like(x)
    cdef cnp.ndarray dw = empty_1d(C, cnp.NPY_DOUBLE if kind else typenum)
    cdef cnp.ndarray db = empty_1d(C, cnp.NPY_DOUBLE if kind else typenum)
    cdef RowJob j
    if N * G * Cg * S == 0:     # empty rows have no statistics: zero parameter gradients
        dw.fill(0)
        db.fill(0)
        return dx, dw, db
    _group_job(&j, x, typenum, N, G, Cg, S, 2)
    j.part = <double*>calloc(j.n_threads * 2 * C + 1, sizeof(double))    # dweight, dbias
    if j.part == NULL:
        raise MemoryError()
    j.out = cnp.PyArray_DATA(dx)
    j.dy = cnp.PyArray_DATA(dy)
    j.mean = <double*>cnp.PyArray_DATA(mean)
    j.rstd = <double*>cnp.PyArray_DATA(rstd)
    j.weight = data_or_null(weight)
    try:
        _start_stage(&j, kind)
    except MemoryError:
        free(j.part)
        raise
    with nogil:
        run_threads(j.typenum, j.x, &j, j.n_threads,
                    _group_norm_backward_rows[float], _group_norm_backward_rows[double])
    sum_partials(cnp.PyArray_TYPE(dw), cnp.PyArray_DATA(dw), cnp.PyArray_DATA(db), j.part, C,
                 j.n_threads, 2 * C)
    free(j.part)
    free(j.stage)
    return dx, dw, db


include "row_norm_half.pxi"
