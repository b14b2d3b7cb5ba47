"""OpenMP detection for the cnorm build.

setup.py loads this file by path (the cnorm package cannot be imported before it is
built). The shape follows scikit-learn's ``sklearn/_build_utils/openmp_helpers.py`` and
``pre_build_helpers.py``: a small OpenMP program is compiled AND linked with the very
compiler object setuptools builds the extensions with, so ``CC`` with arguments
(``CC="ccache gcc"``), ``CFLAGS``, ``CPPFLAGS``, ``LDFLAGS`` and ``--compiler`` all apply,
and it is run only when the build targets this machine (a cross build cannot run it).

Environment switches (read by :func:`detect_openmp`):
  CNORM_NO_OPENMP=1       build serial kernels without probing
  CNORM_REQUIRE_OPENMP=1  no working OpenMP is a build error (naming compiler and flags)
  CNORM_CROSS_COMPILING=1 compile and link the probe but do not run it (also implied by
                          PYTHON_CROSSENV, or by _PYTHON_HOST_PLATFORM / ARCHFLAGS naming
                          another architecture than this machine's)
"""

import contextlib
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile

import setuptools  # type: ignore[import-untyped]  # noqa: F401  (first: its distutils)
from setuptools.errors import CompileError, LinkError  # type: ignore[import-untyped]

PROBE_SOURCE = r"""
#ifndef _OPENMP
#error "_OPENMP is not defined: OpenMP is not enabled"
#endif
#include <omp.h>
#include <stdio.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    printf("%d %d\n", n, omp_get_max_threads());
    return 0;
}
"""

# Homebrew's libomp is keg-only (not linked into the prefix): look in its usual places.
HOMEBREW_LIBOMP = ("/opt/homebrew/opt/libomp", "/usr/local/opt/libomp")


def env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def new_build_compiler():
    """A compiler object configured as setuptools' build_ext configures its own."""
    from distutils.ccompiler import new_compiler
    from distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    return compiler


def describe_compiler(compiler):
    """The compiler as a person would name it: ``msvc`` or the program (``gcc``, ``ccache gcc``)."""
    if compiler.compiler_type == "msvc":
        return "msvc " + str(getattr(compiler, "cc", "cl.exe"))
    program = []  # the words before the first flag: "gcc", "ccache gcc"
    for word in getattr(compiler, "compiler_so", None) or ["cc"]:
        if word.startswith("-"):
            break
        program.append(word)
    return " ".join(program) or "cc"


