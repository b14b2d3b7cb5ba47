"""Batch-norm kernels: per-channel statistics over (N, C, S) buffers.

Layout: x is C-contiguous (N, C, S), S = product of the spatial dims (S = 1 for (N, C)).
Two walks cover every shape with both cores busy:

* S > 1 ("rows"): the N*C*S elements are cut into n_threads equal ranges; a thread walks
  its range row segment by row segment (a row = the S elements of one (n, c)) and keeps
  per-channel partials. Balanced whatever C is (C = 3 splits as well as C = 512).
* S = 1 ("cols", (N, C) activations): the N rows are cut into n_threads ranges; a thread
  works on tiles of ROWS_PER_TILE x COLS_PER_TILE so every SIMD lane is a channel.

The reductions (statistics, gradient sums) are cut by the sizes alone, never by the
thread count: by channel when there are many (each thread takes whole channels), else in
fixed chunks whose partials are merged per channel in chunk order (common.chunk_size;
the reduction passes are in batch_norm_reduce.pxi).
So results never change from run to run, nor with the thread count. A float64 channel
whose squares over- or underflowed is redone scaled by a power of two
(common.exact_stats).

An entry point (the def functions at the bottom) checks every buffer (common.pxd),
allocates the outputs and scratch, describes the call in a Job and runs one typed
sequence of passes (_train_forward, _eval_forward, _elemt, _backward); a pass runs its
work function on every thread (common.parallel).

The input gradient, with xhat = (x - mean) * invstd and y = xhat * w + b: the batch
statistics depend on x (d mean/dx = 1/count, d invstd/dx = -invstd^3 (x - mean)/count), so

    dx = w * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))      (training)

and with the running statistics they are constants: dx = w * invstd * dy (eval).
"""

cimport numpy as cnp
from libc.math cimport sqrt
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

from .common cimport (BLOCK, MAX_CHUNKS, MAX_WIDE_CHUNKS, ExactStats, call_typed, chan_merge,
                      check_array, check_dims, chunk_size, compute_typenum, data_or_null,
                      empty_1d, empty_like, exact_stats, f64_stats_unsafe, finite, floating,
                      parallel, scaled_copy, segment_stats, split_mean, split_start, stage_in,
                      stage_out, sum_g_xhat, sum_partials, two_pass_f64)
from .openmp cimport n_threads_for
from .simd.loops cimport (affine, affine_cols, affine_cols4, bn_grad, bn_grad_cols,
                          bn_grad_cols4, bn_grad_sums, bn_grad_sums_cols, cn_f32_sums_unsafe,
                          cn_stream_fence, cols_any_unsafe, cols_dev, cols_merge, cols_sum)

cnp.import_array()

include "batch_norm_cols4.pxi"
include "simd_control.pxi"
include "batch_norm_half.pxi"
include "batch_norm_reduce.pxi"


# ---------------------------------------------------------------------------------------
# normalize pass: out = ((x - hi) - lo) * scale + beta per channel (then the ReLU)
# ---------------------------------------------------------------------------------------

