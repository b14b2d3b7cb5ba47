"""Generate the C dispatch code and the Cython declarations of the SIMD loops from their
one table, cnorm/_kernels/simd/signatures.py.

    simd/dispatch.h  loops.h instantiated per (dtype, build); a table of loops per dtype
                     and build; cn_use_build(); one dispatcher per (loop, dtype)
    simd/loops.pxd   the fused type ``floating``, the C declarations, one fused wrapper
                     per loop (named as the loop)

setup.py runs ``generate()`` before cythonize; tests/test_simd_table.py compares the
generated text with the files on disk and the table with the prototypes in loops.h.
Standard library only: runs before anything is built.
"""

import os
import re
import runpy

HERE = os.path.dirname(os.path.abspath(__file__))
SIMD_DIR = os.path.join(os.path.dirname(HERE), "_kernels", "simd")
MAX_LINE = 96
NOTICE = (
    "GENERATED at build time by cnorm/_build_utils/simd_codegen.py",
    "from cnorm/_kernels/simd/signatures.py: do not edit",
)


def load_table(simd_dir=SIMD_DIR):
    """DTYPES, BUILDS, LOOPS, RUNTIME, HALF_DTYPES, HALF_LOOPS of signatures.py (read by
    path, not imported)."""
    ns = runpy.run_path(os.path.join(simd_dir, "signatures.py"))
    keys = ("DTYPES", "BUILDS", "LOOPS", "RUNTIME", "HALF_DTYPES")
    table = {key: ns[key] for key in keys}
    table["HALF_LOOPS"] = half_loops(table["LOOPS"], ns["HALF_LOOPS"])
    return table


def half_loops(loops, half):
    """[(name, return type, parameters)] of the half loops: the LOOPS row of each name with
    the element type T of its storage parameters X."""
    rows = {name: (ret, params) for name, ret, params in loops}
    out = []
    for name, storage in half:
        ret, params = rows[name]
        typed = [
            (re.sub(r"\bT\b", "X", t) if n in storage.split() else t, n) for t, n in parse_params(params)
        ]
        out.append((name, ret, ", ".join(f"{t} {n}" for t, n in typed)))
    return out


def dtype_rows(table):
    """Every dtype as (suffix, element type, lane-mask integer type, storage type, half
    kind (0: storage is the element type), its loops): DTYPES with LOOPS, then
    HALF_DTYPES (computed in float) with HALF_LOOPS."""
    rows = [(s, elem, itype, elem, 0, table["LOOPS"]) for s, elem, itype in table["DTYPES"]]
    rows += [
        (s, "float", "int32_t", store, kind, table["HALF_LOOPS"]) for s, kind, store in table["HALF_DTYPES"]
    ]
    return rows


def parse_params(params):
    """'const T* x, ptrdiff_t n' -> [('const T*', 'x'), ('ptrdiff_t', 'n')]; 'void' -> []."""
    params = params.strip()
    if params in ("", "void"):
        return []
    out = []
    for param in params.split(","):
        m = re.fullmatch(r"\s*(.*?[\s*])(\w+)\s*", param)
        if m is None:
            raise ValueError(f"cannot parse parameter {param!r}")
        out.append((re.sub(r"\s+", " ", m.group(1).replace(" *", "*")).strip(), m.group(2)))
    return out


def _typed(ctype, elem, store=None):
    """ctype with T -> elem and X (half storage) -> store."""
    return re.sub(r"\bX\b", store or elem, re.sub(r"\bT\b", elem, ctype))


def _wrap(head, args, tail, indent=None, comma=", "):
    """head + args joined, broken between arguments under the opening parenthesis."""
    indent = len(head) if indent is None else indent
    lines, cur = [], head
    for i, arg in enumerate(args):
        piece = arg + (comma.rstrip() if i < len(args) - 1 else tail)
        if cur.strip() and len(cur) + len(piece) > MAX_LINE and cur != head:
            lines.append(cur.rstrip())
            cur = " " * indent
        cur += piece + (" " if i < len(args) - 1 else "")
    lines.append(cur.rstrip())
    return "\n".join(lines)


