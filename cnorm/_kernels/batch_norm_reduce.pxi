# The reductions of batch_norm.pyx (included there): the statistics pass and the sums of
# the gradient pass, and how they cut the work. They cut it by the sizes alone, never by
# the thread count (Job, _chunks): each thread runs whole work items, whose partials are
# merged per channel in partial order, so the results are the same for every thread
# count. A float64 channel whose squares over- or underflowed is redone exactly. Half
# storage (Job.kind) reads the same runs and (N, C) tiles with the half loops (widened in
# their loads), so its partials and their order are those of the float32 kernels on the
# widened input.

# ---------------------------------------------------------------------------------------
# statistics pass: (count, mean, m2) partials of every channel, merged in partial order
# ---------------------------------------------------------------------------------------

cdef void _stats_cols(const floating* x,       # IN  (N, C)
                      Py_ssize_t C, Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t c0,
                      Py_ssize_t nc,           # channels c0..c0 + nc, nc <= COLS_PER_TILE
                      double* part,            # OUT (3, C): count, mean, m2 (zeroed)
                      floating* acc,           # scratch (3, pitch): scratch_pitch
                      int kind                 # half storage: x holds half bits
                      ) noexcept nogil:
    """Rows n0..n1 x channels c0..c0 + nc of an (N, C) batch, by tiles of ROWS_PER_TILE
    rows: the block statistics of common.pxd with one SIMD lane per channel (half
    storage: the tiles read in place by the half loops, widened in their loads)."""
    cdef Py_ssize_t nb, b0, k_b, c
    cdef floating* shift = acc
    cdef Py_ssize_t pitch = scratch_pitch(COLS_PER_TILE, sizeof(floating))
    cdef floating* s1 = acc + pitch
    cdef floating* s2 = acc + 2 * pitch
    cdef const floating* tile
    cdef floating column[ROWS_PER_TILE]         # half storage: a column widened (redo)
    cdef double count, cnt, mean_b, m2_b, q
    for k_b in range((n1 - n0 + ROWS_PER_TILE - 1) // ROWS_PER_TILE):
        b0 = n0 + k_b * ROWS_PER_TILE
        nb = min(n1 - b0, ROWS_PER_TILE)
        count = <double>(b0 - n0)               # rows merged before this tile's
        tile = x + b0 * C + c0                  # half storage: bits (x is uint16_t*)
        if kind:
            tile = <const floating*>(<const uint16_t*>x + b0 * C + c0)
            cols_sum_half(kind, <float*>shift, <const uint16_t*>tile, C, nb, nc)
        else:
            cols_sum(shift, tile, C, nb, nc)    # pass 1: rough per-channel means
        for c in range(nc):
            shift[c] = <floating>(<double>shift[c] / nb)
        if kind:                                # pass 2 (from cache): deviations
            cols_dev_half(kind, <float*>s1, <float*>s2, <const uint16_t*>tile, C, nb,
                          <const float*>shift, nc)
        else:
            cols_dev(s1, s2, tile, C, nb, shift, nc)
        if floating is double or not cols_any_unsafe(s1, s2, shift, nc):
            cols_merge(part + C + c0, part + 2 * C + c0, shift, s1, s2, nc, count, nb)
        else:
            for c in range(nc):                 # unsafe float32 sums: float64 redo
                if not cn_f32_sums_unsafe(s1[c], s2[c], shift[c]):
                    q = <double>s1[c]
                    mean_b = shift[c] + q / nb
                    m2_b = s2[c] - q * q / nb if s2[c] > q * q / nb else 0.0
                elif kind:
                    stage_column(kind, column, <const uint16_t*>tile + c, C, nb)
                    two_pass_f64(column, nb, 1, &mean_b, &m2_b)
                else:
                    two_pass_f64(tile + c, nb, C, &mean_b, &m2_b)
                cnt = count
                chan_merge(&cnt, &part[C + c0 + c], &part[2 * C + c0 + c], <double>nb,
                           mean_b, m2_b)
    for c in range(c0, c0 + nc):
        part[c] = <double>(n1 - n0)


cdef void _stats_work(const floating* x, void* job, int t, int n_threads) noexcept nogil:
    """Thread t's work items: the partials part[k] (3, C) = count, mean, m2 (Job)."""
    cdef const Job* j = <const Job*>job
    cdef Py_ssize_t C = j.C, S = j.S, i, n, c, c0, c1
    cdef double* part
    cdef floating* stage = <floating*>j.stage + j.stage_size * t    # half storage
    cdef Segment seg
    cdef Item it
    if j.by_channel:        # channels c0..c1, every row in order: part[0]
        c0 = split_start(C, t, n_threads)
        c1 = split_start(C, t + 1, n_threads)
        for n in range(j.N):
            if j.kind and S <= BLOCK:   # half storage: the row's planes in one call
                _merge_runs(j.kind, <const uint16_t*>x + (n * C + c0) * S, S, c1 - c0, j.part,
                            C, c0, 1)
                continue
            for c in range(c0, c1):
                _segment_stats(j, x, stage, (n * C + c) * S, S, j.part, c)
        return
    for i in range(split_start(j.n_items, t, n_threads), split_start(j.n_items, t + 1, n_threads)):
        it = work_item(j, i)
        part = j.part + 3 * C * it.part
        if S == 1:
            _stats_cols(x, C, it.e0, it.e1, it.c0, it.c1 - it.c0, part,
                        <floating*>j.tile + 3 * scratch_pitch(COLS_PER_TILE, sizeof(floating)) * t,
                        j.kind)
            continue
        seg = first_segment(it.e0, it.e1, C, S)
        while seg.start < it.e1:
            _segment_stats(j, x, stage, seg.start, seg.stop - seg.start, part, seg.c)
            next_segment(&seg, it.e1, C, S)


cdef inline void _segment_stats(const Job* j, const floating* x, floating* stage, Py_ssize_t o,
                                Py_ssize_t n, double* part, Py_ssize_t c) noexcept nogil:
    """Channel c's (count, mean, m2) in part (3, C) merged with the n elements at o (half
    storage: segment_stats_half's blocks, the whole ones in one _merge_runs)."""
    cdef Py_ssize_t full = n // BLOCK * BLOCK
    if not j.kind:
        segment_stats(x + o, n, &part[c], &part[j.C + c], &part[2 * j.C + c])
        return
    if full > BLOCK:
        _merge_runs(j.kind, <const uint16_t*>x + o, BLOCK, full // BLOCK, part, j.C, c, 0)
        o += full
        n -= full
    segment_stats_half(j.kind, <const uint16_t*>x + o, n, &part[c], &part[j.C + c],
                       &part[2 * j.C + c])     # the same blocks


cdef void _channel_stats(const floating* x, Job* j) noexcept nogil:
    """j.mean, j.var <- per-channel mean and biased variance, in one pass over memory
    (float64 channels that over- or underflowed: redone exactly, j.exact)."""
    cdef Py_ssize_t C = j.C, c, k
    cdef double count, mu, m2
    cdef const double* part
    cdef double* mean = j.mean
    cdef double* var = j.var
    parallel(_stats_work[floating], x, j, j.threads_x)
    if C > 0 and j.S == 1 and j.n_parts > 0:
        _merge_cols_partials(x, j)
        return
    for c in range(C):              # the partials, merged in partial order
        count = 0
        mu = 0
        m2 = 0
        for k in range(j.n_parts):
            part = j.part + 3 * C * k
            chan_merge(&count, &mu, &m2, part[c], part[C + c], part[2 * C + c])
        mean[c] = mu
        var[c] = m2 / count if count > 0 else 0.0
        if floating is double:
            if count > 0 and f64_stats_unsafe(var[c]):
                _exact_channel(x, j, c)


cdef void _merge_cols_partials(const floating* x, Job* j) noexcept nogil:
    """_channel_stats of the (N, C) path: its chan_merge of the partials in partial order,
    channel by channel, but one partial at a time over all channels. Every channel of a
    partial has the same count (its rows), so the division is once per partial and the
    loop over channels vectorizes; the operations per channel are chan_merge's, in its
    order (the same bits)."""
    cdef Py_ssize_t C = j.C, c, k
    cdef const double* part = j.part
    cdef double* mean = j.mean
    cdef double* m2 = j.var        # the merged M2 first, then the variance
    cdef double count = part[0], count_b, frac_b, w, delta
    for c in range(C):             # the first partial into an empty one: a copy
        mean[c] = part[C + c]
        m2[c] = part[2 * C + c]
    for k in range(1, j.n_parts):
        part = j.part + 3 * C * k
        count_b = part[0]
        frac_b = count_b / (count + count_b)
        w = count * frac_b
        for c in range(C):
            delta = part[C + c] - mean[c]
            mean[c] += delta * frac_b
            m2[c] += part[2 * C + c] + delta * delta * w
        count += count_b
    for c in range(C):
        m2[c] = m2[c] / count
    if floating is double:
        for c in range(C):
            if f64_stats_unsafe(m2[c]):
                _exact_channel(x, j, c)


cdef void _exact_channel(const double* x, Job* j, Py_ssize_t c) noexcept nogil:
    """Channel c's exact statistics into j.mean, j.var and j.exact (allocated here)."""
    cdef Py_ssize_t i
    cdef ExactStats st
    if j.exact == NULL:
        j.exact = <ExactStats*>malloc(j.C * sizeof(ExactStats))
        if j.exact == NULL:         # no memory for the redo: the plain statistics stand
            return
        for i in range(j.C):
            j.exact[i].scale = 0
    st = exact_stats(x + c * j.S, j.N, j.S, j.C * j.S, True, j.eps, j.mean[c], j.var[c])
    j.exact[c] = st
    j.mean[c] = st.mean
    j.var[c] = st.var
    if st.scale != 1:
        j.scaled = True


# ---------------------------------------------------------------------------------------
# the sums of the backward: sum(dy), sum(dy * (x - mean)) per channel
# ---------------------------------------------------------------------------------------

cdef void _grad_sums_work(const floating* x, void* job, int t, int n_threads) noexcept nogil:
    """Thread t's work items: the partials part[k] (2, C) = sum(g), sum(g * (x - mean)),
    g = dy (masked by ym > 0 after a fused BN + ReLU)."""
    cdef const Job* j = <const Job*>job
    cdef const floating* dy = <const floating*>j.dy
    cdef const floating* ym = <const floating*>j.ym
    cdef const floating* hi = <const floating*>j.grad.hi
    cdef const floating* lo = <const floating*>j.grad.lo
    cdef floating* s1
    cdef floating* s2
    cdef floating* stage = <floating*>j.stage + j.stage_size * t
    cdef Py_ssize_t C = j.C, S = j.S, b0, nb, k_b, o, c, i, n, nc, pitch
    cdef double* part
    cdef Segment seg
    cdef Item it
    if j.by_channel:        # channels c0..c1 (it.c0, it.c1), every row in order: part[0]
        it.c0 = split_start(C, t, n_threads)
        it.c1 = split_start(C, t + 1, n_threads)
        for n in range(j.N):
            for c in range(it.c0, it.c1):
                _grad_sums_segment(j, x, stage, j.part, (n * C + c) * S, S, c)
        return
    for i in range(split_start(j.n_items, t, n_threads), split_start(j.n_items, t + 1, n_threads)):
        it = work_item(j, i)
        part = j.part + 2 * C * it.part
        if S == 1:      # (N, C): tiles of rows e0..e1, one lane per channel
            pitch = scratch_pitch(COLS_PER_TILE, sizeof(floating))
            s1 = <floating*>j.tile + 2 * pitch * t
            s2 = s1 + pitch
            nc = it.c1 - it.c0
            for k_b in range((it.e1 - it.e0 + ROWS_PER_TILE - 1) // ROWS_PER_TILE):
                b0 = it.e0 + k_b * ROWS_PER_TILE
                nb = min(it.e1 - b0, ROWS_PER_TILE)
                o = b0 * C + it.c0
                if j.kind:  # half storage: the tiles read in place, widened in the loads
                    bn_grad_sums_cols_half(j.kind, <float*>s1, <float*>s2,
                                           <const uint16_t*>dy + o, <const uint16_t*>x + o,
                                           C, nb, <const float*>hi + it.c0,
                                           <const float*>lo + it.c0, nc,
                                           <const uint16_t*>ym + o if ym != NULL else NULL)
                else:
                    bn_grad_sums_cols(s1, s2, dy + o, x + o, C, nb, hi + it.c0, lo + it.c0,
                                      nc, offset(ym, o))
                for c in range(nc):
                    part[it.c0 + c] += s1[c]
                    part[C + it.c0 + c] += s2[c]
            continue
        seg = first_segment(it.e0, it.e1, C, S)
        while seg.start < it.e1:
            _grad_sums_segment(j, x, stage, part, seg.start, seg.stop - seg.start, seg.c)
            next_segment(&seg, it.e1, C, S)


cdef inline void _grad_sums_segment(const Job* j, const floating* x, floating* stage,
                                    double* part, Py_ssize_t o, Py_ssize_t n,
                                    Py_ssize_t c) noexcept nogil:
    """_grad_sums_run of the n elements at o (channel c); half storage: with the half
    loop (the same blocks)."""
    cdef const floating* hi = <const floating*>j.grad.hi
    cdef const floating* lo = <const floating*>j.grad.lo
    cdef Py_ssize_t b, len_b, k_b
    cdef double sum_g, sum_gd
    if not j.kind:
        _grad_sums_run(part, <const floating*>j.dy, x, <const floating*>j.ym, o, n, c, j.C,
                       hi, lo)
        return
    for k_b in range((n + BLOCK - 1) // BLOCK):     # half storage: _grad_sums_run's blocks
        b = o + k_b * BLOCK
        len_b = min(o + n - b, BLOCK)
        bn_grad_sums_half(j.kind, &sum_g, &sum_gd, <const uint16_t*>j.dy + b,
                          <const uint16_t*>x + b, len_b, hi[c], lo[c],
                          <const uint16_t*>j.ym + b if j.ym != NULL else NULL)
        part[c] += sum_g
        part[j.C + c] += sum_gd


cdef inline void _grad_sums_run(double* part, const floating* dy, const floating* x,
                                const floating* ym, Py_ssize_t o, Py_ssize_t n, Py_ssize_t c,
                                Py_ssize_t C, const floating* hi,
                                const floating* lo) noexcept nogil:
    """part[c], part[C + c] += the sums of the n elements at o (channel c), in short
    blocks."""
    cdef Py_ssize_t b, len_b, k_b
    cdef double sum_g, sum_gd
    for k_b in range((n + BLOCK - 1) // BLOCK):
        b = o + k_b * BLOCK
        len_b = min(o + n - b, BLOCK)
        bn_grad_sums(&sum_g, &sum_gd, dy + b, x + b, len_b, hi[c], lo[c], offset(ym, b))
        part[c] += sum_g
        part[C + c] += sum_gd


cdef double _channel_sum_g_xhat(const floating* x, const Job* j, Py_ssize_t c) noexcept nogil:
    """sum(g * xhat) of channel c from O(1) terms (common.sum_g_xhat), row after row (half
    storage: in widened runs, in thread 0's stage)."""
    cdef Py_ssize_t n, o, m, k
    cdef double s = 0
    cdef floating* stage = <floating*>j.stage
    for n in range(j.N):
        o = (n * j.C + c) * j.S
        if not j.kind:
            s += sum_g_xhat(<const floating*>j.dy + o, x + o, NULL,
                            offset(<const floating*>j.ym, o), j.S,
                            (<const floating*>j.grad.hi)[c], (<const floating*>j.grad.lo)[c],
                            j.invstd[c])
            continue
        k = o
        while k < o + j.S:
            m = min(o + j.S - k, <Py_ssize_t>STAGE_CHUNK)
            s += sum_g_xhat(stage_in(j.kind, stage, j.dy, k, m),
                            stage_in(j.kind, stage + STAGE_CHUNK, x, k, m), NULL,
                            stage_in(j.kind, stage + 2 * STAGE_CHUNK, j.ym, k, m)
                            if j.ym != NULL else NULL, m,
                            (<const floating*>j.grad.hi)[c], (<const floating*>j.grad.lo)[c],
                            j.invstd[c])
            k += m
    return s


cdef void _chunks(Job* j) noexcept:
    """How the reductions of j cut the work (Job): from the sizes alone."""
    cdef Py_ssize_t N = j.N, C = j.C, S = j.S
    j.by_channel = S > 1 and C >= CHANNEL_SPLIT_MIN
    if j.by_channel:
        j.n_parts = 1
        j.n_items = C
    elif S == 1:        # chunks of whole tiles of rows, each split in tiles of channels
        j.chunk = chunk_size(N, min(C, COLS_PER_TILE), CHUNK_ELEMENTS, ROWS_PER_TILE,
                             MAX_WIDE_CHUNKS)
        j.n_parts = (N + j.chunk - 1) // j.chunk
        j.n_items = j.n_parts * ((C + COLS_PER_TILE - 1) // COLS_PER_TILE)
    else:               # chunks of whole rows (or of blocks of a long row)
        j.chunk = chunk_size(N * C * S, 1, CHUNK_ELEMENTS, S if S <= CHUNK_ELEMENTS else BLOCK,
                             MAX_CHUNKS)
        j.n_parts = (N * C * S + j.chunk - 1) // j.chunk
        j.n_items = j.n_parts
