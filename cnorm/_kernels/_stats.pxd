# Shared numerics of every cnorm kernel: exact statistics of short in-cache blocks and
# Chan's merge of (count, mean, M2) partials. Never E[x^2] - E[x]^2.
#
# Why blocks: a block of <= BLOCK elements is read from memory once and then a second
# time from L1, so "mean first, then squared deviations" (the two-pass algorithm, exact
# to a few ulp) costs one pass over memory. Inside a block the sums run in the input
# precision across the independent lanes of _simd.h (short sums: <= 32 terms per lane);
# blocks merge in float64.

from libc.math cimport fabs, sqrt
from libc.float cimport FLT_MAX

from ._simd cimport vdev, vsum
from ._types cimport floating

cdef enum:
    BLOCK = 512     # elements per exactly-summed block (2 KiB of float32: stays in L1)

# float32 block sums of squares outside [TINY_SUM_SQUARES, FLT_MAX] are redone in float64:
# above, the squares overflowed (|x - mean| > ~1e19); below, they lost digits in the
# subnormal range (|x - mean| < ~1e-15) or vanished altogether (all-zero squares with a
# tiny shift: the block may hold tiny distinct values, not a constant). Blocks of one
# constant (|c| >= 1e-12) stay in float32.
cdef extern from "_simd.h":
    const double TINY_SUM_SQUARES "CN_TINY_SUM_SQUARES"
    const double TINY_SHIFT "CN_TINY_SHIFT"


cdef inline bint f32_sums_unsafe(double s1, double s2, double shift) noexcept nogil:
    """True when float32 block sums (s1 of deviations from shift, s2 of their squares)
    overflowed, are NaN, or are too small to keep every digit."""
    return not (s2 <= FLT_MAX) or (s2 < TINY_SUM_SQUARES
                                   and (s2 > 0 or s1 != 0 or fabs(shift) < TINY_SHIFT))


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


cdef inline void _block_stats_f64(const floating* x, Py_ssize_t n,
                                  double* mean, double* m2) noexcept nogil:
    """Two-pass block statistics in float64 (the slow path for float32 overflow)."""
    cdef Py_ssize_t i
    cdef double s = 0, d, s1 = 0, s2 = 0, shift
    for i in range(n):
        s += x[i]
    shift = s / n
    for i in range(n):
        d = <double>x[i] - shift
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
    cdef floating shift = <floating>(vsum(x, n) * inv_n)
    cdef double s1, s2, corr
    vdev(&s1, &s2, x, n, shift)
    if floating is float:
        if f32_sums_unsafe(s1, s2, shift):     # overflow, NaN/Inf, or subnormal squares
            _block_stats_f64(x, n, mean, m2)
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
        vdev(&s1, &s2, x + i, len_b, 0)
        if floating is float:
            if f32_sums_unsafe(s1, s2, 0.0):
                s2 = 0
                for j in range(len_b):
                    d = x[i + j]
                    s2 += d * d
        total += s2
    return total
