"""The one table of SIMD loop signatures (cnorm/_kernels/simd/signatures.py) agrees with
everything that is written or generated from it:

* the generated files on disk (simd/dispatch.h, simd/loops.pxd) are what the generator
  makes from the table now (a stale build would otherwise go unnoticed);
* the loops in reduce.h / elementwise.h / convert.h (half.h's: half_reduce.h,
  half_elementwise.h) have exactly the table's signatures, in order;
* every dispatcher of dispatch.h and every declaration of loops.pxd has the loop's
  signature with T replaced by its dtype; simd.h defines the runtime controls listed;
* the C compiles as portable C99 without the GNU extensions (-DCNORM_PORTABLE_C), and a
  harness generated from the table gives the same bits from every build and compiler.
"""

import importlib.util
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIMD = os.path.join(ROOT, "cnorm", "_kernels", "simd")


def _codegen():
    path = os.path.join(ROOT, "cnorm", "_build_utils", "simd_codegen.py")
    spec = importlib.util.spec_from_file_location("_test_simd_codegen", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


codegen = _codegen()
TABLE = codegen.load_table()


def _read(name):
    with open(os.path.join(SIMD, name)) as f:
        return f.read()


def _norm_params(params, elem="T", store="X"):
    """[(type, name)] of a C parameter list, restrict dropped, T -> elem, X -> store."""
    params = params.replace("CN_RESTRICT", " ")
    return [(re.sub(r"\bX\b", store, re.sub(r"\bT\b", elem, t)), n) for t, n in codegen.parse_params(params)]


DTYPE_ROWS = codegen.dtype_rows(TABLE)
HEADS = r"CN_(?:CVT_|H)?LOOP\s+(\w+)\s+CN_FN\((\w+)\)\(([^)]*)\)"
LOOP_FILES = ("reduce.h", "elementwise.h", "convert.h", "channels_last.h")
# in the order of HALF_LOOPS: channels_last.h's block, then the (N, C) BatchNorm block
HALF_LOOP_FILES = ("half_reduce.h", "half_elementwise.h", "channels_last.h", "half_cols.h")


def _read_loops(files, half):
    """The loop sources of files; ST (channels_last.h's storage type, one source for every
    dtype) read as X for the half dtypes, else as T."""
    return re.sub(r"\bST\b", "X" if half else "T", "".join(_read(name) for name in files))


def _c_functions(text, pattern):
    """{name: (return type, [(type, name)])} of the C function heads matching pattern,
    whose groups are (return type, name, parameters)."""
    found = {}
    for m in re.finditer(pattern, text):
        ret, name, params = m.group(1), m.group(2), m.group(3)
        assert name not in found, f"{name} defined twice"
        found[name] = (ret, _norm_params(params))
    return found


def test_generated_files_are_up_to_date():
    for path, text in codegen.outputs().items():
        with open(path) as f:
            assert f.read() == text, f"{path} is stale: rebuild (setup.py regenerates it)"


@pytest.mark.parametrize("files, key", [(LOOP_FILES, "LOOPS"), (HALF_LOOP_FILES, "HALF_LOOPS")])
def test_loops_have_the_signatures_of_the_table(files, key):
    text = _read_loops(files, key == "HALF_LOOPS")
    loops = _c_functions(text, HEADS)
    order = [m.group(2) for m in re.finditer(HEADS, text)]
    assert order == [name for name, _, _ in TABLE[key]], "the table lists the loops in order"
    for name, ret, params in TABLE[key]:
        assert loops[name] == (ret, _norm_params(params)), name


def test_dispatchers_and_declarations_match_the_loops():
    dispatch = _c_functions(_read("dispatch.h"), r"static CN_INLINE (\w+) (cn_\w+)\(([^)]*)\)\s*\{")
    pxd = _read("loops.pxd").replace("Py_ssize_t", "ptrdiff_t")
    declared = _c_functions(pxd, r"\n    (\w+) (cn_\w+_[a-z])\(([^)]*)\)(?=\n)")
    n_loops = 0
    for s, elem, _, store, kind, _ in DTYPE_ROWS:
        files = HALF_LOOP_FILES if kind else LOOP_FILES
        loops = _c_functions(_read_loops(files, kind), HEADS)
        for name, (ret, params) in loops.items():
            n_loops += 1
            want = (ret, [(re.sub(r"\bX\b", store, re.sub(r"\bT\b", elem, t)), n) for t, n in params])
            assert dispatch[f"cn_{name}_{s}"] == want, f"dispatcher cn_{name}_{s}"
            assert declared[f"cn_{name}_{s}"] == want, f"declaration cn_{name}_{s}"
            suffix = "_half" if kind else ""
            wrapper = re.search(rf"cdef inline \w+ {name}{suffix}\(([^)]*)\) noexcept nogil:", pxd)
            assert wrapper, f"wrapper {name}{suffix}"
            names = [n for _, n in codegen.parse_params(wrapper.group(1))]
            assert names == (["kind"] if kind else []) + [n for _, n in params]
    assert len(dispatch) == n_loops
    assert len(declared) == n_loops


def test_runtime_controls_are_those_of_simd_h():
    text = _read("simd.h")
    for name, ret, params, _ in TABLE["RUNTIME"]:
        if params is None:
            assert re.search(rf"static {ret} {name}\b", text), name
            continue
        m = re.search(rf"static (?:CN_INLINE )?(\w+) {name}\(([^)]*)\)\s*\{{", text)
        assert m, name
        assert (m.group(1), _norm_params(m.group(2))) == (ret, _norm_params(params)), name


def test_every_module_has_the_portable_build():
    from cnorm._kernels import batch_norm, row_norm

    for mod in (batch_norm, row_norm):
        builds = mod._simd_builds()
        assert builds[0] == "scalar"
        assert mod._simd_build() in builds


# ---------------------------------------------------------------------------------------
# portable C: compile without the GNU path, and compare bits across builds and compilers
# ---------------------------------------------------------------------------------------

_SIZES = {"n": 45, "ld": 53, "nrows": 6}  # n <= ld; buffers hold nrows * ld + 64
_BUF = 6 * 53 + 64
_OUTPUTS = {"T*": "out", "X*": "xout", "double*": "dout"}  # the harness's output buffers


def _harness():
    """A C program that calls every loop of the table through its dispatcher on fixed
    data, in every build this compile has, and prints a hash of every buffer."""
    lines = [
        '#include "simd/simd.h"',
        "#include <stdio.h>",
        "",
        "static unsigned long long h;",
        "static void mix(const void* p, size_t n)",
        (
            "{ const unsigned char* c = p; size_t i; for (i = 0; i < n; i++)"
            " h = (h ^ c[i]) * 1099511628211ULL; }"
        ),
        "",
    ]
    for s, elem, _, _, kind, loops in DTYPE_ROWS:
        lines += [f"static void run_{s}(int variant)", "{"]
        lines += [
            f"    static {elem} in[8][{_BUF}], out[4][{_BUF}];",
            f"    static double dout[4][{_BUF}], din[{_BUF}];",
            f"    static uint16_t hin[{_BUF}], hout[{_BUF}];",
            "    int i, k;",
            f"    for (k = 0; k < 8; k++) for (i = 0; i < {_BUF}; i++)",
            (
                f"        in[k][i] = ({elem})(((i * 7919 + k * 104729) % 2003) / 97.0"
                " - 9.0 + (k == 1 ? 1000.0 : 0.0));"
            ),
            "    for (k = 0; k < 8; k++) for (i = 0; i < 64; i += 9) in[k][i] = -in[k][i];",
            # half bits of every kind: normal, subnormal, inf, NaN
            f"    for (i = 0; i < {_BUF}; i++) hin[i] = (uint16_t)(i * 40503u + (i % 5) * 0x7c00u);",
            f"    for (i = 0; i < {_BUF}; i++) din[i] = 0.5 + (i % 7) * 0.25;",
        ]
        if kind:  # half storage: the inputs rounded to the half type, a few specials
            narrow = "cn_f32_to_f16" if kind == 1 else "cn_f32_to_bf16"
            lines += [
                f"    static uint16_t xin[8][{_BUF}], xout[4][{_BUF}];",
                f"    for (k = 0; k < 8; k++) for (i = 0; i < {_BUF}; i++) xin[k][i] = {narrow}(in[k][i]);",
                "    xin[2][5] = 0x7c00u; xin[3][7] = 0x8001u; xin[4][11] = 0x7e01u;",
            ]
        for name, ret, params in loops:
            args, used = [], {"in": 0, "out": 0, "xout": 0, "dout": 0}
            for t, n in codegen.parse_params(params):
                if t in ("const T*", "const X*"):  # inputs; ym (the fused ReLU's) or NULL
                    buf = "in" if t == "const T*" else "xin"
                    if n == "ym":
                        args.append(f"variant ? {buf}[7] : NULL")
                    else:
                        args.append(f"{buf}[{used['in'] % 7}]")
                        used["in"] += 1
                elif t in _OUTPUTS:
                    buf = _OUTPUTS[t]
                    args.append(f"{buf}[{used[buf]}]")
                    used[buf] += 1
                elif t == "const uint16_t*":
                    args.append("hin")
                elif t == "uint16_t*":
                    args.append("hout")
                elif t == "ptrdiff_t":
                    args.append(str(_SIZES[n]))
                elif t == "int":
                    args.append("variant")
                elif t == "const double*":
                    args.append("din")
                elif t == "T":
                    args.append(f"({elem})(0.375 + {len(args)} * 0.125)")
                elif t == "double":
                    args.append(f"{len(args)}.0")
                else:
                    raise AssertionError(f"no harness value for {t} {n}")
            call = f"cn_{name}_{s}({', '.join(args)})"
            lines.append(
                "    memset(out, 0, sizeof out); memset(dout, 0, sizeof dout); memset(hout, 0, sizeof hout);"
            )
            if kind:
                lines.append("    memset(xout, 0, sizeof xout);")
            if ret == "void":
                lines.append(f"    {call};")
            else:
                lines.append(f"    {{ {ret} r = {call}; mix(&r, sizeof r); }}")
            lines.append("    mix(out, sizeof out); mix(dout, sizeof dout); mix(hout, sizeof hout);")
            if kind:
                lines.append("    mix(xout, sizeof xout);")
            lines.append(f'    printf("{name}_{s} %d %016llx\\n", variant, h);')
        lines += ["}", ""]
    lines += [
        "int main(void)",
        "{",
        "    int b, v;",
        "    cn_simd_init();",
        "    for (b = 0; b < CN_N_BUILDS; b++) {",
        "        if (!cn_simd_available(b)) continue;",
        "        cn_simd_select(b);",
        '        printf("build %s\\n", cn_build_names[b]);',
        "        for (v = 0; v < 2; v++) {",
    ]
    lines += [f"            h = 1469598103934665603ULL; run_{s}(v);" for s, *_ in DTYPE_ROWS]
    lines += ["        }", "    }", "    return 0;", "}", ""]
    return "\n".join(lines)


def _compilers():
    found = []
    for cc in ("gcc", "clang", "cc"):
        if shutil.which(cc):
            found.append(cc)
            break
    if shutil.which("clang") and "clang" not in found:
        found.append("clang")
    return found


def _build_and_run(tmp_path, cc, flags, tag):
    src = tmp_path / "harness.c"
    if not src.exists():
        src.write_text(_harness())
    exe = tmp_path / f"harness_{tag}"
    cmd = [cc, *flags, "-I", os.path.join(ROOT, "cnorm", "_kernels"), str(src), "-o", str(exe), "-lm"]
    built = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert built.returncode == 0, f"{' '.join(cmd)}\n{built.stderr}"
    ran = subprocess.run([str(exe)], check=False, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    runs, build = {}, None
    for line in ran.stdout.splitlines():
        if line.startswith("build "):
            build = line.split()[1]
            runs[build] = []
        else:
            runs[build].append(line)
    return runs


_FP = ["-O2", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]


@pytest.mark.skipif(not _compilers(), reason="no C compiler")
def test_portable_c99_without_gnu_extensions(tmp_path):
    """The portable path compiles with -std=c99 -pedantic-errors (no vector extension, no
    statement expressions, no __typeof__)."""
    for cc in _compilers():
        src = tmp_path / "tu.c"
        src.write_text('#include "simd/simd.h"\nint main(void) { return cn_simd_init(); }\n')
        cmd = [
            cc,
            "-std=c99",
            "-pedantic-errors",
            "-Wall",
            "-DCNORM_PORTABLE_C",
            "-fsyntax-only",
            "-I",
            os.path.join(ROOT, "cnorm", "_kernels"),
            str(src),
        ]
        res = subprocess.run(cmd, check=False, capture_output=True, text=True)
        assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"


@pytest.mark.skipif(not _compilers(), reason="no C compiler")
def test_every_build_and_compiler_gives_the_same_bits(tmp_path):
    cc = _compilers()[0]
    runs = _build_and_run(tmp_path, cc, _FP, "native")
    assert "scalar" in runs and len(runs) >= 2 or os.name == "nt"
    ref = runs["scalar"]
    assert len(ref) == 2 * sum(len(row[-1]) for row in DTYPE_ROWS)
    for build, lines in runs.items():
        assert lines == ref, f"build {build} differs from scalar"
    portable = {f"{cc} portable": (cc, ["-std=c99", "-pedantic-errors", "-DCNORM_PORTABLE_C", *_FP])}
    for other in _compilers()[1:]:
        portable[f"{other} portable"] = (other, ["-std=c99", "-DCNORM_PORTABLE_C", *_FP])
    if shutil.which("tcc"):
        portable["tcc"] = ("tcc", ["-std=c99"])
    for tag, (compiler, flags) in portable.items():
        out = _build_and_run(tmp_path, compiler, flags, tag.replace(" ", "_"))
        assert list(out) == ["scalar"], tag
        assert out["scalar"] == ref, f"{tag} differs from the {cc} builds"
