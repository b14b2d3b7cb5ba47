# OpenMP thread control shared by every kernel module (cimport this, never omp.h directly,
# so a build without OpenMP still compiles: the functions fall back to one thread).

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define CNORM_OPENMP 1
    #else
    #define CNORM_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    #endif
    """
    const bint CNORM_OPENMP
    int omp_get_max_threads() noexcept nogil

# Elements a thread must have before another one is worth waking: below this the
# fork/join costs more than the work (a few microseconds).
cdef enum:
    GRAIN = 32768

cdef int effective_n_threads() noexcept nogil
cdef int n_threads_for(Py_ssize_t n_elements) noexcept nogil