def compiler_version(compiler):
    if compiler.compiler_type == "msvc":
        return "msvc"
    program = describe_compiler(compiler).split()
    try:
        out = subprocess.run(program + ["--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def cross_compiling():
    """Why the probe must not be run (a non-empty string), or '' for a native build."""
    if env_flag("CNORM_CROSS_COMPILING"):
        return "CNORM_CROSS_COMPILING is set"
    if os.environ.get("PYTHON_CROSSENV"):
        return "PYTHON_CROSSENV is set"
    machine = platform.machine().lower()
    host = os.environ.get("_PYTHON_HOST_PLATFORM", "")
    target = host.rsplit("-", 1)[-1].lower()
    if host and target not in (machine, "universal2"):
        return f"_PYTHON_HOST_PLATFORM={host} on a {machine} machine"
    archs = re.findall(r"-arch\s+(\S+)", os.environ.get("ARCHFLAGS", ""))
    if archs and machine not in [a.lower() for a in archs]:
        return f"ARCHFLAGS={os.environ['ARCHFLAGS']!r} on a {machine} machine"
    return ""


def candidate_flags(compiler):
    """(compile_args, link_args) pairs to try, most usual first."""
    if compiler.compiler_type == "msvc":
        return [(["/openmp"], [])]
    candidates = [(["-fopenmp"], ["-fopenmp"])]
    if sys.platform == "darwin":
        # Apple clang: OpenMP through the preprocessor, the runtime from libomp
        candidates.append((["-Xpreprocessor", "-fopenmp"], ["-lomp"]))
        for prefix in HOMEBREW_LIBOMP:
            if os.path.isdir(os.path.join(prefix, "include")):
                lib = os.path.join(prefix, "lib")
                candidates.append(
                    (
                        ["-Xpreprocessor", "-fopenmp", "-I" + os.path.join(prefix, "include")],
                        ["-L" + lib, "-lomp", "-Wl,-rpath," + lib],
                    )
                )
    # the environment may already enable it (CPPFLAGS="-Xpreprocessor -fopenmp", LDFLAGS="-lomp")
    candidates.append(([], []))
    return candidates


@contextlib.contextmanager
def _captured_output(path):
    """Send this process's stdout/stderr (the compiler's messages too) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "wb") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


_DIAGNOSTIC = re.compile(r"error|cannot|undefined|not found|unsupported|unknown", re.IGNORECASE)


def _first_diagnostic(path):
    """The compiler's first complaint in the captured output (the one that explains)."""
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    useful = [line for line in lines if _DIAGNOSTIC.search(line) and "collect2" not in line]
    return (useful or lines or [""])[0][:200]


def try_openmp_flags(compiler, compile_args, link_args, run):
    """Build the probe with these flags; returns (ok, what happened)."""
    ldflags = shlex.split(os.environ.get("LDFLAGS", ""))  # linker_exe has no LDFLAGS
    start_dir = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="cnorm-openmp-") as tmp:
        log = os.path.join(tmp, "probe.log")
        try:
            os.chdir(tmp)
            with open("probe.c", "w") as f:
                f.write(PROBE_SOURCE)
            stage = "compile"
            with _captured_output(log):
                objects = compiler.compile(["probe.c"], output_dir="objects", extra_postargs=compile_args)
                stage = "link"
                compiler.link_executable(
                    objects, "probe", output_dir=".", extra_preargs=ldflags, extra_postargs=link_args
                )
            if not run:
                return True, "compiled and linked (not run: cross build)"
            exe = os.path.abspath(compiler.executable_filename("probe"))
            try:
                ran = subprocess.run([exe], capture_output=True, text=True, timeout=60, check=False)
            except OSError as exc:  # e.g. ENOEXEC: built for another machine
                return True, f"compiled and linked; could not run it ({exc.strerror})"
            fields = ran.stdout.split()
            if ran.returncode == 0 and len(fields) == 2 and fields[0] == fields[1] != "0":
                return True, f"ran with {fields[0]} threads"
            return False, f"the probe ran badly (exit {ran.returncode}: {ran.stdout.strip()!r})"
        except (CompileError, LinkError):
            return False, f"{stage} failed: {_first_diagnostic(log)}"
        except subprocess.SubprocessError as exc:
            return False, f"the probe did not finish: {exc}"
        finally:
            os.chdir(start_dir)


def _flags_text(compile_args, link_args):
    return " ".join(dict.fromkeys(compile_args + link_args)) or "(no extra flags)"


def detect_openmp(compiler=None):
    """Find the flags that build, link (and, natively, run) an OpenMP program.

    Returns a dict: ``enabled``, ``compile_args``, ``link_args``, ``compiler``,
    ``compiler_version``, ``tried`` (list of "flags: outcome"), ``note`` (one line: why
    serial, or how it was found), ``cross`` (why the probe was not run, or '').
    Raises CompileError when CNORM_REQUIRE_OPENMP is set and nothing works.
    """
    if compiler is None:
        compiler = new_build_compiler()
    info = {
        "enabled": False,
        "compile_args": [],
        "link_args": [],
        "tried": [],
        "compiler": describe_compiler(compiler),
        "compiler_type": compiler.compiler_type,
        "compiler_version": compiler_version(compiler),
        "cross": cross_compiling(),
        "note": "",
    }
    if env_flag("CNORM_NO_OPENMP"):
        if env_flag("CNORM_REQUIRE_OPENMP"):
            raise CompileError("cnorm: CNORM_NO_OPENMP and CNORM_REQUIRE_OPENMP are both set")
        info["note"] = "serial build forced by CNORM_NO_OPENMP=1"
        return info
    for compile_args, link_args in candidate_flags(compiler):
        ok, outcome = try_openmp_flags(compiler, compile_args, link_args, run=not info["cross"])
        info["tried"].append(f"{_flags_text(compile_args, link_args)}: {outcome}")
        if ok:
            info.update(
                enabled=True,
                compile_args=compile_args,
                link_args=link_args,
                note=f"OpenMP with {_flags_text(compile_args, link_args)} ({outcome})",
            )
            return info
    tried = "\n".join("    " + t for t in info["tried"])
    info["note"] = (
        f"no OpenMP: the compiler {info['compiler']!r} could not build an "
        f"OpenMP program with any of the flags tried"
    )
    if env_flag("CNORM_REQUIRE_OPENMP"):
        raise CompileError(
            f"cnorm: CNORM_REQUIRE_OPENMP=1 but the C compiler {info['compiler']!r} "
            f"({info['compiler_version']}) cannot build an OpenMP program. Flags tried:\n"
            f"{tried}\n"
            "Use an OpenMP-capable compiler (gcc; clang with libomp; on macOS `brew install "
            "libomp`), pass its flags in CFLAGS/CPPFLAGS/LDFLAGS, or unset "
            "CNORM_REQUIRE_OPENMP to build serial kernels."
        )
    return info


def serial_warning(info):
    """The banner printed by the build (and, from the recorded config, at import)."""
    return (
        f"cnorm: building SERIAL kernels (one thread): {info['note']}.\n"
        + "".join(f"    tried {t}\n" for t in info["tried"])
        + "  Install an OpenMP-capable compiler (gcc, or clang with libomp; on macOS "
        "`brew install libomp`) and rebuild; CNORM_REQUIRE_OPENMP=1 makes this an error."
    )
