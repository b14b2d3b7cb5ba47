"""What the examples share: their command line, their output folder, and a clear word
about a missing optional package before any work is done."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

# import name -> (pip name, the cnorm extra that brings it)
_PACKAGES = {
    "matplotlib": ("matplotlib", "examples"),
    "sklearn": ("scikit-learn", "examples"),
    "torch": ("torch", None),
    "mpi4py": ("mpi4py", None),
}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or blocked package counts as missing
        return False


def require(*modules: str) -> None:
    """Exit with an install hint (not a bare ModuleNotFoundError) if a module is missing."""
    missing = [m for m in modules if not _importable(m)]
    if not missing:
        return
    pip_names = " ".join(_PACKAGES.get(m, (m, None))[0] for m in missing)
    extras = sorted({_PACKAGES[m][1] for m in missing if m in _PACKAGES and _PACKAGES[m][1]})
    hints = [f"pip install {pip_names}"]
    if extras:
        hints.insert(0, f'pip install -e ".[{",".join(extras)}]"  (from a cnorm checkout)')
    script = os.path.basename(sys.argv[0]) or "this example"
    sys.exit(
        f"{script} needs {', '.join(missing)}, which is not installed. Install it with\n    "
        + "\n or\n    ".join(hints)
    )


def parser(
    description: str, quick_help: str, seed: bool = True, out_default: str | None = "."
) -> argparse.ArgumentParser:
    """The options every example takes: --out DIR, --quick (and --seed N)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--out", default=out_default, help=f"output directory (default: {out_default or 'write nothing'})"
    )
    p.add_argument("--quick", action="store_true", help=quick_help)
    if seed:
        p.add_argument("--seed", type=int, default=0)
    return p


def training_parser(description: str, quick_help: str, epochs: int, batch: int) -> argparse.ArgumentParser:
    """:func:`parser` plus the training options --epochs, --batch and --lr (SGD, 0.05)."""
    p = parser(description, quick_help)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=0.05)
    return p


def save_figure(fig, path: str) -> None:
    """Lay out a matplotlib figure, write it (100 dpi) and close it."""
    import matplotlib.pyplot as plt  # the callers checked that matplotlib is installed

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def output_path(out_dir: str, filename: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    return os.path.join(out_dir, filename)
