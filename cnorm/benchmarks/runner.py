"""Old name of :mod:`cnorm.benchmarks.cli` (``runner.main(argv)`` still works); new code
imports ``cli``. To be removed once nothing imports it."""

from .cli import build_parser, main, parse_threads, run_benchmarks
from .report import geomean

__all__ = ["build_parser", "geomean", "main", "parse_threads", "run_benchmarks"]
