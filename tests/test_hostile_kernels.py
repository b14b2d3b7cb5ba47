"""Hostile calls of the private kernels (cnorm's compiled extensions), run in child
processes so that a crash is a test failure, not the end of the test session: wrong sizes,
dtypes, layouts, None for required arrays, sizes whose product wraps around 2**64."""

import json
import re
import subprocess
import sys

import pytest
from _internals import KERNEL_IMPORT
from child_runs import read_case_results

# =======================================================================================
# private kernels: run in child processes (a crash must be a failure, not the end)
# =======================================================================================

_KERNEL_PRELUDE = (
    """
import numpy as np
"""
    + KERNEL_IMPORT
    + """
f32 = np.float32
x = np.ones((2, 3, 4), f32)           # (N, C, S) = (2, 3, 4)
x64 = x.astype(np.float64)
c3 = np.ones(3)                       # float64 per-channel statistics
w3 = np.ones(3, f32)                  # float32 per-channel parameters
xl = np.ones((2, 5), f32)             # (M, D) = (2, 5)
m2 = np.ones(2)
w5 = np.ones(5, f32)
nc = np.ones((2, 3, 8), f32)[:, :, ::2]
fo = np.asfortranarray(np.ones((2, 3, 4), f32))
mis = np.zeros(x.nbytes + 1, np.uint8)[1:].view(f32).reshape(x.shape)
swapped = x.astype(">f4")
ro = np.ones(3, f32); ro.setflags(write=False)
e = np.empty(0, f32)
e4 = np.ones(4); w4 = np.ones(4, f32)
"""
)

_OVERFLOW = (
    "private kernels check x.size == N*C*S (M*D) with a Py_ssize_t product that "
    "wraps around: N=2**62, C=4, S=1 gives 0, an empty array passes the check, and "
    "the kernel then reads 2**62 rows (segfault) or returns garbage; the product "
    "must be checked for overflow (or each dimension against x.size)"
)

_TYPE_OR_VALUE = ("TypeError", "ValueError")
_VALUE_OR_OVERFLOW = ("ValueError", "OverflowError")

