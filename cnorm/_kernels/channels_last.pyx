"""Group-norm kernels over channels-last buffers: x as C-contiguous (N, S, C).

GroupNorm / InstanceNorm of an NHWC (NDHWC) input: a (n, group) row is not contiguous
there but S runs of Cg channels at a stride of C, so the row kernels of row_norm.pyx do
not apply (BatchNorm does not need this file: channels-last is its (N*S, C) problem).

A work item is one sample n and a block of its groups; the items are cut into one
contiguous range per thread (several group blocks per sample when there are fewer
samples than threads, e.g. inference on one image). Within an item every pass is one
call of a loop of simd/channels_last.h that walks the sample s by s with the channels
innermost, i.e. along memory, the vector lanes across the contiguous channels (one
float64 accumulator per channel, the positions added in order: the same bits for every
SIMD build and vector width; tests/test_channels_last_simd.py). Statistics are the
two-pass algorithm in float64 (the sum first, then the corrected sum of squared
deviations); per-channel sums live in the thread's scratch of 4*C doubles. The weight and
bias gradients are written per (n, c) and summed over n afterwards, in n order: no races,
no atomics, the same bits for any thread count.

The gradient (g = dy * w, xhat = (x - mean) * rstd, D = Cg * S values per row):
    dx = rstd * ((g - mean(g)) - mean(g * xhat) * xhat)
       = alpha_c * dy + beta_c * (x - mean) + gamma_c
with alpha_c = rstd * w_c, beta_c = -rstd^3 * sum(g * (x - mean)) / D and
gamma_c = -rstd * sum(g) / D per (n, c).

The forward of float32 storage runs in float32 lanes too: pass 1 sums x, pass 2 sums
d = x - hi and d * d (hi = (float)mean of pass 1, the shift), per channel in float32 over
64 rows, each block's sums added in float64 (mean = hi + sum(d) / count, the variance from
the float64 merges); pass 3 (y channels-last) is y = (x - hi) * scale + (beta - lo * scale)
with float32 factors. Fallbacks to the float64 loops: both passes when a float32 sum of x
is not finite, pass 2 (shift hi) when its sums are not finite or a variance is below
2**-100, pass 3 when a coefficient does not fit (_finite, _narrow_stats, _narrow_affine).

The backward of float32 storage runs in float32 lanes (torch's arithmetic, half the
instructions of float64 ones): per-channel sums of 64 rows in float32, added in float64,
x - mean as x - hi (hi = (float)mean, lo = mean - hi folded into the sums and into
gamma), dx = (alpha * dy + beta * (x - hi)) + gamma' with float32 coefficients. Each
channel is still one chain of the same operations: the same bits for every build, vector
width and thread count. A sample whose float32 sums or coefficients would over- or
underflow (or hold a NaN) runs the float64 loops above instead (_narrow_sums,
_narrow_coefficients).

grad_output and the output may also be channels-first, (N, C, S) (InstanceNorm returns a
channels-first output for a channels-last input, as torch does).

Half storage (Job.kind 1: float16, 2: bfloat16, x / dy / the output as uint16 bits) runs
the float32 specialization through the half loops (vector conversions: F16C on avx2,
bfloat16 by 16-bit shifts): every load widens exactly, every output is rounded once to
nearest even from its float64 value (round to odd to float32, then to the half type), so
the bits are those of the float64 arithmetic below on the widened values. Weight and bias
are float32 then (the Python layer widens half ones).
"""

import numpy as np

cimport numpy as cnp
from libc.float cimport DBL_MAX, FLT_MAX, FLT_MIN
from libc.math cimport fabs, sqrt
from libc.stdint cimport uint16_t
from libc.stdlib cimport calloc, free

from .common cimport (check_array, check_dims, compute_typenum, data_or_null, empty_1d,
                      input_typenum, run_threads, split_start, streams)
from .openmp cimport n_threads_for

cnp.import_array()

# the fused type of the dtypes, as the other kernel modules use it
from .simd.loops cimport floating


# the loops of simd/channels_last.h; x, y, dy, dx at an element offset (half: uint16 bits)
from .simd.loops cimport (cl_affine, cl_affine_half, cl_devs, cl_devs_half, cl_grad,
                          cl_grad_half, cl_grad_sums, cl_grad_sums_half, cl_sums, cl_sums_half,
                          cn_stream_fence)

