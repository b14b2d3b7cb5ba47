"""cnorm vs torch.nn vs the NumPy reference vs a plain copy, per case, op and dtype.

All callables come from :mod:`cnorm.benchmarks.cases` (the table that
``python -m cnorm bench`` uses).  ``benchmark.group`` is ``"{case}-{op}-{dtype}"``
so that the impls of one measurement sit side by side in the report. ``bench_params``
is parametrized in ``bench/conftest.py``.
"""

import pytest

from cnorm.benchmarks import cases as C


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
        impl=impl,
        shape=list(case.shape),
        dtype=dtype,
        op=op,
        bytes=C.op_bytes(case, op, dtype),
        floor_bytes=C.floor_bytes(case, op, dtype),
        threads=_same_thread_count,
    )
    bench(fn)
