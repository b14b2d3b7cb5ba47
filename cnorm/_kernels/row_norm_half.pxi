# Included by row_norm.pyx (at its end): half storage. LayerNorm / RMSNorm (and add +
# LayerNorm) walk their half rows with the half loops (simd/half.h), which widen in their
# own loads and round once in their stores: the float32 walk's bits without a stage. The
# GroupNorm walks widen each row into the thread's RowJob.stage (given here; the LayerNorm
# backward's rare float64 redo of a sum uses it too). And the conversions as entry points
# (the Python layer widens parameters and rounds float64 results with them): float16 /
# bfloat16 bits (uint16 arrays) <-> float32 (or float64) arrays, parallel over chunks.

from cython.parallel cimport prange

from .half cimport segment_stats_half, sum_squares_half
from .simd.loops cimport (affine_half, bn_grad_sums_half, gn_grad_segment_half, ln_grad_row_half,
                          ln_grad_sums2_half, ln_grad_sums_half, ln_row_half, residual_add_half)

cdef int _start_stage(RowJob* j, int kind) except -1:
    """Half storage: the job's kind and its per-thread float32 rows (free j.stage)."""
    j.kind = kind
    if kind:
        j.stage = <float*>malloc(j.n_threads * STAGE_ROWS * j.D * sizeof(float) + 1)
        if j.stage == NULL:
            raise MemoryError()
    return 0


cdef void _run_forward(RowJob* j) noexcept:
    with nogil:
        run_threads(j.typenum, j.x, j, j.n_threads,
                    _layer_norm_forward_rows_half if j.kind else _layer_norm_forward_rows[float],
                    _layer_norm_forward_rows[double])
    free(j.stage)


cdef inline double _half_row_stats(int kind, const uint16_t* xr, Py_ssize_t D, bint center,
                                   double eps, double* mean, double* rstd, double* var,
                                   float* hi, float* lo) noexcept nogil:
    """_row_stats of a half row (float32 statistics never rescale): returns rstd."""
    cdef double count = 0, m2 = 0, mu = 0, v
    if center:
        segment_stats_half(kind, xr, D, &count, &mu, &m2)
        v = m2 / D
    else:
        v = sum_squares_half(kind, xr, D) / D
    mean[0] = mu
    rstd[0] = 1.0 / sqrt(v + eps)
    if var != NULL:
        var[0] = v
    split_mean(mu, hi, lo)
    return rstd[0]


