"""pytest-benchmark suite of cnorm (cases shared with ``python -m cnorm bench``).

Run:   pytest bench/                          # timings, grouped per case-op-dtype
       pytest bench/ --benchmark-disable -q   # smoke run: every callable once (CI)
       pytest bench/ --bench-dtype both       # float64 too
       pytest bench/ --bench-threads 1        # cnorm and torch both on 1 thread
       pytest bench/ -k "bn2d and fwd_bwd"

No path tweaking here: ``cnorm`` is imported from the installed (``pip install -e``)
package.  Option names are prefixed ``--bench-`` so they cannot clash with
tests/conftest.py.
"""

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("cnorm-bench", "cnorm benchmark suite (bench/)")
    group.addoption("--bench-dtype", action="store", default="float32",
                    choices=("float32", "float64", "both"),
                    help="dtype(s) of the benchmark inputs (default: float32)")
    group.addoption("--bench-threads", action="store", type=int, default=None,
                    help="thread count used by BOTH cnorm and torch during the suite "
                         "(default: cnorm.get_num_threads())")


def pytest_configure(config):
    config.addinivalue_line("markers", "float64: benchmark on float64 inputs (--bench-dtype)")


def _opt(config, name, default):
    # getoption with a default: works even if this conftest was not an initial one
    try:
        return config.getoption(name)
    except ValueError:
        return default


@pytest.fixture(scope="session", autouse=True)
def _same_thread_count(request):
    """cnorm and torch use the same number of threads; both restored afterwards."""
    import cnorm
    try:
        import torch
    except ImportError:
        torch = None
    n = _opt(request.config, "--bench-threads", None) or cnorm.get_num_threads()
    orig_c = cnorm.get_num_threads()
    orig_t = torch.get_num_threads() if torch is not None else None
    cnorm.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    yield n
    cnorm.set_num_threads(orig_c)
    if torch is not None:
        torch.set_num_threads(orig_t)


try:  # pragma: no cover - depends on the environment
    import pytest_benchmark  # noqa: F401
except ImportError:  # pragma: no cover
    class _CallOnce:
        """Stand-in for the pytest-benchmark fixture: calls the function once."""

        def __init__(self):
            self.group = None
            self.extra_info = {}

        def __call__(self, fn, *args, **kwargs):
            return fn(*args, **kwargs)

    @pytest.fixture
    def benchmark():
        return _CallOnce()
