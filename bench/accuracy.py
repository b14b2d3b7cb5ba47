"""Accuracy of float32 normalization: cnorm vs torch, against float64.

    python bench/accuracy.py              # plain-text table
    python bench/accuracy.py --markdown   # the Markdown table of docs/accuracy.md

Data: x = offset + N(0, 1) in float32 (BatchNorm2d input (32, 16, 32, 32), LayerNorm input
(256, 1024)), plus two hostile rows: one channel (BN) / row (LN) constant at 1e4, and
x = 1e25 * N(0, 1). The reference is the float64 result computed by :mod:`cnorm.slow`
from the SAME float32 inputs, so the columns show only the error each library adds.

Columns (max |error| of O(1) outputs; NaN when the output holds NaN; on the constant row,
the error of the constant channel / row alone, whose exact output is 0):

* BN2d train -- training-mode forward (batch statistics);
* BN2d eval  -- eval-mode forward with running_mean / running_var set to the batch's own
  float64 statistics (stored as float32, as both libraries store them);
* LN         -- LayerNorm forward over the last dim;
* running_var -- max relative error of running_var after one training step with
  momentum=1 (running_var = the unbiased batch variance), against float64 (absolute
  error for a channel whose variance is 0).

Importing this module runs nothing; :func:`measure` returns the rows, :func:`main` prints.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

import cnorm
import cnorm.functional as F
from cnorm import slow

try:  # torch is optional: without it the torch columns read "n/a"
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

EPS = 1e-5
BN_SHAPE = (32, 16, 32, 32)
LN_SHAPE = (256, 1024)
OFFSETS = (0.0, 1e3, 1e4, 1e5, 1e6)
CONST = 1e4
HUGE = 1e25
FLT_MAX = float(np.finfo(np.float32).max)

COLUMNS = [
    ("bn_train", "BN2d train"),
    ("bn_eval", "BN2d eval"),
    ("ln", "LN"),
    ("running_var", "running_var rel."),
]
IMPLS = ("torch", "cnorm")


# ---------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------


def _inputs(kind: str, value: float, seed: int):
    """(label, x_bn, x_ln) for one row of the table."""
    rng = np.random.default_rng(seed)
    if kind == "offset":
        x_bn = (value + rng.standard_normal(BN_SHAPE)).astype(np.float32)
        x_ln = (value + rng.standard_normal(LN_SHAPE)).astype(np.float32)
        return f"offset {value:g}", x_bn, x_ln
    if kind == "constant":
        x_bn = rng.standard_normal(BN_SHAPE).astype(np.float32)
        x_bn[:, 1] = np.float32(value)
        x_ln = rng.standard_normal(LN_SHAPE).astype(np.float32)
        x_ln[1] = np.float32(value)
        return f"constant channel/row {value:g}", x_bn, x_ln
    if kind == "scale":
        x_bn = (value * rng.standard_normal(BN_SHAPE)).astype(np.float32)
        x_ln = (value * rng.standard_normal(LN_SHAPE)).astype(np.float32)
        return f"x = {value:g} * N(0,1)", x_bn, x_ln
    raise ValueError(kind)


# ---------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------


def _max_err(actual, expected, part=None) -> float:
    """max |actual - expected|; over channel (BN) / row (LN) ``part`` only when given."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if part is not None:
        a, e = part(a), part(e)
    d = np.abs(a - e)
    return math.nan if np.isnan(d).any() else float(d.max())


def _bn_train(impl: str, x: np.ndarray) -> np.ndarray:
    if impl == "cnorm":
        return F.batch_norm(x, None, None, training=True, eps=EPS)
    return torch.nn.functional.batch_norm(torch.from_numpy(x), None, None, training=True, eps=EPS).numpy()


def _bn_eval(impl: str, x: np.ndarray, rm: np.ndarray, rv: np.ndarray) -> np.ndarray:
    if impl == "cnorm":
        return F.batch_norm(x, rm, rv, training=False, eps=EPS)
    return torch.nn.functional.batch_norm(
        torch.from_numpy(x), torch.from_numpy(rm), torch.from_numpy(rv), training=False, eps=EPS
    ).numpy()


def _ln(impl: str, x: np.ndarray) -> np.ndarray:
    if impl == "cnorm":
        return F.layer_norm(x, x.shape[-1:], eps=EPS)
    return torch.nn.functional.layer_norm(torch.from_numpy(x), x.shape[-1:], eps=EPS).numpy()


def _running_var(impl: str, x: np.ndarray) -> np.ndarray:
    C = x.shape[1]
    if impl == "cnorm":
        m = cnorm.BatchNorm2d(C, eps=EPS, momentum=1.0)
        m(x)
        return m.running_var.copy()
    m = torch.nn.BatchNorm2d(C, eps=EPS, momentum=1.0)
    with torch.no_grad():
        m(torch.from_numpy(x))
    return m.running_var.numpy().copy()


