# Included by batch_norm.pyx: the passes of half storage. Every entry point takes kind=1
# (float16) or 2 (bfloat16): then x, dy, y and the (N, C, S) outputs are half bits (uint16),
# weight, bias and running statistics float32, and the job runs the float32 specialization
# (Job.kind, common.pxd). The reductions (batch_norm_reduce.pxi) walk their work items as
# in float32 and widen each run or tile they read first (stage_tile here, common.stage_in):
# the same partials, merged in the same order, so the same bits at any thread count. The
# elementwise passes here are the walks of their float32 passes over the thread's share
# with the runs they read widened into the thread's stage and each output run rounded
# once on the way out.

cdef int _start_stage(Job* j, int n_threads) noexcept:
    """The per-thread stage of a half-storage job (-1: out of memory): S > 1 STAGE_BUFS
    runs of STAGE_CHUNK, S = 1 three tiles (x, dy, ym; the runs of a row fit in them)."""
    if j.kind:
        j.stage_size = 3 * STAGE_TILE if j.S == 1 else STAGE_BUFS * STAGE_CHUNK
        j.stage = <float*>malloc(j.stage_size * n_threads * sizeof(float))
        return -1 if j.stage == NULL else 0
    return 0


cdef inline const floating* stage_tile(int kind, floating* stage, const void* bits,
                                       Py_ssize_t o, Py_ssize_t C, Py_ssize_t nb,
                                       Py_ssize_t nc) noexcept nogil:
    """stage (nb, nc) <- the nb half rows of nc values at bits + o (row stride C), widened;
    returns stage."""
    cdef Py_ssize_t r
    for r in range(nb):
        stage_in(kind, stage + r * nc, bits, o + r * C, nc)
    return stage


cdef void _normalize_half(const floating* x, void* job, int t, int n_threads) noexcept nogil:
    """_normalize_work (x may be dy, the eval backward: the pass's own input is staged)."""
    cdef const Job* j = <const Job*>job
    cdef const Normalize* f = &j.norm
    cdef floating* stage = <floating*>j.stage + j.stage_size * t
    cdef floating* out = stage + STAGE_CHUNK
    cdef Py_ssize_t C = j.C, S = j.S, n, n1, o, m, c
    cdef Segment seg
    thread_share(j, t, n_threads, &n, &n1)
    if S == 1:          # (N, C): each row in runs of channels
        for n in range(n, n1):
            o = 0
            while o < C:
                m = min(C - o, <Py_ssize_t>STAGE_CHUNK)
                affine_cols(out, stage_in(j.kind, stage, x, n * C + o, m), m,
                            <const floating*>f.hi + o, <const floating*>f.lo + o,
                            <const floating*>f.scale + o, <const floating*>f.beta + o, False, j.relu)
                stage_out(j.kind, j.out, n * C + o, out, m)
                o += m
        return
    seg = first_segment(n, n1, C, S)
    while seg.start < n1:
        o = seg.start
        c = seg.c
        while o < seg.stop:
            m = min(seg.stop - o, <Py_ssize_t>STAGE_CHUNK)
            affine(out, stage_in(j.kind, stage, x, o, m), m, (<const floating*>f.hi)[c],
                   (<const floating*>f.lo)[c], (<const floating*>f.scale)[c],
                   (<const floating*>f.beta)[c], False, j.relu)
            stage_out(j.kind, j.out, o, out, m)
            o += m
        next_segment(&seg, n1, C, S)


cdef inline void _input_grad_run(const floating* x, const Job* j, floating* stage,
                                 Py_ssize_t o, Py_ssize_t m, Py_ssize_t c,
                                 bint per_element) noexcept nogil:
    """dx of elements o..o+m: channel c (S > 1), or the channels c..c+m of a row."""
    cdef const InputGrad* g = &j.grad
    cdef const floating* dy = stage_in(j.kind, stage, j.dy, o, m)
    cdef const floating* xr = stage_in(j.kind, stage + STAGE_CHUNK, x, o, m)
    cdef const floating* ym = (stage_in(j.kind, stage + 2 * STAGE_CHUNK, j.ym, o, m)
                               if j.ym != NULL else NULL)
    if per_element:
        bn_grad_cols(stage + 3 * STAGE_CHUNK, dy, xr, m, <const floating*>g.hi + c,
                     <const floating*>g.lo + c, <const floating*>g.invstd + c,
                     <const floating*>g.k1 + c, <const floating*>g.mean_dy + c,
                     <const floating*>g.mean_dy_xhat + c, False, ym)
    else:
        bn_grad(stage + 3 * STAGE_CHUNK, dy, xr, m, (<const floating*>g.hi)[c],
                (<const floating*>g.lo)[c], (<const floating*>g.invstd)[c],
                (<const floating*>g.k1)[c], (<const floating*>g.mean_dy)[c],
                (<const floating*>g.mean_dy_xhat)[c], False, ym)
    stage_out(j.kind, j.out, o, stage + 3 * STAGE_CHUNK, m)


cdef void _input_grad_half(const floating* x, void* job, int t, int n_threads) noexcept nogil:
    """_input_grad_work: runs of dy, x (and ym) widened, dx rounded on the way out."""
    cdef const Job* j = <const Job*>job
    cdef floating* stage = <floating*>j.stage + j.stage_size * t
    cdef Py_ssize_t C = j.C, S = j.S, n, n1, o, m
    cdef Segment seg
    thread_share(j, t, n_threads, &n, &n1)
    if S == 1:          # (N, C): each row in runs of channels
        for n in range(n, n1):
            o = 0
            while o < C:
                m = min(C - o, <Py_ssize_t>STAGE_CHUNK)
                _input_grad_run(x, j, stage, n * C + o, m, o, True)
                o += m
        return
    seg = first_segment(n, n1, C, S)
    while seg.start < n1:
        o = seg.start
        while o < seg.stop:
            m = min(seg.stop - o, <Py_ssize_t>STAGE_CHUNK)
            _input_grad_run(x, j, stage, o, m, seg.c, False)
            o += m
        next_segment(&seg, n1, C, S)
