"""Issue 14's cases for the hostile-input table (see tests/test_robustness.py), each run in
its own child interpreter with a timeout: a crash (abort in libgomp, segfault) or a hang
(a forked child deadlocked in OpenMP) is a test failure, never the end or a stall of the
session.

A case is (id, code, expected): ``expected`` is "ok" (the code runs to the end; it may
assert) or an exception name (or tuple of names) with a message regex. One representative
per issue item; the other r14 test files hold the full tables.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
from child_runs import CHILD_HELPERS, read_case_results

ROOT = pathlib.Path(__file__).resolve().parent.parent
CASE_TIMEOUT = 60  # per child; the forking cases give their own children 15 s

PRELUDE = r'''
import os, sys, time, signal, math, pickle, threading, resource
import numpy as np
import cnorm
import cnorm.functional as F
f32, f64 = np.float32, np.float64
rng = np.random.default_rng(0)
BIG = rng.standard_normal((2048, 96))      # 196k values: several threads


def in_child(fn):
    """Run fn() in a forked child; AssertionError if it fails, crashes or hangs."""
    pid = os.fork()
    if pid == 0:
        try:
            fn()
            os._exit(0)
        except BaseException:
            os._exit(3)
    code = wait_child(pid, 15)
    assert code != "hang", "the forked child hung (killed after 15 s)"
    assert code == 0, f"the forked child exited with {code}"


def bn_big():
    return F.batch_norm(BIG, None, None, training=True)


def vmsize():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
'''

PRELUDE += CHILD_HELPERS  # wait_child (for in_child), while_kernels_run

RUNNER = r"""
import json, sys
base = {"__name__": "__case__"}
exec(compile(sys.argv[1], "<prelude>", "exec"), base)
for cid, code in json.loads(sys.stdin.read()):
    print("START " + json.dumps(cid), flush=True)
    try:
        exec(compile(code, "<case>", "exec"), dict(base))
        res = [cid, None, None]
    except BaseException as exc:
        res = [cid, type(exc).__name__, str(exc)]
    print("RESULT " + json.dumps(res), flush=True)
"""

# cases that fork, set resource limits, import torch or change the thread count run in a
# process of their own; the others share one child (restarted after a crash, as in
# test_robustness.py's runner)
ISOLATED = ("fork", "memory limit", "TORCH")

CASES = [
    # -- fork safety ------------------------------------------------------------------
    (
        "fork after a 4-thread call: child BatchNorm",
        r"""
cnorm.set_num_threads(4)
bn_big()
in_child(bn_big)
""",
        "ok",
    ),
    (
        "fork after a 4-thread call: child LayerNorm + GroupNorm backward",
        r"""
cnorm.set_num_threads(4)
F.layer_norm(BIG, (96,))
def child():
    x = rng.standard_normal((8, 32, 32, 24))
    y, mean, rstd = F.native_group_norm(x, 8, None, None, 1e-5)
    F.group_norm_backward(x, x, 8, mean, rstd, None)
in_child(child)
""",
        "ok",
    ),
    (
        "fork Pool after a 4-thread call",
        r"""
import multiprocessing as mp
cnorm.set_num_threads(4)
ref = bn_big()
pool = mp.get_context("fork").Pool(2)
try:
    res = pool.apply_async(F.layer_norm, (BIG, (96,))).get(timeout=15)
    assert np.allclose(res, F.layer_norm(BIG, (96,)), rtol=1e-12, atol=1e-12)
except mp.TimeoutError:
    raise AssertionError("the pool worker hung")
finally:
    pool.terminate()
    pool.join()
""",
        "ok",
    ),
    (
        "fork while another Python thread runs 4-thread kernels",
        r"""
cnorm.set_num_threads(4)
bn_big()                                       # this thread's OpenMP pool exists too
while_kernels_run(bn_big, lambda: in_child(bn_big))
""",
        "ok",
    ),
    (
        "fork after a multi-threaded TORCH call (shared libgomp): child cnorm call",
        r"""
try:
    import torch
except ImportError:
    torch = None
if torch is not None:
    torch.set_num_threads(4)
    torch.nn.functional.batch_norm(torch.randn(64, 32, 28, 28), None, None, training=True)
    in_child(bn_big)
""",
        "ok",
    ),
    (
        "the parent keeps its thread count after a fork",
        r"""
cnorm.set_num_threads(4)
bn_big()
in_child(bn_big)
assert cnorm.get_num_threads() == 4, cnorm.get_num_threads()
bn_big()
""",
        "ok",
    ),
    # -- set_num_threads ----------------------------------------------------------------
    (
        "set_num_threads(10**6) under a memory limit, then a big call",
        r"""