include "simd_control.pxi"

# the loops' flags (with the layout bit of first): float64 arithmetic for float32
# storage; y / dx of the float32 loops by non-temporal stores (a large output: it then
# goes to memory without being read in first)
cdef enum:
    CL_WIDE = 2
    CL_STREAM = 4


cdef struct Job:            # one call; x: C-contiguous (N, S, C) of the input dtype
    Py_ssize_t N, G, Cg, S, C
    Py_ssize_t blocks       # group blocks per sample (items = N * blocks)
    int kind                # 0: the dtype's own storage; 1 float16, 2 bfloat16 bits
    int stream              # CL_STREAM or 0: the output by non-temporal stores
    double eps
    Py_ssize_t out_s, out_c     # element strides of y / dx: (C, 1) last, (1, S) first
    Py_ssize_t dy_s, dy_c       # of grad_output
    void* out               # OUT y (forward) or dx (backward)
    const void* dy          # IN  grad_output
    const void* weight      # IN  (C,) or NULL: ones
    const void* bias        # IN  (C,) or NULL: zeros
    double* mean            # OUT forward / IN backward (N*G,)
    double* rstd            # OUT forward / IN backward (N*G,)
    double* var             # OUT forward (N*G,), biased
    double* scratch         # per thread 4*C doubles
    double* part            # OUT backward (2, N, C): per-sample dweight, dbias


cdef inline void _strides(Py_ssize_t* s, Py_ssize_t* c, bint last, Py_ssize_t S,
                          Py_ssize_t C) noexcept:
    if last:
        s[0] = C
        c[0] = 1
    else:
        s[0] = 1
        c[0] = S


# The passes over an item's channels [c0, c0 + n), all S positions, through the loops of
# the dtype (kind 0) or of the half storage; offsets in elements of the storage.

cdef inline void _sums(double* s, const floating* x, Py_ssize_t xo, Py_ssize_t ld,
                       Py_ssize_t S, Py_ssize_t n, int wide, int kind) noexcept nogil:
    if kind:
        cl_sums_half(kind, s, <const uint16_t*>x + xo, ld, S, n, wide)
    else:
        cl_sums(s, x + xo, ld, S, n, wide)


cdef inline void _devs(double* s1, double* s2, const floating* x, Py_ssize_t xo,
                       Py_ssize_t ld, Py_ssize_t S, const double* shift, Py_ssize_t n,
                       int wide, int kind) noexcept nogil:
    if kind:
        cl_devs_half(kind, s1, s2, <const uint16_t*>x + xo, ld, S, shift, n, wide)
    else:
        cl_devs(s1, s2, x + xo, ld, S, shift, n, wide)


cdef inline void _affine(floating* y, Py_ssize_t yo, const floating* x, Py_ssize_t xo,
                         Py_ssize_t ld, Py_ssize_t S, const double* mean,
                         const double* scale, const double* beta, Py_ssize_t n, int first,
                         int kind) noexcept nogil:
    if kind:
        cl_affine_half(kind, <uint16_t*>y + yo, <const uint16_t*>x + xo, ld, S, mean, scale,
                       beta, n, first)
    else:
        cl_affine(y + yo, x + xo, ld, S, mean, scale, beta, n, first)


cdef inline void _grad_sums(double* s_dy, double* s_dyd, const floating* dy, Py_ssize_t go,
                            const floating* x, Py_ssize_t xo, Py_ssize_t ld, Py_ssize_t S,
                            const double* mean, Py_ssize_t n, int first,
                            int kind) noexcept nogil:
    if kind:
        cl_grad_sums_half(kind, s_dy, s_dyd, <const uint16_t*>dy + go,
                          <const uint16_t*>x + xo, ld, S, mean, n, first)
    else:
        cl_grad_sums(s_dy, s_dyd, dy + go, x + xo, ld, S, mean, n, first)


