"""Benchmarks of cnorm against torch.nn and a memory-copy roofline.

* :mod:`cnorm.benchmarks.cases`  -- the case table and builders of the timed callables
  (shared with the pytest-benchmark suite in ``bench/``);
* :mod:`cnorm.benchmarks.timing` -- interleaved median timing;
* :mod:`cnorm.benchmarks.runner` -- ``python -m cnorm bench`` (``runner.main(argv)``).

Importing this package imports neither torch nor the compiled core.
"""
