# Half storage (kind 1: float16, 2: bfloat16 bits): the block statistics of common.pxd
# over half rows and runs, read by the half loops (simd/half.h) that widen in their own
# loads: the same blocks, lanes and order as the float32 statistics of the widened
# values, so the same bits. The rare float64 redo (cn_f32_sums_unsafe) widens its block.

from libc.stdint cimport uint16_t

from .common cimport BLOCK, chan_merge, stage_in, two_pass_f64
from .simd.loops cimport block_dev_half, block_sum_half, cn_f32_sums_unsafe


cdef inline void block_stats_half(int kind, const uint16_t* x, Py_ssize_t n, double* mean,
                                  double* m2) noexcept nogil:
    """common.block_stats of the n <= BLOCK half values at x."""
    cdef double inv_n = 1.0 / n
    cdef float shift = <float>(block_sum_half(kind, x, n) * inv_n)
    cdef double s1, s2, corr
    cdef float tmp[BLOCK]
    block_dev_half(kind, &s1, &s2, x, n, shift)
    if cn_f32_sums_unsafe(s1, s2, shift):     # overflow, NaN/Inf, or subnormal squares
        two_pass_f64(stage_in(kind, tmp, x, 0, n), n, 1, mean, m2)
        return
    corr = s1 * s1 * inv_n
    mean[0] = shift + s1 * inv_n
    m2[0] = s2 - corr if s2 > corr else 0.0


cdef inline void segment_stats_half(int kind, const uint16_t* x, Py_ssize_t n,
                                    double* count, double* mean, double* m2) noexcept nogil:
    """common.segment_stats of the n half values at x."""
    cdef Py_ssize_t i = 0, len_b
    cdef double mean_b, m2_b
    while i < n:
        len_b = min(n - i, <Py_ssize_t>BLOCK)
        block_stats_half(kind, x + i, len_b, &mean_b, &m2_b)
        chan_merge(count, mean, m2, <double>len_b, mean_b, m2_b)
        i += len_b


cdef inline double sum_squares_half(int kind, const uint16_t* x, Py_ssize_t n) noexcept nogil:
    """common.sum_squares of the n half values at x."""
    cdef Py_ssize_t i = 0, j, len_b
    cdef double total = 0, s1, s2
    cdef float tmp[BLOCK]
    while i < n:
        len_b = min(n - i, <Py_ssize_t>BLOCK)
        block_dev_half(kind, &s1, &s2, x + i, len_b, 0)
        if cn_f32_sums_unsafe(s1, s2, 0.0):     # float32 squares overflowed: in float64
            stage_in(kind, tmp, x, i, len_b)
            s2 = 0
            for j in range(len_b):
                s2 += <double>tmp[j] * tmp[j]
        total += s2
        i += len_b
    return total
