"""The one table of the C inner loops (simd/loops.h) and of simd.h's runtime controls.

At build time setup.py generates from it (cnorm/_build_utils/simd_codegen.py):
  simd/dispatch.h   loops.h instantiated per (dtype, build), the per-dtype tables of
                    loops, and one dispatcher per loop and dtype: cn_<loop>_<dtype>(...)
  simd/loops.pxd    their Cython declarations, the fused type ``floating`` of the dtypes,
                    and one fused wrapper per loop, named as the loop
tests/test_simd_table.py checks that loops.h and simd.h define exactly what is listed here.
Parameters are C; T is the element type, ptrdiff_t is Py_ssize_t on the Cython side; in
HALF_LOOPS X is the storage type (uint16_t bits) and T the compute type (float).
Pure data: no imports (it is read by file path at build time).
"""

# (suffix, C element type, integer type of the same size: the lane masks)
DTYPES = [
    ("f", "float", "int32_t"),
    ("d", "double", "int64_t"),
]

# (name, vector bytes (0: scalar lanes, plain C99), C condition for the build to exist,
#  GCC/Clang target of its loops or None). Listed from the most portable to the fastest:
#  the default is the last one that the compiler built and the CPU runs.
BUILDS = [
    ("scalar", 0, "1", None),
    ("base", 16, "CN_GNU", None),
    ("avx2", 32, "CN_HAVE_AVX2_BUILD", "avx2"),
    ("avx512", 64, "CN_HAVE_AVX512_BUILD", "avx512f,avx512bw,avx512dq,avx512vl,avx2,f16c"),
]