cdef void _normalize_work(const floating* x, void* job, int t, int n_threads) noexcept nogil:
    """Thread t's share of j.out from x and the coefficients j.norm."""
    cdef const Job* j = <const Job*>job
    cdef floating* y = <floating*>j.out
    cdef const floating* hi = <const floating*>j.norm.hi
    cdef const floating* lo = <const floating*>j.norm.lo
    cdef const floating* scale = <const floating*>j.norm.scale
    cdef const floating* beta = <const floating*>j.norm.beta
    cdef bint stream = j.stream, relu = j.relu
    cdef Py_ssize_t C = j.C, S = j.S, g = j.row_group, n, n1, r
    cdef Segment seg
    thread_share(j, t, n_threads, &n, &n1)
    if floating is double:
        if j.scaled:
            _normalize_scaled(y, x, j, n, n1)
            return
    if S == 1:          # (N, C): per-element coefficients, g rows per call (tiled), short
        #               rows four (groups) at a time
        if not stream and _four_rows(g * C, sizeof(floating), cols4_max_c):
            while n + 4 * g <= n1:
                affine_cols4(y + n * C, x + n * C, g * C, g * C, hi, lo, scale, beta, relu)
                n += 4 * g
        while n < n1:
            r = min(g, n1 - n)
            affine_cols(y + n * C, x + n * C, r * C, hi, lo, scale, beta, stream, relu)
            n += r
    else:               # elements n..n1, one channel per row segment
        seg = first_segment(n, n1, C, S)
        while seg.start < n1:
            affine(y + seg.start, x + seg.start, seg.stop - seg.start, hi[seg.c], lo[seg.c],
                   scale[seg.c], beta[seg.c], stream, relu)
            next_segment(&seg, n1, C, S)
    if stream:          # once per thread, after all its streamed stores
        cn_stream_fence()


cdef inline double _x_scale(const Job* j, Py_ssize_t c) noexcept nogil:
    """What channel c's x is multiplied by before it is normalized (j.scaled)."""
    cdef double s = j.exact[c].scale
    return s if s != 0 else 1.0