x = np.ones((16, 64, 128, 128), f32)          # 16M values: up to 500 threads
_, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (vmsize() + 1536 * 2**20, hard))
try:
    cnorm.set_num_threads(10**6)               # must be refused (a documented maximum) ...
finally:
    cnorm.BatchNorm2d(64)(x)                   # ... and the process must survive this
""",
        ("ValueError",),
        r"\d",
    ),
    ("set_num_threads(1.5)", "cnorm.set_num_threads(1.5)", ("TypeError",), r""),
    ("set_num_threads(True)", "cnorm.set_num_threads(True)", ("TypeError",), r""),
    ("set_num_threads(2**31)", "cnorm.set_num_threads(2**31)", ("ValueError",), r"\d"),
    # -- the whole float64 range -----------------------------------------------------------
    (
        "float64 LayerNorm at 1e300",
        r"""
u = rng.standard_normal((16, 64)) + 1
y = F.layer_norm(np.ldexp(u, 996), (64,))
ref = (u - u.mean(1, keepdims=True)) / u.std(1, keepdims=True)
assert np.allclose(y, ref, atol=1e-9), np.abs(y - ref).max()
""",
        "ok",
    ),
    (
        "float64 BatchNorm at 1e300 (NaN today)",
        r"""
u = rng.standard_normal((64, 3)) + 1
y = F.batch_norm(np.ldexp(u, 996), None, None, training=True)
ref = (u - u.mean(0)) / u.std(0)
assert np.allclose(y, ref, atol=1e-9), np.abs(y - ref).max()
""",
        "ok",
    ),
    (
        "float64 GroupNorm at 1e-300 with eps=0",
        r"""
u = rng.standard_normal((2, 4, 30)) + 1
y = F.group_norm(np.ldexp(u, -996), 2, eps=0.0)
g = u.reshape(2, 2, -1)
ref = ((g - g.mean(2, keepdims=True)) / g.std(2, keepdims=True)).reshape(u.shape)
assert np.allclose(y, ref, atol=1e-9), np.abs(y - ref).max()
""",
        "ok",
    ),
    # -- all-or-nothing state ----------------------------------------------------------------
    (
        "load_state_dict num_batches_tracked=nan",
        r"""
m = cnorm.BatchNorm2d(3)
sd = m.state_dict(); sd["weight"] = sd["weight"] + 1; sd["num_batches_tracked"] = float("nan")
try:
    m.load_state_dict(sd)
finally:
    assert (m.weight == 1).all(), "the weight was overwritten by a failed load"
""",
        ("RuntimeError",),
        r"^Error\(s\) in loading state_dict for BatchNorm2d:",
    ),
    (
        "load_state_dict num_batches_tracked=2**70, then state_dict()",
        r"""
m = cnorm.BatchNorm2d(3)
sd = m.state_dict(); sd["num_batches_tracked"] = 2**70
try:
    m.load_state_dict(sd)
finally:
    m.state_dict()
""",
        ("RuntimeError",),
        r"num_batches_tracked",
    ),
    # -- torch-strict arguments ----------------------------------------------------------------
    (
        "BatchNorm2d(eps=-1) eval",
        "cnorm.BatchNorm2d(3, eps=-1).eval()(np.ones((2, 3, 2, 2), f32))",
        ("ValueError",),
        r"batch_norm eps must be non-negative",
    ),
    (
        "F.batch_norm(training=False, eps=-1)",
        "F.batch_norm(np.ones((2, 3), f32), np.zeros(3, f32), np.ones(3, f32), eps=-1.0)",
        ("ValueError",),
        r"batch_norm eps must be non-negative",
    ),
    ("LayerNorm(5.7)", "cnorm.LayerNorm(5.7)", ("TypeError",), r"normalized_shape"),
    ("LayerNorm('5')", "cnorm.LayerNorm('5')", ("TypeError",), r"normalized_shape"),
    ("LayerNorm(True)", "cnorm.LayerNorm(True)", ("TypeError",), r"normalized_shape"),
    ("BatchNorm2d(3.0)", "cnorm.BatchNorm2d(3.0)", ("TypeError",), r"num_features"),
    (
        "GroupNorm(2.0, 4) + forward",
        "cnorm.GroupNorm(2.0, 4)(np.ones((2, 4, 3), f32))",
        ("TypeError",),
        r"num_groups",
    ),
    (
        "F.layer_norm(x, b'\\x05')",
        r"F.layer_norm(np.ones((2, 5), f32), b'\x05')",
        ("TypeError",),
        r"normalized_shape",
    ),
    (
        "momentum='0.1'",
        "cnorm.BatchNorm1d(3, momentum='0.1')(np.ones((4, 3), f32))",
        ("TypeError",),
        r"momentum",
    ),
    (
        "native_batch_norm(training='no')",
        "F.native_batch_norm(np.ones((4, 3), f32), None, None, None, None, 'no', 0.1, 1e-5)",
        ("TypeError",),
        r"training",
    ),
    (
        "merge_stats: 2 counts, 3 shards of means",
        "F.merge_stats([4, 4], np.zeros((3, 4)), np.ones((3, 4)))",
        ("ValueError",),
        r"",
    ),
    (
        "merge_stats: a negative count",
        "F.merge_stats([4, -1], np.zeros((2, 5)), np.ones((2, 5)))",
        ("ValueError",),
        r"",
    ),
    (
        "a masked array",
        r"""
