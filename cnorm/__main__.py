"""``python -m cnorm bench [options]``: the benchmark table (see ``--help``)."""
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m cnorm bench [options]   (python -m cnorm bench --help)")
        return 0 if argv else 2
    if argv[0] != "bench":
        print(f"unknown command {argv[0]!r}; the command is: bench", file=sys.stderr)
        return 2
    from .benchmarks.runner import main as bench_main
    return bench_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