cdef void _normalize_scaled(double* y, const double* x, const Job* j, Py_ssize_t n,
                            Py_ssize_t n1) noexcept nogil:
    """_normalize_work's share [n, n1) when some channel is normalized as x * scale
    (j.exact; rare): x scaled BLOCK values at a time, no streaming."""
    cdef const double* hi = <const double*>j.norm.hi
    cdef const double* lo = <const double*>j.norm.lo
    cdef const double* scale = <const double*>j.norm.scale
    cdef const double* beta = <const double*>j.norm.beta
    cdef Py_ssize_t C = j.C, S = j.S, b, len_b, k_b, i, c, r
    cdef double tmp[BLOCK]
    cdef double f
    cdef Segment seg
    if S == 1:          # rows n..n1 of (N, C), BLOCK channels at a time
        for r in range(n, n1):
            for k_b in range((C + BLOCK - 1) // BLOCK):
                b = k_b * BLOCK
                len_b = min(C - b, BLOCK)
                for i in range(len_b):
                    tmp[i] = x[r * C + b + i] * _x_scale(j, b + i)
                affine_cols(y + r * C + b, tmp, len_b, hi + b, lo + b, scale + b, beta + b,
                            False, j.relu)
        return
    seg = first_segment(n, n1, C, S)
    while seg.start < n1:
        c = seg.c
        f = _x_scale(j, c)
        for k_b in range((seg.stop - seg.start + BLOCK - 1) // BLOCK):
            b = seg.start + k_b * BLOCK
            len_b = min(seg.stop - b, BLOCK)
            scaled_copy(tmp, x + b, len_b, f)
            affine(y + b, tmp, len_b, hi[c], lo[c], scale[c], beta[c], False, j.relu)
        next_segment(&seg, n1, C, S)


cdef void _normalize(const floating* x, Job* j) noexcept nogil:
    """j.out <- x normalized with j.mean, j.invstd and the affine parameters."""
    cdef floating* hi = <floating*>j.norm.hi
    cdef floating* lo = <floating*>j.norm.lo
    cdef floating* scale = <floating*>j.norm.scale
    cdef floating* beta = <floating*>j.norm.beta
    cdef const floating* weight = <const floating*>j.weight
    cdef const floating* bias = <const floating*>j.bias
    cdef const double* mean = j.mean
    cdef const double* invstd = j.invstd
    cdef Py_ssize_t c
    cdef const ExactStats* st
    for c in range(j.C):
        split_mean(mean[c], &hi[c], &lo[c])
        scale[c] = <floating>(invstd[c] * (weight[c] if weight != NULL else 1.0))
        beta[c] = bias[c] if bias != NULL else 0
        if j.scaled and j.exact[c].scale != 0 and j.exact[c].scale != 1:
            st = &j.exact[c]            # the statistics of x * scale
            split_mean(st.mean_s, &hi[c], &lo[c])
            scale[c] = <floating>(st.rstd_s * (weight[c] if weight != NULL else 1.0))
    j.stream = use_stream(j, 2 if j.kind else sizeof(floating), False)   # half: 2-byte bits
    _group_rows(j, False)
    parallel(_normalize_half[floating] if j.kind else _normalize_work[floating], x, j,
             j.threads_x)


# ---------------------------------------------------------------------------------------
# backward: the sums sum(dy), sum(dy * xhat) per channel (batch_norm_reduce.pxi), then
# the input gradient
# ---------------------------------------------------------------------------------------

cdef void _input_grad_work(const floating* x, void* job, int t, int n_threads) noexcept nogil:
    """Thread t's share of dx = k1 * ((g - mean_dy) - mean_dy_xhat * xhat) (j.grad)."""
    cdef const Job* j = <const Job*>job
    cdef floating* dx = <floating*>j.out
    cdef const floating* dy = <const floating*>j.dy
    cdef const floating* ym = <const floating*>j.ym
    cdef const floating* hi = <const floating*>j.grad.hi
    cdef const floating* lo = <const floating*>j.grad.lo
    cdef const floating* invstd = <const floating*>j.grad.invstd
    cdef const floating* k1 = <const floating*>j.grad.k1
    cdef const floating* mean_dy = <const floating*>j.grad.mean_dy
    cdef const floating* mean_dy_xhat = <const floating*>j.grad.mean_dy_xhat
    cdef bint stream = j.stream
    cdef Py_ssize_t C = j.C, S = j.S, g = j.row_group, n, n1, o, c, r
    cdef Segment seg
    thread_share(j, t, n_threads, &n, &n1)
    if S == 1:          # (N, C): as _normalize_work
        if not stream and _four_rows(g * C, sizeof(floating), grad_cols4_max_c):
            while n + 4 * g <= n1:
                bn_grad_cols4(dx + n * C, dy + n * C, x + n * C, g * C, g * C, hi, lo, invstd,
                              k1, mean_dy, mean_dy_xhat, offset(ym, n * C))
                n += 4 * g
        while n < n1:
            r = min(g, n1 - n)
            bn_grad_cols(dx + n * C, dy + n * C, x + n * C, r * C, hi, lo, invstd, k1, mean_dy,
                         mean_dy_xhat, stream, offset(ym, n * C))
            n += r
    else:               # elements n..n1, one channel per row segment
        seg = first_segment(n, n1, C, S)
        while seg.start < n1:
            o = seg.start
            c = seg.c
            bn_grad(dx + o, dy + o, x + o, seg.stop - o, hi[c], lo[c], invstd[c], k1[c],
                    mean_dy[c], mean_dy_xhat[c], stream, offset(ym, o))
            next_segment(&seg, n1, C, S)
    if stream:          # once per thread, after all its streamed stores
        cn_stream_fence()


cdef void _backward(const floating* x, void* job) noexcept nogil:
    """This input's sums (when j.sum_dy), then the input gradient (when j.out)."""
    cdef Job* j = <Job*>job
    cdef floating* hi = <floating*>j.grad.hi
    cdef floating* lo = <floating*>j.grad.lo
    cdef floating* invstd = <floating*>j.grad.invstd
    cdef floating* k1 = <floating*>j.grad.k1
    cdef floating* mean_dy = <floating*>j.grad.mean_dy
    cdef floating* mean_dy_xhat = <floating*>j.grad.mean_dy_xhat
    cdef floating* scale = <floating*>j.norm.scale
    cdef floating* beta = <floating*>j.norm.beta
    cdef const floating* weight = <const floating*>j.weight
    cdef const double* mean = j.mean
    cdef const double* istd = j.invstd         # float64
    cdef double* sum_dy_xhat = j.sum_dy_xhat
    cdef const double* in_dy
    cdef const double* in_dy_xhat
    cdef Py_ssize_t C = j.C, c
    cdef double w, count = j.count
    for c in range(C):
        split_mean(mean[c], &hi[c], &lo[c])
    if j.sum_dy != NULL:
        parallel(_grad_sums_work[floating], x, j, j.threads_dy_x)
        sum_partials(cnp.NPY_DOUBLE, j.sum_dy, sum_dy_xhat, j.part, C, j.n_parts, 2 * C)
        for c in range(C):
            sum_dy_xhat[c] *= istd[c]       # sum(dy * (x - mean)) * invstd
            if not finite(sum_dy_xhat[c]):  # |x - mean| near DBL_MAX: from O(1) terms
                sum_dy_xhat[c] = _channel_sum_g_xhat(x, j, c)
    if j.in_sum_dy == NULL:
        j.in_sum_dy = j.sum_dy
        j.in_sum_dy_xhat = j.sum_dy_xhat
    if j.out == NULL:
        return
    # half: 2-byte bits; the eval dx without a ReLU mask reads dy alone, as a forward
    j.stream = use_stream(j, 2 if j.kind else sizeof(floating), j.training or j.ym != NULL)
    if not j.training and j.ym == NULL:
        # running statistics: dx = dy * w * invstd, a per-channel scaling of dy (x unread,
        # so that a NaN in x does not leak into dx): the normalize pass on dy
        for c in range(C):
            hi[c] = 0
            lo[c] = 0
            scale[c] = <floating>((weight[c] if weight != NULL else 1.0) * istd[c])
            beta[c] = 0
        j.relu = False
        _group_rows(j, False)
        parallel(_normalize_half[floating] if j.kind else _normalize_work[floating],
                 <const floating*>j.dy, j, j.threads_x)
        return
    in_dy = j.in_sum_dy
    in_dy_xhat = j.in_sum_dy_xhat
    for c in range(C):
        w = weight[c] if weight != NULL else 1.0
        k1[c] = <floating>(w * istd[c])
        invstd[c] = <floating>istd[c]
        if j.training:
            mean_dy[c] = <floating>(in_dy[c] / count)
            mean_dy_xhat[c] = <floating>(in_dy_xhat[c] / count)
        else:
            mean_dy[c] = 0
            mean_dy_xhat[c] = 0
    _group_rows(j, True)
    parallel(_input_grad_half[floating] if j.kind else _input_grad_work[floating], x, j,
             j.threads_dy_x)


# ---------------------------------------------------------------------------------------
# the typed sequences of the forward entry points
# ---------------------------------------------------------------------------------------

cdef void _train_forward(const floating* x, void* job) noexcept nogil:
    """Batch statistics, the running-statistics update (when given), normalize."""
    cdef Job* j = <Job*>job
    cdef floating* running_mean = <floating*>j.running_mean
    cdef floating* running_var = <floating*>j.running_var
    cdef double* mean = j.mean
    cdef double* invstd = j.invstd         # holds the variance until here
    cdef double M = <double>j.N * j.S, var, f = j.factor, eps = j.eps
    cdef Py_ssize_t c
    _channel_stats(x, j)
    for c in range(j.C):
        var = j.var[c]
        if running_mean != NULL and not j.stats_kind:
            running_mean[c] = <floating>((1.0 - f) * running_mean[c] + f * mean[c])
        if running_var != NULL and not j.stats_kind:    # the unbiased variance, as torch
            running_var[c] = <floating>((1.0 - f) * running_var[c] + f * var * (M / (M - 1.0)))
        invstd[c] = 1.0 / sqrt(var + eps)
        if j.exact != NULL and j.exact[c].scale != 0:
            invstd[c] = j.exact[c].rstd         # redone: var may not be representable
    if j.stats_kind and running_mean != NULL:
        _update_half_running(j)
    _normalize(x, j)


cdef void _update_half_running(const Job* j) noexcept nogil:
    """Half running statistics (j.stats_kind bits) blended in float64 and rounded once, as
    _ops._blend_running did it: the variance max(1 / invstd^2 - eps, 0), unbiased. Each
    buffer widened and rounded in one call (j.stats_scratch: (2, C) float64)."""
    cdef double* running_mean = j.stats_scratch
    cdef double* running_var = j.stats_scratch + j.C
    cdef double M = <double>j.N * j.S, f = j.factor, var
    cdef Py_ssize_t c
    stage_in(j.stats_kind, running_mean, j.running_mean, 0, j.C)    # exact
    stage_in(j.stats_kind, running_var, j.running_var, 0, j.C)
    for c in range(j.C):
        var = 1.0 / (j.invstd[c] * j.invstd[c]) - j.eps
        var = var if var > 0 or var != var else 0.0    # np.maximum(var, 0.0)
        var = var * (M / (M - 1.0))
        running_mean[c] = running_mean[c] * (1.0 - f) + j.mean[c] * f
        running_var[c] = running_var[c] * (1.0 - f) + var * f
    stage_out(j.stats_kind, j.running_mean, 0, running_mean, j.C)
    stage_out(j.stats_kind, j.running_var, 0, running_var, j.C)


cdef void _eval_forward(const floating* x, void* job) noexcept nogil:
    """Normalize with the running statistics (j.mean, j.invstd get them in float64)."""
    cdef Job* j = <Job*>job
    cdef const floating* running_mean = <const floating*>j.running_mean
    cdef const floating* running_var = <const floating*>j.running_var
    cdef double* mean = j.mean
    cdef double* invstd = j.invstd
    cdef double eps = j.eps
    cdef Py_ssize_t c
    for c in range(j.C):
        mean[c] = running_mean[c]
        invstd[c] = 1.0 / sqrt(<double>running_var[c] + eps)
    if j.N * j.C * j.S > 0:
        _normalize(x, j)


cdef void _elemt(const floating* x, void* job) noexcept nogil:
    _normalize(x, <Job*>job)


cdef void _stats(const floating* x, void* job) noexcept nogil:
    _channel_stats(x, <Job*>job)


# ---------------------------------------------------------------------------------------
# Python entry points: every buffer is checked (type, size, layout) before use
# ---------------------------------------------------------------------------------------

cdef inline int _check_input(object x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, int kind=0) except -1:
    """x: float32/float64 (or half bits), C-contiguous, N*C*S elements; returns compute_typenum."""
    cdef int typenum = compute_typenum(x, kind)
    check_dims(N, C, S, 1)
    check_array(x, N * C * S, cnp.NPY_UINT16 if kind else typenum, False, "input")
    return typenum


cdef int _start(Job* j, cnp.ndarray x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                int n_partials, weight, bias, cnp.ndarray mean, cnp.ndarray invstd,
                cnp.ndarray out, int kind=0) except -1:
    """A job for x of these sizes (optional arrays None): its thread counts and scratch
    (n_partials float64 per channel and thread; 0: none). _finish(j) frees the scratch."""
    cdef Py_ssize_t E = N * C * S, itemsize = sizeof(float) if kind else cnp.PyArray_ITEMSIZE(x)
    cdef int n_threads
    cdef Py_ssize_t pitch
    cdef char* coef
    memset(j, 0, sizeof(Job))
    j.typenum = cnp.NPY_FLOAT if kind else cnp.PyArray_TYPE(x)
    j.kind = kind
    j.x = cnp.PyArray_DATA(x)
    j.N = N
    j.C = C
    j.S = S
    j.weight = data_or_null(weight)
    j.bias = data_or_null(bias)
    j.mean = <double*>data_or_null(mean)
    j.invstd = <double*>data_or_null(invstd)
    j.out = data_or_null(out)
    j.threads_x = n_threads_for(E)
    j.threads_dy_x = n_threads_for(2 * E)
    n_threads = max(j.threads_x, j.threads_dy_x)
    _chunks(j)
    # bytes between coefficient rows: room for them tiled (_group_rows; the streamed
    # group is the larger one)
    pitch = scratch_pitch(C * (_row_group(C, True) if S == 1 else 1), itemsize) * itemsize
    j.coef = coef = <char*>aligned_block(8 * pitch)
    j.norm.hi = j.grad.hi = coef
    j.norm.lo = j.grad.lo = coef + pitch
    j.norm.scale = coef + 2 * pitch
    j.norm.beta = coef + 3 * pitch
    j.grad.invstd = coef + 4 * pitch
    j.grad.k1 = coef + 5 * pitch
    j.grad.mean_dy = coef + 6 * pitch
    j.grad.mean_dy_xhat = coef + 7 * pitch
    if n_partials > 0:
        j.part = <double*>calloc(n_partials * C * j.n_parts + 1, sizeof(double))
        if S == 1:
            j.tile = aligned_block(n_partials * n_threads * itemsize
                                   * scratch_pitch(COLS_PER_TILE, itemsize))
    if j.coef == NULL or (n_partials > 0 and (j.part == NULL or (S == 1 and j.tile == NULL))
                          or _start_stage(j, n_threads) != 0):
        _finish(j)
        raise MemoryError()
    return 0


cdef void _finish(Job* j) noexcept:
    free(j.coef)
    free(j.part)
    free(j.tile)
    free(j.exact)
    free(j.stage)


cdef inline cnp.ndarray _f64(Py_ssize_t n):
    return empty_1d(n, cnp.NPY_DOUBLE)


cdef int _check_params(int typenum, Py_ssize_t C, weight, bias, running_mean, running_var,
                       bint update, int stats_kind=0) except -1:
    """The per-channel parameters of a forward (running statistics written when update;
    half bits when stats_kind)."""
    cdef int stats_typenum = cnp.NPY_UINT16 if stats_kind else typenum
    check_array(weight, C, typenum, False, "weight")
    check_array(bias, C, typenum, False, "bias")
    check_array(running_mean, C, stats_typenum, update, "running_mean")
    check_array(running_var, C, stats_typenum, update, "running_var")
    return 0


cdef int _start_forward(Job* j, cnp.ndarray x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                        int n_partials, weight, bias, running_mean, running_var, double eps,
                        bint relu, cnp.ndarray mean, cnp.ndarray invstd,
                        cnp.ndarray y, int kind) except -1:
    _start(j, x, N, C, S, n_partials, weight, bias, mean, invstd, y, kind)
    j.running_mean = data_or_null(running_mean)
    j.running_var = data_or_null(running_var)
    j.eps = eps
    j.relu = relu
    return 0


def batch_norm_stats(cnp.ndarray x not None, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, int kind=0):
    """Per-channel (mean, biased variance) of x viewed as (N, C, S), float64 arrays (C,).
    Every entry point: kind, see batch_norm_half.pxi."""
    _check_input(x, N, C, S, kind)
    cdef cnp.ndarray mean = _f64(C), var = _f64(C)
    cdef Job j
    _start(&j, x, N, C, S, 3, None, None, mean, None, None, kind)
    j.var = <double*>cnp.PyArray_DATA(var)
    with nogil:
        call_typed(j.typenum, j.x, &j, _stats[float], _stats[double])
    _finish(&j)
    return mean, var


def batch_norm_elemt(cnp.ndarray x not None, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                     cnp.ndarray mean not None, cnp.ndarray invstd not None, weight, bias,
                     bint relu=False, int kind=0):
    """y = (x - mean) * invstd * weight + bias per channel (then max(0, y) with relu);
    returns a new array like x."""
    cdef int typenum = _check_input(x, N, C, S, kind)
    check_array(mean, C, cnp.NPY_DOUBLE, False, "mean")
    check_array(invstd, C, cnp.NPY_DOUBLE, False, "invstd")
    _check_params(typenum, C, weight, bias, None, None, False)
    cdef cnp.ndarray y = empty_like(x)
    cdef Job j
    _start_forward(&j, x, N, C, S, 0, weight, bias, None, None, 0, relu, mean, invstd, y, kind)
    with nogil:
        call_typed(j.typenum, j.x, &j, _elemt[float], _elemt[double])
    _finish(&j)
    return y


def batch_norm_forward_train(cnp.ndarray x not None, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                             weight, bias, running_mean, running_var, double factor,
                             double eps, bint relu=False, int kind=0, int stats_kind=0):
    """Training forward in one call: batch statistics, running-statistics update in place
    (when given; needs N*S > 1), normalization (then max(0, y) with relu: a fused
    BN + ReLU). Returns (y, mean, invstd). stats_kind 1 / 2: the running statistics are
    float16 / bfloat16 bits (uint16), blended in float64 and rounded once."""
    if stats_kind != 0 and stats_kind != 1 and stats_kind != 2:
        raise ValueError(f"stats_kind must be 0, 1 (float16) or 2 (bfloat16), got {stats_kind}")
    _check_params(_check_input(x, N, C, S, kind), C, weight, bias, running_mean, running_var, True,
                  stats_kind)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be given or both be None")
    if N * S < 2 and running_var is not None:
        raise ValueError("the unbiased variance needs more than 1 value per channel")
    cdef cnp.ndarray y = empty_like(x), mean = _f64(C), invstd = _f64(C)
    cdef cnp.ndarray scratch = _f64(2 * C) if stats_kind and running_mean is not None else None
    cdef Job j
    _start_forward(&j, x, N, C, S, 3, weight, bias, running_mean, running_var, eps, relu,
                   mean, invstd, y, kind)
    j.factor = factor
    j.stats_kind = stats_kind
    j.stats_scratch = <double*>data_or_null(scratch)
    j.var = j.invstd            # the variance, then invstd
    with nogil:
        call_typed(j.typenum, j.x, &j, _train_forward[float], _train_forward[double])
    _finish(&j)
    return y, mean, invstd


def batch_norm_forward_eval(cnp.ndarray x not None, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                            weight, bias, running_mean, running_var, double eps,
                            bint relu=False, int kind=0):
    """Eval forward with the running statistics (then max(0, y) with relu). Returns
    (y, mean, invstd), the float64 statistics used (invstd = 1/sqrt(running_var + eps))."""
    _check_params(_check_input(x, N, C, S, kind), C, weight, bias, running_mean, running_var, False)
    if running_mean is None or running_var is None:
        raise ValueError("running_mean and running_var must be given")
    cdef cnp.ndarray y = empty_like(x), mean = _f64(C), invstd = _f64(C)
    cdef Job j
    _start_forward(&j, x, N, C, S, 0, weight, bias, running_mean, running_var, eps, relu,
                   mean, invstd, y, kind)
    with nogil:
        call_typed(j.typenum, j.x, &j, _eval_forward[float], _eval_forward[double])
    _finish(&j)
    return y, mean, invstd


cdef int _check_backward(cnp.ndarray dy, cnp.ndarray x, Py_ssize_t N, Py_ssize_t C,
                         Py_ssize_t S, cnp.ndarray mean, cnp.ndarray invstd, weight,
                         y, int kind) except -1:
    """The buffers every backward reads; returns the type number of the computation."""
    cdef int typenum = _check_input(x, N, C, S, kind)
    check_array(dy, N * C * S, cnp.NPY_UINT16 if kind else typenum, False, "grad_output")
    check_array(y, N * C * S, cnp.NPY_UINT16 if kind else typenum, False, "y")
    check_array(mean, C, cnp.NPY_DOUBLE, False, "mean")
    check_array(invstd, C, cnp.NPY_DOUBLE, False, "invstd")
    check_array(weight, C, typenum, False, "weight")
    return typenum


cdef void _run_backward(Job* j, cnp.ndarray dy, double count, sum_dy, sum_dy_xhat) noexcept:
    """The backward of j: sum_dy, sum_dy_xhat (C,) float64 are written when given."""
    j.dy = cnp.PyArray_DATA(dy)
    j.count = count
    j.sum_dy = <double*>data_or_null(sum_dy)
    j.sum_dy_xhat = <double*>data_or_null(sum_dy_xhat)
    with nogil:
        call_typed(j.typenum, j.x, j, _backward[float], _backward[double])
    _finish(j)


def batch_norm_backward(cnp.ndarray dy not None, cnp.ndarray x not None, Py_ssize_t N,
                        Py_ssize_t C, Py_ssize_t S, cnp.ndarray mean not None,
                        cnp.ndarray invstd not None, weight, bint training, y=None, int kind=0):
    """Returns (dx, sum_dy, sum_dy_xhat): sum_dy is dbias, sum_dy_xhat dweight (float64).
    y: the output of a fused BN + ReLU forward, whose mask y > 0 applies to dy."""
    _check_backward(dy, x, N, C, S, mean, invstd, weight, y, kind)
    cdef cnp.ndarray dx = empty_like(x), sum_dy = _f64(C), sum_dy_xhat = _f64(C)
    cdef Job j
    _start(&j, x, N, C, S, 2, weight, None, mean, invstd, dx, kind)
    j.ym = data_or_null(y)
    j.training = training
    _run_backward(&j, dy, <double>N * S, sum_dy, sum_dy_xhat)
    return dx, sum_dy, sum_dy_xhat


def batch_norm_backward_reduce(cnp.ndarray dy not None, cnp.ndarray x not None, Py_ssize_t N,
                               Py_ssize_t C, Py_ssize_t S, cnp.ndarray mean not None,
                               cnp.ndarray invstd not None, int kind=0):
    """Per-channel (sum dy, sum dy*xhat) as float64 arrays (C,), no input gradient."""
    _check_backward(dy, x, N, C, S, mean, invstd, None, None, kind)
    cdef cnp.ndarray sum_dy = _f64(C), sum_dy_xhat = _f64(C)
    cdef Job j
    _start(&j, x, N, C, S, 2, None, None, mean, invstd, None, kind)
    j.training = True
    _run_backward(&j, dy, <double>N * S, sum_dy, sum_dy_xhat)
    return sum_dy, sum_dy_xhat


def batch_norm_backward_elemt(cnp.ndarray dy not None, cnp.ndarray x not None, Py_ssize_t N,
                              Py_ssize_t C, Py_ssize_t S, cnp.ndarray mean not None,
                              cnp.ndarray invstd not None, weight, cnp.ndarray sum_dy not None,
                              cnp.ndarray sum_dy_xhat not None, double count, int kind=0):
    """Input gradient of a training-mode batch norm from given per-channel sums over
    `count` elements per channel (e.g. all-reduced over the ranks of a distributed batch)."""
    _check_backward(dy, x, N, C, S, mean, invstd, weight, None, kind)
    check_array(sum_dy, C, cnp.NPY_DOUBLE, False, "sum_dy")
    check_array(sum_dy_xhat, C, cnp.NPY_DOUBLE, False, "sum_dy_xhat")
    cdef cnp.ndarray dx = empty_like(x)
    cdef Job j
    _start(&j, x, N, C, S, 0, weight, None, mean, invstd, dx, kind)
    j.training = True
    j.in_sum_dy = <const double*>cnp.PyArray_DATA(sum_dy)
    j.in_sum_dy_xhat = <const double*>cnp.PyArray_DATA(sum_dy_xhat)
    _run_backward(&j, dy, count, None, None)
    return dx
