# Included by batch_norm.pyx (and used by batch_norm_half.pxi): which (N, C) rows the
# normalize and input-gradient passes take four at a time.

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
