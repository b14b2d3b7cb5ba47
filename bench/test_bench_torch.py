"""cnorm.torch drop-in modules vs torch.nn under torch autograd (pytest-benchmark).

Cases from :mod:`cnorm.benchmarks.cases` (fwd_bwd: ``m(x).backward(dy)``, training
mode; infer: eval mode under ``torch.no_grad()``), and one SGD step of the example
CNN of ``examples/train_digits_torch.py``. ``benchmark.group`` is
``"dropin-{case}-{op}-{dtype}"`` (and ``"dropin-cnn_step"``), so the two impls of one
measurement sit side by side.  The callables come from
:mod:`cnorm.benchmarks.torch_cases` (also ``python -m cnorm bench --dropin``).

    pytest bench/test_bench_torch.py                       # timings
    pytest bench/test_bench_torch.py --benchmark-disable   # every callable once

``dropin_params`` is parametrized in ``bench/conftest.py``.
"""

import pytest

torch = pytest.importorskip("torch")

from cnorm.benchmarks import torch_cases as T


def _run(request, fn, group, **info):
    bench = request.getfixturevalue("bench")
    bench.group = group
    bench.extra_info.update(info)
    bench(fn)


def test_bench_dropin(request, dropin_params, _same_thread_count):
    case, dtype, op, impl = dropin_params
    fn = T.build_dropin(case, op, impl, dtype)
    _run(
        request,
        fn,
        f"dropin-{case.name}-{op}-{dtype}",
        impl=impl,
        shape=list(case.shape),
        dtype=dtype,
        op=op,
        threads=_same_thread_count,
    )


@pytest.mark.parametrize("impl", T.DROPIN_IMPLS)
def test_bench_cnn_step(request, impl, _same_thread_count):
    fn = T.build_cnn_step(impl)
    _run(request, fn, "dropin-cnn_step", impl=impl, batch=T.CNN_BATCH, threads=_same_thread_count)
