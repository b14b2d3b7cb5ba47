"""Thread control for the cnorm kernels.

The thread count in effect is ``omp_get_max_threads()`` of the calling thread (so
``OMP_NUM_THREADS`` and threadpoolctl's ``threadpool_limits`` apply), capped by the
process-wide limit that :func:`set_num_threads` sets.
"""

# 0 = no process-wide cap: follow the OpenMP runtime of the calling thread.
cdef int _user_cap = 0


cdef int effective_n_threads() noexcept nogil:
    cdef int n = omp_get_max_threads()
    if _user_cap > 0 and _user_cap < n:
        n = _user_cap
    return n if n > 0 else 1


cdef int n_threads_for(Py_ssize_t n_elements) noexcept nogil:
    """Threads to use on a job of n_elements: all of them for big jobs, one for tiny ones."""
    cdef int n = effective_n_threads()
    cdef Py_ssize_t useful = n_elements // GRAIN
    if useful < n:
        n = <int>useful if useful > 1 else 1
    return n


def openmp_enabled():
    """True when the kernels were built with OpenMP (parallel), False for a serial build."""
    return bool(CNORM_OPENMP)


def get_num_threads():
    """Number of threads the kernels use for large inputs when called from this thread."""
    return effective_n_threads()


def set_num_threads(int n):
    """Set the number of threads the kernels use (``n >= 1``).

    Sets the OpenMP thread count of the calling thread and caps every other thread at
    ``n``. ``threadpoolctl.threadpool_limits`` still lowers it temporarily.
    """
    global _user_cap
    if n < 1:
        raise ValueError(f"the number of threads must be at least 1, got {n}")
    _user_cap = n
    omp_set_num_threads(n)
