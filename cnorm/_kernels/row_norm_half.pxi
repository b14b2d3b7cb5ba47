# Included by row_norm.pyx (at its end): half storage. The row walks widen each row into
# the thread's RowJob.stage; the jobs get it here. And the conversions as entry points
# (the Python layer widens parameters and rounds float64 results with them): float16 /
# bfloat16 bits (uint16 arrays) <-> float32 (or float64) arrays, parallel over chunks.

from cython.parallel cimport prange

cdef int _start_stage(RowJob* j, int kind) except -1:
    """Half storage: the job's kind and its per-thread float32 rows (free j.stage)."""
    j.kind = kind
    if kind:
        j.stream = False            # the loops write the rows in cache
        j.stage = <float*>malloc(j.n_threads * STAGE_ROWS * j.D * sizeof(float) + 1)
        if j.stage == NULL:
            raise MemoryError()
    return 0


cdef void _run_forward(RowJob* j) noexcept:
    with nogil:
        run_threads(j.typenum, j.x, j, j.n_threads,
                    _layer_norm_forward_rows[float], _layer_norm_forward_rows[double])
    free(j.stage)


cdef enum:
    CONVERT_CHUNK = 16384   # elements per conversion call: threads take whole chunks


cdef void _convert(void* dst, const void* src, Py_ssize_t n, int kind, int typenum,
                   bint widen) noexcept nogil:
    """dst <- src converted, n elements: half bits (kind 1 float16, 2 bfloat16) widened to
    the compute type of typenum (float32/float64), or narrowed to them (once, to nearest even)."""
    cdef Py_ssize_t k, i, m
    cdef int n_threads = n_threads_for(n)
    for k in prange((n + CONVERT_CHUNK - 1) // CONVERT_CHUNK, schedule='static',
                    num_threads=n_threads):
        i = k * CONVERT_CHUNK
        m = min(n - i, <Py_ssize_t>CONVERT_CHUNK)
        if typenum == cnp.NPY_FLOAT:
            _convert_chunk(<float*>dst + i if widen else <float*>src + i,
                           <uint16_t*>src + i if widen else <uint16_t*>dst + i, m, kind, widen)
        else:
            _convert_chunk(<double*>dst + i if widen else <double*>src + i,
                           <uint16_t*>src + i if widen else <uint16_t*>dst + i, m, kind, widen)


cdef inline void _convert_chunk(floating* wide, uint16_t* bits, Py_ssize_t n, int kind,
                                bint widen) noexcept nogil:
    if widen:
        stage_in(kind, wide, bits, 0, n)
    else:
        stage_out(kind, bits, 0, wide, n)


cdef int _check_kind(int kind) except -1:
    if kind != 1 and kind != 2:
        raise ValueError(f"kind must be 1 (float16) or 2 (bfloat16), got {kind}")
    return 0


def widen_half(cnp.ndarray bits not None, int kind, bint double=False):
    """A new float32 (float64 with double) array of the shape of `bits`, the values of the
    half-precision bits (uint16, C-contiguous; kind 1 float16, 2 bfloat16), exactly."""
    _check_kind(kind)
    check_array(bits, cnp.PyArray_SIZE(bits), cnp.NPY_UINT16, False, "bits")
    cdef int typenum = cnp.NPY_DOUBLE if double else cnp.NPY_FLOAT
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(cnp.PyArray_NDIM(bits), cnp.PyArray_DIMS(bits),
                                             typenum, 0)
    with nogil:
        _convert(cnp.PyArray_DATA(out), cnp.PyArray_DATA(bits), cnp.PyArray_SIZE(bits), kind,
                 typenum, True)
    return out


def narrow_half(cnp.ndarray x not None, int kind):
    """A new uint16 array of the shape of x (float32/float64, C-contiguous): the bits of x
    rounded once to nearest even to float16 (kind 1) or bfloat16 (kind 2)."""
    _check_kind(kind)
    cdef int typenum = input_typenum(x, "x")
    check_array(x, cnp.PyArray_SIZE(x), typenum, False, "x")
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(cnp.PyArray_NDIM(x), cnp.PyArray_DIMS(x),
                                             cnp.NPY_UINT16, 0)
    with nogil:
        _convert(cnp.PyArray_DATA(out), cnp.PyArray_DATA(x), cnp.PyArray_SIZE(x), kind, typenum,
                 False)
    return out
