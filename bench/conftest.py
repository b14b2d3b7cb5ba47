"""pytest-benchmark suite of cnorm (cases shared with ``python -m cnorm bench``).

Run:   pytest bench/                          # timings, grouped per case-op-dtype
       pytest bench/ --benchmark-disable -q   # smoke run: every callable once (CI)
       pytest bench/ --bench-dtype both       # float64 too
       pytest bench/ --bench-threads 1        # cnorm and torch both on 1 thread
       pytest bench/ -k "bn2d and fwd_bwd"

No path tweaking here: ``cnorm`` is imported from the installed (``pip install -e``)
package.  Option names are prefixed ``--bench-`` so they cannot clash with
tests/conftest.py, and ``pytest tests bench`` keeps working (see
:func:`pytest_configure`).
"""

import sys
import types

import pytest

from cnorm.benchmarks import cases as C
from cnorm.benchmarks import torch_cases as T
from cnorm.benchmarks.timing import SameThreads


def pytest_addoption(parser):
    group = parser.getgroup("cnorm-bench", "cnorm benchmark suite (bench/)")
    group.addoption(
        "--bench-dtype",
        action="store",
        default="float32",
        choices=("float32", "float64", "both"),
        help="dtype(s) of the benchmark inputs (default: float32)",
    )
    group.addoption(
        "--bench-threads",
        action="store",
        type=int,
        default=None,
        help="thread count used by BOTH cnorm and torch during the suite (default: cnorm.get_num_threads())",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "float64: benchmark on float64 inputs (--bench-dtype)")
    _give_back_conftest_name(config)


def _give_back_conftest_name(config):
    """Do not shadow another rootless conftest in ``sys.modules["conftest"]``.

    conftest.py files outside packages are all imported under the module name
    ``conftest``; pytest drops the previous one from ``sys.modules`` when it loads the
    next.  When ``pytest tests bench`` loads this file after tests/conftest.py, test
    modules doing ``from conftest import ...`` would get this module.  This module is
    only used as a plugin (pytest keeps its own reference), so hand the name back to
    the conftest that held it -- when there is exactly one such candidate.
    """
    this = sys.modules.get(__name__)
    if __name__ != "conftest" or this is None or sys.modules.get("conftest") is not this:
        return
    others = [
        p
        for p in config.pluginmanager.get_plugins()
        if isinstance(p, types.ModuleType) and p.__name__ == "conftest" and p is not this
    ]
    if len(others) == 1:
        sys.modules["conftest"] = others[0]


def _opt(config, name, default):
    # getoption with a default: works even if this conftest was not an initial one
    try:
        return config.getoption(name)
    except ValueError:
        return default


def _bench_dtypes(config):
    return C.select_dtypes(_opt(config, "--bench-dtype", "float32"))


def pytest_generate_tests(metafunc):
    """``bench_params`` (test_bench.py) and ``dropin_params`` (test_bench_torch.py):
    ``(case, dtype, op, impl)``, ids ``{case}-{op}-{impl}-{dtype}``."""
    names = metafunc.fixturenames
    dtypes = _bench_dtypes(metafunc.config)
    if "bench_params" in names:
        name, rows = "bench_params", C.iter_params(dtypes=dtypes)
    elif "dropin_params" in names:
        name, rows = "dropin_params", T.iter_dropin_params(C.CASES, T.DROPIN_OPS, dtypes)
    else:
        return
    metafunc.parametrize(
        name,
        [
            pytest.param(
                row,
                marks=[pytest.mark.float64] if row[1] == "float64" else [],
                id=f"{row[0].name}-{row[2]}-{row[3]}-{row[1]}",
            )
            for row in rows
        ],
    )


@pytest.fixture(scope="module", autouse=True)
def _same_thread_count(request):
    """cnorm and torch use the same number of threads; both restored afterwards."""
    import cnorm

    try:
        import torch
    except ImportError:
        torch = None
    n = _opt(request.config, "--bench-threads", None) or cnorm.get_num_threads()
    with SameThreads(cnorm, torch) as threads:
        threads.set(n)
        yield n


class _CallOnce:
    """Stand-in for pytest-benchmark's fixture when the plugin is missing or disabled
    (``-p no:benchmark``): runs the function once, like ``--benchmark-disable``."""

    def __init__(self):
        self.group = None
        self.extra_info = {}

    def __call__(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)


@pytest.fixture
def bench(request):
    """pytest-benchmark's ``benchmark`` fixture, or a call-once stand-in without it."""
    if request.config.pluginmanager.hasplugin("benchmark"):
        return request.getfixturevalue("benchmark")
    return _CallOnce()
