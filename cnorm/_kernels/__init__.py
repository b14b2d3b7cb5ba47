"""The Cython + OpenMP kernels of cnorm (private: cnorm.functional is the API).

    common.pxd       buffer guards, the thread split and fork, block statistics + Chan merge
    batch_norm.pyx   per-channel statistics of (N, C, S) batches: BatchNorm (+ ReLU), sync parts
    row_norm.pyx     per-row statistics of (M, D) rows: LayerNorm, RMSNorm, add + LayerNorm,
                     GroupNorm / InstanceNorm
    openmp.pyx       the thread count
    pool.pyx         the pool of freed output buffers the kernels' large outputs come from
    stream.pyx       a parallel streaming copy: the memory bandwidth of the bench's x floor
    simd/            the C inner loops and their one table of signatures (signatures.py)

Importing this package checks that the extensions are built (an unbuilt source tree
gets an ImportError that says what to do, as NumPy's does) and, for a build without
OpenMP, prints once to stderr that the kernels run on one thread.
"""

import importlib
import os
import sys

# Any compiled module of this package: its absence means "not built (for this Python)".
_PROBE_MODULE = "openmp"


def _not_built_message(exc):
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    in_source_tree = os.path.exists(os.path.join(root, "setup.py"))
    where = f"from its source tree ({root})" if in_source_tree else f"from {here}"
    return (
        f"cnorm's compiled kernels are missing: cnorm is being imported {where}, "
        f"where the Cython extensions are not built for this Python "
        f"({sys.implementation.cache_tag}; {exc}).\n"
        "Either build them in place (from the source root):\n"
        '    pip install -e ".[test]"        (or: python setup.py build_ext --inplace)\n'
        "or, to use an installed cnorm, run Python from outside the source folder: "
        "the folder shadows the installed package."
    )


def _warn_if_serial(openmp_module):
    if openmp_module.openmp_enabled():
        return
    try:
        from .._build_config import BUILD

        note = BUILD.get("openmp_note", "")
    except ImportError:
        note = ""
    print(
        "cnorm: this build has no OpenMP, so its kernels run on ONE thread"
        + (f" ({note})" if note else "")
        + ". Rebuild with an OpenMP-capable compiler (gcc, or clang with libomp; macOS: "
        "brew install libomp); cnorm.show_config() shows the build.",
        file=sys.stderr,
    )


try:
    _probe = importlib.import_module(f"{__name__}.{_PROBE_MODULE}")
except ModuleNotFoundError as _exc:  # other ImportErrors (a missing libgomp...) say enough
    raise ImportError(_not_built_message(_exc)) from _exc

_warn_if_serial(_probe)
del _probe