# (name, return type, parameters): the loops, in the order of loops.h (reduce.h, elementwise.h,
# convert.h)
LOOPS = [
    # reductions over a contiguous block (<= BLOCK elements), summed over the lanes
    ("block_sum", "double", "const T* x, ptrdiff_t n"),
    ("block_dev", "void", "double* s1, double* s2, const T* x, ptrdiff_t n, T shift"),
    ("runs_stats", "void", "double* mean, double* m2, const T* x, ptrdiff_t n, ptrdiff_t nrows"),
    (
        "bn_grad_sums",
        "void",
        "double* s_dy, double* s_dyd, const T* dy, const T* x, ptrdiff_t n, T hi, T lo, const T* ym",
    ),
    (
        "ln_grad_sums",
        "void",
        (
            "double* s_g, double* s_gd, T* tw, T* tb, const T* dy, const T* x, const T* w, ptrdiff_t n, "
            "T hi, T lo, T rs"
        ),
    ),
    (
        "ln_grad_sums2",
        "void",
        (
            "double* s_g, double* s_gd, T* tw, T* tb, const T* dy0, const T* dy1, const T* x0, "
            "const T* x1, const T* w, ptrdiff_t n, T hi0, T lo0, T rs0, T hi1, T lo1, T rs1"
        ),
    ),
    # (N, C) tiles: one lane per channel
    ("cols_sum", "void", "T* s, const T* x, ptrdiff_t ld, ptrdiff_t nrows, ptrdiff_t n"),
    (
        "cols_dev",
        "void",
        "T* s1, T* s2, const T* x, ptrdiff_t ld, ptrdiff_t nrows, const T* shift, ptrdiff_t n",
    ),
    (
        "bn_grad_sums_cols",
        "void",
        (
            "T* s1, T* s2, const T* dy, const T* x, ptrdiff_t ld, ptrdiff_t nrows, const T* hi, "
            "const T* lo, ptrdiff_t n, const T* ym"
        ),
    ),
    (
        "cols_merge",
        "void",
        (
            "double* mean, double* m2, const T* shift, const T* s1, const T* s2, ptrdiff_t n, "
            "double count_a, double nb"
        ),
    ),
    ("cols_any_unsafe", "int", "const T* s1, const T* s2, const T* shift, ptrdiff_t n"),
    # elementwise
    ("affine", "void", "T* y, const T* x, ptrdiff_t n, T hi, T lo, T scale, T beta, int stream, int relu"),
    (
        "runs_affine",
        "void",
        (
            "T* y, const T* x, ptrdiff_t n, ptrdiff_t nrows, const T* hi, const T* lo, const T* scale, "
            "const T* beta, int relu"
        ),
    ),
    (
        "affine_cols",
        "void",
        (
            "T* y, const T* x, ptrdiff_t n, const T* hi, const T* lo, const T* scale, const T* beta, "
            "int stream, int relu"
        ),
    ),
    (
        "affine_cols4",
        "void",
        (
            "T* y, const T* x, ptrdiff_t ld, ptrdiff_t n, const T* hi, const T* lo, const T* scale, "
            "const T* beta, int relu"
        ),
    ),
    ("ln_row", "void", "T* y, const T* x, const T* w, const T* b, ptrdiff_t n, T hi, T lo, T rs, int stream"),
    (
        "bn_grad",
        "void",
        (
            "T* dx, const T* dy, const T* x, ptrdiff_t n, T hi, T lo, T invstd, T k1, T mean_dy, "
            "T mean_dy_xhat, int stream, const T* ym"
        ),
    ),
    (
        "bn_grad_cols",
        "void",
        (
            "T* dx, const T* dy, const T* x, ptrdiff_t n, const T* hi, const T* lo, const T* invstd, "
            "const T* k1, const T* mean_dy, const T* mean_dy_xhat, int stream, const T* ym"
        ),
    ),
    (
        "bn_grad_cols4",
        "void",
        (
            "T* dx, const T* dy, const T* x, ptrdiff_t ld, ptrdiff_t n, const T* hi, const T* lo, "
            "const T* invstd, const T* k1, const T* mean_dy, const T* mean_dy_xhat, const T* ym"
        ),
    ),
    (
        "ln_grad_row",
        "void",
        (
            "T* dx, const T* dy, const T* x, const T* w, ptrdiff_t n, T hi, T lo, T rstd, T mean_g, "
            "T mean_gxhat, int stream"
        ),
    ),
    (
        "gn_grad_segment",
        "void",
        (
            "T* dx, const T* dy, const T* x, ptrdiff_t n, T hi, T lo, T rstd, T w, T mean_g, "
            "T mean_gxhat, int stream"
        ),
    ),
    ("residual_add", "void", "T* out, const T* a, const T* b, ptrdiff_t n, int stream"),
    # several short rows per call (n < 512): the per-row work of the row walks
    (
        "ln_rows",
        "ptrdiff_t",
        (
            "T* y, double* mean, double* rstd, const T* x, const T* w, const T* b, ptrdiff_t nrows, "
            "ptrdiff_t n, double eps, int center"
        ),
    ),
    (
        "ln_grad_rows",
        "void",
        (
            "T* dx, T* tw, T* tb, const T* dy, const T* x, const T* w, const double* mean, "
            "const double* rstd, ptrdiff_t nrows, ptrdiff_t n"
        ),
    ),
    # half storage (convert.h): float16 / bfloat16 bits <-> T, narrowing rounded once to nearest even
    ("from_f16", "void", "T* out, const uint16_t* h, ptrdiff_t n"),
    ("to_f16", "void", "uint16_t* h, const T* x, ptrdiff_t n"),
    ("from_bf16", "void", "T* out, const uint16_t* h, ptrdiff_t n"),
    ("to_bf16", "void", "uint16_t* h, const T* x, ptrdiff_t n"),
    # ---- channels-last GroupNorm / InstanceNorm (channels_last.h; also in HALF_LOOPS):
    # x[r * ld + c], nrows rows of n channels, float64 per-channel sums; first: y / dy
    # channels-first, element (r, c) at [c * nrows + r]
    # wide (cl_sums, cl_devs) / first: the flag CN_CL_WIDE (2) asks float32 storage for the
    # float64 loops instead of the float32 ones (channels_last_f32.h)
    ("cl_sums", "void", "double* s, const T* x, ptrdiff_t ld, ptrdiff_t nrows, ptrdiff_t n, int wide"),
    (
        "cl_devs",
        "void",
        (
            "double* s1, double* s2, const T* x, ptrdiff_t ld, ptrdiff_t nrows, const double* shift, "
            "ptrdiff_t n, int wide"
        ),
    ),
    (
        "cl_affine",
        "void",
        (
            "T* y, const T* x, ptrdiff_t ld, ptrdiff_t nrows, const double* mean, const double* scale, "
            "const double* beta, ptrdiff_t n, int first"
        ),
    ),
    (
        "cl_grad_sums",
        "void",
        (
            "double* s_dy, double* s_dyd, const T* dy, const T* x, ptrdiff_t ld, ptrdiff_t nrows, "
            "const double* mean, ptrdiff_t n, int first"
        ),
    ),
    (
        "cl_grad",
        "void",
        (
            "T* dx, const T* dy, const T* x, ptrdiff_t ld, ptrdiff_t nrows, const double* alpha, "
            "const double* beta, const double* gamma, const double* mean, ptrdiff_t n, int first"
        ),
    ),
]