KERNEL_CASES = [
    # (id, code, exception name(s), message regex, xfail reason or None)
    (
        "B.batch_norm_stats wrong size",
        "B.batch_norm_stats(x, 2, 3, 5)",
        "ValueError",
        r"input must be a C-contiguous float32 array of 30 elements",
        None,
    ),
    (
        "B.batch_norm_stats int32",
        "B.batch_norm_stats(x.astype(np.int32), 2, 3, 4)",
        "TypeError",
        r"unsupported dtype int32",
        None,
    ),
    (
        "B.batch_norm_stats float16",
        "B.batch_norm_stats(x.astype(np.float16), 2, 3, 4)",
        "TypeError",
        r"unsupported dtype float16",
        None,
    ),
    (
        "B.batch_norm_stats complex",
        "B.batch_norm_stats(x.astype(np.complex64), 2, 3, 4)",
        "TypeError",
        r"unsupported dtype",
        None,
    ),
    (
        "B.batch_norm_stats None",
        "B.batch_norm_stats(None, 2, 3, 4)",
        "TypeError",
        r"must be a NumPy array|incorrect type",
        None,
    ),
    ("B.batch_norm_stats list", "B.batch_norm_stats([1.0, 2.0], 1, 1, 2)", "TypeError", r"\S", None),
    (
        "B.batch_norm_stats non-contiguous",
        "B.batch_norm_stats(nc, 2, 3, 4)",
        "ValueError",
        r"C-contiguous",
        None,
    ),
    ("B.batch_norm_stats Fortran", "B.batch_norm_stats(fo, 2, 3, 4)", "ValueError", r"C-contiguous", None),
    (
        "B.batch_norm_stats misaligned",
        "B.batch_norm_stats(mis, 2, 3, 4)",
        "ValueError",
        r"C-contiguous",
        None,
    ),
    (
        "B.batch_norm_stats byte-swapped",
        "B.batch_norm_stats(swapped, 2, 3, 4)",
        "ValueError",
        r"C-contiguous",
        None,
    ),
    (
        "B.batch_norm_stats negative N",
        "B.batch_norm_stats(x, -2, -3, 4)",
        "ValueError",
        r"negative dimension",
        None,
    ),
    (
        "B.batch_norm_stats negative S",
        "B.batch_norm_stats(x, 2, 3, -4)",
        "ValueError",
        r"negative dimension",
        None,
    ),
    (
        "B.batch_norm_elemt mean float32",
        "B.batch_norm_elemt(x, 2, 3, 4, w3, c3, None, None)",
        "ValueError",
        r"mean must be a C-contiguous float64 array of 3 elements",
        None,
    ),
    (
        "B.batch_norm_elemt invstd (4,)",
        "B.batch_norm_elemt(x, 2, 3, 4, c3, e4, None, None)",
        "ValueError",
        r"invstd must be a C-contiguous float64 array of 3 elements",
        None,
    ),
    (
        "B.batch_norm_elemt weight float64",
        "B.batch_norm_elemt(x, 2, 3, 4, c3, c3, c3, None)",
        "ValueError",
        r"weight must be a C-contiguous float32 array of 3 elements, got float64",
        None,
    ),
    (
        "B.batch_norm_elemt bias (4,)",
        "B.batch_norm_elemt(x, 2, 3, 4, c3, c3, None, w4)",
        "ValueError",
        r"bias must be",
        None,
    ),
    # None for a required array (these segfaulted before the kernels declared them `not None`)
    (
        "B.batch_norm_elemt mean None",
        "B.batch_norm_elemt(x, 2, 3, 4, None, c3, None, None)",
        _TYPE_OR_VALUE,
        r"\S",
        None,
    ),
    (
        "B.batch_norm_elemt invstd None",
        "B.batch_norm_elemt(x, 2, 3, 4, c3, None, None, None)",
        _TYPE_OR_VALUE,
        r"\S",
        None,
    ),
    (
        "B.batch_norm_forward_train read-only running_mean",
        "B.batch_norm_forward_train(x, 2, 3, 4, None, None, ro, w3.copy(), 0.1, 1e-5)",
        "ValueError",
        r"running_mean must be a writeable C-contiguous float32 array of 3 elements",
        None,
    ),
    (
        "B.batch_norm_forward_train running_var only",
        "B.batch_norm_forward_train(x, 2, 3, 4, None, None, None, w3.copy(), 0.1, 1e-5)",
        "ValueError",
        r"both be given or both be None",
        None,
    ),
    (
        "B.batch_norm_forward_train one value per channel",
        "B.batch_norm_forward_train(np.ones((1, 3), f32), 1, 3, 1, None, None, w3.copy(), w3.copy(), 0.1, 1e-5)",
        "ValueError",
        r"more than 1 value per channel",
        None,
    ),
    (
        "B.batch_norm_forward_train running stats float64",
        "B.batch_norm_forward_train(x, 2, 3, 4, None, None, c3.copy(), c3.copy(), 0.1, 1e-5)",
        "ValueError",
        r"running_mean must be a writeable C-contiguous float32 array of 3 elements, got float64",
        None,
    ),
    (
        "B.batch_norm_forward_train weight (4,)",
        "B.batch_norm_forward_train(x, 2, 3, 4, w4, None, None, None, 0.1, 1e-5)",
        "ValueError",
        r"weight must be",
        None,
    ),
    (
        "B.batch_norm_forward_train non-contiguous",
        "B.batch_norm_forward_train(nc, 2, 3, 4, None, None, None, None, 0.1, 1e-5)",
        "ValueError",
        r"C-contiguous",
        None,
    ),
    (
        "B.batch_norm_forward_train None",
        "B.batch_norm_forward_train(None, 2, 3, 4, None, None, None, None, 0.1, 1e-5)",
        "TypeError",
        r"must be a NumPy array|incorrect type",
        None,
    ),
    (
        "B.batch_norm_forward_eval no running stats",
        "B.batch_norm_forward_eval(x, 2, 3, 4, None, None, None, None, 1e-5)",
        "ValueError",
        r"running_mean and running_var must be given",
        None,
    ),
    (
        "B.batch_norm_forward_eval running_var float64",
        "B.batch_norm_forward_eval(x, 2, 3, 4, None, None, w3, c3, 1e-5)",
        "ValueError",
        r"running_var must be",
        None,
    ),
    (
        "B.batch_norm_forward_eval wrong size",
        "B.batch_norm_forward_eval(x, 2, 3, 3, None, None, w3, w3, 1e-5)",
        "ValueError",
        r"input must be",
        None,
    ),
    (
        "B.batch_norm_backward grad float64",
        "B.batch_norm_backward(x64, x, 2, 3, 4, c3, c3, None, True)",
        "ValueError",
        r"grad_output must be a C-contiguous float32 array of 24 elements, got float64",
        None,
    ),
    (
        "B.batch_norm_backward grad wrong size",
        "B.batch_norm_backward(np.ones(23, f32), x, 2, 3, 4, c3, c3, None, True)",
        "ValueError",
        r"grad_output must be",
        None,
    ),
    (
        "B.batch_norm_backward grad non-contiguous",
        "B.batch_norm_backward(nc, x, 2, 3, 4, c3, c3, None, True)",
        "ValueError",
        r"grad_output must be",
        None,
    ),
    (
        "B.batch_norm_backward mean (4,)",
        "B.batch_norm_backward(x, x, 2, 3, 4, e4, c3, None, True)",
        "ValueError",
        r"mean must be",
        None,
    ),
    (
        "B.batch_norm_backward x None",
        "B.batch_norm_backward(x, None, 2, 3, 4, c3, c3, None, True)",
        "TypeError",
        r"must be a NumPy array|incorrect type",
        None,
    ),
    (
        "B.batch_norm_backward mean None",
        "B.batch_norm_backward(x, x, 2, 3, 4, None, c3, None, True)",
        _TYPE_OR_VALUE,
        r"\S",
        None,
    ),
    (
        "B.batch_norm_backward invstd None",
        "B.batch_norm_backward(x, x, 2, 3, 4, c3, None, None, True)",
        _TYPE_OR_VALUE,
        r"\S",
        None,
    ),
    (
        "B.batch_norm_backward grad None",
        "B.batch_norm_backward(None, x, 2, 3, 4, c3, c3, None, True)",
        _TYPE_OR_VALUE,
        r"\S",
        None,
    ),
    (
        "B.batch_norm_backward_reduce mean None",
        "B.batch_norm_backward_reduce(x, x, 2, 3, 4, None, c3)",
        _TYPE_OR_VALUE,
        r"\S",
        None,
    ),
    (
        "B.batch_norm_backward_elemt sum_dy None",
        "B.batch_norm_backward_elemt(x, x, 2, 3, 4, c3, c3, None, None, c3, 8.0)",
        _TYPE_OR_VALUE,
        r"\S",
        None,
    ),
    (
        "B.batch_norm_backward_elemt grad None",
        "B.batch_norm_backward_elemt(None, x, 2, 3, 4, c3, c3, None, c3, c3, 8.0)",
        _TYPE_OR_VALUE,
        r"\S",
        None,
    ),
    (
        "B.batch_norm_backward_elemt sum_dy float32",
        "B.batch_norm_backward_elemt(x, x, 2, 3, 4, c3, c3, None, w3, c3, 8.0)",
        "ValueError",
        r"sum_dy must be",
        None,
    ),
    (
        "R.layer_norm_forward wrong size",
        "R.layer_norm_forward(xl, 2, 4, None, None, 1e-5)",
        "ValueError",
        r"input must be a C-contiguous float32 array of 8 elements",
        None,
    ),
    (
        "R.layer_norm_forward weight (4,)",
        "R.layer_norm_forward(xl, 2, 5, w4, None, 1e-5)",
        "ValueError",
        r"weight must be",
        None,
    ),
    (
        "R.layer_norm_forward bias float64",
        "R.layer_norm_forward(xl, 2, 5, None, np.ones(5), 1e-5)",
        "ValueError",
        r"bias must be",
        None,
    ),
    (
        "R.layer_norm_forward int64",
        "R.layer_norm_forward(xl.astype(np.int64), 2, 5, None, None, 1e-5)",
        "TypeError",
        r"unsupported dtype int64",
        None,
    ),
    (
        "R.layer_norm_forward None",
        "R.layer_norm_forward(None, 2, 5, None, None, 1e-5)",
        "TypeError",
        r"must be a NumPy array|incorrect type",
        None,
    ),
    (
        "R.layer_norm_forward transposed",
        "R.layer_norm_forward(np.ones((5, 2), f32).T, 2, 5, None, None, 1e-5)",
        "ValueError",
        r"C-contiguous",
        None,
    ),
    (
        "R.layer_norm_forward negative",
        "R.layer_norm_forward(xl, -2, -5, None, None, 1e-5)",
        "ValueError",
        r"negative dimension",
        None,
    ),
    (
        "R.layer_norm_backward grad float64",
        "R.layer_norm_backward(xl.astype(np.float64), xl, 2, 5, m2, m2, None)",
        "ValueError",
        r"grad_output must be",
        None,
    ),
    (
        "R.layer_norm_backward mean float32",
        "R.layer_norm_backward(xl, xl, 2, 5, m2.astype(f32), m2, None)",
        "ValueError",
        r"mean must be",
        None,
    ),
    (
        "R.layer_norm_backward rstd (3,)",
        "R.layer_norm_backward(xl, xl, 2, 5, m2, np.ones(3), None)",
        "ValueError",
        r"rstd must be",
        None,
    ),
    (
        "R.layer_norm_backward weight (4,)",
        "R.layer_norm_backward(xl, xl, 2, 5, m2, m2, w4)",
        "ValueError",
        r"weight must be",
        None,
    ),
    (
        "R.layer_norm_backward mean None",
        "R.layer_norm_backward(xl, xl, 2, 5, None, m2, None)",
        _TYPE_OR_VALUE,
        r"\S",
        None,
    ),
    (
        "R.layer_norm_backward grad None",
        "R.layer_norm_backward(None, xl, 2, 5, m2, m2, None)",
        _TYPE_OR_VALUE,
        r"\S",
        None,
    ),
    # sizes whose product wraps around 2**64
    (
        "B.batch_norm_stats N*C*S overflow (cols)",
        "B.batch_norm_stats(e, 2**62, 4, 1)",
        _VALUE_OR_OVERFLOW,
        r"\S",
        None,
    ),
    (
        "B.batch_norm_stats N*C*S overflow (rows)",
        "B.batch_norm_stats(e, 1, 4, 2**62)",
        _VALUE_OR_OVERFLOW,
        r"\S",
        None,
    ),
    (
        "B.batch_norm_forward_train N*C*S overflow",
        "B.batch_norm_forward_train(e, 2**62, 4, 1, None, None, None, None, 0.1, 1e-5)",
        _VALUE_OR_OVERFLOW,
        r"\S",
        None,
    ),
    (
        "B.batch_norm_forward_eval N*C*S overflow",
        "B.batch_norm_forward_eval(e, 2**62, 4, 1, None, None, w4, w4, 1e-5)",
        _VALUE_OR_OVERFLOW,
        r"\S",
        None,
    ),
    (
        "B.batch_norm_elemt N*C*S overflow",
        "B.batch_norm_elemt(e, 2**62, 4, 1, e4, e4, None, None)",
        _VALUE_OR_OVERFLOW,
        r"\S",
        None,
    ),
    (
        "B.batch_norm_backward N*C*S overflow",
        "B.batch_norm_backward(e, e, 2**62, 4, 1, e4, e4, None, True)",
        _VALUE_OR_OVERFLOW,
        r"\S",
        None,
    ),
    (
        "R.layer_norm_forward M*D overflow",
        "R.layer_norm_forward(e, 4, 2**62, None, None, 1e-5)",
        _VALUE_OR_OVERFLOW,
        r"\S",
        None,
    ),
]

