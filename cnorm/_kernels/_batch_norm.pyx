"""Batch-norm kernels: per-channel statistics over (N, C, S) buffers.

Layout: x is C-contiguous (N, C, S), S = product of the spatial dims (S = 1 for (N, C)).
Two walks cover every shape with both cores busy:

* S > 1 ("rows"): the N*C*S elements are cut into n_threads equal ranges; a thread walks
  its range row segment by row segment (a row = the S elements of one (n, c)) and keeps
  per-channel partials. Balanced whatever C is (C = 3 splits as well as C = 512).
* S = 1 ("cols", (N, C) activations): the N rows are cut into n_threads ranges; a thread
  works on tiles of ROWS_PER_TILE x COLS_PER_TILE so every SIMD lane is a channel.

Partials are merged per channel in thread order, so results never change from run to
run for a given thread count. cnorm.functional gives the friendly errors; the entry
points at the bottom still check every buffer (_buffers.pxd) before taking its pointer.
"""

cimport numpy as cnp
from cython.parallel cimport prange
from libc.float cimport FLT_MAX
from libc.math cimport sqrt
from libc.stdlib cimport calloc, free, malloc

from ._buffers cimport check_array, check_dims, data_or_null, input_typenum
from ._openmp cimport n_threads_for, split_start as _split
from ._simd cimport (STREAM_MIN_RUN, cn_simd_init, cn_simd_set, cn_stream_fence,
                     cn_stream_min_bytes,
                     vaffine, vaffine_cols, vaffine_cols4, vany_unsafe, vcol_merge,
                     vcols_dev, vcols_grad_sums, vcols_sum, vdot_dev, vgrad, vgrad_cols,
                     vgrad_cols4)
from ._stats cimport BLOCK, chan_merge, f32_sums_unsafe, segment_stats, split_mean
from ._types cimport floating

cnp.import_array()
include "_simd_control.pxi"

cdef enum:
    ROWS_PER_TILE = 32      # (N, C) path: rows summed in the input precision per tile
    COLS_PER_TILE = 1024    # (N, C) path: channels per tile (32 x 1024 float32 = 128 KiB)
    N_COEF = 6              # per-channel coefficients of the elementwise passes


cdef inline const floating* _off(const floating* p, Py_ssize_t k) noexcept nogil:
    """p + k, or NULL for an absent optional buffer."""
    return p + k if p != NULL else NULL


# ---------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------

cdef void _stats_rows(const floating* x,       # IN  (N, C, S) flat
                      Py_ssize_t C, Py_ssize_t S,
                      Py_ssize_t e0, Py_ssize_t e1,  # this thread's element range
                      double* part             # OUT (3, C): count, mean, m2
                      ) noexcept nogil:
    cdef Py_ssize_t r = e0 // S, pos = e0, end
    cdef Py_ssize_t c = r % C      # then stepped: a division per row costs ~15 ns
    while pos < e1:
        end = (r + 1) * S
        if end > e1:
            end = e1
        segment_stats(x + pos, end - pos, &part[c], &part[C + c], &part[2 * C + c])
        pos = end
        r += 1
        c += 1
        if c == C:
            c = 0


