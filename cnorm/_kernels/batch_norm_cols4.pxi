# Included by batch_norm.pyx (and used by batch_norm_half.pxi): how the normalize and
# input-gradient passes walk the rows of an (N, C) batch (S = 1, channels last): short
# rows in groups, as rows of group * C elements, and which rows go four at a time.

# (N, C) rows of at most this many channels go four rows per coefficient load (the _cols4
# loops), longer ones one row at a time (as streamed outputs always do); one switch per
# pass. Measured (1 thread, paired, noisy VM): four rows ~1.5x faster in both passes at
# C = 64, ~1.1x at 128. Above 128 the kernel alone (NumPy buffers) ran 1.1-1.4x faster
# four rows at a time for C = 96-768 (2026-12-02), but not the drop-in (torch's buffers,
# other page offsets): at (6272, 256) the normalize even to 0.88-1.12x either way in
# float32 and 2-10% slower in half, the input gradient 1.04-1.3x slower. Rows 4 KiB apart
# (float32 C = 1024) ran ~1.6x slower four at a time (their loads alias the stores of the
# rows before, 4K aliasing): _four_rows keeps them on one row whatever the switch. Tests:
# the same bits either way.
cdef Py_ssize_t cols4_max_c = 128
cdef Py_ssize_t grad_cols4_max_c = 128


cdef inline bint _four_rows(Py_ssize_t C, Py_ssize_t itemsize, Py_ssize_t max_c) noexcept nogil:
    """(N, C) rows of itemsize-byte elements go four at a time: C <= max_c and the row
    stride not within 256 bytes of a multiple of 4 KiB (from 4 KiB on)."""
    cdef Py_ssize_t stride = C * itemsize, off = stride % 4096
    return C <= max_c and (stride < 4096 - 256 or 256 <= off <= 4096 - 256)


def four_rows_choice(Py_ssize_t C, Py_ssize_t itemsize):
    """(normalize, input gradient): whether (N, C) rows of itemsize-byte elements go
    four at a time under the present switches (tests)."""
    return _four_rows(C, itemsize, cols4_max_c), _four_rows(C, itemsize, grad_cols4_max_c)


def set_cols4_max_channels(c, grad_c=None):
    """The widest (N, C) row the normalize (c) and input-gradient (grad_c; None: c)
    passes take four rows at a time; returns the previous pair (c takes it back)."""
    global cols4_max_c, grad_cols4_max_c
    old = (cols4_max_c, grad_cols4_max_c)
    if isinstance(c, tuple):
        c, grad_c = c
    cols4_max_c = c
    grad_cols4_max_c = c if grad_c is None else grad_c
    return old


# Rows shorter than a vector loop's worth go through the elementwise passes row_group at a
# time, as one row of row_group * C elements with the coefficients tiled row_group times
# (Job.row_group, _group_rows): the same operations per element, so the same bits. Streamed
# outputs group rows to at least STREAM_MIN_RUN elements (one call per row of C = 64
# could not stream: the channels-last eval normalize of (32, 64, 56, 56) float32 ran 1.9x
# slower than the NCHW one, 2026-12-02); the others group rows of fewer than
# SHORT_ROW channels up to SHORT_ROW_GROUP elements, which then go four at a time (a call
# per four rows of C = 4 cost ~6x the NCHW pass).
cdef enum:
    SHORT_ROW = 32
    SHORT_ROW_GROUP = 128


cdef inline Py_ssize_t _row_group(Py_ssize_t C, bint stream) noexcept nogil:
    """Rows of C channels per call of the (N, C) elementwise loops."""
    if stream:
        return (STREAM_MIN_RUN + C - 1) // C if 0 < C < STREAM_MIN_RUN else 1
    return SHORT_ROW_GROUP // C if 0 < C < SHORT_ROW else 1


cdef inline void _tile(void* row, Py_ssize_t C, Py_ssize_t group, size_t itemsize) noexcept nogil:
    """row[0:C] repeated group times in row[0:group * C] (doubling copies)."""
    cdef size_t have = C * itemsize, want = group * C * itemsize
    while have < want:
        memcpy(<char*>row + have, row, min(have, want - have))
        have += min(have, want - have)


cdef void _group_rows(Job* j, bint grad) noexcept nogil:
    """j.row_group of the elementwise pass about to run (after j.stream; _row_group)
    and its coefficients, j.grad's or j.norm's, tiled to row_group * C."""
    cdef size_t size = 4 if j.typenum == cnp.NPY_FLOAT else 8     # half: float32 coefficients
    cdef void* rows[6]
    cdef int k, n_rows = 6 if grad else 4
    j.row_group = _row_group(j.C, j.stream) if j.S == 1 else 1
    if j.row_group == 1:
        return
    rows[0] = j.grad.hi if grad else j.norm.hi
    rows[1] = j.grad.lo if grad else j.norm.lo
    rows[2] = j.grad.invstd if grad else j.norm.scale
    rows[3] = j.grad.k1 if grad else j.norm.beta
    rows[4] = j.grad.mean_dy
    rows[5] = j.grad.mean_dy_xhat
    for k in range(n_rows):
        _tile(rows[k], j.C, j.row_group, size)
