# Included by every kernel module: the SIMD flag and the streaming threshold of _simd.h
# are statics of each extension (one copy per .so), so each module needs these controls.

cn_simd_init()


def _set_simd(bint use_avx2):
    """Use the AVX2 (True, when the CPU has it) or the baseline loops; returns which runs.
    Both give the same bits: the tests check that."""
    return bool(cn_simd_set(use_avx2))


def _set_stream_min_bytes(Py_ssize_t n):
    """Outputs of at least n bytes are written with non-temporal stores; returns the old
    threshold (for benchmarks and tests)."""
    global cn_stream_min_bytes
    old = cn_stream_min_bytes
    cn_stream_min_bytes = n
    return old
