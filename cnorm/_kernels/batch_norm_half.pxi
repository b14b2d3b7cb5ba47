# Included by batch_norm.pyx: the passes of half storage. Every entry point takes kind=1
# (float16) or 2 (bfloat16): then x, dy, y and the (N, C, S) outputs are half bits (uint16),
# weight, bias and running statistics float32, and the job runs the float32 specialization
# (Job.kind, common.pxd). Each pass here is the walk of its float32 pass over the thread's
# share (row segments, or the tiles and rows of an (N, C) batch) with the runs it reads
# widened into the thread's stage first and each output run rounded once on the way out.

cdef int _start_stage(Job* j, int n_threads) noexcept:
    """The per-thread stage of a half-storage job (-1: out of memory)."""
    if j.kind:
        j.stage_size = 3 * STAGE_TILE + 6 * COLS_PER_TILE if j.S == 1 else STAGE_BUFS * STAGE_CHUNK
        j.stage = <float*>malloc(j.stage_size * n_threads * sizeof(float))
        return -1 if j.stage == NULL else 0
    return 0


cdef void _stats_half(const floating* x, void* job, int t, int n_threads) noexcept nogil:
    """_stats_work: runs of whole blocks (the blocks of one call); (N, C) tiles whose
    statistics are merged into part channel by channel (Chan)."""
    cdef const Job* j = <const Job*>job
    cdef Py_ssize_t C = j.C, S = j.S, e0, e1, o, n, r, c, nc
    cdef double* part = j.part + 3 * C * t
    cdef floating* stage = <floating*>j.stage + j.stage_size * t
    cdef double* tile_part = <double*>(stage + 3 * STAGE_TILE)     # (3, nc)
    cdef Segment seg
    cdef Tile tl
    thread_share(j, t, n_threads, &e0, &e1)
    if S == 1:
        tl = first_tile(e0, e1, C)
        while tl.b0 < e1 and tl.nc > 0:
            nc = tl.nc
            for r in range(tl.nb):
                stage_in(j.kind, stage + r * nc, x, (tl.b0 + r) * C + tl.c0, nc)
            memset(tile_part, 0, 3 * nc * sizeof(double))
            _stats_cols(stage, nc, 0, tl.nb, tile_part, <floating*>j.tile + 3 * COLS_PER_TILE * t)
            for c in range(nc):
                chan_merge(&part[tl.c0 + c], &part[C + tl.c0 + c], &part[2 * C + tl.c0 + c],
                           tile_part[c], tile_part[nc + c], tile_part[2 * nc + c])
            next_tile(&tl, e1, C)
        return
    seg = first_segment(e0, e1, C, S)
    while seg.start < e1:
        o = seg.start
        while o < seg.stop:
            n = min(seg.stop - o, <Py_ssize_t>STAGE_CHUNK)
            segment_stats(stage_in(j.kind, stage, x, o, n), n,
                          &part[seg.c], &part[C + seg.c], &part[2 * C + seg.c])
            o += n
        next_segment(&seg, e1, C, S)


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


cdef void _grad_sums_half(const floating* x, void* job, int t, int n_threads) noexcept nogil:
    """_grad_sums_work: each block (S > 1) or tile ((N, C): rows of tl.nc) of dy, x (and
    ym) widened."""
    cdef const Job* j = <const Job*>job
    cdef const floating* hi = <const floating*>j.grad.hi
    cdef const floating* lo = <const floating*>j.grad.lo
    cdef floating* stage = <floating*>j.stage + j.stage_size * t
    cdef floating* s1 = <floating*>j.tile + 2 * COLS_PER_TILE * t
    cdef floating* s2 = s1 + COLS_PER_TILE
    cdef Py_ssize_t C = j.C, S = j.S, e0, e1, b, len_b, o, c, r
    cdef double* part = j.part + 2 * C * t
    cdef double sum_g, sum_gd
    cdef Segment seg
    cdef Tile tl
    cdef int kind = j.kind
    thread_share(j, t, n_threads, &e0, &e1)
    if S == 1:
        tl = first_tile(e0, e1, C)
        while tl.b0 < e1 and tl.nc > 0:
            o = tl.b0 * C + tl.c0
            for r in range(tl.nb):
                stage_in(kind, stage + r * tl.nc, x, o + r * C, tl.nc)
                stage_in(kind, stage + STAGE_TILE + r * tl.nc, j.dy, o + r * C, tl.nc)
                if j.ym != NULL:
                    stage_in(kind, stage + 2 * STAGE_TILE + r * tl.nc, j.ym, o + r * C, tl.nc)
            bn_grad_sums_cols(s1, s2, stage + STAGE_TILE, stage, tl.nc, tl.nb, hi + tl.c0,
                              lo + tl.c0, tl.nc, stage + 2 * STAGE_TILE if j.ym != NULL else NULL)
            for c in range(tl.nc):
                part[tl.c0 + c] += s1[c]
                part[C + tl.c0 + c] += s2[c]
            next_tile(&tl, e1, C)
        return
    seg = first_segment(e0, e1, C, S)
    while seg.start < e1:
        b = seg.start
        while b < seg.stop:
            len_b = min(seg.stop - b, <Py_ssize_t>BLOCK)
            bn_grad_sums(&sum_g, &sum_gd, stage_in(kind, stage, j.dy, b, len_b),
                         stage_in(kind, stage + STAGE_CHUNK, x, b, len_b), len_b, hi[seg.c],
                         lo[seg.c], stage_in(kind, stage + 2 * STAGE_CHUNK, j.ym, b, len_b)
                         if j.ym != NULL else NULL)
            part[seg.c] += sum_g
            part[C + seg.c] += sum_gd
            b += len_b
        next_segment(&seg, e1, C, S)


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
