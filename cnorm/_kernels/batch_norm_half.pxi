# Included by batch_norm.pyx: the passes of half storage. Every entry point takes kind=1
# (float16) or 2 (bfloat16): then x, dy, y and the (N, C, S) outputs are half bits (uint16),
# weight, bias and running statistics float32, and the job runs the float32 specialization
# (Job.kind, common.pxd). The reductions (batch_norm_reduce.pxi) walk their work items as
# in float32: a channel's runs and the (N, C) tiles with the half loops (simd/half.h,
# half_cols.h, which widen in their own loads): the same partials, merged in the same
# order, so the same bits at any thread count. The
# elementwise passes here are the walks of their float32 passes over the thread's share
# with the half loops: each output rounded once in the loop's own store.

from libc.stdint cimport uint16_t

from .half cimport segment_stats_half
from .simd.loops cimport (affine_cols4_half, affine_cols_half, affine_half, bn_grad_cols4_half,
                          bn_grad_cols_half, bn_grad_half, bn_grad_sums_cols_half,
                          bn_grad_sums_half, cols_dev_half, cols_sum_half, runs_affine_half,
                          runs_stats_half)

cdef enum:
    RUNS_BATCH = 64         # runs per runs_stats call (_merge_runs: their results on the stack)

cdef int _start_stage(Job* j, int n_threads) noexcept:
    """The per-thread stage of a half-storage job (-1: out of memory): STAGE_BUFS runs of
    STAGE_CHUNK (the (N, C) tiles are read in place; only the rare redos stage)."""
    if j.kind:
        j.stage_size = STAGE_BUFS * STAGE_CHUNK
        j.stage = <float*>malloc(j.stage_size * n_threads * sizeof(float))
        return -1 if j.stage == NULL else 0
    return 0


cdef inline void _merge_runs(int kind, const uint16_t* x, Py_ssize_t n, Py_ssize_t nruns,
                             double* part, Py_ssize_t C, Py_ssize_t c,
                             Py_ssize_t dc) noexcept nogil:
    """The nruns consecutive runs of n <= BLOCK half values at x, run k merged into channel
    c + k * dc of part (3, C) in run order: segment_stats_half's blocks (block_stats_half,
    then chan_merge), the block statistics RUNS_BATCH runs per call (runs_stats), so a row
    of short planes (S = 196: one block each) costs one call, not one per plane."""
    cdef double mean_b[RUNS_BATCH]
    cdef double m2_b[RUNS_BATCH]
    cdef float tmp[BLOCK]
    cdef Py_ssize_t k0 = 0, k, nb, ch
    while k0 < nruns:
        nb = min(nruns - k0, <Py_ssize_t>RUNS_BATCH)
        runs_stats_half(kind, mean_b, m2_b, x + k0 * n, n, nb)
        for k in range(nb):
            if m2_b[k] < 0:     # float32 sums unsafe: block_stats_half's float64 redo
                two_pass_f64(stage_in(kind, tmp, x, (k0 + k) * n, n), n, 1, &mean_b[k],
                             &m2_b[k])
            ch = c + (k0 + k) * dc
            chan_merge(&part[ch], &part[C + ch], &part[2 * C + ch], <double>n, mean_b[k],
                       m2_b[k])
        k0 += nb


cdef inline void stage_column(int kind, floating* out, const uint16_t* bits, Py_ssize_t ld,
                              Py_ssize_t nb) noexcept nogil:
    """out (nb,) <- the nb half values bits[0], bits[ld], ... widened (a tile's column)."""
    cdef Py_ssize_t r
    for r in range(nb):
        stage_in(kind, out + r, bits, r * ld, 1)