def _c_params(params, elem, store=None):
    return [f"{_typed(t, elem, store)} {n}" for t, n in parse_params(params)] or ["void"]


# ---------------------------------------------------------------------------------------
# simd/dispatch.h
# ---------------------------------------------------------------------------------------


def dispatch_h(table):
    builds = table["BUILDS"]
    dtypes = dtype_rows(table)
    names = [b[0] for b in builds]
    out = [
        f"/* {NOTICE[0]}",
        f"   {NOTICE[1]}.",
        "   Included by simd.h: the loops of loops.h per (dtype, build), the table of",
        "   loops of each dtype and build, and the dispatchers that call the build in use. */",
        "#ifndef CNORM_SIMD_DISPATCH_H",
        "#define CNORM_SIMD_DISPATCH_H",
        "",
        "enum { " + ", ".join(f"CN_BUILD_{n}" for n in names) + ", CN_N_BUILDS };",
        "static const char* const cn_build_names[CN_N_BUILDS] = {"
        + ", ".join(f'"{n}"' for n in names)
        + "};",
        "",
    ]
    for s, elem, _, store, _, loops in dtypes:
        out.append(f"typedef struct cn_loops_{s} {{")
        for name, ret, params in loops:
            out.append(_wrap(f"    {ret} (*{name})(", _c_params(params, elem, store), ");"))
        out += [f"}} cn_loops_{s};", ""]
    macros = ("T", "CN_IT", "CN_T_BYTES", "CN_S", "CN_HALF", "CN_BUILD", "CN_VB", "CN_TARGET")
    for bname, vb, cond, target in builds:
        for s, elem, itype, _, half, loops in dtypes:
            attr = f'__attribute__((target("{target}")))' if target else ""
            out += [
                f"#if {cond}",
                f"#define T {elem}",
                f"#define CN_IT {itype}",
                f"#define CN_T_BYTES {int(itype[3:5]) // 8}",
                f"#define CN_S {s}",
                f"#define CN_HALF {half}",
                f"#define CN_BUILD {bname}",
                f"#define CN_VB {vb}",
                f"#define CN_TARGET {attr}".rstrip(),
                '#include "loops.h"',
            ]
            out += [f"#undef {m}" for m in macros]
            out.append(f"static const cn_loops_{s} cn_loops_{s}_{bname} = {{")
            out += [f"    .{name} = cn_{name}_{s}_{bname}," for name, _, _ in loops]
            out += ["};", "#endif", ""]
    for s, *_ in dtypes:
        out.append(f"static const cn_loops_{s}* const cn_loops_{s}_builds[CN_N_BUILDS] = {{")
        for bname, _, cond, _ in builds:
            out += [f"#if {cond}", f"    &cn_loops_{s}_{bname},", "#else", "    NULL,", "#endif"]
        out += ["};", f"static const cn_loops_{s}* cn_loops_{s}_active = &cn_loops_{s}_{names[0]};", ""]
    out += [
        f"static int cn_build_in_use = CN_BUILD_{names[0]};",
        "",
        "/* build: one that this module has (cn_loops_*_builds[build] != NULL) */",
        "static void cn_use_build(int build)",
        "{",
    ]
    out += [f"    cn_loops_{s}_active = cn_loops_{s}_builds[build];" for s, *_ in dtypes]
    out += ["    cn_build_in_use = build;", "}", ""]
    for s, elem, _, store, _, loops in dtypes:
        for name, ret, params in loops:
            args = [n for _, n in parse_params(params)]
            ret_kw = "" if ret == "void" else "return "
            head = f"static CN_INLINE {ret} cn_{name}_{s}("
            out.append(_wrap(head, _c_params(params, elem, store), ")"))
            out.append(_wrap(f"{{ {ret_kw}cn_loops_{s}_active->{name}(", args, "); }"))
        out.append("")
    out += ["#endif /* CNORM_SIMD_DISPATCH_H */", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# simd/loops.pxd
# ---------------------------------------------------------------------------------------


def _cy_type(ctype, elem, store=None):
    return _typed(ctype, elem, store).replace("ptrdiff_t", "Py_ssize_t")


def _cy_params(params, elem, store=None):
    return [f"{_cy_type(t, elem, store)} {n}" for t, n in parse_params(params)]


def loops_pxd(table):
    dtypes, loops = table["DTYPES"], table["LOOPS"]
    out = [
        f"# {NOTICE[0]}",
        f"# {NOTICE[1]}.",
        "# The Cython view of the inner loops (simd/loops.h says what each computes): one fused",
        "# wrapper per loop, named as the loop, that calls the dispatcher of its dtype,",
        "# cn_<loop>_<dtype> (simd/dispatch.h), which calls the build in use.",
        "",
        "from libc.stdint cimport uint16_t",
        "",
        "ctypedef fused floating:",
    ]
    out += [f"    {elem}" for _, elem, _ in dtypes]
    out += [
        "",
        'cdef extern from "simd/simd.h" nogil:',
        "    enum: CN_N_BUILDS",
        "    const char* cn_build_names[]",
        "    int cn_build_in_use",
    ]
    for name, ret, params, doc in table["RUNTIME"]:
        ret = _cy_type(ret, "")
        out.append(f"    # {doc}")
        if params is None:
            out.append(f"    {ret} {name}")
        else:
            out.append(f"    {ret} {name}({', '.join(_cy_params(params, ''))})")
    for s, elem, _, store, _, dtype_loops in dtype_rows(table):
        for name, ret, params in dtype_loops:
            out.append(_wrap(f"    {ret} cn_{name}_{s}(", _cy_params(params, elem, store), ")"))
    fused = [(f"floating is {elem}", s) for s, elem, _ in dtypes]
    out += _wrappers(loops, "", [], "floating", None, fused)
    half = [(f"kind == {kind}", s) for s, kind, _ in table["HALF_DTYPES"]]
    out += _wrappers(table["HALF_LOOPS"], "_half", ["int kind"], "float", table["HALF_DTYPES"][0][2], half)
    out.append("")
    return "\n".join(out)


def _wrappers(loops, suffix, extra, elem, store, cases):
    """One Cython wrapper per loop, <loop><suffix>(*extra, ...), calling cn_<loop>_<s> of
    the first case (condition, s) that holds (the last one: else)."""
    out = []
    for name, ret, params in loops:
        ret_cy = "bint" if ret == "int" else ret
        args = ", ".join(n for _, n in parse_params(params))
        ret_kw = "" if ret == "void" else "return "
        head = f"cdef inline {ret_cy} {name}{suffix}("
        out += ["", ""]
        out.append(_wrap(head, [*extra, *_cy_params(params, elem, store)], ") noexcept nogil:"))
        for i, (cond, s) in enumerate(cases):
            out.append("    else:" if i == len(cases) - 1 else f"    {'if' if i == 0 else 'elif'} {cond}:")
            out.append(f"        {ret_kw}cn_{name}_{s}({args})")
    return out


# ---------------------------------------------------------------------------------------


def outputs(simd_dir=SIMD_DIR):
    """{path: text} of every generated file."""
    table = load_table(simd_dir)
    return {
        os.path.join(simd_dir, "dispatch.h"): dispatch_h(table),
        os.path.join(simd_dir, "loops.pxd"): loops_pxd(table),
    }


def generate(simd_dir=SIMD_DIR):
    """Write the generated files that changed (an unchanged file keeps its time stamp, so
    nothing is rebuilt for it); returns the paths written."""
    written = []
    for path, text in outputs(simd_dir).items():
        try:
            with open(path) as f:
                if f.read() == text:
                    continue
        except OSError:
            pass
        with open(path, "w") as f:
            f.write(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in generate():
        print("wrote", p)
