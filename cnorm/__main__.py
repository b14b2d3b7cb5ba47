"""``python -m cnorm <command> [options]``; ``python -m cnorm`` lists the commands."""

import importlib
import sys
import textwrap

# command -> (module with main(argv) -> exit status, one sentence for the listing)
COMMANDS = {
    "bench": (
        "cnorm.benchmarks.cli",
        (
            "Time cnorm against torch.nn and a plain memory copy of the input, per case, "
            "op and thread count (--dropin: the cnorm.torch layers under autograd)."
        ),
    ),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m cnorm <command> [options]", "", "commands:"]
    indent = " " * (width + 4)
    lines += [
        textwrap.fill(text, 88, initial_indent=f"  {name:<{width}}  ", subsequent_indent=indent)
        for name, (_, text) in COMMANDS.items()
    ]
    lines += ["", "python -m cnorm <command> --help describes a command's options."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
