# What every kernel module shares: the buffer guards, the thread split with the one
# serial/parallel fork and the one dtype dispatch, and the exact statistics (block
# statistics of short in-cache blocks and Chan's merge of (count, mean, M2) partials).

cimport numpy as cnp
from cython.parallel cimport prange

from libc.stdint cimport uint16_t

from .simd.loops cimport (block_dev, block_sum, cn_f32_sums_unsafe, floating, from_bf16, from_f16,
                          to_bf16, to_f16)

cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX

cdef enum:
    BLOCK = 512             # elements per exactly-summed block (2 KiB of float32: stays in L1)
    STREAM_MIN_RUN = 512    # non-temporal stores only pay on long runs (each peels to alignment)


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


cdef inline cnp.ndarray empty_1d(Py_ssize_t n, int typenum):
    cdef cnp.npy_intp dim = n
    return cnp.PyArray_EMPTY(1, &dim, typenum, 0)


cdef inline cnp.ndarray empty_like(cnp.ndarray x):
    return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(x), cnp.PyArray_DIMS(x), cnp.PyArray_TYPE(x), 0)


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
