# Included by every kernel module: the SIMD build in use and the streaming threshold are
# statics of each extension (simd/simd.h is compiled into each one), so each module has
# its own controls. All builds give the same bits: the tests check that.

from .simd.loops cimport (CN_N_BUILDS, cn_build_in_use, cn_build_names, cn_simd_available,
                          cn_prefetch_on, cn_simd_init, cn_simd_select, cn_simd_set,
                          cn_stream_min_bytes)

cn_simd_init()


def _simd_builds():
    """The SIMD builds of this module that the CPU runs, most portable first."""
    return tuple(cn_build_names[b].decode() for b in range(CN_N_BUILDS) if cn_simd_available(b))


def _simd_build():
    """The name of the SIMD build in use."""
    return cn_build_names[cn_build_in_use].decode()


def _set_simd_build(str name):
    """Use the named build when the CPU runs it (see _simd_builds); returns the one in use."""
    cdef int b
    for b in range(CN_N_BUILDS):
        if cn_build_names[b].decode() == name:
            cn_simd_select(b)
    return _simd_build()


def _set_simd(bint use_avx2):
    """Use the AVX2 (True, when the CPU has it) or the baseline loops; returns which runs."""
    return bool(cn_simd_set(use_avx2))


def _set_stream_min_bytes(Py_ssize_t n):
    """Outputs of at least n bytes are written with non-temporal stores; returns the old
    threshold (for benchmarks and tests)."""
    global cn_stream_min_bytes
    old = cn_stream_min_bytes
    cn_stream_min_bytes = n
    return old


def _set_prefetch(bint on):
    """Software prefetches on (True) or off; returns the old choice (benchmarks and tests:
    a speed choice only)."""
    global cn_prefetch_on
    old = bool(cn_prefetch_on)
    cn_prefetch_on = on
    return old