# (name, return type, parameters or None for a variable, comment): simd.h's own
RUNTIME = [
    ("cn_simd_init", "int", "void", "pick the build at import (once per module); returns it"),
    ("cn_simd_select", "int", "int build", "use this build when available; returns the one in use"),
    ("cn_simd_available", "int", "int build", "1 when the module has the build and the CPU runs it"),
    ("cn_simd_set", "int", "int use_avx2", "avx2 (1) or the base build (0); returns 1 when avx2 runs"),
    ("cn_stream_fence", "void", "void", "after a thread's streamed stores"),
    ("cn_prefetch", "void", "const void* p, ptrdiff_t bytes", "the cache lines of p..p+bytes, ahead of use"),
    (
        "cn_f32_sums_unsafe",
        "int",
        "double s1, double s2, double shift",
        "float32 block sums that need a float64 redo",
    ),
    ("cn_stream_min_bytes", "ptrdiff_t", None, "outputs this large use non-temporal stores"),
    ("cn_prefetch_on", "int", None, "0: cn_prefetch does nothing (CNORM_PREFETCH=0)"),
]

# half storage (loops.h with CN_HALF: half.h): (suffix, kind, C storage type). The loops
# compute in float32, read X (float16 / bfloat16 bits) widened exactly in their own loads
# and round each output once to nearest even in their own stores: the bits of the float32
# loop on the widened values, rounded (the staged design's bits, without the stage).
# kind: the Cython wrappers' argument (1 float16, 2 bfloat16), as Job.kind / RowJob.kind.
HALF_DTYPES = [
    ("h", 1, "uint16_t"),
    ("b", 2, "uint16_t"),
]

# (name, its storage arrays): the loops of half.h, in its order. Each is the loop of the
# same name in LOOPS with the element type of those parameters X (simd_codegen.half_loops)
HALF_LOOPS = [
    ("block_sum", "x"),
    ("block_dev", "x"),
    ("runs_stats", "x"),
    ("bn_grad_sums", "dy x ym"),
    ("ln_grad_sums", "dy x"),
    ("ln_grad_sums2", "dy0 dy1 x0 x1"),
    ("affine", "y x"),
    ("runs_affine", "y x"),
    ("affine_cols", "y x"),
    ("ln_row", "y x"),
    ("bn_grad", "dx dy x ym"),
    ("bn_grad_cols", "dx dy x ym"),
    ("ln_grad_row", "dx dy x"),
    ("gn_grad_segment", "dx dy x"),
    ("residual_add", "out a b"),
    # ---- channels-last GroupNorm / InstanceNorm (channels_last.h)
    ("cl_sums", "x"),
    ("cl_devs", "x"),
    ("cl_affine", "y x"),
    ("cl_grad_sums", "dy x"),
    ("cl_grad", "dx dy x"),
]

# BatchNorm's (N, C) tiles of half storage (half_cols.h, after half.h's other files):
# read in place, widened in the loads; the elementwise ones four rows at a time
HALF_LOOPS += [
    ("cols_sum", "x"),
    ("cols_dev", "x"),
    ("bn_grad_sums_cols", "dy x ym"),
    ("affine_cols4", "y x"),
    ("bn_grad_cols4", "dx dy x ym"),
]
