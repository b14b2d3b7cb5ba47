"""What the tests that run code in child processes share (a crash or a hang there is a
test failure, never the end or a stall of the session).

A case runner (a child interpreter) prints ``START <id>`` before a case and
``RESULT [id, exception name or null, message]`` after it; :func:`read_case_results`
parses that. :func:`wait_child` reaps a forked child with a deadline and
:func:`while_kernels_run` forks (or does anything) while another thread computes; the
child interpreters get their source (``CHILD_HELPERS``) in their prelude.
"""

import inspect
import json
import os
import signal
import threading
import time


def read_case_results(stdout):
    """``({id: ("returned",) | ("raised", name, message)}, started)``: the results a case
    runner printed, and the id of the case it started and did not finish (None if none)."""
    results, started = {}, None
    for line in stdout.splitlines():
        if line.startswith("START "):
            started = json.loads(line[6:])
        elif line.startswith("RESULT "):
            cid, name, msg = json.loads(line[7:])
            results[cid] = ("returned",) if name is None else ("raised", name, msg)
            started = None
    return results, started


def wait_child(pid, timeout):
    """The exit code of the forked child ``pid``, or "hang" when it has not ended after
    ``timeout`` seconds (it is then killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hang"


def while_kernels_run(kernels, action):
    """``action()`` while another Python thread calls ``kernels()`` in a loop."""
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            kernels()

    th = threading.Thread(target=loop)
    th.start()
    time.sleep(0.05)
    try:
        return action()
    finally:
        stop.set()
        th.join()


CHILD_HELPERS = "\n\n".join(
    ["import os, signal, threading, time"] + [inspect.getsource(f) for f in (wait_child, while_kernels_run)]
)