cdef void _stats_cols(const floating* x,       # IN  (N, C)
                      Py_ssize_t C, Py_ssize_t n0, Py_ssize_t n1,
                      double* part,            # OUT (3, C): count, mean, m2 (zeroed)
                      floating* acc            # scratch (3, COLS_PER_TILE)
                      ) noexcept nogil:
    """Rows n0..n1 of an (N, C) batch, by tiles of ROWS_PER_TILE x COLS_PER_TILE: the
    block statistics of _stats.pxd with one SIMD lane per channel."""
    cdef Py_ssize_t b0, nb, c0, nc, n, c, k_b0, k_c0
    cdef floating* shift = acc
    cdef floating* s1 = acc + COLS_PER_TILE
    cdef floating* s2 = acc + 2 * COLS_PER_TILE
    cdef const floating* tile
    cdef double count = 0, cnt, mean_b, m2_b, q
    for k_b0 in range((n1 - n0 + ROWS_PER_TILE - 1) // ROWS_PER_TILE):
        b0 = n0 + k_b0 * ROWS_PER_TILE
        nb = n1 - b0 if n1 - b0 < ROWS_PER_TILE else ROWS_PER_TILE
        for k_c0 in range((C + COLS_PER_TILE - 1) // COLS_PER_TILE):
            c0 = k_c0 * COLS_PER_TILE
            nc = C - c0 if C - c0 < COLS_PER_TILE else COLS_PER_TILE
            tile = x + b0 * C + c0
            vcols_sum(shift, tile, C, nb, nc)     # pass 1: rough per-channel means
            for c in range(nc):
                shift[c] = <floating>(<double>shift[c] / nb)
            vcols_dev(s1, s2, tile, C, nb, shift, nc)   # pass 2 (from cache): deviations
            if floating is double or not vany_unsafe(s1, s2, shift, nc):
                vcol_merge(part + C + c0, part + 2 * C + c0, shift, s1, s2, nc, count, nb)
                continue
            for c in range(nc):                  # unsafe float32 sums: float64 redo
                if not f32_sums_unsafe(s1[c], s2[c], shift[c]):
                    q = <double>s1[c]
                    mean_b = shift[c] + q / nb
                    m2_b = s2[c] - q * q / nb if s2[c] > q * q / nb else 0.0
                else:
                    _column_stats_f64(tile + c, nb, C, &mean_b, &m2_b)
                cnt = count
                chan_merge(&cnt, &part[C + c0 + c], &part[2 * C + c0 + c], <double>nb,
                           mean_b, m2_b)
        count += nb
    for c in range(C):
        part[c] = count


cdef void _column_stats_f64(const floating* x, Py_ssize_t n, Py_ssize_t stride,
                            double* mean, double* m2) noexcept nogil:
    """Two-pass float64 statistics of a strided column (float32 overflow fallback)."""
    cdef Py_ssize_t i
    cdef double s = 0, d, s1 = 0, s2 = 0, shift
    for i in range(n):
        s += x[i * stride]
    shift = s / n
    for i in range(n):
        d = <double>x[i * stride] - shift
        s1 += d
        s2 += d * d
    mean[0] = shift + s1 / n
    m2[0] = s2 - s1 * s1 / n if s2 > s1 * s1 / n else 0.0


cdef int _channel_stats(const floating* x,     # IN  (N, C, S)
                        Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                        double* mean,          # OUT (C,)
                        double* var            # OUT (C,) biased variance
                        ) noexcept nogil:
    """Per-channel mean and biased variance in one pass over memory. Returns -1 on OOM."""
    cdef Py_ssize_t E = N * C * S, c
    cdef int n_threads = n_threads_for(E), t
    cdef double* part = <double*>calloc(3 * C * n_threads, sizeof(double))
    cdef floating* acc = NULL
    cdef double count, mu, m2
    if part == NULL:
        return -1
    if S == 1:
        acc = <floating*>malloc(3 * COLS_PER_TILE * n_threads * sizeof(floating))
        if acc == NULL:
            free(part)
            return -1
        if n_threads == 1:      # no parallel region: it costs ~1 us
            _stats_cols(x, C, 0, N, part, acc)
        else:
            for t in prange(n_threads, schedule='static', num_threads=n_threads):
                _stats_cols(x, C, _split(N, t, n_threads), _split(N, t + 1, n_threads),
                            part + 3 * C * t, acc + 3 * COLS_PER_TILE * t)
        free(acc)
    else:
        if n_threads == 1:      # no parallel region: it costs ~1 us
            _stats_rows(x, C, S, 0, E, part)
        else:
            for t in prange(n_threads, schedule='static', num_threads=n_threads):
                _stats_rows(x, C, S, _split(E, t, n_threads), _split(E, t + 1, n_threads),
                            part + 3 * C * t)
    # merge the thread partials in thread order: deterministic
    for c in range(C):
        count = 0
        mu = 0
        m2 = 0
        for t in range(n_threads):
            chan_merge(&count, &mu, &m2, part[3 * C * t + c], part[3 * C * t + C + c],
                       part[3 * C * t + 2 * C + c])
        mean[c] = mu
        var[c] = m2 / count if count > 0 else 0.0
    free(part)
    return 0


# ---------------------------------------------------------------------------------------
# elementwise passes: out = k1 * (a - k0) + k2 * ((x - hi) - lo)
#   normalize : a = x,  k0 = hi + lo ... written as its own loop (below) for speed
# ---------------------------------------------------------------------------------------

cdef void _normalize_rows(floating* y, const floating* x, Py_ssize_t C, Py_ssize_t S,
                          Py_ssize_t e0, Py_ssize_t e1, const floating* coef, bint stream,
                          bint relu) noexcept nogil:
    # coef (N_COEF, C): hi, lo, scale, beta; relu: y = max(0, y) (fused BN + ReLU)
    cdef Py_ssize_t r = e0 // S, pos = e0, end
    cdef Py_ssize_t c = r % C      # then stepped: a division per row costs ~15 ns
    while pos < e1:
        end = (r + 1) * S
        if end > e1:
            end = e1
        vaffine(y + pos, x + pos, end - pos, coef[c], coef[C + c], coef[2 * C + c],
                coef[3 * C + c], stream, relu)
        pos = end
        r += 1
        c += 1
        if c == C:
            c = 0
    if stream:     # once per thread, after all its streamed stores
        cn_stream_fence()


cdef void _normalize_cols(floating* y, const floating* x, Py_ssize_t C,
                          Py_ssize_t n0, Py_ssize_t n1, const floating* coef, bint stream,
                          bint relu) noexcept nogil:
    cdef Py_ssize_t n = n0
    if not stream:
        while n + 4 <= n1:
            vaffine_cols4(y + n * C, x + n * C, C, C, coef, coef + C, coef + 2 * C,
                          coef + 3 * C, relu)
            n += 4
    while n < n1:
        vaffine_cols(y + n * C, x + n * C, C, coef, coef + C, coef + 2 * C, coef + 3 * C,
                     stream, relu)
        n += 1
    if stream:     # once per thread, after all its streamed stores
        cn_stream_fence()


cdef void _normalize(floating* y, const floating* x, Py_ssize_t N, Py_ssize_t C,
                     Py_ssize_t S, const floating* coef, bint relu) noexcept nogil:
    cdef Py_ssize_t E = N * C * S
    cdef int n_threads = n_threads_for(E), t
    cdef bint stream = (E * <Py_ssize_t>sizeof(floating) >= cn_stream_min_bytes
                        and (S if S > 1 else C) >= STREAM_MIN_RUN)
    if S == 1:
        if n_threads == 1:      # no parallel region: it costs ~1 us
            _normalize_cols(y, x, C, 0, N, coef, stream, relu)
        else:
            for t in prange(n_threads, schedule='static', num_threads=n_threads):
                _normalize_cols(y, x, C, _split(N, t, n_threads), _split(N, t + 1, n_threads),
                                coef, stream, relu)
    else:
        if n_threads == 1:      # no parallel region: it costs ~1 us
            _normalize_rows(y, x, C, S, 0, E, coef, stream, relu)
        else:
            for t in prange(n_threads, schedule='static', num_threads=n_threads):
                _normalize_rows(y, x, C, S, _split(E, t, n_threads), _split(E, t + 1, n_threads),
                                coef, stream, relu)


cdef void _fill_normalize_coef(floating* coef, Py_ssize_t C, const double* mean,
                               const double* invstd, const floating* weight,
                               const floating* bias) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(C):
        split_mean(mean[c], &coef[c], &coef[C + c])
        coef[2 * C + c] = <floating>(invstd[c] * (weight[c] if weight != NULL else 1.0))
        coef[3 * C + c] = bias[c] if bias != NULL else 0


# ---------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------

cdef void _reduce_rows(const floating* dy, const floating* x, Py_ssize_t C, Py_ssize_t S,
                       Py_ssize_t e0, Py_ssize_t e1, const floating* coef,
                       double* part, const floating* ym) noexcept nogil:
    # part (2, C): sum dy, sum dy * (x - mean); ym: mask dy by ym > 0 (BN + ReLU) or NULL
    cdef Py_ssize_t r = e0 // S, pos = e0, end, b, len_b, k_b
    cdef Py_ssize_t c = r % C      # then stepped: a division per row costs ~15 ns
    cdef double s1, s2
    while pos < e1:
        end = (r + 1) * S
        if end > e1:
            end = e1
        for k_b in range((end - pos + BLOCK - 1) // BLOCK):   # short sums, merged in float64
            b = pos + k_b * BLOCK
            len_b = end - b if end - b < BLOCK else BLOCK
            vdot_dev(&s1, &s2, dy + b, x + b, len_b, coef[c], coef[C + c], _off(ym, b))
            part[c] += s1
            part[C + c] += s2
        pos = end
        r += 1
        c += 1
        if c == C:
            c = 0

cdef void _reduce_cols(const floating* dy, const floating* x, Py_ssize_t C,
                       Py_ssize_t n0, Py_ssize_t n1, const floating* coef,
                       double* part, floating* acc, const floating* ym) noexcept nogil:
    cdef Py_ssize_t b0, nb, c0, nc, n, c, k_b0, k_c0
    cdef floating* s1 = acc
    cdef floating* s2 = acc + COLS_PER_TILE
    for k_b0 in range((n1 - n0 + ROWS_PER_TILE - 1) // ROWS_PER_TILE):
        b0 = n0 + k_b0 * ROWS_PER_TILE
        nb = n1 - b0 if n1 - b0 < ROWS_PER_TILE else ROWS_PER_TILE
        for k_c0 in range((C + COLS_PER_TILE - 1) // COLS_PER_TILE):
            c0 = k_c0 * COLS_PER_TILE
            nc = C - c0 if C - c0 < COLS_PER_TILE else COLS_PER_TILE
            vcols_grad_sums(s1, s2, dy + b0 * C + c0, x + b0 * C + c0, C, nb, coef + c0,
                            coef + C + c0, nc, _off(ym, b0 * C + c0))
            for c in range(nc):
                part[c0 + c] += s1[c]
                part[C + c0 + c] += s2[c]

cdef int _backward_reduce(const floating* dy, const floating* x,
                          Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                          const floating* coef,
                          const double* invstd,
                          double* sum_dy,        # OUT (C,)
                          double* sum_dy_xhat,   # OUT (C,)
                          const floating* ym     # IN (N, C, S) BN + ReLU output, or NULL
                          ) noexcept nogil:
    cdef Py_ssize_t E = N * C * S, c
    cdef int n_threads = n_threads_for(2 * E), t
    cdef double* part = <double*>calloc(2 * C * n_threads, sizeof(double))
    cdef floating* acc = NULL
    cdef double s1, s2
    if part == NULL:
        return -1
    if S == 1:
        acc = <floating*>malloc(2 * COLS_PER_TILE * n_threads * sizeof(floating))
        if acc == NULL:
            free(part)
            return -1
        if n_threads == 1:      # no parallel region: it costs ~1 us
            _reduce_cols(dy, x, C, 0, N, coef, part, acc, ym)
        else:
            for t in prange(n_threads, schedule='static', num_threads=n_threads):
                _reduce_cols(dy, x, C, _split(N, t, n_threads), _split(N, t + 1, n_threads),
                             coef, part + 2 * C * t, acc + 2 * COLS_PER_TILE * t, ym)
        free(acc)
    else:
        if n_threads == 1:      # no parallel region: it costs ~1 us
            _reduce_rows(dy, x, C, S, 0, E, coef, part, ym)
        else:
            for t in prange(n_threads, schedule='static', num_threads=n_threads):
                _reduce_rows(dy, x, C, S, _split(E, t, n_threads), _split(E, t + 1, n_threads),
                             coef, part + 2 * C * t, ym)
    for c in range(C):
        s1 = 0
        s2 = 0
        for t in range(n_threads):
            s1 += part[2 * C * t + c]
            s2 += part[2 * C * t + C + c]
        sum_dy[c] = s1
        sum_dy_xhat[c] = s2 * invstd[c]
    free(part)
    return 0


cdef void _grad_input_rows(floating* dx, const floating* dy, const floating* x,
                           Py_ssize_t C, Py_ssize_t S, Py_ssize_t e0, Py_ssize_t e1,
                           const floating* coef, bint stream, const floating* ym) noexcept nogil:
    # coef (N_COEF, C): hi, lo, k1, mean_dy, k2, invstd
    # dx = k1 * ((dy - mean_dy) - k2 * xhat), xhat = (x - mean) * invstd
    cdef Py_ssize_t r = e0 // S, pos = e0, end
    cdef Py_ssize_t c = r % C      # then stepped: a division per row costs ~15 ns
    while pos < e1:
        end = (r + 1) * S
        if end > e1:
            end = e1
        vgrad(dx + pos, dy + pos, x + pos, end - pos, coef[c], coef[C + c], coef[5 * C + c],
              coef[2 * C + c], coef[3 * C + c], coef[4 * C + c], stream, _off(ym, pos))
        pos = end
        r += 1
        c += 1
        if c == C:
            c = 0
    if stream:     # once per thread, after all its streamed stores
        cn_stream_fence()


cdef void _grad_input_cols(floating* dx, const floating* dy, const floating* x,
                           Py_ssize_t C, Py_ssize_t n0, Py_ssize_t n1,
                           const floating* coef, bint stream, const floating* ym) noexcept nogil:
    cdef Py_ssize_t n = n0
    if not stream:
        while n + 4 <= n1:
            vgrad_cols4(dx + n * C, dy + n * C, x + n * C, C, C, coef, coef + C, coef + 5 * C,
                        coef + 2 * C, coef + 3 * C, coef + 4 * C, _off(ym, n * C))
            n += 4
    while n < n1:
        vgrad_cols(dx + n * C, dy + n * C, x + n * C, C, coef, coef + C, coef + 5 * C,
                   coef + 2 * C, coef + 3 * C, coef + 4 * C, stream, _off(ym, n * C))
        n += 1
    if stream:     # once per thread, after all its streamed stores
        cn_stream_fence()


cdef void _grad_input(floating* dx, const floating* dy, const floating* x,
                      Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                      const floating* coef, const floating* ym) noexcept nogil:
    cdef Py_ssize_t E = N * C * S
    cdef int n_threads = n_threads_for(2 * E), t
    cdef bint stream = (E * <Py_ssize_t>sizeof(floating) >= cn_stream_min_bytes
                        and (S if S > 1 else C) >= STREAM_MIN_RUN)
    if S == 1:
        if n_threads == 1:      # no parallel region: it costs ~1 us
            _grad_input_cols(dx, dy, x, C, 0, N, coef, stream, ym)
        else:
            for t in prange(n_threads, schedule='static', num_threads=n_threads):
                _grad_input_cols(dx, dy, x, C, _split(N, t, n_threads), _split(N, t + 1, n_threads),
                                coef, stream, ym)
    else:
        if n_threads == 1:      # no parallel region: it costs ~1 us
            _grad_input_rows(dx, dy, x, C, S, 0, E, coef, stream, ym)
        else:
            for t in prange(n_threads, schedule='static', num_threads=n_threads):
                _grad_input_rows(dx, dy, x, C, S, _split(E, t, n_threads), _split(E, t + 1, n_threads),
                                coef, stream, ym)


# ---------------------------------------------------------------------------------------
# Python entry points: every buffer is checked (type, size, layout) before use
# ---------------------------------------------------------------------------------------

cdef inline cnp.ndarray _empty_f64(Py_ssize_t n):
    cdef cnp.npy_intp dim = n
    return cnp.PyArray_EMPTY(1, &dim, cnp.NPY_DOUBLE, 0)


cdef inline cnp.ndarray _empty_like(cnp.ndarray x):
    return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(x), cnp.PyArray_DIMS(x), cnp.PyArray_TYPE(x), 0)


cdef inline int _check_input(object x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S) except -1:
    """x: float32/float64, C-contiguous, N*C*S elements; returns its type number."""
    cdef int typenum = input_typenum(x, "input")
    check_dims(N, C, S, 1)
    check_array(x, N * C * S, typenum, False, "input")
    return typenum


cdef int _stats_impl(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                     double* mean, double* var) except -1 nogil:
    if _channel_stats(x, N, C, S, mean, var) < 0:
        with gil:
            raise MemoryError()
    return 0


def stats(cnp.ndarray x not None, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S):
    """Per-channel (mean, biased variance) of x viewed as (N, C, S), float64 arrays (C,)."""
    cdef int typenum = _check_input(x, N, C, S)
    cdef cnp.ndarray mean = _empty_f64(C), var = _empty_f64(C)
    cdef double* pm = <double*>cnp.PyArray_DATA(mean)
    cdef double* pv = <double*>cnp.PyArray_DATA(var)
    cdef void* px = cnp.PyArray_DATA(x)
    if typenum == cnp.NPY_FLOAT:
        with nogil:
            _stats_impl(<const float*>px, N, C, S, pm, pv)
    else:
        with nogil:
            _stats_impl(<const double*>px, N, C, S, pm, pv)
    return mean, var


cdef int _normalize_impl(floating* y, const floating* x, Py_ssize_t N, Py_ssize_t C,
                         Py_ssize_t S, const double* mean, const double* invstd,
                         const floating* weight, const floating* bias,
                         bint relu) except -1 nogil:
    cdef floating* coef = <floating*>malloc(N_COEF * C * sizeof(floating) + 1)
    if coef == NULL:
        with gil:
            raise MemoryError()
    _fill_normalize_coef(coef, C, mean, invstd, weight, bias)
    _normalize(y, x, N, C, S, coef, relu)
    free(coef)
    return 0


def normalize(cnp.ndarray x not None, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
              cnp.ndarray mean not None, cnp.ndarray invstd not None, weight, bias, bint relu=False):
    """y = (x - mean) * invstd * weight + bias per channel (then max(0, y) with relu);
    returns a new array like x."""
    cdef int typenum = _check_input(x, N, C, S)
    check_array(mean, C, cnp.NPY_DOUBLE, False, "mean")
    check_array(invstd, C, cnp.NPY_DOUBLE, False, "invstd")
    check_array(weight, C, typenum, False, "weight")
    check_array(bias, C, typenum, False, "bias")
    cdef cnp.ndarray y = _empty_like(x)
    cdef void* py = cnp.PyArray_DATA(y)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = data_or_null(weight)
    cdef void* pb = data_or_null(bias)
    cdef const double* pm = <const double*>cnp.PyArray_DATA(mean)
    cdef const double* ps = <const double*>cnp.PyArray_DATA(invstd)
    if typenum == cnp.NPY_FLOAT:
        with nogil:
            _normalize_impl(<float*>py, <const float*>px, N, C, S, pm, ps,
                            <const float*>pw, <const float*>pb, relu)
    else:
        with nogil:
            _normalize_impl(<double*>py, <const double*>px, N, C, S, pm, ps,
                            <const double*>pw, <const double*>pb, relu)
    return y


cdef int _forward_train_impl(floating* y, const floating* x,
                             Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                             const floating* weight, const floating* bias,
                             floating* running_mean, floating* running_var,
                             double factor, double eps,
                             double* mean, double* invstd, bint relu) except -1 nogil:
    cdef Py_ssize_t c
    cdef double M = <double>N * S, var
    _stats_impl(x, N, C, S, mean, invstd)        # invstd holds the biased variance here
    for c in range(C):
        var = invstd[c]
        if running_mean != NULL:
            running_mean[c] = <floating>((1.0 - factor) * running_mean[c] + factor * mean[c])
        if running_var != NULL:
            running_var[c] = <floating>((1.0 - factor) * running_var[c]
                                        + factor * var * (M / (M - 1.0)))
        invstd[c] = 1.0 / sqrt(var + eps)
    _normalize_impl(y, x, N, C, S, mean, invstd, weight, bias, relu)
    return 0


def forward_train(cnp.ndarray x not None, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                  weight, bias, running_mean, running_var, double factor, double eps,
                  bint relu=False):
    """Training forward in one call: batch statistics, running-statistics update in place
    (when given; needs N*S > 1), normalization (then max(0, y) with relu: a fused
    BN + ReLU). Returns (y, mean, invstd)."""
    cdef int typenum = _check_input(x, N, C, S)
    check_array(weight, C, typenum, False, "weight")
    check_array(bias, C, typenum, False, "bias")
    check_array(running_mean, C, typenum, True, "running_mean")
    check_array(running_var, C, typenum, True, "running_var")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be given or both be None")
    if N * S < 2 and running_var is not None:
        raise ValueError("the unbiased variance needs more than 1 value per channel")
    cdef cnp.ndarray y = _empty_like(x)
    cdef cnp.ndarray mean = _empty_f64(C), invstd = _empty_f64(C)
    cdef void* py = cnp.PyArray_DATA(y)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = data_or_null(weight)
    cdef void* pb = data_or_null(bias)
    cdef void* prm = data_or_null(running_mean)
    cdef void* prv = data_or_null(running_var)
    cdef double* pm = <double*>cnp.PyArray_DATA(mean)
    cdef double* ps = <double*>cnp.PyArray_DATA(invstd)
    if typenum == cnp.NPY_FLOAT:
        with nogil:
            _forward_train_impl(<float*>py, <const float*>px, N, C, S, <const float*>pw,
                                <const float*>pb, <float*>prm, <float*>prv, factor, eps, pm, ps,
                                relu)
    else:
        with nogil:
            _forward_train_impl(<double*>py, <const double*>px, N, C, S, <const double*>pw,
                                <const double*>pb, <double*>prm, <double*>prv, factor, eps, pm,
                                ps, relu)
    return y, mean, invstd


def forward_eval(cnp.ndarray x not None, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                 weight, bias, running_mean, running_var, double eps, bint relu=False):
    """Eval forward with the running statistics (then max(0, y) with relu). Returns
    (y, mean, invstd), the float64 statistics used (invstd = 1/sqrt(running_var + eps))."""
    cdef int typenum = _check_input(x, N, C, S)
    check_array(weight, C, typenum, False, "weight")
    check_array(bias, C, typenum, False, "bias")
    check_array(running_mean, C, typenum, False, "running_mean")
    check_array(running_var, C, typenum, False, "running_var")
    if running_mean is None or running_var is None:
        raise ValueError("running_mean and running_var must be given")
    cdef cnp.ndarray y = _empty_like(x)
    cdef cnp.ndarray mean = _empty_f64(C), invstd = _empty_f64(C)
    cdef double* pm = <double*>cnp.PyArray_DATA(mean)
    cdef double* ps = <double*>cnp.PyArray_DATA(invstd)
    cdef void* py = cnp.PyArray_DATA(y)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = data_or_null(weight)
    cdef void* pb = data_or_null(bias)
    cdef void* prm = cnp.PyArray_DATA(<cnp.ndarray>running_mean)
    cdef void* prv = cnp.PyArray_DATA(<cnp.ndarray>running_var)
    cdef Py_ssize_t c
    for c in range(C):
        if typenum == cnp.NPY_FLOAT:
            pm[c] = (<float*>prm)[c]
            ps[c] = 1.0 / sqrt(<double>(<float*>prv)[c] + eps)
        else:
            pm[c] = (<double*>prm)[c]
            ps[c] = 1.0 / sqrt((<double*>prv)[c] + eps)
    if N * C * S == 0:
        return y, mean, invstd
    if typenum == cnp.NPY_FLOAT:
        with nogil:
            _normalize_impl(<float*>py, <const float*>px, N, C, S, pm, ps,
                            <const float*>pw, <const float*>pb, relu)
    else:
        with nogil:
            _normalize_impl(<double*>py, <const double*>px, N, C, S, pm, ps,
                            <const double*>pw, <const double*>pb, relu)
    return y, mean, invstd


cdef int _backward_impl(floating* dx, const floating* dy, const floating* x,
                        Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                        const double* mean, const double* invstd, const floating* weight,
                        bint training, double count,
                        const double* in_sum_dy, const double* in_sum_dy_xhat,
                        double* sum_dy, double* sum_dy_xhat,
                        const floating* ym) except -1 nogil:
    """sum_dy / sum_dy_xhat: OUT, this input's sums (when not NULL). in_sum_*: the sums
    the input gradient uses (the global ones for a synchronized batch norm); NULL = use
    this input's sums; count: the number of elements per channel they were summed over.
    ym: the output of a fused BN + ReLU (dy counts only where ym > 0), or NULL."""
    cdef Py_ssize_t c
    cdef double k1, g
    cdef floating* coef = <floating*>malloc(N_COEF * C * sizeof(floating) + 1)
    if coef == NULL:
        with gil:
            raise MemoryError()
    for c in range(C):
        split_mean(mean[c], &coef[c], &coef[C + c])
    if sum_dy != NULL:
        if _backward_reduce(dy, x, N, C, S, coef, invstd, sum_dy, sum_dy_xhat, ym) < 0:
            free(coef)
            with gil:
                raise MemoryError()
    if in_sum_dy == NULL:
        in_sum_dy = sum_dy
        in_sum_dy_xhat = sum_dy_xhat
    if dx != NULL and not training and ym == NULL:
        # running statistics: dx = dy * g * invstd, a per-channel scaling of dy (x unread,
        # so a NaN in x does not leak into dx); coef as _normalize's: 0, 0, scale, 0
        for c in range(C):
            coef[c] = 0
            coef[C + c] = 0
            coef[2 * C + c] = <floating>((weight[c] if weight != NULL else 1.0) * invstd[c])
            coef[3 * C + c] = 0
        _normalize(dx, dy, N, C, S, coef, False)
    elif dx != NULL:
        for c in range(C):
            g = weight[c] if weight != NULL else 1.0
            k1 = g * invstd[c]
            coef[2 * C + c] = <floating>k1
            coef[5 * C + c] = <floating>invstd[c]
            if training:
                # dx = g*invstd*(dy - mean(dy) - xhat*mean(dy*xhat)), xhat = (x - mean)*invstd
                coef[3 * C + c] = <floating>(in_sum_dy[c] / count)
                coef[4 * C + c] = <floating>(in_sum_dy_xhat[c] / count)
            else:
                coef[3 * C + c] = 0
                coef[4 * C + c] = 0
        _grad_input(dx, dy, x, N, C, S, coef, ym)
    free(coef)
    return 0


def backward(cnp.ndarray dy not None, cnp.ndarray x not None, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
             cnp.ndarray mean not None, cnp.ndarray invstd not None, weight, bint training,
             bint need_input_grad=True, y=None):
    """Returns (dx or None, sum_dy, sum_dy_xhat): sum_dy is dbias, sum_dy_xhat dweight
    (float64). y: the output of a fused BN + ReLU forward, whose mask y > 0 applies to dy."""
    cdef int typenum = _check_input(x, N, C, S)
    check_array(dy, N * C * S, typenum, False, "grad_output")
    check_array(y, N * C * S, typenum, False, "y")
    cdef void* pym = data_or_null(y)
    check_array(mean, C, cnp.NPY_DOUBLE, False, "mean")
    check_array(invstd, C, cnp.NPY_DOUBLE, False, "invstd")
    check_array(weight, C, typenum, False, "weight")
    cdef cnp.ndarray dx = _empty_like(x) if need_input_grad else None
    cdef cnp.ndarray sum_dy = _empty_f64(C), sum_dy_xhat = _empty_f64(C)
    cdef void* pdx = data_or_null(dx)
    cdef void* pdy = cnp.PyArray_DATA(dy)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = data_or_null(weight)
    cdef const double* pm = <const double*>cnp.PyArray_DATA(mean)
    cdef const double* ps = <const double*>cnp.PyArray_DATA(invstd)
    cdef double* s1 = <double*>cnp.PyArray_DATA(sum_dy)
    cdef double* s2 = <double*>cnp.PyArray_DATA(sum_dy_xhat)
    cdef double count = <double>N * S
    if typenum == cnp.NPY_FLOAT:
        with nogil:
            _backward_impl(<float*>pdx, <const float*>pdy, <const float*>px, N, C, S, pm, ps,
                           <const float*>pw, training, count, NULL, NULL, s1, s2,
                           <const float*>pym)
    else:
        with nogil:
            _backward_impl(<double*>pdx, <const double*>pdy, <const double*>px, N, C, S, pm, ps,
                           <const double*>pw, training, count, NULL, NULL, s1, s2,
                           <const double*>pym)
    return dx, sum_dy, sum_dy_xhat


def backward_reduce(cnp.ndarray dy not None, cnp.ndarray x not None, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                    cnp.ndarray mean not None, cnp.ndarray invstd not None):
    """Per-channel (sum dy, sum dy*xhat) as float64 arrays (C,), no input gradient."""
    return backward(dy, x, N, C, S, mean, invstd, None, True, False)[1:]


def backward_input(cnp.ndarray dy not None, cnp.ndarray x not None, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                   cnp.ndarray mean not None, cnp.ndarray invstd not None, weight,
                   cnp.ndarray sum_dy not None, cnp.ndarray sum_dy_xhat not None, double count):
    """Input gradient of a training-mode batch norm from given per-channel sums over
    `count` elements per channel (e.g. all-reduced over the ranks of a distributed batch)."""
    cdef int typenum = _check_input(x, N, C, S)
    check_array(dy, N * C * S, typenum, False, "grad_output")
    check_array(mean, C, cnp.NPY_DOUBLE, False, "mean")
    check_array(invstd, C, cnp.NPY_DOUBLE, False, "invstd")
    check_array(weight, C, typenum, False, "weight")
    check_array(sum_dy, C, cnp.NPY_DOUBLE, False, "sum_dy")
    check_array(sum_dy_xhat, C, cnp.NPY_DOUBLE, False, "sum_dy_xhat")
    cdef cnp.ndarray dx = _empty_like(x)
    cdef void* pdx = cnp.PyArray_DATA(dx)
    cdef void* pdy = cnp.PyArray_DATA(dy)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = data_or_null(weight)
    cdef const double* pm = <const double*>cnp.PyArray_DATA(mean)
    cdef const double* ps = <const double*>cnp.PyArray_DATA(invstd)
    cdef const double* s1 = <const double*>cnp.PyArray_DATA(sum_dy)
    cdef const double* s2 = <const double*>cnp.PyArray_DATA(sum_dy_xhat)
    if typenum == cnp.NPY_FLOAT:
        with nogil:
            _backward_impl(<float*>pdx, <const float*>pdy, <const float*>px, N, C, S, pm, ps,
                           <const float*>pw, True, count, s1, s2, NULL, NULL, NULL)
    else:
        with nogil:
            _backward_impl(<double*>pdx, <const double*>pdy, <const double*>px, N, C, S, pm, ps,
                           <const double*>pw, True, count, s1, s2, NULL, NULL, NULL)
    return dx