_KERNEL_RUNNER = r"""
import json, sys
cases = json.loads(sys.stdin.read())
for cid, code in cases:
    print("START " + json.dumps(cid), flush=True)
    try:
        eval(code)
        res = [cid, None, None]
    except BaseException as exc:
        res = [cid, type(exc).__name__, str(exc)]
    print("RESULT " + json.dumps(res), flush=True)
"""

_kernel_results = None


def _run_kernel_cases():
    """{id: ('raised', name, message) | ('returned',) | ('crashed', returncode, stderr)}.

    All cases run in one child process; when it dies, the case it was running is recorded
    as a crash and a new child goes on with the remaining ones."""
    global _kernel_results
    if _kernel_results is not None:
        return _kernel_results
    results = {}
    pending = [(c[0], c[1]) for c in KERNEL_CASES]
    script = _KERNEL_PRELUDE + _KERNEL_RUNNER
    while pending:
        proc = subprocess.Popen(
            [sys.executable, "-X", "faulthandler", "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            stdout, stderr = proc.communicate(json.dumps(pending), timeout=120)
        except subprocess.TimeoutExpired:  # a hang counts as a crash of the running case
            proc.kill()
            stdout, stderr = proc.communicate()
            stderr = "(hung: killed after 120 s)\n" + stderr
        finished, started = read_case_results(stdout)
        results.update(finished)
        if started is not None:  # died inside this case
            results[started] = ("crashed", proc.returncode, stderr[-2000:])
        elif proc.returncode != 0 and len(results) < len(KERNEL_CASES):
            raise RuntimeError(f"kernel case runner failed: {stderr[-2000:]}")
        pending = [p for p in pending if p[0] not in results]
    _kernel_results = results
    return results


def _kernel_params():
    out = []
    for cid, _code, exc, match, xfail in KERNEL_CASES:
        marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
        out.append(pytest.param(cid, exc, match, marks=marks, id=cid))
    return out


@pytest.mark.parametrize("cid, exc, match", _kernel_params())
def test_private_kernel_hostile_call(cid, exc, match):
    res = _run_kernel_cases()[cid]
    if res[0] == "crashed":
        pytest.fail(f"{cid}: the process died (return code {res[1]}):\n{res[2]}")
    assert res[0] == "raised", f"{cid}: returned instead of raising {exc}"
    allowed = (exc,) if isinstance(exc, str) else exc
    assert res[1] in allowed, f"{cid}: raised {res[1]}: {res[2]} (expected {exc})"
    assert re.search(match, res[2]), f"{cid}: message {res[2]!r} does not match {match!r}"
