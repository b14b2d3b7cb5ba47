"""A parallel streaming copy: the memory bandwidth behind the "x floor" column of
``python -m cnorm bench`` (private; :func:`cnorm.benchmarks.timing.stream_bandwidth`
times it).

``dst[:] = src`` (STREAM's "copy"), one contiguous share per thread at the kernels' own
thread count (:func:`cnorm.set_num_threads`), in the two store kinds the kernels use:
ordinary stores (each line of ``dst`` is read in before it is written: write-allocate)
and, on x86-64, non-temporal stores (straight to memory), which the kernels use for
outputs of 10 MB and more.
"""

from .openmp cimport effective_n_threads

from cython.parallel cimport prange

cdef extern from *:
    """
    #include <stddef.h>
    #include <stdint.h>
    #if defined(__SSE2__) || defined(_M_X64) || defined(_M_AMD64)
    #include <emmintrin.h>
    #define CN_COPY_CAN_STREAM 1
    #else
    #define CN_COPY_CAN_STREAM 0
    #endif

    /* dst = src + 0.0: the add (it changes only -0.0) keeps the compiler from turning the
       loop into a memcpy call, whose large-size paths pick their own store kind. */
    static void cn_copy_cached(double* __restrict dst, const double* __restrict src, ptrdiff_t n)
    {
        ptrdiff_t i;
        for (i = 0; i < n; i++) dst[i] = src[i] + 0.0;
    }

    static void cn_copy_streamed(double* __restrict dst, const double* __restrict src, ptrdiff_t n)
    {
    #if CN_COPY_CAN_STREAM
        ptrdiff_t i = 0;
        for (; i < n && ((uintptr_t)(dst + i) % 16) != 0; i++) dst[i] = src[i] + 0.0;
        for (; i + 8 <= n; i += 8) {  /* one 64-byte line per step */
            _mm_stream_pd(dst + i, _mm_loadu_pd(src + i));
            _mm_stream_pd(dst + i + 2, _mm_loadu_pd(src + i + 2));
            _mm_stream_pd(dst + i + 4, _mm_loadu_pd(src + i + 4));
            _mm_stream_pd(dst + i + 6, _mm_loadu_pd(src + i + 6));
        }
        for (; i < n; i++) dst[i] = src[i] + 0.0;
        _mm_sfence();
    #else
        cn_copy_cached(dst, src, n);
    #endif
    }
    """
    const bint CN_COPY_CAN_STREAM
    void cn_copy_cached(double* dst, const double* src, Py_ssize_t n) noexcept nogil
    void cn_copy_streamed(double* dst, const double* src, Py_ssize_t n) noexcept nogil


def can_stream():
    """True where :func:`stream_copy` has non-temporal stores (x86-64)."""
    return bool(CN_COPY_CAN_STREAM)


def stream_copy(double[::1] dst, const double[::1] src, bint streamed=False):
    """``dst[:] = src`` on the kernels' thread count, one contiguous share per thread
    (``streamed``: non-temporal stores where :func:`can_stream`); returns the number of
    threads it ran on."""
    cdef Py_ssize_t n = src.shape[0]
    if dst.shape[0] != n:
        raise ValueError(f"stream_copy: dst has {dst.shape[0]} elements, src {n}")
    cdef int n_threads = effective_n_threads()
    cdef Py_ssize_t share = (n + n_threads - 1) // n_threads
    cdef Py_ssize_t t, lo, hi
    with nogil:
        for t in prange(n_threads, schedule="static", num_threads=n_threads):
            lo = t * share
            hi = min(lo + share, n)
            if lo < hi:
                if streamed:
                    cn_copy_streamed(&dst[lo], &src[lo], hi - lo)
                else:
                    cn_copy_cached(&dst[lo], &src[lo], hi - lo)
    return n_threads
