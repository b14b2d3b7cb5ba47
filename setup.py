"""Build the cnorm Cython extensions.

OpenMP is detected as scikit-learn does (cnorm/_build_utils/openmp.py): a probe is
compiled and linked with setuptools' own compiler object (CC with arguments, CFLAGS,
CPPFLAGS, LDFLAGS apply) and run unless cross-compiling. Without OpenMP the kernels build
serial, and both the build and every `import cnorm` say so. What was built is recorded
in cnorm/_build_config.py (generated, git-ignored) for cnorm.show_config().

Environment switches:
  CNORM_REQUIRE_OPENMP=1  fail the build when no working OpenMP is found (wheels set it)
  CNORM_NO_OPENMP=1       force a serial build
  CNORM_CROSS_COMPILING=1 do not run the OpenMP probe (it is still compiled and linked)
  CNORM_NATIVE=1          add -march=native (not portable: runs only on CPUs like this one)
  CNORM_DEBUG=1           -O0 -g, Cython bounds checks on

macOS (Apple clang): `brew install libomp` is enough, the build looks in Homebrew's
libomp prefix; otherwise pass CPPFLAGS="-Xpreprocessor -fopenmp -I<libomp>/include" and
LDFLAGS="-L<libomp>/lib -lomp -Wl,-rpath,<libomp>/lib".
"""

import glob
import importlib.util
import os
import pprint
import sys
import sysconfig

import numpy as np
from Cython import __version__ as cython_version
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
# The numpy floor of the compiled extensions, the same as project.dependencies
# (numpy>=1.23): a wheel built against numpy 2 then imports on every numpy pip allows.
NPY_TARGET_VERSION = "NPY_1_23_API_VERSION"


# the extensions cnorm._kernels.<name>
KERNELS = ["openmp", "pool", "batch_norm", "row_norm", "channels_last", "stream"]


def _load_build_util(name):
    """cnorm/_build_utils/<name>.py, loaded by path (cnorm cannot be imported yet)."""
    path = os.path.join(HERE, "cnorm", "_build_utils", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_cnorm_build_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


openmp = _load_build_util("openmp")
DEBUG = openmp.env_flag("CNORM_DEBUG")
NATIVE = openmp.env_flag("CNORM_NATIVE")


def compile_flags(compiler):
    """(compile_args, link_args) of every extension for this compiler (gcc/clang or MSVC)."""
    if compiler.compiler_type == "msvc":
        # /fp:precise (the default) neither contracts to FMA nor reassociates
        return (["/Od", "/Zi"] if DEBUG else ["/O2"]), []
    cflags = ["-O0", "-g"] if DEBUG else ["-O3", "-g0"]  # -g0: no debug info in wheels
    # Vectorize without -ffast-math: the kernels keep explicit lane accumulators, so
    # no reassociation is needed; these two only drop errno/trap bookkeeping.
    cflags += [
        "-fno-math-errno",
        "-fno-trapping-math",
        "-ffp-contract=off",
        "-Wno-unreachable-code",
        "-Wno-unused-function",
        # a loop whose signature disagrees with its dispatch table: an error
        "-Werror=incompatible-pointer-types",
    ]
    if NATIVE:
        cflags.append("-march=native")
    return cflags, []


class BuildExt(build_ext):
    """build_ext that probes OpenMP with its own compiler and records the build."""

    def build_extensions(self):
        self.openmp = openmp.detect_openmp(self.compiler)
        if not self.openmp["enabled"]:
            print("\n" + openmp.serial_warning(self.openmp) + "\n", file=sys.stderr)
        cflags, lflags = compile_flags(self.compiler)
        self.flags = (cflags + self.openmp["compile_args"], lflags + self.openmp["link_args"])
        for ext in self.extensions:
            ext.extra_compile_args = self.flags[0] + ext.extra_compile_args
            ext.extra_link_args = self.flags[1] + ext.extra_link_args
        super().build_extensions()

    def run(self):
        super().run()
        if not hasattr(self, "openmp"):  # no extension was built
            return
        targets = [os.path.join(self.build_lib, "cnorm")]
        if self.inplace or getattr(self, "editable_mode", False):
            targets.append(os.path.join(HERE, "cnorm"))
        for folder in targets:
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "_build_config.py"), "w") as f:
                f.write(self.build_config())

    def build_config(self):
        config = {
            "compiler": self.openmp["compiler"],
            "compiler_type": self.openmp["compiler_type"],
            "compiler_version": self.openmp["compiler_version"],
            "compile_args": self.flags[0],
            "link_args": self.flags[1],
            "openmp": self.openmp["enabled"],
            "openmp_note": self.openmp["note"],
            "openmp_tried": self.openmp["tried"],
            "cross_compiling": self.openmp["cross"],
            "environment": {
                k: os.environ[k] for k in ("CC", "CFLAGS", "CPPFLAGS", "LDFLAGS") if os.environ.get(k)
            },
            "platform": sysconfig.get_platform(),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "cython": cython_version,
            "npy_target_version": NPY_TARGET_VERSION,
            "debug": DEBUG,
            "native": NATIVE,
        }
        return (
            "# Generated by setup.py when cnorm was built: what it was built with\n"
            "# (read by cnorm.show_config()). Not in git; rebuilt by every build.\n"
            f"BUILD = {pprint.pformat(config, sort_dicts=False)}\n"
        )


def extensions():
    macros = [
        ("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION"),
        ("NPY_TARGET_VERSION", NPY_TARGET_VERSION),
    ]
    # simd/dispatch.h and simd/loops.pxd, from the table simd/signatures.py
    for path in _load_build_util("simd_codegen").generate():
        print(f"cnorm: generated {os.path.relpath(path, HERE)}")
    simd_headers = sorted(glob.glob(os.path.join("cnorm", "_kernels", "simd", "*.h")))
    exts = [
        Extension(
            f"cnorm._kernels.{name}",
            [f"cnorm/_kernels/{name}.pyx"],
            include_dirs=[np.get_include(), "cnorm/_kernels"],
            define_macros=macros,
            depends=simd_headers,
        )
        for name in KERNELS
    ]
    directives = {
        "language_level": 3,
        "boundscheck": DEBUG,
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": False,
        "nonecheck": False,
        "embedsignature": True,
    }
    return cythonize(exts, compiler_directives=directives)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
