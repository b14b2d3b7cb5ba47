"""The pool of freed output buffers that the kernels reuse (``cnorm/_kernels/pool.pyx``):
a large output written into fresh pages costs a page fault per 4 KiB, a recycled one
does not."""

from __future__ import annotations

import numbers

from ._kernels import pool as _pool

__all__ = ["set_output_pool_bytes"]


def set_output_pool_bytes(n: int) -> int:
    """Keep at most ``n`` bytes of freed output buffers (of 256 KiB and more) for the next
    outputs of the same size; 0 turns the pool off (and frees what it holds). Returns the
    previous bound (default: 64 MiB)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"set_output_pool_bytes expects a non-negative integer, got {n!r}")
    return _pool.set_max_bytes(int(n))
