"""End-to-end steps of real architectures, plain torch.nn vs after cnorm.torch.convert
(pytest-benchmark; models and steps from :mod:`cnorm.benchmarks.models`, also in
``python -m cnorm bench --dropin``). ``benchmark.group`` is ``"model-{model}-{step}"``.

    pytest bench/test_bench_models.py
    CNORM_BENCH_MODELS=1 pytest bench/test_bench_models.py --benchmark-disable   # every step once

The smoke run of the suite (``--benchmark-disable``, CI) skips them unless
``CNORM_BENCH_MODELS=1``: a step of each model takes seconds
(``tests/test_torch_threshold.py`` runs them once, marked slow).
"""

import os

import pytest

torch = pytest.importorskip("torch")

from cnorm.benchmarks import models as M


@pytest.mark.parametrize("impl", ["cnorm.torch", "torch.nn"])
@pytest.mark.parametrize("model,step", M.model_rows(), ids=[f"{m}-{s}" for m, s in M.model_rows()])
def test_bench_model(request, model, step, impl, _same_thread_count):
    if request.config.getoption("benchmark_disable", False) and not os.environ.get("CNORM_BENCH_MODELS"):
        pytest.skip("end-to-end models in a smoke run: set CNORM_BENCH_MODELS=1")
    bench = request.getfixturevalue("bench")
    bench.group = f"model-{model}-{step}"
    bench.extra_info.update(impl=impl, threads=_same_thread_count)
    bench(M.build_model_step(model, step, impl))