def measure_row(kind: str, value: float, seed: int = 0) -> dict[str, object]:
    """Errors of one row: {'label', ('bn_train', impl): err, ...}; None = not measurable."""
    label, x_bn, x_ln = _inputs(kind, value, seed)
    x64 = x_bn.astype(np.float64)
    mean, var = slow.batch_norm_stats(x64)
    ref_train = slow.batch_norm_forward(x64, None, None, None, None, True, 1.0, EPS)[0]
    with np.errstate(over="ignore"):
        rm, rv = mean.astype(np.float32), var.astype(np.float32)
    eval_ok = bool(np.isfinite(rv).all())  # var > FLT_MAX: no float32 running stats
    ref_eval = slow.batch_norm_forward(x64, None, None, rm, rv, False, 1.0, EPS)[0] if eval_ok else None
    ref_ln = slow.layer_norm_forward(x_ln.astype(np.float64), x_ln.shape[-1:], None, None, EPS)[0]
    M = x_bn.size // x_bn.shape[1]
    ref_rv = var * M / (M - 1)
    rv_ok = bool(np.all(ref_rv <= FLT_MAX))
    # the constant row reports the constant channel / row alone (exactly 0 is the goal)
    bn_part = (lambda a: a[:, 1]) if kind == "constant" else None
    ln_part = (lambda a: a[1]) if kind == "constant" else None
    rv_part = (lambda a: a[1:2]) if kind == "constant" else None
    row: dict[str, object] = {"label": label}
    for impl in IMPLS:
        if impl == "torch" and torch is None:
            for key, _ in COLUMNS:
                row[(key, impl)] = None
            continue
        row[("bn_train", impl)] = _max_err(_bn_train(impl, x_bn), ref_train, bn_part)
        row[("bn_eval", impl)] = (
            _max_err(_bn_eval(impl, x_bn, rm, rv), ref_eval, bn_part) if eval_ok else None
        )
        row[("ln", impl)] = _max_err(_ln(impl, x_ln), ref_ln, ln_part)
        if rv_ok:
            got = _running_var(impl, x_bn).astype(np.float64)
            # relative error; absolute where the variance is 0 (a constant channel)
            d = np.abs(got - ref_rv) / np.where(ref_rv > 0, ref_rv, 1.0)
            if rv_part is not None:
                d = rv_part(d)
            row[("running_var", impl)] = math.nan if np.isnan(d).any() else float(d.max())
        else:
            row[("running_var", impl)] = None
    return row


def measure(seed: int = 0) -> list[dict[str, object]]:
    """Every row of the table."""
    rows = [measure_row("offset", off, seed) for off in OFFSETS]
    rows.append(measure_row("constant", CONST, seed))
    rows.append(measure_row("scale", HUGE, seed))
    return rows


# ---------------------------------------------------------------------------------------
# formatting
# ---------------------------------------------------------------------------------------


def fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    if v == 0:
        return "0"
    if math.isinf(v):
        return "inf"
    return f"{v:.1e}"


def _cells(row) -> list[str]:
    return [fmt(row[(key, impl)]) for key, _ in COLUMNS for impl in IMPLS]


def format_markdown(rows) -> str:
    head = ["input"] + [f"{title} {impl}" for _, title in COLUMNS for impl in IMPLS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for row in rows:
        lines.append("| " + " | ".join([str(row["label"])] + _cells(row)) + " |")
    return "\n".join(lines)


def format_text(rows) -> str:
    head = ["input"] + [f"{title} {impl}" for _, title in COLUMNS for impl in IMPLS]
    body = [[str(r["label"])] + _cells(r) for r in rows]
    widths = [max(len(line[i]) for line in [head] + body) for i in range(len(head))]
    out = []
    for line in [head] + body:
        out.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
        )
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def notes() -> str:
    return (
        f"float32; max |error| against float64 (cnorm.slow) on the same float32 inputs; "
        f"BN2d input {BN_SHAPE}, LN input {LN_SHAPE}, eps={EPS:g}; BN2d eval uses the batch's "
        f"own statistics as running stats; constant row: error of the constant channel/row "
        f"alone (exact output 0); running_var: relative error after one step with "
        f"momentum=1 (absolute error for a zero variance); n/a: not representable in float32 (variance > FLT_MAX)"
        + ("" if torch is not None else "; torch not installed")
        + (f"; torch {torch.__version__}" if torch is not None else "")
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="cnorm vs torch accuracy table (float32 vs float64)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    args = parser.parse_args(argv)
    rows = measure(args.seed)
    if args.markdown:
        print(format_markdown(rows))
        print()
        print(f"<sub>{notes()}</sub>")
    else:
        print(format_text(rows))
        print()
        print(notes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
