# cython: language_level=3, boundscheck=False, wraparound=False
"""The kernels' large outputs, from a small pool of the buffers of freed outputs.

Why: a training loop frees its outputs (y, dx) together at the end of a step, and glibc
then gives the top of its heap back to the kernel (``brk``) or unmaps the buffer; the next
step's outputs come back as fresh pages, and writing them costs a page fault and a page
clear per 4 KiB: measured with ``perf record``, 30-40% of a LayerNorm forward+backward of
(4096, 64) through the torch drop-in went to ``exc_page_fault`` / ``clear_page_erms``.
A pooled buffer is already mapped.

An output of at least ``MIN_BYTES`` is an array on a 64-byte aligned block whose base object
returns the block to the pool when the array (or the torch tensor on it) is freed. The
pool keeps freed blocks by exact size (a loop asks for the same sizes again), newest
first, at most ``max_bytes`` in all (:func:`set_max_bytes`; 0: no pool, every block is
freed at once). Allocation and release run with the GIL held (array creation before the
kernels' nogil sections, object deallocation), which serializes them.
"""

cimport numpy as cnp
from cpython.ref cimport Py_INCREF
from libc.stdint cimport uintptr_t
from libc.stdlib cimport free


cnp.import_array()

cdef Py_ssize_t MIN_BYTES = 256 * 1024  # smaller ones: np.empty (malloc's bins are warm)
cdef Py_ssize_t _max_bytes = 64 * 1024 * 1024
cdef Py_ssize_t _kept_bytes = 0
cdef dict _free = {}  # nbytes -> [address, ...] of free blocks, the newest last


cdef void _release(void* data, Py_ssize_t nbytes) noexcept:
    global _kept_bytes
    cdef list blocks
    if _free is None or _kept_bytes + nbytes > _max_bytes:  # interpreter teardown, or full
        free(data)
        return
    blocks = _free.get(nbytes)
    if blocks is None:
        blocks = []
        _free[nbytes] = blocks
    blocks.append(<uintptr_t>data)
    _kept_bytes += nbytes


cdef class _Block:
    """Owns one block; gives it back to the pool when the array on it is freed."""

    cdef void* data
    cdef Py_ssize_t nbytes

    def __dealloc__(self):
        if self.data != NULL:
            _release(self.data, self.nbytes)


cdef void* _take(Py_ssize_t nbytes):
    global _kept_bytes
    cdef list blocks = _free.get(nbytes)
    if blocks:
        _kept_bytes -= nbytes
        return <void*><uintptr_t>blocks.pop()
    # 64-byte aligned: with malloc's 16, every other 32-byte vector store of an output
    # would span two cache lines (no wall-clock difference was measurable here; it costs
    # nothing)
    return aligned_block(nbytes)


cdef cnp.ndarray pooled_empty(int nd, cnp.npy_intp* dims, int typenum):
    """``np.empty(dims, typenum)``, C order; from the pool when large enough."""
    cdef Py_ssize_t nbytes = cnp.PyArray_DescrFromType(typenum).itemsize
    cdef int i
    for i in range(nd):
        nbytes *= dims[i]
    if nbytes < MIN_BYTES or _max_bytes == 0:
        return cnp.PyArray_EMPTY(nd, dims, typenum, 0)
    cdef _Block block = _Block.__new__(_Block)
    block.data = _take(nbytes)
    if block.data == NULL:
        raise MemoryError()
    block.nbytes = nbytes
    cdef cnp.ndarray arr = cnp.PyArray_SimpleNewFromData(nd, dims, typenum, block.data)
    Py_INCREF(block)  # PyArray_SetBaseObject steals a reference to it
    cnp.PyArray_SetBaseObject(arr, block)
    return arr


def set_max_bytes(Py_ssize_t n):
    """Keep at most ``n`` bytes of freed output buffers (0: none); returns the old bound.
    Shrinking frees what is over it."""
    global _max_bytes, _kept_bytes
    old = _max_bytes
    _max_bytes = max(n, 0)
    cdef list blocks
    for nbytes in list(_free):
        blocks = _free[nbytes]
        while blocks and _kept_bytes > _max_bytes:
            free(<void*><uintptr_t>blocks.pop())
            _kept_bytes -= nbytes
        if not blocks:
            del _free[nbytes]
    return old


def kept_bytes():
    """The bytes of freed buffers the pool holds now."""
    return _kept_bytes
