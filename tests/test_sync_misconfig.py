"""Issue 14, "SyncBatchNorm misconfiguration": when the ranks of a gloo process group call
cnorm.torch.SyncBatchNorm with different channel counts (or dtypes), every rank raises a
clear Python error naming what the ranks have, instead of one rank dying with SIGABRT
(``gloo::EnforceNotMet`` in the all-gather) and the others waiting for it. Afterwards the
ranks still agree: a correctly configured call on every rank works.

Each rank is a separate interpreter (``python -c``) on 127.0.0.1, with a short gloo timeout;
the test kills whatever is still running after its deadline, so nothing can hang the suite.
"""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():  # pragma: no cover
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEADLINE = 90  # seconds for all ranks together (a healthy run takes a few)

RANK = r"""
import datetime, json, sys
import torch
import torch.distributed as dist
import cnorm, cnorm.torch as ct
rank, world, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
scenarios = json.loads(sys.argv[4])        # [[channels per rank], [dtype per rank]], ...
torch.set_num_threads(1)
cnorm.set_num_threads(1)
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                        world_size=world, timeout=datetime.timedelta(seconds=20))
try:
    for channels, dtypes in scenarios:
        out = {"rank": rank}
        c, dt = channels[rank], getattr(torch, dtypes[rank])
        m = ct.SyncBatchNorm(c, dtype=dt)
        x = torch.randn(4, c, 3, dtype=dt, requires_grad=True)
        try:
            m(x).sum().backward()
            out["error"] = None
        except Exception as exc:
            out["error"] = [type(exc).__name__, str(exc)]
        # the ranks still agree: a well-configured call on every rank works
        try:
            m = ct.SyncBatchNorm(3, dtype=torch.float64)
            x = torch.randn(2 + rank, 3, 2, dtype=torch.float64, requires_grad=True)
            m(x).sum().backward()
            out["recovered"] = bool(torch.isfinite(x.grad).all())
        except Exception as exc:
            out["recovered"] = repr(exc)
        print("RESULT " + json.dumps(out), flush=True)
finally:
    dist.destroy_process_group()
"""

# world size -> the scenarios its ranks run one after the other (one launch per world size)
SCENARIOS = {
    2: [((3, 4), ("float64", "float64")), ((3, 3), ("float32", "float64"))],
    3: [((3, 3, 5), ("float64",) * 3)],
}
_results = {}


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_world(world):
    """[(returncode, [result per scenario], stderr) per rank], launched once per world."""
    if world in _results:
        return _results[world]
    port = _free_port()
    env = dict(
        os.environ,
        GLOO_SOCKET_IFNAME="lo",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, str(r), str(world), str(port), json.dumps(SCENARIOS[world])],
            cwd=str(ROOT),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    results = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            stdout, stderr = p.communicate()
            stderr = f"(killed after {DEADLINE} s)\n" + stderr
        res = [json.loads(ln[7:]) for ln in stdout.splitlines() if ln.startswith("RESULT ")]
        results.append((p.returncode, res, stderr[-3000:]))
    _results[world] = results
    return results


def _check(world, index, exc_types, must_name):
    for rank, (code, res, stderr) in enumerate(_run_world(world)):
        where = f"rank {rank} (exit {code}):\n{stderr}"
        assert len(res) > index, f"{where}: died instead of raising"
        res = res[index]
        assert res["error"] is not None, f"rank {rank}: no error for a misconfigured group"
        name, msg = res["error"]
        assert name in exc_types, f"rank {rank}: {name}: {msg}"
        for pattern in must_name:
            assert re.search(pattern, msg, re.IGNORECASE), (
                f"rank {rank}: the message does not name {pattern!r}: {msg}"
            )
        assert res["recovered"] is True, f"rank {rank}: the next, valid call failed: {res['recovered']}"
    for rank, (code, _res, stderr) in enumerate(_run_world(world)):
        assert code == 0, f"rank {rank} exited with {code}:\n{stderr}"


def _count_patterns(channels):
    return ["channel"] + [rf"(?<!\d){c}(?!\d)" for c in sorted(set(channels))]


def test_different_channel_counts_raise_on_every_rank():
    _check(2, 0, ("ValueError", "RuntimeError"), _count_patterns((3, 4)))


def test_different_channel_counts_raise_on_every_rank_of_three():
    _check(3, 0, ("ValueError", "RuntimeError"), _count_patterns((3, 3, 5)))


def test_different_dtypes_raise_on_every_rank():
    _check(2, 1, ("TypeError", "ValueError", "RuntimeError"), ["float32", "float64"])
