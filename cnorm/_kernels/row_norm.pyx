"""Row-norm kernels: statistics per row of a C-contiguous (M, D) buffer.

One walk serves four norms:
* LayerNorm: rows of D = prod(normalized_shape), one affine weight per element;
* RMSNorm: the same without centering (mean 0, variance = mean of squares);
* GroupNorm / InstanceNorm: rows of D = channels_per_group * S (one (n, group)), one affine
  weight per channel, i.e. per segment of S elements of the row (InstanceNorm: one channel
  per group);
* LayerNorm of x + residual: the sum is written once and normalized while in cache.

Each thread owns a contiguous range of rows. A row's statistics are computed while the
row is in cache (the block statistics of common.pxd; float64 rows that over- or underflow:
common.exact_stats), then the row is transformed; mean and rstd are kept (float64) for
backward. The backward accumulates the weight and bias gradients per chunk of rows (fixed
by the sizes, never by the thread count: common.chunk_size; in the input precision over
ROWS_PER_FLUSH rows, then in float64) and sums the chunk partials in chunk order: no
races, no atomics, the same bits for every run and thread count. Rows shorter than
SHORT_ROW run several per C call (simd ln_rows, ln_grad_rows: a short row would pay more
for its walk step and dispatched calls than for its elements), with the operations of the
one-row path in its order: the same bits. Entry points check every buffer (common.pxd) and
run the row loop of their norm on every thread (run_threads).

The input gradient of a row, with xhat = (x - mean) * rstd, y = xhat * w + b and g = dy * w:
mean and rstd depend on every x of the row (d mean/dx = 1/D, d rstd/dx = -rstd^3 (x - mean)/D),
so
    dx = rstd * ((g - mean(g)) - mean(g * xhat) * xhat)
and for RMSNorm (xhat = x * rstd, no mean) the same without mean(g).
"""

cimport numpy as cnp
from libc.math cimport sqrt
from libc.stdint cimport uint16_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

from .common cimport (BLOCK, MAX_CHUNKS, MAX_WIDE_CHUNKS, STREAM_MIN_RUN, ExactStats, check_array,
                      check_dims, chunk_size, compute_typenum, data_or_null, empty_1d, empty_like,
                      exact_stats, f64_stats_unsafe, finite, floating, input_typenum, run_threads,
                      scaled_copy, segment_stats, split_mean, split_start, stage_in, stage_out,
                      streams, sum_g_xhat, sum_partials, sum_squares)
from .openmp cimport n_threads_for
from .simd.loops cimport (affine, bn_grad_sums, cn_prefetch, cn_stream_fence, gn_grad_segment, ln_grad_row,
                          ln_grad_rows, ln_grad_sums, ln_grad_sums2, ln_row, ln_rows, residual_add)

cnp.import_array()
include "simd_control.pxi"


cdef enum:
    ROWS_PER_FLUSH = 32     # rows summed in the input precision before a float64 flush
    CHUNK_ELEMENTS = 8192   # a backward chunk's least elements (GroupNorm; LayerNorm: x4)
    STAGE_ROWS = 6          # half storage: rows of float32 per thread (backward: x, dy, dx of two)
    SHORT_ROW = 512         # rows shorter than this: several per C call (ln_rows, ln_grad_rows)
    PREFETCH_MIN_ROW = 8192     # rows whose inputs are this many bytes (to PREFETCH_MAX_ROW)
    PREFETCH_MAX_ROW = 32768    # fetch the next one ahead (_fetch_next)


# an absent weight reads ones and an absent bias zeros: BLOCK of each, never a row-sized
# temporary
# The backward's rows of at least this many elements go two per sums pass, sharing the
# dweight/dbias partial updates (ln_grad_sums2); shorter ones one per pass. Measured on
# an AVX-512 EPYC (2026-12-02, float32, min of interleaved runs): one row per pass
# 0.68-0.93x the time of two for D = 512-1536, even at 2048, two 0.8-0.9x for D >= 3072.
# dx has the same bits either way; dweight, dbias are summed in another order.
cdef Py_ssize_t pair_rows_min_d = 2048


def _set_pair_rows_min(Py_ssize_t d):
    """The shortest LayerNorm backward row taken two per sums pass; returns the old one
    (benchmarks and tests)."""
    global pair_rows_min_d
    old = pair_rows_min_d
    pair_rows_min_d = d
    return old


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
    Py_ssize_t chunk        # backward: rows per chunk (the last may be short)
    Py_ssize_t n_chunks
    double* part            # scratch (n_chunks, 2, D or C): dweight, dbias partials
    void* tmp               # scratch (n_threads, 2, D) of the input dtype (LayerNorm)
    int kind                # half storage (common.pxd): 0 none; 1 float16, 2 bfloat16 bits in
    #                       x, residual, dy, out, sum, computed as float32 (typenum NPY_FLOAT)
    float* stage            # scratch (n_threads, STAGE_ROWS, D) float32 rows (kind != 0)


