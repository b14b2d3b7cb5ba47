"""Benchmarks of cnorm against torch.nn and a memory-copy roofline.

Imports run one way, bottom to top (no module imports one above it)::

    cases, timing        the case table and builders of the timed callables (shared with
                         the pytest-benchmark suite in ``bench/``); interleaved median
                         timing and SameThreads
    torch_cases          cnorm.torch drop-ins vs torch.nn under autograd  (imports cases)
    report               records, tables, progress, JSON, plot  (imports cases, timing)
    cli                  ``python -m cnorm bench``: ``cli.main(argv)``  (imports all above)

Importing this package imports neither torch nor the compiled core.
"""
