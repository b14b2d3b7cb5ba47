"""Thread control for the cnorm kernels.

The thread count in effect is ``omp_get_max_threads()`` of the calling thread (so
``OMP_NUM_THREADS``, threadpoolctl's ``threadpool_limits`` and ``torch.set_num_threads``
apply: torch and cnorm share one libgomp), capped by the process-wide limit that
:func:`set_num_threads` sets for cnorm alone.
"""

# 0 = not set: follow the OpenMP runtime of the calling thread.
cdef int _user_threads = 0
# omp_get_max_threads() when set_num_threads was called: a lower value later means a
# threadpoolctl limit (or torch.set_num_threads) lowered the runtime since, and wins.
cdef int _omp_at_set = 0


cdef int effective_n_threads() noexcept nogil:
    cdef int omp = omp_get_max_threads()
    cdef int n = omp
    if _user_threads > 0:
        n = _user_threads if omp >= _omp_at_set else min(_user_threads, omp)
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
    """Use ``n >= 1`` threads in the cnorm kernels, from every Python thread.

    cnorm's own setting: the OpenMP runtime (shared with torch) is left as it is, so
    ``torch.get_num_threads()`` does not change. A later ``threadpoolctl.threadpool_limits``
    (or anything else that lowers the OpenMP thread count) still lowers it temporarily.
    """
    global _user_threads, _omp_at_set
    if n < 1:
        raise ValueError(f"the number of threads must be at least 1, got {n}")
    _user_threads = n
    _omp_at_set = omp_get_max_threads()
