"""cnorm vs torch.nn vs the NumPy reference vs a plain copy, per case, op and dtype.

All callables come from :mod:`cnorm.benchmarks.cases` (the table that
``python -m cnorm bench`` uses).  ``benchmark.group`` is ``"{case}-{op}-{dtype}"``
so that the impls of one measurement sit side by side in the report.
"""

import pytest

from cnorm.benchmarks import cases as C


def _dtypes(config):
    try:
        opt = config.getoption("--bench-dtype")
    except ValueError:  # bench/conftest.py not loaded as an initial conftest
        opt = "float32"
    return list(C.DTYPES) if opt == "both" else [opt]


def pytest_generate_tests(metafunc):
    if "bench_params" not in metafunc.fixturenames:
        return
    params = []
    for case, dtype, op, impl in C.iter_params(dtypes=_dtypes(metafunc.config)):
        marks = [pytest.mark.float64] if dtype == "float64" else []
        params.append(pytest.param((case, dtype, op, impl), marks=marks,
                                   id=f"{case.name}-{op}-{impl}-{dtype}"))
    metafunc.parametrize("bench_params", params)


def test_bench(request, bench_params, _same_thread_count):
    case, dtype, op, impl = bench_params
    if impl == "torch":
        pytest.importorskip("torch")
    if impl == "numpy" and C.numpy_ref_is_heavy(case, op):
        pytest.skip("NumPy reference too slow for this size (~1 s per call)")
    try:
        fn = C.build(case, op, impl, dtype)
    except C.ImplUnavailable as exc:
        if impl == "cnorm":
            raise
        pytest.skip(str(exc))
    # requested only now, so that the skips above do not leave it unused (a warning)
    bench = request.getfixturevalue("bench")
    bench.group = f"{case.name}-{op}-{dtype}"
    bench.extra_info.update(
        impl=impl, shape=list(case.shape), dtype=dtype, op=op,
        bytes=C.op_bytes(case, op, dtype), threads=_same_thread_count)
    bench(fn)
