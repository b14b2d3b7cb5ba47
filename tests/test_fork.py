"""Issue 14, "fork safety": after a multi-threaded cnorm call, a forked child (os.fork(), a
multiprocessing 'fork' Pool: what data-loader workers use) completes its own
multi-threaded-size cnorm calls, with and without torch imported, and gets the parent's
results. libgomp is not fork-safe: today the child deadlocks in its first parallel region.

Every scenario runs in a fresh interpreter (subprocess with a timeout), whose parent side
waits for its children with a deadline and kills them, so a hang is a failure, never a
stuck test session.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from child_runs import CHILD_HELPERS

import cnorm

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHILD_TIMEOUT = 15  # seconds a forked child may take (it needs well under 1 s)

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform"),
    pytest.mark.skipif(not cnorm.openmp_enabled(), reason="serial build: nothing to deadlock"),
]

PRELUDE = r'''
import os, sys, time, signal, pickle, threading
TORCH = {torch!r}
if TORCH:
    import torch
import numpy as np
import cnorm
import cnorm.functional as F
if not TORCH:
    assert "torch" not in sys.modules, "cnorm imported torch"
OUT = {out!r}
cnorm.set_num_threads(4)
rng = np.random.default_rng(0)
X = rng.standard_normal((2048, 96))        # 196k values: split over all 4 threads
DY = rng.standard_normal((2048, 96))
Z = rng.standard_normal((4096, 48)) * 3 + 1
G = rng.standard_normal((4, 32, 32, 40))


def work():
    y, mean, invstd = F.native_batch_norm(X, None, None, None, None, True, 0.1, 1e-5)
    dx = F.batch_norm_backward(DY, X, None, mean, invstd, True)[0]
    ln = F.layer_norm(Z, (48,))
    gn = F.group_norm(G, 8)
    m = cnorm.BatchNorm1d(96, dtype=np.float64)
    yb = m(X)
    return [y, dx, ln, gn, yb, m.backward(DY), m.running_var]


def fork_and_work(tag):
    """Fork; the child saves work() to OUT/tag.pkl. Returns the child's exit status."""
    path = os.path.join(OUT, tag + ".pkl")
    pid = os.fork()
    if pid == 0:
        try:
            res = work()
            with open(path, "wb") as f:
                pickle.dump(res, f)
            code = 0
        except BaseException as exc:
            sys.stderr.write(f"child failed: {{exc!r}}\n")
            code = 3
        os._exit(code)
    return wait_child(pid, {timeout})


def pool_work(_):
    return work()


def save(tag, obj):
    with open(os.path.join(OUT, tag + ".pkl"), "wb") as f:
        pickle.dump(obj, f)


if TORCH:        # torch's own OpenMP work in the parent too (one runtime is shared)
    t = torch.randn(64, 32, 28, 28)
    torch.nn.functional.batch_norm(t, None, None, training=True)
parent = work()                             # the multi-threaded call before the fork
save("parent", parent)
'''

SCENARIOS = {
    "os.fork": r"""
status = fork_and_work("child")
assert cnorm.get_num_threads() == 4, cnorm.get_num_threads()   # the parent keeps its threads
save("parent_after", work())                  # and still runs (multi-threaded)
print("STATUS", status)
""",
    "fork Pool": r"""
import multiprocessing as mp
ctx = mp.get_context("fork")
pool = ctx.Pool(2)
try:
    res = pool.map_async(pool_work, range(2)).get(timeout={timeout})
    save("child", res[0])
    save("child2", res[1])
    print("STATUS", 0)
except mp.TimeoutError:
    print("STATUS hang")
finally:
    pool.terminate()
    pool.join()
""",
    "fork while another thread runs kernels": r"""
status = while_kernels_run(work, lambda: fork_and_work("child"))
print("STATUS", status)
""",
    "fork from a forked child": r"""
pid = os.fork()
if pid == 0:
    code = 0
    try:
        work()                                  # the child's own calls, then a grandchild
        code = fork_and_work("child")
        code = 0 if code == 0 else 4
    except BaseException as exc:
        sys.stderr.write(f"child failed: {exc!r}\n")
        code = 3
    os._exit(code if isinstance(code, int) else 5)
print("STATUS", wait_child(pid, 2 * {timeout}))
""",
}


def _run(scenario, torch_imported, tmp_path):
    code = PRELUDE.format(torch=torch_imported, out=str(tmp_path), timeout=CHILD_TIMEOUT)
    code += CHILD_HELPERS
    code += textwrap.dedent(SCENARIOS[scenario]).replace("{timeout}", str(CHILD_TIMEOUT))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("OMP_NUM_THREADS", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c", code],
            cwd=str(ROOT),
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=3 * CHILD_TIMEOUT + 60,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{scenario}: the whole scenario hung ({exc.timeout} s)")
    status = [ln.split(None, 1)[1] for ln in proc.stdout.splitlines() if ln.startswith("STATUS ")]
    assert proc.returncode == 0 and status, (
        f"{scenario}: exit {proc.returncode}\nstdout:{proc.stdout[-2000:]}\nstderr:{proc.stderr[-3000:]}"
    )
    assert status[0] != "hang", f"{scenario}: the forked child hung (killed after {CHILD_TIMEOUT} s)"
    assert status[0] == "0", f"{scenario}: the child exited with {status[0]}\n{proc.stderr[-3000:]}"


def _load(tmp_path, tag):
    import pickle

    with open(tmp_path / (tag + ".pkl"), "rb") as f:
        return pickle.load(f)


def _assert_same(a, b, what):
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12, err_msg=f"{what}: output {i}")


CASES = [(s, False) for s in SCENARIOS] + [("os.fork", True), ("fork Pool", True)]


@pytest.mark.parametrize(
    "scenario, torch_imported", CASES, ids=[s + (" with torch" if t else "") for s, t in CASES]
)
def test_forked_child_completes(tmp_path, scenario, torch_imported):
    if torch_imported:
        pytest.importorskip("torch")
    _run(scenario, torch_imported, tmp_path)
    parent = _load(tmp_path, "parent")
    _assert_same(_load(tmp_path, "child"), parent, "child vs parent")
    if scenario == "fork Pool":
        _assert_same(_load(tmp_path, "child2"), parent, "second pool worker vs parent")
    if scenario == "os.fork":
        _assert_same(_load(tmp_path, "parent_after"), parent, "parent after the fork")
