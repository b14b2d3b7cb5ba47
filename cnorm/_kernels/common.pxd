# What every kernel module shares: the buffer guards, the thread split with the one
# serial/parallel fork and the one dtype dispatch, and the exact statistics (block
# statistics of short in-cache blocks and Chan's merge of (count, mean, M2) partials).

cimport numpy as cnp
from cython.parallel cimport prange
from libc.float cimport DBL_MAX, DBL_MIN
from libc.math cimport fabs, frexp, ldexp, sqrt
from libc.stdint cimport uint16_t

from .pool cimport pooled_empty
from .simd.loops cimport (block_dev, block_sum, cn_f32_sums_unsafe, cn_stream_min_bytes, floating,
                          from_bf16, from_f16, to_bf16, to_f16)

cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX

cdef enum:
    BLOCK = 512             # elements per exactly-summed block (2 KiB of float32: stays in L1)
    STREAM_MIN_RUN = 512    # non-temporal stores only pay on long runs (each peels to alignment)
    MAX_CHUNKS = 64         # partials a reduction keeps at most: bounded scratch
    MAX_WIDE_CHUNKS = 16    # the same for partials as wide as a row or all channels


cdef inline bint streams(Py_ssize_t out_bytes, bint gradient) noexcept nogil:
    """Whether an output of out_bytes is written by non-temporal stores: from
    cn_stream_min_bytes, or half that for a gradient pass, which also reads two inputs of
    its output's size (x, dy). dx streamed from 4 MiB cut BatchNorm forward+backward by
    24% ((32, 256, 14, 14) channels_last) and 6-8% (bn3d, bn1d_seq), 1 thread, median;
    a forward's y streamed at that size got 7-19% slower."""
    return out_bytes >= (cn_stream_min_bytes // 2 if gradient else cn_stream_min_bytes)


cdef extern from *:
    """
    #define CN_F64_VAR_MIN 9.332636185032189e-302  /* 2**-1000 */
    """
    # float64 variances below this may have lost digits to subnormal squares
    const double CN_F64_VAR_MIN


# =======================================================================================
# buffer guards: every array a kernel touches is checked here (type, size, C-contiguity,
# alignment, byte order, writeability) before its pointer is taken, so that no call from
# Python can make a kernel read or write out of bounds. The functional layer has already
# given the friendly error messages; this is the last line, and cheap.
# =======================================================================================

cdef inline int check_array(object a, Py_ssize_t size, int typenum, bint writable,
                            str name) except -1:
    """Raise unless a is None or a C-contiguous, aligned, native-order array of typenum
    with `size` elements (and writeable when asked)."""
    cdef cnp.ndarray arr
    if a is None:
        return 0
    if not cnp.PyArray_Check(a):
        raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
    arr = <cnp.ndarray>a
    if (cnp.PyArray_TYPE(arr) != typenum or cnp.PyArray_SIZE(arr) != size
            or not cnp.PyArray_ISCARRAY_RO(arr)
            or (writable and not cnp.PyArray_ISWRITEABLE(arr))):
        raise ValueError(
            f"{name} must be a {'writeable ' if writable else ''}C-contiguous "
            f"{cnp.PyArray_DescrFromType(typenum)} array of {size} elements, got "
            f"{(<object>arr).dtype} array of shape {(<object>arr).shape}")
    return 0


cdef inline void* data_or_null(object a) noexcept:
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline int input_typenum(object x, str name) except -1:
    """The type number of a float32/float64 input array (TypeError otherwise)."""
    if not cnp.PyArray_Check(x):
        raise TypeError(f"{name} must be a NumPy array, got {type(x).__name__}")
    cdef int typenum = cnp.PyArray_TYPE(<cnp.ndarray>x)
    if typenum != cnp.NPY_FLOAT and typenum != cnp.NPY_DOUBLE:
        raise TypeError(f"{name}: unsupported dtype {(<object>x).dtype}")
    return typenum


cdef inline int check_dims(Py_ssize_t a, Py_ssize_t b, Py_ssize_t c, Py_ssize_t d) except -1:
    """The sizes a kernel is told: non-negative, and their product (the element count,
    computed exactly with Python integers) representable, so no index arithmetic wraps."""
    if a < 0 or b < 0 or c < 0 or d < 0:
        raise ValueError("negative dimension")
    if (<object>a) * b * c * d > <object>PY_SSIZE_T_MAX:
        raise ValueError("dimensions too large: their product overflows Py_ssize_t")
    return 0


# outputs: large ones from the pool of freed output buffers (pool.pyx: no page faults)
cdef inline cnp.ndarray empty_1d(Py_ssize_t n, int typenum):
    cdef cnp.npy_intp dim = n
    return pooled_empty(1, &dim, typenum)


cdef inline cnp.ndarray empty_like(cnp.ndarray x):
    return pooled_empty(cnp.PyArray_NDIM(x), cnp.PyArray_DIMS(x), cnp.PyArray_TYPE(x))


# =======================================================================================
# threads and dtypes. A kernel pass is a "work" function run once per thread t on its
# share of the input x; what else it reads and writes is in a job struct of the kernel
# module (C has no closures). parallel() is the one place that forks threads; run_threads
# and call_typed are the one place that turns the input's type number into the
# specialization of a fused function.
# =======================================================================================

ctypedef void (*work_f32)(const float* x, void* job, int t, int n_threads) noexcept nogil
ctypedef void (*work_f64)(const double* x, void* job, int t, int n_threads) noexcept nogil
ctypedef void (*step_f32)(const float* x, void* job) noexcept nogil
ctypedef void (*step_f64)(const double* x, void* job) noexcept nogil


cdef inline Py_ssize_t split_start(Py_ssize_t total, int t, int n_threads) noexcept nogil:
    """Start of thread t's share when `total` items are cut into n_threads near-equal
    contiguous ranges (t = n_threads gives total)."""
    cdef Py_ssize_t q = total // n_threads, rem = total % n_threads
    return q * t + (t if t < rem else rem)


cdef inline void parallel(void (*work)(const floating*, void*, int, int) noexcept nogil,
                          const floating* x, void* job, int n_threads) noexcept nogil:
    """work(x, job, t, n_threads) for t < n_threads, one thread each (OpenMP static)."""
    cdef int t
    if n_threads == 1:      # no parallel region: entering one costs ~1 us, even if(0)
        work(x, job, 0, 1)
        return
    for t in prange(n_threads, schedule='static', num_threads=n_threads):
        work(x, job, t, n_threads)


cdef inline Py_ssize_t chunk_size(Py_ssize_t units, Py_ssize_t unit_elements,
                                  Py_ssize_t min_elements, Py_ssize_t multiple,
                                  Py_ssize_t max_chunks) noexcept nogil:
    """Units (rows of unit_elements elements) per chunk of a reduction over `units`: at
    least min_elements elements, at most max_chunks chunks, a multiple of `multiple`.
    Threads take whole chunks (split_start over the chunk count) and the chunk partials
    merge in chunk order: as the chunks depend on the sizes only, never on the thread
    count, so do the results."""
    cdef Py_ssize_t size = min_elements // (unit_elements if unit_elements > 0 else 1)
    cdef Py_ssize_t fewest = (units + max_chunks - 1) // max_chunks
    if size < fewest:
        size = fewest
    if size < 1:
        size = 1
    if multiple < 1:
        multiple = 1
    return (size + multiple - 1) // multiple * multiple


cdef inline void run_threads(int typenum, const void* x, void* job, int n_threads,
                             work_f32 f32, work_f64 f64) noexcept nogil:
    """parallel() of the work function for x's type number (NPY_FLOAT or NPY_DOUBLE)."""
    if typenum == cnp.NPY_FLOAT:
        parallel(f32, <const float*>x, job, n_threads)
    else:
        parallel(f64, <const double*>x, job, n_threads)


cdef inline void call_typed(int typenum, const void* x, void* job,
                            step_f32 f32, step_f64 f64) noexcept nogil:
    """step(x, job) for x's type number, on this thread: a kernel's typed sequence of
    passes (each of which may use parallel())."""
    if typenum == cnp.NPY_FLOAT:
        f32(<const float*>x, job)
    else:
        f64(<const double*>x, job)


cdef inline void _sum_partials(floating* out_a, floating* out_b, const double* part,
                               Py_ssize_t n, int n_parts, Py_ssize_t stride) noexcept nogil:
    cdef Py_ssize_t j
    cdef int t
    cdef double a, b
    for j in range(n):
        a = 0
        b = 0
        for t in range(n_parts):
            a += part[t * stride + j]
            b += part[t * stride + n + j]
        out_a[j] = <floating>a
        if out_b != NULL:
            out_b[j] = <floating>b


cdef inline void sum_partials(int typenum, void* out_a, void* out_b, const double* part,
                              Py_ssize_t n, int n_parts, Py_ssize_t stride) noexcept nogil:
    """The per-thread partials of two gradients, (n_parts, 2, n) at a stride of `stride`:
    out_a[j], out_b[j] <- the sums over t of part[t * stride + j], part[t * stride + n + j]
    in t order (float64; deterministic), stored in the dtype of typenum. out_b may be NULL."""
    if typenum == cnp.NPY_FLOAT:
        _sum_partials(<float*>out_a, <float*>out_b, part, n, n_parts, stride)
    else:
        _sum_partials(<double*>out_a, <double*>out_b, part, n, n_parts, stride)


# =======================================================================================
# statistics: exact statistics of short in-cache blocks and Chan's merge of (count, mean,
# M2) partials. Never E[x^2] - E[x]^2.
#
# Why blocks: a block of <= BLOCK elements is read from memory once and then a second
# time from L1, so "mean first, then squared deviations" (the two-pass algorithm, exact
# to a few ulp) costs one pass over memory. Inside a block the sums run in the input
# precision across the independent lanes of the SIMD loops (short sums: <= 32 terms per
# lane); blocks merge in float64. float32 block sums that overflowed or lost digits are
# redone in float64 (cn_f32_sums_unsafe in simd/simd.h says when).
# =======================================================================================

cdef inline void chan_merge(double* count, double* mean, double* m2,
                            double count_b, double mean_b, double m2_b) noexcept nogil:
    """(count, mean, m2) <- the statistics of both sets (Chan, Golub & LeVeque)."""
    cdef double n, delta, frac_b
    if count_b == 0:
        return
    if count[0] == 0:
        count[0] = count_b
        mean[0] = mean_b
        m2[0] = m2_b
        return
    n = count[0] + count_b
    frac_b = count_b / n                 # the one division
    delta = mean_b - mean[0]
    mean[0] += delta * frac_b
    m2[0] += m2_b + delta * delta * (count[0] * frac_b)
    count[0] = n


cdef inline void two_pass_f64(const floating* x, Py_ssize_t n, Py_ssize_t stride,
                              double* mean, double* m2) noexcept nogil:
    """Two-pass statistics in float64 of x[0], x[stride], ... (n values): the slow path
    for float32 block sums that overflowed or lost digits."""
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


cdef inline void block_stats(const floating* x,    # IN (n,)
                             Py_ssize_t n,         # 1 <= n <= BLOCK
                             double* mean,         # OUT
                             double* m2            # OUT: sum of squared deviations
                             ) noexcept nogil:
    """Mean and M2 of one in-cache block, corrected two-pass algorithm: a rough mean
    first (only a shift), then the sums of deviations from it, which correct it."""
    cdef double inv_n = 1.0 / n
    cdef floating shift = <floating>(block_sum(x, n) * inv_n)
    cdef double s1, s2, corr
    block_dev(&s1, &s2, x, n, shift)
    if floating is float:
        if cn_f32_sums_unsafe(s1, s2, shift):     # overflow, NaN/Inf, or subnormal squares
            two_pass_f64(x, n, 1, mean, m2)
            return
    corr = s1 * s1 * inv_n
    mean[0] = shift + s1 * inv_n
    m2[0] = s2 - corr if s2 > corr else 0.0


cdef inline void segment_stats(const floating* x, Py_ssize_t n,
                               double* count, double* mean, double* m2) noexcept nogil:
    """Merge the statistics of x[0:n] (any length) into (count, mean, m2)."""
    cdef Py_ssize_t i, k_i, len_b
    cdef double mean_b, m2_b
    for k_i in range((n + BLOCK - 1) // BLOCK):
        i = k_i * BLOCK
        len_b = n - i if n - i < BLOCK else BLOCK
        block_stats(x + i, len_b, &mean_b, &m2_b)
        chan_merge(count, mean, m2, <double>len_b, mean_b, m2_b)


cdef inline void split_mean(double mean, floating* hi, floating* lo) noexcept nogil:
    """mean = hi + lo to ~2x the input precision, so (x - hi) - lo keeps every digit of
    x - mean in float32 (x - hi is exact when x is near the mean: Sterbenz)."""
    hi[0] = <floating>mean
    lo[0] = <floating>(mean - <double>hi[0])


cdef inline double sum_squares(const floating* x, Py_ssize_t n) noexcept nogil:
    """Sum of x[0:n]**2 (RMSNorm): blocks summed in the input precision across lanes,
    merged in float64; a block whose float32 squares overflow is redone in float64."""
    cdef Py_ssize_t i, j, k_i, len_b
    cdef double total = 0, s1, s2, d
    for k_i in range((n + BLOCK - 1) // BLOCK):
        i = k_i * BLOCK
        len_b = n - i if n - i < BLOCK else BLOCK
        block_dev(&s1, &s2, x + i, len_b, 0)
        if floating is float:
            if cn_f32_sums_unsafe(s1, s2, 0.0):
                s2 = 0
                for j in range(len_b):
                    d = x[i + j]
                    s2 += d * d
        total += s2
    return total


# ---------------------------------------------------------------------------------------
# the whole float64 range. The block statistics above are exact unless squares over- or
# underflow: |x - mean| beyond ~1e154 or below ~1e-154. That shows in the result (a
# variance that is inf/NaN, or below CN_F64_VAR_MIN), so the fast path pays one compare
# per row or channel; such a row or channel is redone on x * 2**e, e chosen from its
# max |x| (exact: a power of two does not round), in the same blocks. Where the plain
# result was exact the redo gives the same bits (rounding is scale-invariant).
# ---------------------------------------------------------------------------------------

cdef struct ExactStats:         # of one row or channel
    double mean, var, rstd      # of x; var (and rstd) inf or 0 where not representable
    double scale                # 1: normalize x with mean, rstd; else x * scale with
    double mean_s, rstd_s       # these, the statistics of x * scale


cdef inline bint f64_stats_unsafe(double var) noexcept nogil:
    """Statistics of float64 data that may have over- or underflowed (NaN included)."""
    return not (var >= CN_F64_VAR_MIN and var <= DBL_MAX)


cdef inline double seq_abs_max(const double* x, Py_ssize_t nrows, Py_ssize_t row_len,
                               Py_ssize_t row_stride) noexcept nogil:
    """max |x| over rows x[r * row_stride + i] (i < row_len): inf or NaN when one is."""
    cdef Py_ssize_t r, i
    cdef double a, amax = 0
    for r in range(nrows):
        for i in range(row_len):
            a = fabs(x[r * row_stride + i])
            if not (a <= amax):         # a NaN sticks
                amax = a
                if not (a <= DBL_MAX):
                    return a
    return amax


cdef inline void scaled_stats(const double* x, Py_ssize_t nrows, Py_ssize_t row_len,
                              Py_ssize_t row_stride, double scale, bint center,
                              double* mean, double* var) noexcept nogil:
    """Mean and biased variance (center: else the mean of squares) of x * scale over the
    rows of seq_abs_max, in blocks of BLOCK values of the sequence (a row's own blocks
    when nrows is 1)."""
    cdef double tmp[BLOCK]
    cdef double count = 0, m = 0, m2 = 0, mean_b, m2_b, s1, s2
    cdef Py_ssize_t r, i, n = 0
    for r in range(nrows):
        for i in range(row_len):
            tmp[n] = x[r * row_stride + i] * scale
            n += 1
            if n == BLOCK or (r == nrows - 1 and i == row_len - 1):
                if center:
                    block_stats(tmp, n, &mean_b, &m2_b)
                    chan_merge(&count, &m, &m2, <double>n, mean_b, m2_b)
                else:
                    block_dev(&s1, &s2, tmp, n, 0)
                    m2 += s2
                    count += n
                n = 0
    mean[0] = m
    var[0] = m2 / count if count > 0 else 0.0


cdef inline void scaled_copy(floating* out, const floating* x, Py_ssize_t n,
                             double scale) noexcept nogil:
    """out[i] = x[i] * scale: a block of x to be normalized with ExactStats.scale."""
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = <floating>(x[i] * scale)


cdef inline ExactStats exact_stats(const double* x, Py_ssize_t nrows, Py_ssize_t row_len,
                                   Py_ssize_t row_stride, bint center, double eps,
                                   double mean, double var) noexcept nogil:
    """The statistics of a row or channel (rows as in seq_abs_max) whose plain mean, var
    failed f64_stats_unsafe: redone on x * 2**e unless x holds inf/NaN or only zeros
    (then the plain ones stand, as before)."""
    cdef ExactStats st
    cdef double amax = seq_abs_max(x, nrows, row_len, row_stride), eps_s, var_s
    cdef int e
    st.mean = mean
    st.var = var
    st.rstd = 1.0 / sqrt(var + eps)
    st.scale = 1
    st.mean_s = mean
    st.rstd_s = st.rstd
    if amax == 0 or not (amax <= DBL_MAX):
        return st
    frexp(amax, &e)                     # amax = f * 2**e, 0.5 <= f < 1
    e = -e
    e = 1000 if e > 1000 else (-1000 if e < -1000 else e)   # 2**e representable
    st.scale = ldexp(1.0, e)
    scaled_stats(x, nrows, row_len, row_stride, st.scale, center, &st.mean_s, &var_s)
    st.mean = ldexp(st.mean_s, -e)
    st.var = ldexp(var_s, -2 * e)
    eps_s = ldexp(eps, 2 * e)           # inf: eps dwarfs the variance, the plain rstd is right
    if not f64_stats_unsafe(st.var) or not (eps_s <= DBL_MAX) or var_s + eps_s == 0:
        st.rstd = 1.0 / sqrt(st.var + eps)
        st.scale = 1
        return st
    st.rstd_s = 1.0 / sqrt(var_s + eps_s)
    st.rstd = ldexp(st.rstd_s, e)
    # x - mean can overflow only for amax near DBL_MAX; rstd may not be representable
    if amax < ldexp(1.0, 1022) and st.rstd >= DBL_MIN and st.rstd <= DBL_MAX:
        st.scale = 1
    return st


cdef inline double sum_g_xhat(const floating* dy, const floating* x, const floating* w,
                              const floating* ym, Py_ssize_t n, floating hi, floating lo,
                              double rs) noexcept nogil:
    """sum(g * xhat) in float64, xhat = ((x - hi) - lo) * rs, g = dy (times w[i] when w;
    0 where not ym > 0 when ym): the slow path for a backward sum of g * (x - mean) that
    overflowed (|x - mean| near DBL_MAX), formed from O(1) terms instead."""
    cdef Py_ssize_t i
    cdef double s = 0, g
    cdef floating d
    for i in range(n):
        g = dy[i] if ym == NULL or ym[i] > 0 else 0
        if w != NULL:
            g *= w[i]
        d = (x[i] - hi) - lo
        s += g * (d * rs)
    return s


cdef inline bint finite(double v) noexcept nogil:
    return fabs(v) <= DBL_MAX


# =======================================================================================
# half storage (kind 1: float16, 2: bfloat16, as uint16 bits): a kernel of the float32
# specialization stages each row or segment it works on, widened into a per-thread buffer
# in cache (exact), and rounds each output row once to nearest even on the way out; the
# loops in between are the float32 ones, so the results are those of float32 arithmetic
# on the half values.
# =======================================================================================

cdef inline int compute_typenum(object x, int kind) except -1:
    """The type number a kernel computes in: x's own (float32/float64) or, for half storage
    (kind 1 float16, 2 bfloat16: x holds the uint16 bits), float32."""
    if kind == 0:
        return input_typenum(x, "input")
    if kind != 1 and kind != 2:
        raise ValueError(f"kind must be 0, 1 (float16) or 2 (bfloat16), got {kind}")
    return cnp.NPY_FLOAT


cdef inline const floating* stage_in(int kind, floating* stage, const void* bits,
                                     Py_ssize_t offset, Py_ssize_t n) noexcept nogil:
    """stage[0:n] <- the half values bits[offset:offset + n], widened; returns stage."""
    if kind == 1:
        from_f16(stage, <const uint16_t*>bits + offset, n)
    else:
        from_bf16(stage, <const uint16_t*>bits + offset, n)
    return stage


cdef inline void stage_out(int kind, void* bits, Py_ssize_t offset, const floating* stage,
                           Py_ssize_t n) noexcept nogil:
    """bits[offset:offset + n] <- stage[0:n] rounded to the half type."""
    if kind == 1:
        to_f16(<uint16_t*>bits + offset, stage, n)
    else:
        to_bf16(<uint16_t*>bits + offset, stage, n)