mask = np.zeros((4, 3, 2, 2), bool)
mask[0, 0, 0, 0] = True
x = np.ma.masked_array(np.ones((4, 3, 2, 2), f32), mask=mask)
cnorm.BatchNorm2d(3)(x)
""",
        ("TypeError",),
        r"(?i)mask",
    ),
    # -- small things --------------------------------------------------------------------------
    (
        "bn.weight = np.ones(5) on a 3-channel layer",
        "cnorm.BatchNorm2d(3).weight = np.ones(5)",
        ("TypeError", "ValueError"),
        r"",
    ),
    # -- the same bits whatever the thread count ---------------------------------------------------
    (
        "1 vs 8 threads, BatchNorm1d (4096, 96) float32 forward+backward",
        r"""
x = rng.standard_normal((4096, 96)).astype(f32)
def run():
    m = cnorm.BatchNorm1d(96)
    y = m(x)
    return [y, m.backward(x), m.weight_grad, m.running_var]
cnorm.set_num_threads(1); a = run()
cnorm.set_num_threads(8); b = run()
assert all(np.array_equal(p.view(np.uint8), q.view(np.uint8)) for p, q in zip(a, b))
""",
        "ok",
    ),
]

# expected: "ok", or (names, regex)
TABLE = []
for entry in CASES:
    if entry[2] == "ok":
        TABLE.append((entry[0], entry[1], "ok", None))
    else:
        TABLE.append((entry[0], entry[1], entry[2], entry[3]))
CODES = {c[0]: c[1] for c in TABLE}


def _isolated(cid):
    return any(word in cid for word in ISOLATED)


def _spawn(cases, timeout):
    """Run [(id, code)] in one child; {id: result} for those that finished, and the id
    that was running when the child died or hung (or None)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-c", RUNNER, PRELUDE],
        cwd=str(ROOT),
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    hung = False
    try:
        stdout, stderr = proc.communicate(json.dumps(cases), timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        hung = True
    results, started = read_case_results(stdout)
    if started is not None:
        results[started] = (
            ("hung", timeout, stderr[-3000:]) if hung else ("crashed", proc.returncode, stderr[-3000:])
        )
    elif len(results) < len(cases):
        raise RuntimeError(f"the case runner failed (exit {proc.returncode}): {stderr[-3000:]}")
    return results


_results = {}


def _result(cid):
    if cid not in _results:
        if _isolated(cid):
            _results.update(_spawn([(cid, CODES[cid])], CASE_TIMEOUT))
        else:
            pending = [(c, CODES[c]) for c in CODES if not _isolated(c) and c not in _results]
            while pending:
                _results.update(_spawn(pending, CASE_TIMEOUT + 10 * len(pending)))
                pending = [p for p in pending if p[0] not in _results]
    return _results[cid]


def test_table_has_every_item():
    assert len({c[0] for c in TABLE}) == len(TABLE), "duplicate ids"
    assert len(TABLE) >= 25


@pytest.mark.parametrize("cid, code, expected, match", TABLE, ids=[c[0] for c in TABLE])
def test_hostile_r14_case(cid, code, expected, match):
    res = _result(cid)
    if res[0] == "hung":
        pytest.fail(f"{cid}: the child process hung (killed after {res[1]} s):\n{res[2]}")
    if res[0] == "crashed":
        pytest.fail(f"{cid}: the process died (return code {res[1]}):\n{res[2]}")
    if expected == "ok":
        assert res[0] == "returned", f"{cid}: raised {res[1]}: {res[2]}"
        return
    assert res[0] == "raised", f"{cid}: returned instead of raising {expected}"
    assert res[1] in expected, f"{cid}: raised {res[1]}: {res[2]} (expected {expected})"
    assert re.search(match, res[2]), f"{cid}: message {res[2]!r} does not match {match!r}"