cdef void _layer_norm_forward_rows_half(const float* x, void* job, int t,
                                        int n_threads) noexcept nogil:
    """_layer_norm_forward_rows of half rows (x, residual, sum, y half bits); the sum
    rounded to the half type is normalized, as torch."""
    cdef const RowJob* j = <const RowJob*>job
    cdef Py_ssize_t D = j.D, r, b, k_b, len_b
    cdef int kind = j.kind
    cdef const float* weight = <const float*>j.weight
    cdef const float* bias = <const float*>j.bias
    cdef const float* defaults = <const float*>j.defaults
    cdef const uint16_t* xr
    cdef uint16_t* yr
    cdef float hi, lo, rs
    for r in range(split_start(j.M, t, n_threads), split_start(j.M, t + 1, n_threads)):
        xr = <const uint16_t*>j.x + r * D
        yr = <uint16_t*>j.out + r * D
        if j.residual != NULL:
            residual_add_half(kind, <uint16_t*>j.sum + r * D, xr,
                              <const uint16_t*>j.residual + r * D, D, False)
            xr = <const uint16_t*>j.sum + r * D
        rs = <float>_half_row_stats(kind, xr, D, j.center, j.eps, &j.mean[r], &j.rstd[r], NULL,
                                    &hi, &lo)
        for k_b in range((D + BLOCK - 1) // BLOCK):     # absent params: BLOCK-sized defaults
            b = k_b * BLOCK
            len_b = D - b if D - b < BLOCK else BLOCK
            ln_row_half(kind, yr + b, xr + b, weight + b if weight != NULL else defaults,
                        bias + b if bias != NULL else defaults + BLOCK, len_b, hi, lo, rs,
                        j.stream)
    if j.stream:     # once per thread, after all its streamed stores
        cn_stream_fence()


cdef void _layer_norm_backward_rows_half(const float* x, void* job, int t,
                                         int n_threads) noexcept nogil:
    """_layer_norm_backward_rows of half rows (x, dy, dx half bits)."""
    cdef const RowJob* j = <const RowJob*>job
    cdef Py_ssize_t k, i
    cdef float* tw = <float*>j.tmp + 2 * j.D * t    # zero again after every flush
    for i in range(2 * j.D):
        tw[i] = 0
    for k in range(split_start(j.n_chunks, t, n_threads), split_start(j.n_chunks, t + 1, n_threads)):
        _layer_norm_backward_chunk_half(j, k, t)
    if j.stream:     # once per thread, after all its streamed stores
        cn_stream_fence()


cdef void _layer_norm_backward_chunk_half(const RowJob* j, Py_ssize_t k, int t) noexcept nogil:
    """_layer_norm_backward_chunk of half rows: the same sums, partials and flushes."""
    cdef Py_ssize_t D = j.D, r, i, b, len_b, k_b, q, n_rows
    cdef Py_ssize_t r0 = k * j.chunk, r1 = min(r0 + j.chunk, j.M)
    cdef int kind = j.kind
    cdef const float* weight = <const float*>j.weight
    cdef const float* ones = <const float*>j.defaults
    cdef double* dweight = j.part + 2 * D * k       # float64 partials of this chunk
    cdef double* dbias = dweight + D
    cdef bint first = True
    cdef float* tw = <float*>j.tmp + 2 * D * t      # float32 partials
    cdef float* tb = tw + D
    cdef float* stage = j.stage + STAGE_ROWS * D * t
    cdef float hi[2]
    cdef float lo[2]
    cdef float rstd[2]
    cdef double sum_g[2]
    cdef double sum_gd[2]
    cdef double s_g[2]
    cdef double s_gd[2]
    cdef float mean_g
    cdef double m_gxhat
    cdef const float* wb
    cdef const uint16_t* xq[2]
    cdef const uint16_t* dyq[2]
    r = r0
    while r < r1:
        n_rows = 2 if r + 1 < r1 else 1          # two rows share the dweight/dbias updates
        for q in range(n_rows):
            split_mean(j.mean[r + q] if j.mean != NULL else 0.0, &hi[q], &lo[q])
            rstd[q] = <float>j.rstd[r + q]
            sum_g[q] = 0
            sum_gd[q] = 0
            xq[q] = <const uint16_t*>j.x + (r + q) * D
            dyq[q] = <const uint16_t*>j.dy + (r + q) * D
        for k_b in range((D + BLOCK - 1) // BLOCK):     # pass 1: the sums and partials
            b = k_b * BLOCK
            len_b = D - b if D - b < BLOCK else BLOCK
            wb = weight + b if weight != NULL else ones
            if n_rows == 2:
                ln_grad_sums2_half(kind, s_g, s_gd, tw + b, tb + b, dyq[0] + b, dyq[1] + b,
                                   xq[0] + b, xq[1] + b, wb, len_b, hi[0], lo[0], rstd[0], hi[1],
                                   lo[1], rstd[1])
            else:
                ln_grad_sums_half(kind, s_g, s_gd, tw + b, tb + b, dyq[0] + b, xq[0] + b, wb,
                                  len_b, hi[0], lo[0], rstd[0])
            for q in range(n_rows):
                sum_g[q] += s_g[q]
                sum_gd[q] += s_gd[q]
        for q in range(n_rows):                         # pass 2 (rows in cache): dx
            mean_g = <float>(sum_g[q] / D) if j.mean != NULL else 0
            m_gxhat = j.rstd[r + q] * sum_gd[q] / D
            if not finite(m_gxhat):     # from O(1) terms, on the widened rows
                m_gxhat = sum_g_xhat(stage_in(kind, stage + D, j.dy, (r + q) * D, D),
                                     stage_in(kind, stage, j.x, (r + q) * D, D), weight,
                                     NULL, D, hi[q], lo[q], j.rstd[r + q]) / D
            for k_b in range((D + BLOCK - 1) // BLOCK):
                b = k_b * BLOCK
                len_b = D - b if D - b < BLOCK else BLOCK
                ln_grad_row_half(kind, <uint16_t*>j.out + (r + q) * D + b, dyq[q] + b,
                                 xq[q] + b, weight + b if weight != NULL else ones, len_b,
                                 hi[q], lo[q], rstd[q], mean_g, <float>m_gxhat, j.stream)
        r += n_rows
        if (r - r0) % ROWS_PER_FLUSH == 0 or r == r1:
            for i in range(D):
                dweight[i] = tw[i] if first else dweight[i] + tw[i]
                dbias[i] = tb[i] if first else dbias[i] + tb[i]
                tw[i] = 0
                tb[i] = 0
            first = False


cdef enum:
    CONVERT_CHUNK = 16384   # elements per conversion call: threads take whole chunks


cdef void _convert(void* dst, const void* src, Py_ssize_t n, int kind, int typenum,
                   bint widen) noexcept nogil:
    """dst <- src converted, n elements: half bits (kind 1 float16, 2 bfloat16) widened to
    the compute type of typenum (float32/float64), or narrowed to them (once, to nearest even)."""
    cdef Py_ssize_t k, i, m
    cdef int n_threads = n_threads_for(n)
    for k in prange((n + CONVERT_CHUNK - 1) // CONVERT_CHUNK, schedule='static',
                    num_threads=n_threads):
        i = k * CONVERT_CHUNK
        m = min(n - i, <Py_ssize_t>CONVERT_CHUNK)
        if typenum == cnp.NPY_FLOAT:
            _convert_chunk(<float*>dst + i if widen else <float*>src + i,
                           <uint16_t*>src + i if widen else <uint16_t*>dst + i, m, kind, widen)
        else:
            _convert_chunk(<double*>dst + i if widen else <double*>src + i,
                           <uint16_t*>src + i if widen else <uint16_t*>dst + i, m, kind, widen)


cdef inline void _convert_chunk(floating* wide, uint16_t* bits, Py_ssize_t n, int kind,
                                bint widen) noexcept nogil:
    if widen:
        stage_in(kind, wide, bits, 0, n)
    else:
        stage_out(kind, bits, 0, wide, n)


cdef int _check_kind(int kind) except -1:
    if kind != 1 and kind != 2:
        raise ValueError(f"kind must be 1 (float16) or 2 (bfloat16), got {kind}")
    return 0


def widen_half(cnp.ndarray bits not None, int kind, bint double=False):
    """A new float32 (float64 with double) array of the shape of `bits`, the values of the
    half-precision bits (uint16, C-contiguous; kind 1 float16, 2 bfloat16), exactly."""
    _check_kind(kind)
    check_array(bits, cnp.PyArray_SIZE(bits), cnp.NPY_UINT16, False, "bits")
    cdef int typenum = cnp.NPY_DOUBLE if double else cnp.NPY_FLOAT
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(cnp.PyArray_NDIM(bits), cnp.PyArray_DIMS(bits),
                                             typenum, 0)
    with nogil:
        _convert(cnp.PyArray_DATA(out), cnp.PyArray_DATA(bits), cnp.PyArray_SIZE(bits), kind,
                 typenum, True)
    return out


def narrow_half(cnp.ndarray x not None, int kind):
    """A new uint16 array of the shape of x (float32/float64, C-contiguous): the bits of x
    rounded once to nearest even to float16 (kind 1) or bfloat16 (kind 2)."""
    _check_kind(kind)
    cdef int typenum = input_typenum(x, "x")
    check_array(x, cnp.PyArray_SIZE(x), typenum, False, "x")
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(cnp.PyArray_NDIM(x), cnp.PyArray_DIMS(x),
                                             cnp.NPY_UINT16, 0)
    with nogil:
        _convert(cnp.PyArray_DATA(out), cnp.PyArray_DATA(x), cnp.PyArray_SIZE(x), kind, typenum,
                 False)
    return out
