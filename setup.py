"""Build the cnorm Cython extensions.

OpenMP is detected with a compile-and-run check (a compiler that accepts -fopenmp
but cannot link or run an OpenMP program counts as "no OpenMP"); without it the
kernels build serial and a warning says so.

Environment switches:
  CNORM_NO_OPENMP=1  force a serial build
  CNORM_NATIVE=1     add -march=native (not portable: the wheel runs only on CPUs like this one)
  CNORM_DEBUG=1      -O0 -g, Cython bounds checks on
"""
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

OPENMP_PROBE = textwrap.dedent(
    r"""
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d\n", n == omp_get_max_threads());
        return n >= 1 ? 0 : 1;
    }
    """
)


HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = ["openmp", "batch_norm", "row_norm"]     # the extensions cnorm._kernels.<name>


def _build_util(name):
    """cnorm/_build_utils/<name>.py, loaded by file path: the cnorm package cannot be
    imported before its extensions are built."""
    path = os.path.join(HERE, "cnorm", "_build_utils", name + ".py")
    spec = importlib.util.spec_from_file_location(f"_cnorm_build_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _compiler():
    return os.environ.get("CC") or sysconfig.get_config_var("CC").split()[0] or "cc"


def openmp_flags():
    """Return (compile_args, link_args) for OpenMP, or ([], []) when it does not work."""
    if _env_flag("CNORM_NO_OPENMP"):
        print("cnorm: CNORM_NO_OPENMP set: building serial kernels")
        return [], []
    candidates = [(["-fopenmp"], ["-fopenmp"])]
    if sys.platform == "darwin":
        candidates.append((["-Xpreprocessor", "-fopenmp"], ["-lomp"]))
    cc = _compiler()
    for cflags, lflags in candidates:
        tmp = tempfile.mkdtemp(prefix="cnorm-omp-")
        try:
            src = os.path.join(tmp, "probe.c")
            exe = os.path.join(tmp, "probe")
            with open(src, "w") as f:
                f.write(OPENMP_PROBE)
            built = subprocess.run([cc, *cflags, src, "-o", exe, *lflags], capture_output=True)
            if built.returncode != 0:
                continue
            ran = subprocess.run([exe], capture_output=True, timeout=60)
            if ran.returncode == 0 and ran.stdout.strip() == b"1":
                return cflags, lflags
        except (OSError, subprocess.SubprocessError):
            continue
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    warnings.warn(
        "cnorm: the C compiler cannot build and run an OpenMP program; "
        "building SERIAL kernels (one thread). Install an OpenMP-capable compiler "
        "(e.g. gcc, or clang with libomp) for parallel kernels.",
        stacklevel=1,
    )
    return [], []


def extensions():
    omp_c, omp_l = openmp_flags()
    debug = _env_flag("CNORM_DEBUG")
    cflags = ["-O0", "-g"] if debug else ["-O3"]
    # Vectorize without -ffast-math: the kernels keep explicit lane accumulators, so
    # no reassociation is needed; these two only drop errno/trap bookkeeping.
    cflags += ["-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off",
               "-Wno-unreachable-code", "-Wno-unused-function",
               # a loop whose signature disagrees with its dispatch table: an error
               "-Werror=incompatible-pointer-types"]
    if _env_flag("CNORM_NATIVE"):
        cflags.append("-march=native")
    macros = [
        ("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION"),
        ("CNORM_HAVE_OPENMP", "1" if omp_c else "0"),
    ]
    # simd/dispatch.h and simd/loops.pxd, from the table simd/signatures.py
    for path in _build_util("simd_codegen").generate():
        print(f"cnorm: generated {os.path.relpath(path, HERE)}")
    simd_headers = sorted(glob.glob(os.path.join("cnorm", "_kernels", "simd", "*.h")))
    exts = [
        Extension(
            f"cnorm._kernels.{name}",
            [f"cnorm/_kernels/{name}.pyx"],
            include_dirs=[np.get_include(), "cnorm/_kernels"],
            define_macros=macros,
            extra_compile_args=cflags + omp_c,
            extra_link_args=omp_l,
            depends=simd_headers,
        )
        for name in KERNELS
    ]
    directives = {
        "language_level": 3,
        "boundscheck": debug,
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": False,
        "nonecheck": False,
        "embedsignature": True,
    }
    return cythonize(
        exts,
        compiler_directives=directives,
        compile_time_env={"CNORM_OPENMP": bool(omp_c)},
    )


setup(ext_modules=extensions())