cdef inline void _grad(floating* dx, const floating* dy, Py_ssize_t go, const floating* x,
                       Py_ssize_t xo, Py_ssize_t ld, Py_ssize_t S, const double* alpha,
                       const double* beta, const double* gamma, const double* mean,
                       Py_ssize_t n, int first, int kind) noexcept nogil:
    if kind:
        cl_grad_half(kind, <uint16_t*>dx + xo, <const uint16_t*>dy + go,
                     <const uint16_t*>x + xo, ld, S, alpha, beta, gamma, mean, n, first)
    else:
        cl_grad(dx + xo, dy + go, x + xo, ld, S, alpha, beta, gamma, mean, n, first)


cdef inline Py_ssize_t _item(const Job* j, Py_ssize_t item, Py_ssize_t* c0,
                             Py_ssize_t* c1) noexcept nogil:
    """The sample of a work item (returned) and its channels [c0, c1): whole groups."""
    cdef int k = <int>j.blocks, b = <int>(item % j.blocks)
    c0[0] = split_start(j.G, b, k) * j.Cg
    c1[0] = split_start(j.G, b + 1, k) * j.Cg
    return item // j.blocks


cdef void _forward(const floating* x, void* job, int t, int n_threads) noexcept nogil:
    """Thread t's items: statistics of the item's groups, then y."""
    cdef const Job* j = <const Job*>job
    cdef Py_ssize_t N = j.N, G = j.G, Cg = j.Cg, S = j.S, C = j.C, K = j.blocks
    cdef Py_ssize_t item, n, g, c0, c1, c, y
    cdef Py_ssize_t oc = j.out_c
    cdef int kind = j.kind, wide
    cdef double* acc = j.scratch + 4 * C * t     # per-channel sums
    cdef double* acc2 = acc + C                   # per-channel squared deviations
    cdef double* mu = acc + 2 * C                 # per-channel mean of its group
    cdef double* scale = acc + 3 * C              # per-channel rstd * weight
    cdef const floating* weight = <const floating*>j.weight
    cdef const floating* bias = <const floating*>j.bias
    cdef floating* out = <floating*>j.out
    cdef double count = <double>(Cg * S), m, sd, v, rs
    for item in range(split_start(N * K, t, n_threads), split_start(N * K, t + 1, n_threads)):
        n = _item(j, item, &c0, &c1)
        y = n * S * C       # offset (in elements) of the sample
        # float32 and half storage: float32 sums, unless they over- or underflow
        # (_narrow_stats)
        wide = 0 if floating is float else CL_WIDE
        for c in range(c0, c1):
            acc[c] = 0
            acc2[c] = 0
        # pass 1: sums, then the group means
        _sums(acc + c0, x, y + c0, C, S, c1 - c0, wide, kind)
        if not wide and not _finite(acc, c0, c1):  # an overflow (or inf, NaN in x)
            wide = CL_WIDE
            for c in range(c0, c1):
                acc[c] = 0
            _sums(acc + c0, x, y + c0, C, S, c1 - c0, wide, kind)
        for g in range(c0 // Cg, c1 // Cg):
            m = 0
            for c in range(g * Cg, (g + 1) * Cg):
                m += acc[c]
            m /= count
            if not wide:    # the float32 loop's shift: exactly a float
                m = <double><float>m
            for c in range(g * Cg, (g + 1) * Cg):
                mu[c] = m
                acc[c] = 0
        # pass 2: deviations from the mean (their sum corrects the rounding of the mean)
        _devs(acc + c0, acc2 + c0, x, y + c0, C, S, mu + c0, c1 - c0, wide, kind)
        if not wide and not _narrow_stats(acc, acc2, c0, c1, Cg, count):
            for c in range(c0, c1):
                acc[c] = 0
                acc2[c] = 0
            _devs(acc + c0, acc2 + c0, x, y + c0, C, S, mu + c0, c1 - c0, CL_WIDE, kind)
        for g in range(c0 // Cg, c1 // Cg):
            v = _group_var(acc, acc2, g, Cg, count, &sd)
            if not v > 0:
                v = 0 if v == v else v      # NaN stays NaN
            rs = 1.0 / sqrt(v + j.eps)
            j.mean[n * G + g] = mu[g * Cg] + sd / count
            j.var[n * G + g] = v
            j.rstd[n * G + g] = rs
            for c in range(g * Cg, (g + 1) * Cg):
                mu[c] = j.mean[n * G + g]
                scale[c] = rs * (weight[c] if weight != NULL else 1.0)
                acc[c] = bias[c] if bias != NULL else 0.0
            if not wide:    # a bound of |x - hi|, at the group's first channel (read)
                acc2[g * Cg] = sqrt(v * count) + fabs(_lo(mu[g * Cg]))
        # pass 3: y = (x - mean) * rstd * w + b
        if not wide:
            wide = _narrow_affine(acc, scale, mu, acc2, c0, c1, Cg)
        _affine(out, y + c0 * oc, x, y + c0, C, S, mu + c0, scale + c0, acc + c0, c1 - c0,
                (oc != 1) | wide | j.stream, kind)
    if j.stream:        # once per thread, after all its streamed stores
        cn_stream_fence()


cdef void _backward(const floating* x, void* job, int t, int n_threads) noexcept nogil:
    """Thread t's items: per-channel gradient sums, then dx (always channels-last)."""
    cdef const Job* j = <const Job*>job
    cdef const floating* weight = <const floating*>j.weight
    cdef Py_ssize_t dc = j.dy_c                      # grad_output's channel stride
    cdef Py_ssize_t N = j.N, G = j.G, Cg = j.Cg, S = j.S, C = j.C, K = j.blocks
    cdef Py_ssize_t item, n, g, c0, c1, c, dy
    cdef int kind = j.kind, layout = dc != 1, wide
    cdef const floating* dys = <const floating*>j.dy
    cdef floating* dx = <floating*>j.out
    cdef double* sdy = j.scratch + 4 * C * t      # sum dy, then gamma_c
    cdef double* sdx = sdy + C                    # sum dy * (x - mean), then beta_c
    cdef double* mu = sdy + 2 * C
    cdef double* alpha = sdy + 3 * C
    cdef double D = <double>(Cg * S), rs, w, sum_g, sum_gd, beta, gamma
    for item in range(split_start(N * K, t, n_threads), split_start(N * K, t + 1, n_threads)):
        n = _item(j, item, &c0, &c1)
        dy = n * S * C      # offset (in elements) of the sample
        # float32 storage: float32 loops, unless their sums or coefficients do not fit
        wide = 0 if floating is float and kind == 0 else CL_WIDE
        for g in range(c0 // Cg, c1 // Cg):
            if not j.rstd[n * G + g] <= NARROW_RSTD_MAX:    # NaN too
                wide = CL_WIDE
        for c in range(c0, c1):
            mu[c] = j.mean[n * G + c // Cg]
            sdy[c] = 0
            sdx[c] = 0
        # pass 1: per-channel sums of dy and dy * (x - mean)
        _grad_sums(sdy + c0, sdx + c0, dys, dy + c0 * dc, x, dy + c0, C, S, mu + c0, c1 - c0,
                   layout | wide, kind)
        if not wide:
            wide = _narrow_sums(sdy, sdx, mu, c0, c1)
            if wide:    # an over- or underflow, a NaN: the float64 sums
                _grad_sums(sdy + c0, sdx + c0, dys, dy + c0 * dc, x, dy + c0, C, S, mu + c0,
                           c1 - c0, layout | wide, kind)
        for g in range(c0 // Cg, c1 // Cg):
            rs = j.rstd[n * G + g]
            sum_g = 0
            sum_gd = 0
            for c in range(g * Cg, (g + 1) * Cg):
                w = weight[c] if weight != NULL else 1.0
                j.part[n * C + c] = sdx[c] * rs            # dweight
                j.part[(N + n) * C + c] = sdy[c]           # dbias
                sum_g += w * sdy[c]
                sum_gd += w * sdx[c]
            beta = -rs * rs * rs * sum_gd / D
            gamma = -rs * sum_g / D
            for c in range(g * Cg, (g + 1) * Cg):
                alpha[c] = rs * (weight[c] if weight != NULL else 1.0)
                sdx[c] = beta
                sdy[c] = gamma
        if not wide:
            wide = _narrow_coefficients(sdy, sdx, alpha, mu, c0, c1)
        # pass 2: dx = alpha * dy + beta * (x - mean) + gamma
        _grad(dx, dys, dy + c0 * dc, x, dy + c0, C, S, alpha + c0, sdx + c0, sdy + c0,
              mu + c0, c1 - c0, layout | wide | j.stream, kind)
    if j.stream:
        cn_stream_fence()


# The float32 loops of float32 storage (simd/channels_last.h) take x - mean as x - hi,
# hi = (float)mean, and every coefficient as a float: lo = mean - hi is added here, and a
# sample whose sums are not finite (a NaN, an overflow) or whose coefficients do not fit
# a float32 (no underflow either: eps = 0, extreme scales) runs the float64 loops, as does
# one with rstd > 2**40 (std < 1e-12: eps = 0), where the products dy * (x - mean) would
# be subnormal floats (dy itself that small loses digits as in the other float32 kernels).
cdef double NARROW_RSTD_MAX = 2.0 ** 40

# The forward's float32 statistics (float32 storage): a sample whose float32 sums of x
# are not finite (an overflow; inf or NaN in x) runs both passes wide; one whose sums of
# (x - hi)**2 are not finite (|x - hi| > ~1e18), or whose variance is below
# NARROW_VAR_MIN (the float32 squares of tiny deviations underflow, or all x are equal),
# runs pass 2 again wide (with the same shift hi). At and above NARROW_VAR_MIN the
# squares' underflow (2**-149 at most each) is below 2**-49 of the variance.
cdef double NARROW_VAR_MIN = 2.0 ** -100


cdef bint _finite(const double* s, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(c0, c1):
        if not fabs(s[c]) <= DBL_MAX:
            return False
    return True


cdef inline double _group_var(const double* s1, const double* s2, Py_ssize_t g,
                              Py_ssize_t Cg, double count, double* sd) noexcept nogil:
    """Group g's biased variance from its channels' sums of d and d^2 (pass 2), the sum
    of d in sd (it corrects the rounding of the mean)."""
    cdef Py_ssize_t c
    cdef double ss = 0
    sd[0] = 0
    for c in range(g * Cg, (g + 1) * Cg):
        sd[0] += s1[c]
        ss += s2[c]
    return (ss - sd[0] * sd[0] / count) / count


cdef bint _narrow_stats(const double* s1, const double* s2, Py_ssize_t c0, Py_ssize_t c1,
                        Py_ssize_t Cg, double count) noexcept nogil:
    """The float32 loop's sums of pass 2 are good: finite, every group's variance (as
    _forward computes it) at least NARROW_VAR_MIN."""
    cdef Py_ssize_t g
    cdef double sd
    if not (_finite(s1, c0, c1) and _finite(s2, c0, c1)):
        return False
    for g in range(c0 // Cg, c1 // Cg):
        if not _group_var(s1, s2, g, Cg, count, &sd) >= NARROW_VAR_MIN:
            return False
    return True


cdef inline double _lo(double mean) noexcept nogil:
    return mean - <double><float>mean


# pass 3 in float32 (y channels-last): y = (x - hi) * scale + (beta - lo * scale), the
# coefficients rounded to floats; the float64 loop where a scale is not a normal float (or
# 0) or the float32 products or sums could overflow (a bound of 2**100 on them).
cdef double NARROW_Y_MAX = 2.0 ** 100


cdef int _narrow_affine(double* beta, const double* scale, const double* mu,
                        const double* dev, Py_ssize_t c0, Py_ssize_t c1,
                        Py_ssize_t Cg) noexcept nogil:
    """beta[c] - lo * scale[c] (the float32 loop's x - hi); CL_WIDE (beta unchanged) when a
    coefficient does not fit, dev[g * Cg] * |scale| (a bound of |x - hi| * |scale|) or the
    new beta is above NARROW_Y_MAX, else 0."""
    cdef Py_ssize_t c
    cdef double b
    for c in range(c0, c1):
        b = beta[c] - _lo(mu[c]) * scale[c]
        if not (_fits(scale[c], True) and _fits(mu[c], False) and fabs(b) <= NARROW_Y_MAX
                and dev[c - c % Cg] * fabs(scale[c]) <= NARROW_Y_MAX):
            return CL_WIDE
    for c in range(c0, c1):
        beta[c] -= _lo(mu[c]) * scale[c]
    return 0


cdef inline bint _fits(double v, bint normal) noexcept nogil:
    """v is a finite float32, and (normal) a normal one unless v == 0."""
    cdef double f = <float>v
    if not fabs(f) <= FLT_MAX:
        return False
    return not normal or v == 0 or fabs(f) >= FLT_MIN


cdef int _narrow_sums(double* sdy, double* sdx, const double* mu, Py_ssize_t c0,
                      Py_ssize_t c1) noexcept nogil:
    """sdx[c]: the sums of dy * (x - hi) as those of dy * (x - mean); CL_WIDE when a sum
    is not finite (the sums zeroed for the float64 loop), else 0."""
    cdef Py_ssize_t c, k
    for c in range(c0, c1):
        if not (fabs(sdy[c]) <= DBL_MAX and fabs(sdx[c]) <= DBL_MAX):
            for k in range(c0, c1):
                sdy[k] = 0
                sdx[k] = 0
            return CL_WIDE
    for c in range(c0, c1):
        sdx[c] -= _lo(mu[c]) * sdy[c]
    return 0


cdef int _narrow_coefficients(double* gamma, const double* beta, const double* alpha,
                              const double* mu, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """gamma[c] - beta[c] * lo (the float32 loop's x - hi); CL_WIDE (gamma unchanged) when a
    coefficient does not fit a float32, else 0."""
    cdef Py_ssize_t c
    for c in range(c0, c1):
        if not (_fits(alpha[c], True) and _fits(beta[c], True) and _fits(mu[c], False)
                and _fits(gamma[c] - beta[c] * _lo(mu[c]), False)):
            return CL_WIDE
    for c in range(c0, c1):
        gamma[c] -= beta[c] * _lo(mu[c])
    return 0


# ---------------------------------------------------------------------------------------
# Python entry points: every buffer is checked (type, size, layout) before use
# ---------------------------------------------------------------------------------------

cdef int _job(Job* j, object x, Py_ssize_t N, Py_ssize_t G, Py_ssize_t Cg,
              Py_ssize_t S, int kind, bint gradient) except -1:
    """Sizes, the thread count, the item split and the scratch of a call (x checked)."""
    compute_typenum(x, kind)
    check_array(x, N * G * Cg * S, cnp.NPY_UINT16 if kind else cnp.PyArray_TYPE(x), False,
                "input")
    j.kind = kind
    j.N, j.G, j.Cg, j.S, j.C = N, G, Cg, S, G * Cg
    # the float32 loops stream large outputs (common.streams; gradient: dx, which reads x, dy)
    j.stream = (CL_STREAM if kind == 0 and cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT
                and streams(N * G * Cg * S * 4, gradient) else 0)
    cdef int n_threads = n_threads_for(N * G * Cg * S)
    # fewer samples than threads: cut each sample's groups into blocks too
    j.blocks = 1 if N >= n_threads else min(G, (n_threads + N - 1) // N)
    if n_threads > N * j.blocks:
        n_threads = <int>(N * j.blocks)
    j.scratch = <double*>calloc(4 * j.C * n_threads + 1, sizeof(double))
    if j.scratch == NULL:
        raise MemoryError()
    return n_threads


def group_norm_forward(cnp.ndarray x not None, tuple dims, weight, bias, double eps,
                       bint out_last=True, int kind=0):
    """GroupNorm of x, C-contiguous (N, S, C) with dims = (N, G, Cg, S), C = G * Cg,
    per-channel weight and bias. Returns (y, mean, rstd, var): y (N*S*C,) laid out as
    (N, S, C) when out_last, else (N, C, S); float64 statistics (N*G,) (var biased).
    InstanceNorm is G = C, Cg = 1. kind 1 (float16) / 2 (bfloat16): x and y are the
    uint16 bits, weight and bias float32."""
    cdef Py_ssize_t N = dims[0], G = dims[1], Cg = dims[2], S = dims[3]
    check_dims(N, G, Cg, S)
    cdef Job j
    cdef Py_ssize_t M = N * G
    cdef cnp.ndarray mean = empty_1d(M, cnp.NPY_DOUBLE), rstd = empty_1d(M, cnp.NPY_DOUBLE)
    cdef cnp.ndarray var = empty_1d(M, cnp.NPY_DOUBLE)
    if N * G * Cg * S == 0:     # an empty row has no statistics (torch gives nan)
        mean.fill(float("nan"))
        rstd.fill(float("nan"))
        var.fill(float("nan"))
        return empty_1d(0, input_typenum(x, "input")), mean, rstd, var
    cdef int n_threads = _job(&j, x, N, G, Cg, S, kind, False)
    cdef int typenum = compute_typenum(x, kind)
    try:
        check_array(weight, j.C, typenum, False, "weight")
        check_array(bias, j.C, typenum, False, "bias")
        y = empty_1d(N * S * j.C, cnp.NPY_UINT16 if kind else typenum)
        j.eps = eps
        _strides(&j.out_s, &j.out_c, out_last, S, j.C)
        if not out_last:    # the channels-first stores go through a tile, never streamed
            j.stream = 0
        j.out = cnp.PyArray_DATA(<cnp.ndarray>y)
        j.weight = data_or_null(weight)
        j.bias = data_or_null(bias)
        j.mean = <double*>cnp.PyArray_DATA(mean)
        j.rstd = <double*>cnp.PyArray_DATA(rstd)
        j.var = <double*>cnp.PyArray_DATA(var)
        with nogil:
            run_threads(typenum, cnp.PyArray_DATA(x), &j, n_threads,
                        _forward[float], _forward[double])
    finally:
        free(j.scratch)
    return y, mean, rstd, var


def group_norm_backward(cnp.ndarray dy not None, cnp.ndarray x not None, tuple dims,
                        cnp.ndarray mean not None, cnp.ndarray rstd not None, weight,
                        bint dy_last=True, int kind=0):
    """GroupNorm backward of x (N, S, C), dims = (N, G, Cg, S); dy laid out as (N, S, C)
    when dy_last, else (N, C, S). Returns (dx (N*S*C,) laid out as (N, S, C), dweight
    (C,), dbias (C,)), the last two in float64, summed over the samples in order.
    kind: as group_norm_forward (dy and dx the uint16 bits too)."""
    cdef Py_ssize_t N = dims[0], G = dims[1], Cg = dims[2], S = dims[3]
    check_dims(N, G, Cg, S)
    cdef Job j
    cdef Py_ssize_t C = G * Cg
    if N * G * Cg * S == 0:     # empty rows: zero parameter gradients
        return empty_1d(0, input_typenum(x, "input")), np.zeros(C), np.zeros(C)
    cdef int n_threads = _job(&j, x, N, G, Cg, S, kind, True)
    cdef int typenum = compute_typenum(x, kind)
    try:
        check_array(dy, N * C * S, cnp.NPY_UINT16 if kind else typenum, False, "grad_output")
        check_array(mean, N * G, cnp.NPY_DOUBLE, False, "mean")
        check_array(rstd, N * G, cnp.NPY_DOUBLE, False, "rstd")
        check_array(weight, C, typenum, False, "weight")
        dx = empty_1d(N * S * C, cnp.NPY_UINT16 if kind else typenum)
        part = np.empty((2, N, C))
        _strides(&j.dy_s, &j.dy_c, dy_last, S, C)
        j.out = cnp.PyArray_DATA(<cnp.ndarray>dx)
        j.dy = cnp.PyArray_DATA(dy)
        j.weight = data_or_null(weight)
        j.mean = <double*>cnp.PyArray_DATA(mean)
        j.rstd = <double*>cnp.PyArray_DATA(rstd)
        j.part = <double*>cnp.PyArray_DATA(<cnp.ndarray>part)
        with nogil:
            run_threads(typenum, cnp.PyArray_DATA(x), &j, n_threads,
                        _backward[float], _backward[double])
    finally:
        free(j.scratch)
    dw = empty_1d(C, cnp.NPY_DOUBLE)
    db = empty_1d(C, cnp.NPY_DOUBLE)
    with nogil:
        _sum_samples(j.part, <double*>cnp.PyArray_DATA(<cnp.ndarray>dw), N, C)
        _sum_samples(j.part + N * C, <double*>cnp.PyArray_DATA(<cnp.ndarray>db), N, C)
    return dx, dw, db


cdef void _sum_samples(const double* part, double* out, Py_ssize_t N,
                       Py_ssize_t C) noexcept nogil:
    """out[c] = sum over n of part[n * C + c], in n order (deterministic)."""
    cdef Py_ssize_t n, c
    for c in range(C):
        out[c] = 0
    for n in range(N):
        for c in range(C):
            out[c] += part[n * C + c]
