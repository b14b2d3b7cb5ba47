"""The public thread API: :func:`set_num_threads`, :func:`get_num_threads`,
:func:`openmp_enabled`, the cap :data:`MAX_THREADS`, and fork safety.

The kernels' own setter (``set_num_threads(int n)`` of the kernel module) takes any C int;
this layer accepts positive Python/NumPy integers only, up to :data:`MAX_THREADS`: libgomp
aborts the whole process ("Thread creation failed") when it cannot start a thread, so a
huge count must never reach it.

Fork: libgomp is not fork-safe. A child forked after the parent ran a parallel region
(cnorm's or torch's: they share one runtime) inherits a thread pool whose threads do not
exist in it, and its first parallel region waits for them forever. So a forked child runs
cnorm on one thread, which never enters a parallel region (the kernels call their loops
directly when they have one thread), until it calls :func:`set_num_threads` itself. This
is what torch's DataLoader does for its workers (``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import numbers
import os

from ._kernels import openmp as _kernel_threads  # the one import of the kernel module

__all__ = ["MAX_THREADS", "get_num_threads", "openmp_enabled", "set_num_threads"]

#: The most threads :func:`set_num_threads` accepts: 4 per CPU of this machine, and at
#: least 256. More buys nothing (the kernels split a job into at most one piece per 32k
#: elements) and each thread reserves a stack, so a huge count under a memory limit ends
#: the process inside the OpenMP runtime, where no Python exception can be raised.
MAX_THREADS = max(256, 4 * (os.cpu_count() or 1))

openmp_enabled = _kernel_threads.openmp_enabled

# True in a forked child until it calls set_num_threads: it runs serially.
_serial_after_fork = False


def get_num_threads() -> int:
    """Number of threads the kernels use for large inputs when called from this thread.

    A build without OpenMP runs on one thread whatever :func:`set_num_threads` said; so
    does a forked child until it calls :func:`set_num_threads` (see the module docstring).
    """
    return _kernel_threads.get_num_threads() if _kernel_threads.openmp_enabled() else 1


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (an integer, ``1 <= n <= MAX_THREADS``) in the cnorm kernels, from
    every Python thread.

    cnorm's own setting: the OpenMP runtime (shared with torch) is left as it is, so
    ``torch.get_num_threads()`` does not change. A later ``threadpoolctl.threadpool_limits``
    (or anything else that lowers the OpenMP thread count) still lowers it temporarily.

    In a forked child (after ``os.fork()``, in a ``multiprocessing`` 'fork' worker) cnorm
    runs on one thread; calling this there with ``n > 1`` starts parallel regions again,
    which can hang if the parent had run one (libgomp is not fork-safe; torch's own ops
    hang the same way after ``torch.set_num_threads(n)`` in a forked child).
    """
    global _serial_after_fork
    # bool is an Integral, and a float/str would be truncated or parsed: refuse them, as
    # torch.set_num_threads does
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"set_num_threads expects an integer, got {type(n).__name__} {n!r}")
    n = int(n)
    if n < 1:
        raise ValueError(f"the number of threads must be at least 1, got {n}")
    if n > MAX_THREADS:
        raise ValueError(
            f"the number of threads must be at most cnorm.MAX_THREADS = "
            f"{MAX_THREADS} (4 per CPU, at least 256), got {n}"
        )
    _kernel_threads.set_num_threads(n)
    _serial_after_fork = False


def _run_serially_in_forked_child() -> None:
    """``os.register_at_fork(after_in_child=...)``: the child's kernels use one thread.

    Nothing here may touch the OpenMP runtime beyond reading its settings: the kernel
    setter only stores the limit and reads ``omp_get_max_threads()``.
    """
    global _serial_after_fork
    _kernel_threads.set_num_threads(1)
    _serial_after_fork = True


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_run_serially_in_forked_child)