cdef inline bint _use_stream(Py_ssize_t n_elements, Py_ssize_t run, size_t itemsize,
                             bint gradient) noexcept nogil:
    return streams(n_elements * <Py_ssize_t>itemsize, gradient) and run >= STREAM_MIN_RUN


cdef inline Py_ssize_t _storage_size(const RowJob* j) noexcept nogil:
    """Bytes per element of the (M, D) arrays (half storage: 2)."""
    return 2 if j.kind else (4 if j.typenum == cnp.NPY_FLOAT else 8)


cdef inline void _ahead(const RowJob* j, const void* a, Py_ssize_t o, Py_ssize_t n) noexcept nogil:
    """Elements o..o + n of the (M, D) input a (x, residual, dy; half bits with j.kind)
    asked for ahead of their use: the passes that work from cache (a long row's normalize,
    its input gradient) fetch the next row meanwhile (_fetch_next)."""
    cdef Py_ssize_t size = _storage_size(j)
    cn_prefetch(<const char*>a + o * size, n * size)


cdef inline bint _fetch_next(const RowJob* j, Py_ssize_t D, int n_inputs) noexcept nogil:
    """Whether rows of D elements, of n_inputs arrays read per row, fetch the next row ahead
    (_ahead): when a row's inputs are PREFETCH_MIN_ROW to PREFETCH_MAX_ROW bytes. Below,
    it gained nothing: LayerNorm forward of D = 768 and 1024 float32 0.96-1.13x the time
    without, its backward (dy and x) of D = 768 mixed. Within, 0.63-0.99x (LayerNorm
    backward D = 1024-4096 float32), 0.7-0.93x (forward D = 4096; GroupNorm(32, 256)
    forward rows of 25 KiB float32, 12.5 KiB half: 0.73-0.94x; its backward in half, 2 x
    12.5 KiB: 0.80-0.92x). Above, the next row no longer fits the L1 cache beside this
    one: the GroupNorm backward in float32 (2 x 25 KiB) ran 1.25x slower with it. Float32
    and half, 1 and 2 threads, 2026-12-02 (an AVX-512 EPYC, 48 KiB L1d)."""
    return PREFETCH_MIN_ROW <= n_inputs * D * _storage_size(j) <= PREFETCH_MAX_ROW


