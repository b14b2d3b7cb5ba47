"""Thread control for the cnorm kernels.

The thread count in effect is ``omp_get_max_threads()`` of the calling thread (so
``OMP_NUM_THREADS``, threadpoolctl's ``threadpool_limits`` and ``torch.set_num_threads``
apply: torch and cnorm share one libgomp), capped by the process-wide limit that
:func:`set_num_threads` sets for cnorm alone.
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
    """Limit the cnorm kernels to ``n >= 1`` threads, in every Python thread.

    A cap on cnorm alone: the OpenMP runtime (shared with torch) is left as it is, so the
    count in effect is ``min(n, omp_get_max_threads())`` — raise ``OMP_NUM_THREADS`` (or
    ``torch.set_num_threads``) to go above the runtime's count;
    ``threadpoolctl.threadpool_limits`` still lowers it temporarily.
    """
    global _user_cap
    if n < 1:
        raise ValueError(f"the number of threads must be at least 1, got {n}")
    _user_cap = n