cdef void _normalize_half(const floating* x, void* job, int t, int n_threads) noexcept nogil:
    """_normalize_work on half bits (x may be dy, the eval backward), with the half loops
    (simd/half.h): widened in their loads, each output rounded once in their stores."""
    cdef const Job* j = <const Job*>job
    cdef const Normalize* f = &j.norm
    cdef const uint16_t* xh = <const uint16_t*>x
    cdef uint16_t* out = <uint16_t*>j.out
    cdef Py_ssize_t C = j.C, S = j.S, g = j.row_group, n, n1, c, m, r
    cdef Segment seg
    thread_share(j, t, n_threads, &n, &n1)
    if S == 1:          # (N, C): g rows per call, short rows four at a time, as _normalize_work
        if not j.stream and _four_rows(g * C, 2, cols4_max_c):
            while n + 4 * g <= n1:
                affine_cols4_half(j.kind, out + n * C, xh + n * C, g * C, g * C,
                                  <const float*>f.hi, <const float*>f.lo, <const float*>f.scale,
                                  <const float*>f.beta, j.relu)
                n += 4 * g
        while n < n1:
            r = min(g, n1 - n)
            affine_cols_half(j.kind, out + n * C, xh + n * C, r * C, <const float*>f.hi,
                             <const float*>f.lo, <const float*>f.scale, <const float*>f.beta,
                             j.stream, j.relu)
            n += r
    else:
        seg = first_segment(n, n1, C, S)
        while seg.start < n1:
            c = seg.c
            m = min((n1 - seg.start) // S, C - c) if seg.stop - seg.start == S else 0
            if m > 1 and not j.stream:  # whole planes of channels c..c+m: one call
                runs_affine_half(j.kind, out + seg.start, xh + seg.start, S, m,
                                 <const float*>f.hi + c, <const float*>f.lo + c,
                                 <const float*>f.scale + c, <const float*>f.beta + c, j.relu)
                seg.row += m - 1
                seg.c += m - 1
                seg.stop = seg.start + m * S
            else:
                affine_half(j.kind, out + seg.start, xh + seg.start, seg.stop - seg.start,
                            (<const float*>f.hi)[c], (<const float*>f.lo)[c],
                            (<const float*>f.scale)[c], (<const float*>f.beta)[c], j.stream,
                            j.relu)
            next_segment(&seg, n1, C, S)
    if j.stream:        # once per thread, after all its streamed stores
        cn_stream_fence()


cdef inline void _input_grad_run(const Job* j, const uint16_t* x, Py_ssize_t o, Py_ssize_t m, Py_ssize_t c,
                                 bint per_element) noexcept nogil:
    """dx of elements o..o+m: channel c (S > 1), or the channels c..c+m of a row."""
    cdef const InputGrad* g = &j.grad
    cdef const uint16_t* dy = <const uint16_t*>j.dy + o
    cdef const uint16_t* xr = x + o
    cdef const uint16_t* ym = <const uint16_t*>j.ym + o if j.ym != NULL else NULL
    cdef uint16_t* dx = <uint16_t*>j.out + o
    if per_element:
        bn_grad_cols_half(j.kind, dx, dy, xr, m, <const float*>g.hi + c, <const float*>g.lo + c,
                          <const float*>g.invstd + c, <const float*>g.k1 + c,
                          <const float*>g.mean_dy + c, <const float*>g.mean_dy_xhat + c, j.stream,
                          ym)
    else:
        bn_grad_half(j.kind, dx, dy, xr, m, (<const float*>g.hi)[c], (<const float*>g.lo)[c],
                     (<const float*>g.invstd)[c], (<const float*>g.k1)[c],
                     (<const float*>g.mean_dy)[c], (<const float*>g.mean_dy_xhat)[c], j.stream, ym)


cdef void _input_grad_half(const floating* x, void* job, int t, int n_threads) noexcept nogil:
    """_input_grad_work on half bits: dy, x (and ym) widened in the loops' loads, dx
    rounded in their stores."""
    cdef const Job* j = <const Job*>job
    cdef const InputGrad* g = &j.grad
    cdef Py_ssize_t C = j.C, S = j.S, G = j.row_group, n, n1, r
    cdef Segment seg
    thread_share(j, t, n_threads, &n, &n1)
    if S == 1:          # (N, C): G rows per call, short rows four at a time, as _input_grad_work
        if not j.stream and _four_rows(G * C, 2, grad_cols4_max_c):
            while n + 4 * G <= n1:
                bn_grad_cols4_half(j.kind, <uint16_t*>j.out + n * C,
                                   <const uint16_t*>j.dy + n * C, <const uint16_t*>x + n * C,
                                   G * C, G * C, <const float*>g.hi, <const float*>g.lo,
                                   <const float*>g.invstd, <const float*>g.k1,
                                   <const float*>g.mean_dy, <const float*>g.mean_dy_xhat,
                                   <const uint16_t*>j.ym + n * C if j.ym != NULL else NULL)
                n += 4 * G
        while n < n1:
            r = min(G, n1 - n)
            _input_grad_run(j, <const uint16_t*>x, n * C, r * C, 0, True)
            n += r
    else:
        seg = first_segment(n, n1, C, S)
        while seg.start < n1:
            _input_grad_run(j, <const uint16_t*>x, seg.start, seg.stop - seg.start, seg.c, False)
            next_segment(&seg, n1, C, S)
    if j.stream:        # once per thread, after all its streamed stores
        cn_stream_fence()