cdef inline double _row_stats(const floating* xr, Py_ssize_t D, bint center, double eps,
                              double* mean, double* rstd, double* var, floating* hi,
                              floating* lo, double* rs) noexcept nogil:
    """Mean (0 when not centering), 1 / sqrt(var + eps) and (var not NULL) the biased
    variance (mean of squares) of one row; and what to normalize it with: hi + lo = the
    mean, and rs, of x times the power of two returned. That is 1 but for a float64 row
    whose squares over- or underflowed, redone exactly (common.exact_stats)."""
    cdef double count = 0, m2 = 0, mu = 0, v
    cdef ExactStats st
    if center:
        segment_stats(xr, D, &count, &mu, &m2)
        v = m2 / D
    else:
        v = sum_squares(xr, D) / D
    st.mean = mu
    st.var = v
    st.rstd = 1.0 / sqrt(v + eps)
    st.scale = 1
    if floating is double:
        if f64_stats_unsafe(v):
            st = exact_stats(xr, 1, D, D, center, eps, mu, v)
    mean[0] = st.mean
    rstd[0] = st.rstd
    if var != NULL:
        var[0] = st.var
    split_mean(st.mean if st.scale == 1 else st.mean_s, hi, lo)
    rs[0] = st.rstd if st.scale == 1 else st.rstd_s
    return st.scale


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
    cdef double rs, scale, eps = j.eps
    cdef bint center = j.center, stream = j.stream
    cdef floating hi, lo
    cdef floating tmp[BLOCK]
    cdef const floating* xr
    cdef const floating* xb
    cdef floating* yr
    cdef int kind = j.kind
    cdef floating* stage = <floating*>j.stage + STAGE_ROWS * D * t     # half: x, sum, y rows
    cdef Py_ssize_t r1 = split_start(j.M, t + 1, n_threads)
    cdef bint batch = D < SHORT_ROW and not kind and res == NULL      # short rows: many per call
    cdef bint ahead = _fetch_next(j, D, 2 if res != NULL else 1)
    r = split_start(j.M, t, n_threads)
    while r < r1:
        if batch:   # stops before a row that needs the slow path of _row_stats
            r += ln_rows(y + r * D, &mean[r], &rstd[r], x + r * D,
                         weight if weight != NULL else defaults,
                         bias if bias != NULL else defaults + BLOCK, r1 - r, D, eps, center)
            if r == r1:
                break
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
        scale = _row_stats(xr, D, center, eps, &mean[r], &rstd[r], NULL, &hi, &lo, &rs)
        for k_b in range((D + BLOCK - 1) // BLOCK):     # absent params: BLOCK-sized defaults
            b = k_b * BLOCK
            len_b = D - b if D - b < BLOCK else BLOCK
            xb = xr + b
            if ahead and r + 1 < r1:    # the next row, fetched while this one is normalized
                _ahead(j, j.x, (r + 1) * D + b, len_b)
                if j.residual != NULL:
                    _ahead(j, j.residual, (r + 1) * D + b, len_b)
            if scale != 1:  # normalize x * scale: its statistics are representable
                scaled_copy(tmp, xb, len_b, scale)
                xb = tmp
            ln_row(yr + b, xb, weight + b if weight != NULL else defaults,
                   bias + b if bias != NULL else defaults + BLOCK, len_b, hi, lo,
                   <floating>rs, stream and scale == 1)
        if kind:
            stage_out(kind, j.out, r * D, yr, D)
        r += 1
    if stream:       # once per thread, after all its streamed stores
        cn_stream_fence()


cdef void _layer_norm_backward_rows(const floating* x, void* job, int t,
                                    int n_threads) noexcept nogil:
    """Thread t's chunks of rows of the LayerNorm backward, g = dy * w (RMSNorm: no j.mean):
        dx = rstd * ((g - mean(g)) - mean(g * xhat) * xhat)      (RMSNorm: no mean(g))
    and each chunk's partials of dweight = sum over rows of dy * xhat, dbias = sum of dy."""
    cdef const RowJob* j = <const RowJob*>job
    cdef Py_ssize_t k, i
    cdef floating* tw = <floating*>j.tmp + 2 * j.D * t    # zero again after every flush
    for i in range(2 * j.D):
        tw[i] = 0
    for k in range(split_start(j.n_chunks, t, n_threads), split_start(j.n_chunks, t + 1, n_threads)):
        _layer_norm_backward_chunk(x, j, k, t)
    if j.stream:     # once per thread, after all its streamed stores
        cn_stream_fence()


cdef void _layer_norm_backward_chunk(const floating* x, const RowJob* j, Py_ssize_t k,
                                     int t) noexcept nogil:
    """Chunk k of _layer_norm_backward_rows, on thread t (whose scratch it uses)."""
    cdef Py_ssize_t D = j.D, r, b, len_b, k_b, q, n_rows
    cdef Py_ssize_t r0 = k * j.chunk, r1 = min(r0 + j.chunk, j.M)
    cdef bint ahead = _fetch_next(j, D, 2)            # dy and x
    cdef floating* dx = <floating*>j.out
    cdef const floating* dy = <const floating*>j.dy
    cdef const floating* weight = <const floating*>j.weight
    cdef const floating* ones = <const floating*>j.defaults
    cdef const double* mean = j.mean
    cdef const double* rstd_64 = j.rstd
    cdef bint stream = j.stream
    cdef double* dweight = j.part + 2 * D * k       # float64 partials of this chunk
    cdef double* dbias = dweight + D
    cdef bint first = True
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
    cdef double m_gxhat
    cdef const floating* wb
    cdef const floating* xq[2]      # the rows r, r + 1 (half storage: widened into stage)
    cdef const floating* dyq[2]
    cdef floating* dxq[2]
    cdef int kind = j.kind
    cdef floating* stage = <floating*>j.stage + STAGE_ROWS * D * t
    r = r0
    while r < r1:
        if D < SHORT_ROW and not kind:  # short rows: up to the next flush in one call
            n_rows = min(ROWS_PER_FLUSH - (r - r0) % ROWS_PER_FLUSH, r1 - r)
            ln_grad_rows(dx + r * D, tw, tb, dy + r * D, x + r * D,
                         weight if weight != NULL else ones,
                         mean + r if mean != NULL else NULL, rstd_64 + r, n_rows, D)
            r += n_rows
            _flush(dweight, dbias, tw, tb, D, first)
            first = False
            continue
        n_rows = 2 if D >= pair_rows_min_d and r + 1 < r1 else 1     # (pair_rows_min_d)
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
            m_gxhat = rstd_64[r + q] * sum_gd[q] / D
            if not finite(m_gxhat):     # |x - mean| near DBL_MAX: from O(1) terms
                m_gxhat = sum_g_xhat(dyq[q], xq[q], weight, NULL, D, hi[q], lo[q],
                                     rstd_64[r + q]) / D
            mean_gxhat = <floating>m_gxhat
            for k_b in range((D + BLOCK - 1) // BLOCK):
                b = k_b * BLOCK
                len_b = D - b if D - b < BLOCK else BLOCK
                if ahead and r + q + n_rows < r1:   # the next rows, fetched meanwhile
                    _ahead(j, j.dy, (r + q + n_rows) * D + b, len_b)
                    _ahead(j, j.x, (r + q + n_rows) * D + b, len_b)
                ln_grad_row(dxq[q] + b, dyq[q] + b, xq[q] + b,
                            weight + b if weight != NULL else ones, len_b, hi[q], lo[q],
                            rstd[q], mean_g, mean_gxhat, stream)
            if kind:
                stage_out(kind, j.out, (r + q) * D, dxq[q], D)
        r += n_rows
        if (r - r0) % ROWS_PER_FLUSH == 0 or r == r1:
            _flush(dweight, dbias, tw, tb, D, first)
            first = False


cdef inline void _flush(double* dweight, double* dbias, floating* tw, floating* tb,
                        Py_ssize_t D, bint first) noexcept nogil:
    """The input-precision partials tw, tb (of up to ROWS_PER_FLUSH rows) into the float64
    partials of the chunk (set on the first flush); tw, tb zeroed."""
    cdef Py_ssize_t i
    if first:       # the test out of the loops: they vectorize
        for i in range(D):
            dweight[i] = tw[i]
            dbias[i] = tb[i]
    else:
        for i in range(D):
            dweight[i] = dweight[i] + tw[i]
            dbias[i] = dbias[i] + tb[i]
    for i in range(D):
        tw[i] = 0
        tb[i] = 0


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
    j.stream = _use_stream(M * D, D, cnp.PyArray_ITEMSIZE(x), False)
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


def rms_norm_forward(cnp.ndarray x not None, Py_ssize_t M, Py_ssize_t D, weight, double eps,
                     int kind=0):
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
    j.chunk = chunk_size(M, D, ROWS_PER_FLUSH * 1024, 2, MAX_WIDE_CHUNKS)   # rows in pairs,
    if j.chunk > ROWS_PER_FLUSH:                                        # or flush groups
        j.chunk = chunk_size(M, D, ROWS_PER_FLUSH * 1024, ROWS_PER_FLUSH, MAX_WIDE_CHUNKS)
    j.n_chunks = (M + j.chunk - 1) // j.chunk
    # per chunk the dweight, dbias partials (float64), then per thread two input-precision rows
    j.part = <double*>malloc(D * 2 * (j.n_chunks * sizeof(double) + j.n_threads * itemsize) + 1)
    if j.part == NULL:
        raise MemoryError()
    j.tmp = <char*>j.part + j.n_chunks * D * 2 * sizeof(double)
    j.stream = _use_stream(M * D, D, itemsize, True)    # dx: reads x and dy
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


cdef void _run_backward(RowJob* j, cnp.ndarray dw, db) noexcept:
    """The backward of j on its threads, then dweight (and dbias) <- the chunk partials
    summed in chunk order; frees them."""
    with nogil:
        run_threads(j.typenum, j.x, j, j.n_threads,
                    _layer_norm_backward_rows_half if j.kind else _layer_norm_backward_rows[float],
                    _layer_norm_backward_rows[double])
    sum_partials(cnp.PyArray_TYPE(dw), cnp.PyArray_DATA(dw), data_or_null(db), j.part, j.D,
                 j.n_chunks, 2 * j.D)
    free(j.part)
    free(j.stage)


def layer_norm_backward(cnp.ndarray dy not None, cnp.ndarray x not None, Py_ssize_t M,
                        Py_ssize_t D, cnp.ndarray mean not None, cnp.ndarray rstd not None,
                        weight, int kind=0):
    """LayerNorm backward. Returns (dx like x, dweight (D,), dbias (D,)) in the input dtype
    (half storage, kind != 0: dx half bits, dweight and dbias float64)."""
    cdef RowJob j
    dx, dw, db = _backward_job(&j, dy, x, M, D, mean, rstd, weight, True, kind)
    _run_backward(&j, dw, db)
    return dx, dw, db


def rms_norm_backward(cnp.ndarray dy not None, cnp.ndarray x not None, Py_ssize_t M,
                      Py_ssize_t D, cnp.ndarray rrms not None, weight, int kind=0):
    """RMSNorm backward. Returns (dx like x, dweight (D,)) in the input dtype (kind: as LN's)."""
    cdef RowJob j
    dx, dw, _ = _backward_job(&j, dy, x, M, D, None, rrms, weight, False, kind)
    _run_backward(&j, dw, None)
    return dx, dw


include "row_norm_group.pxi"
include "row_norm_half.pxi"
