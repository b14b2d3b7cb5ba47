cimport numpy as cnp


cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void** memptr, size_t alignment, size_t size)


cdef inline void* aligned_block(size_t nbytes) noexcept nogil:
    """nbytes (at least 1) on whole 64-byte cache lines, NULL when out of memory (free()
    releases it): a vector load or store in it never splits a line."""
    cdef void* p = NULL
    if posix_memalign(&p, 64, nbytes if nbytes > 0 else 1) != 0:
        return NULL
    return p


cdef cnp.ndarray pooled_empty(int nd, cnp.npy_intp* dims, int typenum)
