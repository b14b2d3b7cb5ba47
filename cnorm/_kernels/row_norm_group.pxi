# Included by row_norm.pyx: GroupNorm / InstanceNorm, rows (n, g) of Cg channel segments of
# S elements each (RowJob.G, Cg, S), one affine weight per channel: the row walks and
# their entry points. Half storage (RowJob.kind) walks the rows with the half loops (as the
# LayerNorm rows: row_norm_half.pxi); a row's rare float64 redo widens it into the stage.

# ---------------------------------------------------------------------------------------
# GroupNorm / InstanceNorm: rows of G groups, one affine weight per channel (segment)
# ---------------------------------------------------------------------------------------

cdef void _group_norm_forward_rows(const floating* x, void* job, int t,
                                   int n_threads) noexcept nogil:
    """Thread t's rows (n, g): y = xhat * weight[c] + bias[c] per channel segment."""
    cdef const RowJob* j = <const RowJob*>job
    cdef Py_ssize_t G = j.G, Cg = j.Cg, S = j.S, D = j.Cg * j.S, r, i, c
    cdef floating* y = <floating*>j.out
    cdef const floating* weight = <const floating*>j.weight
    cdef const floating* bias = <const floating*>j.bias
    cdef double* mean = j.mean
    cdef double* rstd = j.rstd
    cdef double* var = j.var
    cdef Py_ssize_t o, b, len_b, k_b
    cdef double rs, scale, eps = j.eps
    cdef bint stream = j.stream
    cdef floating hi, lo, w, bi
    cdef floating tmp[BLOCK]
    cdef int kind = j.kind
    cdef const floating* xr
    cdef floating* yr
    cdef Py_ssize_t r1 = split_start(j.M, t + 1, n_threads)
    cdef bint ahead = _fetch_next(j, D, 1)
    for r in range(split_start(j.M, t, n_threads), r1):
        if kind:
            _group_norm_forward_row_half(j, r, ahead and r + 1 < r1)
            continue
        xr = x + r * D
        yr = y + r * D
        scale = _row_stats(xr, D, True, eps, &mean[r], &rstd[r], &var[r], &hi, &lo, &rs)
        c = (r % G) * Cg
        for i in range(Cg):
            o = i * S
            if ahead and r + 1 < r1:    # the next row, fetched while this one is written
                _ahead(j, j.x, (r + 1) * D + o, S)
            w = <floating>(rs * (weight[c + i] if weight != NULL else 1.0))
            bi = bias[c + i] if bias != NULL else 0
            if scale == 1:
                affine(yr + o, xr + o, S, hi, lo, w, bi, stream, False)
                continue
            for k_b in range((S + BLOCK - 1) // BLOCK):
                b = k_b * BLOCK
                len_b = S - b if S - b < BLOCK else BLOCK
                scaled_copy(tmp, xr + o + b, len_b, scale)  # x * scale, as LayerNorm's
                affine(yr + o + b, tmp, len_b, hi, lo, w, bi, False, False)
    if stream:       # once per thread, after all its streamed stores
        cn_stream_fence()


cdef void _group_norm_forward_row_half(const RowJob* j, Py_ssize_t r, bint ahead) noexcept nogil:
    """Row r of _group_norm_forward_rows in half storage, with the half loops (ahead: the
    next row fetched meanwhile)."""
    cdef Py_ssize_t Cg = j.Cg, S = j.S, D = j.Cg * j.S, i, c = (r % j.G) * j.Cg
    cdef const float* weight = <const float*>j.weight
    cdef const float* bias = <const float*>j.bias
    cdef const uint16_t* xr = <const uint16_t*>j.x + r * D
    cdef float hi, lo
    cdef double rs = _half_row_stats(j.kind, xr, D, True, j.eps, &j.mean[r], &j.rstd[r],
                                     &j.var[r], &hi, &lo)
    for i in range(Cg):
        if ahead:
            _ahead(j, j.x, (r + 1) * D + i * S, S)
        affine_half(j.kind, <uint16_t*>j.out + r * D + i * S, xr + i * S, S, hi, lo,
                    <float>(rs * (weight[c + i] if weight != NULL else 1.0)),
                    bias[c + i] if bias != NULL else 0, j.stream, False)


cdef void _group_norm_backward_rows(const floating* x, void* job, int t,
                                    int n_threads) noexcept nogil:
    """Thread t's chunks of rows (n, g) of the GroupNorm backward, g = dy * w[c] per channel:
        dx = rstd * ((g - mean(g)) - mean(g * xhat) * xhat)   over the row's segments,
    and each chunk's partials of dweight[c] = sum of dy * xhat, dbias[c] = sum of dy."""
    cdef const RowJob* j = <const RowJob*>job
    cdef Py_ssize_t G = j.G, Cg = j.Cg, S = j.S, C = j.G * j.Cg, D = j.Cg * j.S
    cdef Py_ssize_t r, i, c, b, len_b, k_b, o, k
    cdef floating* dx = <floating*>j.out
    cdef const floating* dy = <const floating*>j.dy
    cdef const floating* weight = <const floating*>j.weight
    cdef double* dweight
    cdef double* dbias
    cdef const double* mean = j.mean
    cdef const double* rstd = j.rstd
    cdef bint stream = j.stream
    cdef double rs, w, sum_g, sum_gd, seg_g, seg_gd, s1, s2, m_gxhat
    cdef bint slow
    cdef floating hi, lo
    cdef int kind = j.kind
    cdef floating* stage = <floating*>j.stage + STAGE_ROWS * D * t     # half: x, dy rows
    cdef const floating* xr
    cdef const floating* dyr
    cdef const uint16_t* xh
    cdef const uint16_t* dyh
    cdef Py_ssize_t r_end = min(split_start(j.n_chunks, t + 1, n_threads) * j.chunk, j.M)
    cdef bint ahead = _fetch_next(j, D, 2)            # dy and x
    for r in range(split_start(j.n_chunks, t, n_threads) * j.chunk, r_end):
        xh = <const uint16_t*>j.x + r * D      # half storage: the half loops read these
        dyh = <const uint16_t*>j.dy + r * D
        xr = x + r * D      # half storage: NULL until the rare float64 redo widens the row
        dyr = dy + r * D
        if kind:
            xr = NULL
            dyr = NULL
        k = r // j.chunk
        dweight = j.part + 2 * C * k        # the partials of this row's chunk
        dbias = dweight + C
        split_mean(mean[r], &hi, &lo)
        rs = rstd[r]
        c = (r % G) * Cg
        sum_g = 0
        sum_gd = 0
        slow = False
        # pass 1: per channel segment, sum(dy) and sum(dy * (x - mean)) (short sums, float64)
        for i in range(Cg):
            o = i * S
            seg_g = 0
            seg_gd = 0
            for k_b in range((S + BLOCK - 1) // BLOCK):
                b = k_b * BLOCK
                len_b = S - b if S - b < BLOCK else BLOCK
                if kind:
                    bn_grad_sums_half(kind, &s1, &s2, dyh + o + b, xh + o + b, len_b, hi, lo, NULL)
                else:
                    bn_grad_sums(&s1, &s2, dyr + o + b, xr + o + b, len_b, hi, lo, NULL)
                seg_g += s1
                seg_gd += s2
            w = weight[c + i] if weight != NULL else 1.0
            dbias[c + i] += seg_g
            sum_g += w * seg_g
            sum_gd += w * seg_gd
            if finite(seg_gd * rs):
                dweight[c + i] += seg_gd * rs
            else:               # |x - mean| near DBL_MAX: from O(1) terms
                if xr == NULL:  # half storage: on the widened row
                    xr = stage_in(kind, stage, j.x, r * D, D)
                    dyr = stage_in(kind, stage + D, j.dy, r * D, D)
                dweight[c + i] += sum_g_xhat(dyr + o, xr + o, NULL, NULL, S, hi, lo, rs)
                slow = True
        m_gxhat = rs * sum_gd / D
        if slow or not finite(m_gxhat):     # the same for the row's sum
            if xr == NULL:
                xr = stage_in(kind, stage, j.x, r * D, D)
                dyr = stage_in(kind, stage + D, j.dy, r * D, D)
            m_gxhat = 0
            for i in range(Cg):
                m_gxhat += ((weight[c + i] if weight != NULL else 1.0)
                            * sum_g_xhat(dyr + i * S, xr + i * S, NULL, NULL, S, hi, lo, rs))
            m_gxhat /= D
        # pass 2 (row in cache): dx, segment by segment, the next row fetched meanwhile
        for i in range(Cg):
            o = i * S
            if ahead and r + 1 < r_end:
                _ahead(j, j.dy, (r + 1) * D + o, S)
                _ahead(j, j.x, (r + 1) * D + o, S)
            if kind:
                gn_grad_segment_half(kind, <uint16_t*>j.out + r * D + o, dyh + o, xh + o, S, hi,
                                     lo, <float>rs, weight[c + i] if weight != NULL else 1,
                                     <float>(sum_g / D), <float>m_gxhat, stream)
            else:
                gn_grad_segment(dx + r * D + o, dyr + o, xr + o, S, hi, lo, <floating>rs,
                                weight[c + i] if weight != NULL else 1, <floating>(sum_g / D),
                                <floating>m_gxhat, stream)
    if stream:       # once per thread, after all its streamed stores
        cn_stream_fence()


cdef inline int _check_groups(object x, Py_ssize_t N, Py_ssize_t G, Py_ssize_t Cg,
                              Py_ssize_t S, int kind) except -1:
    check_dims(N, G, Cg, S)
    return _check_rows(x, N * G, Cg * S, kind)


cdef void _group_job(RowJob* j, cnp.ndarray x, int typenum, Py_ssize_t N, Py_ssize_t G,
                     Py_ssize_t Cg, Py_ssize_t S, Py_ssize_t reads) noexcept:
    _start(j, x, typenum, N * G, Cg * S, reads * N * G * Cg * S)
    j.G = G
    j.Cg = Cg
    j.S = S
    j.stream = _use_stream(N * G * Cg * S, S, cnp.PyArray_ITEMSIZE(x), reads >= 2)


def group_norm_forward(cnp.ndarray x not None, Py_ssize_t N, Py_ssize_t G, Py_ssize_t Cg,
                       Py_ssize_t S, weight, bias, double eps, int kind=0):
    """GroupNorm of x viewed as (N, G, Cg, S) with per-channel (G*Cg) weight and bias.
    Returns (y, mean, rstd, var), float64 statistics of shape (N*G,) (var biased).
    InstanceNorm is G = C, Cg = 1. kind: as layer_norm_forward."""
    cdef int typenum = _check_groups(x, N, G, Cg, S, kind)
    check_array(weight, G * Cg, typenum, False, "weight")
    check_array(bias, G * Cg, typenum, False, "bias")
    cdef Py_ssize_t M = N * G
    cdef cnp.ndarray y = empty_like(x)
    cdef cnp.ndarray mean = empty_1d(M, cnp.NPY_DOUBLE), rstd = empty_1d(M, cnp.NPY_DOUBLE)
    cdef cnp.ndarray var = empty_1d(M, cnp.NPY_DOUBLE)
    cdef RowJob j
    if M * Cg * S == 0:         # an empty row has no statistics (torch gives nan)
        mean.fill(float("nan"))
        rstd.fill(float("nan"))
        var.fill(float("nan"))
        return y, mean, rstd, var
    _group_job(&j, x, typenum, N, G, Cg, S, 1)
    j.eps = eps
    j.out = cnp.PyArray_DATA(y)
    j.mean = <double*>cnp.PyArray_DATA(mean)
    j.rstd = <double*>cnp.PyArray_DATA(rstd)
    j.var = <double*>cnp.PyArray_DATA(var)
    j.weight = data_or_null(weight)
    j.bias = data_or_null(bias)
    _start_stage(&j, kind)
    with nogil:
        run_threads(j.typenum, j.x, &j, j.n_threads,
                    _group_norm_forward_rows[float], _group_norm_forward_rows[double])
    free(j.stage)
    return y, mean, rstd, var


def group_norm_backward(cnp.ndarray dy not None, cnp.ndarray x not None, Py_ssize_t N,
                        Py_ssize_t G, Py_ssize_t Cg, Py_ssize_t S, cnp.ndarray mean not None,
                        cnp.ndarray rstd not None, weight, int kind=0):
    """GroupNorm backward. Returns (dx like x, dweight (C,), dbias (C,)) in the input dtype
    (kind: as layer_norm_backward)."""
    cdef int typenum = _check_groups(x, N, G, Cg, S, kind)
    check_array(dy, N * G * Cg * S, cnp.NPY_UINT16 if kind else typenum, False, "grad_output")
    check_array(mean, N * G, cnp.NPY_DOUBLE, False, "mean")
    check_array(rstd, N * G, cnp.NPY_DOUBLE, False, "rstd")
    check_array(weight, G * Cg, typenum, False, "weight")
    cdef Py_ssize_t C = G * Cg
    cdef cnp.ndarray dx = empty_like(x)
    cdef cnp.ndarray dw = empty_1d(C, cnp.NPY_DOUBLE if kind else typenum)
    cdef cnp.ndarray db = empty_1d(C, cnp.NPY_DOUBLE if kind else typenum)
    cdef RowJob j
    if N * G * Cg * S == 0:     # empty rows have no statistics: zero parameter gradients
        dw.fill(0)
        db.fill(0)
        return dx, dw, db
    _group_job(&j, x, typenum, N, G, Cg, S, 2)
    j.chunk = chunk_size(N * G, Cg * S, CHUNK_ELEMENTS, 1, MAX_CHUNKS)
    j.n_chunks = (N * G + j.chunk - 1) // j.chunk
    j.part = <double*>calloc(j.n_chunks * 2 * C + 1, sizeof(double))    # dweight, dbias
    if j.part == NULL:
        raise MemoryError()
    j.out = cnp.PyArray_DATA(dx)
    j.dy = cnp.PyArray_DATA(dy)
    j.mean = <double*>cnp.PyArray_DATA(mean)
    j.rstd = <double*>cnp.PyArray_DATA(rstd)
    j.weight = data_or_null(weight)
    try:
        _start_stage(&j, kind)
    except MemoryError:
        free(j.part)
        raise
    with nogil:
        run_threads(j.typenum, j.x, &j, j.n_threads,
                    _group_norm_backward_rows[float], _group_norm_backward_rows[double])
    sum_partials(cnp.PyArray_TYPE(dw), cnp.PyArray_DATA(dw), cnp.PyArray_DATA(db), j.part, C,
                 j.n_chunks, 2 * C)
    free(j.part)
    free(j.stage)
    return dx, dw, db
