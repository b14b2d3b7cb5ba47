"""What ``python -m cnorm bench`` writes: records, text tables, progress, metadata,
JSON and the speedup plot.

Imports :mod:`~cnorm.benchmarks.cases` (bytes per op) and
:mod:`~cnorm.benchmarks.timing` (the method text); matplotlib lazily, in
:func:`write_plot`. Nothing here measures.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence

import numpy as np

from . import cases as C
from .timing import BANDWIDTH_TEXT, METHOD_TEXT

__all__ = [
    "DROPIN_TABLE",
    "TABLE",
    "Progress",
    "bandwidth_line",
    "Table",
    "dropin_row",
    "dropin_summary",
    "geomean",
    "header_line",
    "loadavg",
    "metadata",
    "print_table",
    "record",
    "run_notes",
    "summary_line",
    "write_json",
    "write_plot",
]


# --------------------------------------------------------------------------- numbers


def geomean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not vals:
        return float("nan")
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def _fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    if ms < 0.1:
        return f"{ms:.4f}"
    if ms < 10:
        return f"{ms:.3f}"
    if ms < 1000:
        return f"{ms:.2f}"
    return f"{ms:.0f}"


def _fmt(v: float | None, spec: str) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return format(v, spec)


def _fmt_bytes(n: int) -> str:
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:.3g} {unit}"
    return f"{n} B"


# --------------------------------------------------------------------------- records


def record(case, dtype, op, n, meas, error=None, bandwidth=None) -> dict:
    """One JSON-ready row: the measurement of ``op`` of ``case`` at ``n`` threads and
    what follows from it (ratio, GB/s, copy%, x floor, noise%). ``bandwidth``: the
    :class:`~cnorm.benchmarks.timing.Bandwidth` at ``n`` threads (None: no floor)."""
    nb = C.op_bytes(case, op, dtype)
    fb = C.floor_bytes(case, op, dtype)
    cb = C.copy_bytes(case, dtype)
    med = meas.medians if meas is not None else {}
    t_c, t_t, t_cp = med.get("cnorm"), med.get("torch"), med.get("copy")
    ratio = t_c / t_t if (t_c and t_t) else None
    gbps = nb / t_c / 1e9 if t_c else None
    copy_pct = (t_cp / t_c) * (nb / cb) * 100 if (t_c and t_cp) else None
    floor_s = fb / bandwidth.bytes_per_s if bandwidth is not None else None
    return {
        "case": case.name,
        "module": case.module_name,
        "shape": list(case.shape),
        "normalized_shape": list(case.normalized_shape) if case.normalized_shape else None,
        "dtype": dtype,
        "op": op,
        "threads": n,
        "bytes": nb,
        "copy_bytes": cb,
        "floor_bytes": fb,
        "floor_ms": floor_s * 1e3 if floor_s is not None else None,
        "stream_gbps": bandwidth.bytes_per_s / 1e9 if bandwidth is not None else None,
        "median_s": med,
        "min_s": {k: min(v) for k, v in meas.times.items()} if meas is not None else {},
        "times_s": meas.times if meas is not None else {},
        "inner": meas.inner if meas is not None else {},
        "ratio_cnorm_torch": ratio,
        "gbps": gbps,
        "copy_gbps": cb / t_cp / 1e9 if t_cp else None,
        "copy_pct": copy_pct,
        "x_floor": t_c / floor_s if (t_c and floor_s) else None,
        "x_floor_torch": t_t / floor_s if (t_t and floor_s) else None,
        "noise_pct": _noise_pct(meas),
        "error": error,
    }


def _noise_pct(meas) -> float | None:
    """Largest relative interquartile range (IQR / median * 100) of the cnorm and torch reps."""
    if meas is None:
        return None
    worst = None
    for name in ("cnorm", "torch"):
        ts = meas.times.get(name)
        if not ts or len(ts) < 2:
            continue
        q1, _, q3 = statistics.quantiles(ts, n=4)
        med = statistics.median(ts)
        if med > 0:
            v = (q3 - q1) / med * 100
            worst = v if worst is None else max(worst, v)
    return worst


# --------------------------------------------------------------------------- text


class Table:
    """Fixed-width text rows. ``columns``: ``"title:<width | title:>width | ..."``, a format
    spec per column (``<`` left-, ``>`` right-aligned). A row with fewer cells than
    columns is cut short."""

    def __init__(self, columns: str, sep: str = "  ", indent: str = "  "):
        self.columns = tuple(_column(spec) for spec in columns.split("|"))
        self.sep, self.indent = sep, indent

    def row(self, cells) -> str:
        return self.indent + self.sep.join(
            format(str(c), f"{align}{width}") for c, (_, width, align) in zip(cells, self.columns)
        )

    def header(self) -> str:
        return self.row([title for title, _, _ in self.columns])


def _column(spec: str):
    """``"cnorm ms:>9"`` -> ``("cnorm ms", 9, ">")``."""
    title, fmt = spec.strip().rsplit(":", 1)
    return title, int(fmt[1:]), fmt[0]


TABLE = Table(
    "op:<9 | thr:>3 | cnorm ms:>9 | torch ms:>9 | copy ms:>9 | cnorm/torch:>11 | GB/s:>7 | copy%:>6 | "
    "x floor:>7 | noise%:>6"
)
DROPIN_TABLE = Table(
    "case:<14 | op:<8 | dtype:<8 | thr:>3 | cnorm.torch ms:>15 | torch.nn ms:>12 | ratio:>6", sep=" "
)


def print_table(case, dtype, recs, have_torch, out) -> None:
    """The table of one (case, dtype): one row per op and thread count."""
    out.write(
        f"\n{case.name}: {case.describe()} {dtype}  "
        f"[{case.numel:,} elements, {_fmt_bytes(case.nbytes(dtype))} per array]\n"
    )
    out.write(TABLE.header() + "\n")
    for r in recs:
        med = r["median_s"]
        if r["error"]:
            out.write(TABLE.row([r["op"], r["threads"], "ERROR"]) + "\n")
            out.write(f"    {r['error']}\n")
            continue
        out.write(
            TABLE.row(
                [
                    r["op"],
                    r["threads"],
                    _fmt_ms(med.get("cnorm")),
                    _fmt_ms(med.get("torch")) if have_torch else "-",
                    _fmt_ms(med.get("copy")),
                    _fmt(r["ratio_cnorm_torch"], ".2f"),
                    _fmt(r["gbps"], ".1f"),
                    _fmt(r["copy_pct"], ".0f"),
                    _fmt(r.get("x_floor"), ".2f"),
                    _fmt(r["noise_pct"], ".0f"),
                ]
            )
            + "\n"
        )
    out.flush()


def _geomean_parts(records: list[dict], ops: Sequence[str], threads: Sequence[int], key: str, spec: str):
    """``["op g@1t g@2t", ...]``: the geometric mean of ``records[key]`` per op and thread count."""
    parts = []
    for op in ops:
        vals = []
        for n in threads:
            rs = [r.get(key) for r in records if r["op"] == op and r["threads"] == n]
            if rs:
                vals.append(f"{_fmt(geomean(rs), spec)}@{n}t")
        if vals:
            parts.append(f"{op} " + " ".join(vals))
    return parts


def summary_line(records: list[dict], ops: Sequence[str], threads: Sequence[int], have_torch: bool) -> str:
    """The geometric mean of cnorm/torch (copy% without torch) and of x floor per op and
    thread count."""
    key, what = (
        ("ratio_cnorm_torch", "geomean cnorm/torch (<1: cnorm faster)")
        if have_torch
        else ("copy_pct", "geomean copy% (torch not timed)")
    )
    ncases = len({r["case"] for r in records})
    parts = _geomean_parts(records, ops, threads, key, ".2f" if have_torch else ".0f")
    if any(r.get("x_floor") for r in records):
        parts.append(
            "geomean x floor: " + " | ".join(_geomean_parts(records, ops, threads, "x_floor", ".2f"))
        )
    errors = sum(1 for r in records if r["error"])
    tail = f" | {errors} measurement(s) FAILED" if errors else ""
    return f"summary: {what} over {ncases} case(s): " + " | ".join(parts) + tail


def bandwidth_line(bandwidth: dict) -> str:
    """``bandwidth``: threads -> :class:`~cnorm.benchmarks.timing.Bandwidth`."""
    if not bandwidth:
        return "stream bandwidth: not measured (no x floor)"
    first = next(iter(bandwidth.values()))
    parts = []
    for n, bw in bandwidth.items():
        kinds = f"cached {bw.cached_bytes_per_s / 1e9:.1f}"
        if bw.streamed_bytes_per_s is not None:
            kinds += f", streamed {bw.streamed_bytes_per_s / 1e9:.1f}"
        ran = "" if bw.threads == n else f", ran on {bw.threads}"
        parts.append(f"{n}t {bw.bytes_per_s / 1e9:.1f} GB/s ({kinds}{ran})")
    return (
        f"stream bandwidth (read+write copy, both counted; 2 x {first.buffer_bytes / 2**20:g} MiB, "
        f"best of {first.reps}): " + " | ".join(parts)
    )


def dropin_row(label, op, dtype, n, t_cnorm, t_torch) -> str:
    return DROPIN_TABLE.row(
        [label, op, dtype, n, f"{t_cnorm * 1e3:.3f}", f"{t_torch * 1e3:.3f}", f"{t_cnorm / t_torch:.2f}"]
    )


def dropin_summary(ratios: dict) -> str:
    """``ratios``: (op, threads) -> cnorm.torch/torch.nn ratios."""
    parts = [f"{op}@{n}t {geomean(v):.2f}" for (op, n), v in ratios.items()]
    return "summary: geomean cnorm.torch/torch.nn (<1: cnorm faster): " + " | ".join(parts)


class Progress:
    """A plain-text progress bar on stderr (no-op when disabled)."""

    def __init__(self, total: int, enabled: bool, stream=None, width: int = 28):
        self.total = max(total, 1)
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.done = 0
        self.label = ""
        self.t0 = time.perf_counter()
        self._shown = 0

    def show(self, label: str | None = None) -> None:
        if label is not None:
            self.label = label
        if not self.enabled:
            return
        frac = self.done / self.total
        fill = round(frac * self.width)
        bar = "#" * fill + "." * (self.width - fill)
        el = time.perf_counter() - self.t0
        line = f"[{bar}] {self.done}/{self.total} {el:5.0f}s {self.label}"
        line = line[:118]
        self.stream.write("\r" + line.ljust(self._shown))
        self.stream.flush()
        self._shown = len(line)

    def step(self, n: int = 1) -> None:
        self.done += n
        self.show()

    def clear(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0


# --------------------------------------------------------------------------- metadata


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _call(obj, name):
    f = getattr(obj, name, None)
    try:
        return f() if callable(f) else None
    except Exception:  # noqa: BLE001 - informational only  # pragma: no cover
        return None


def metadata(cnorm, torch, threads, settings, argv, dtypes) -> dict:
    """Versions, machine, threads and settings of a run (the "metadata" of the JSON)."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(argv),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "numpy": np.__version__,
        "cnorm": getattr(cnorm, "__version__", None),
        "cnorm_openmp": _call(cnorm, "openmp_enabled"),
        "cnorm_default_threads": cnorm.get_num_threads(),
        "torch": getattr(torch, "__version__", None) if torch is not None else None,
        "threads": list(threads),
        "dtypes": list(dtypes),
        "settings": {
            "reps": settings.reps,
            "min_rep_s": settings.min_rep_s,
            "warmup_s": settings.warmup_s,
            "max_measure_s": settings.max_measure_s,
            "min_reps": settings.min_reps,
        },
        "method": METHOD_TEXT,
        "bytes": "forward ops: 2*x.nbytes (x read + y written); fwd_bwd: 4*x.nbytes "
        "(x, y, dy, dx); copy: 2*x.nbytes",
        "copy_pct": "(cnorm GB/s) / (copy GB/s) * 100",
        "floor_bytes": C.FLOOR_BYTES_TEXT,
        "x_floor": "cnorm time / floor time, floor time = floor_bytes / the stream bandwidth "
        "at the row's thread count (stream_bandwidth, by thread count)",
        "bandwidth": BANDWIDTH_TEXT,
        "torch_default_threads": torch.get_num_threads() if torch is not None else None,
    }


def header_line(meta: dict, threads, settings, quick: bool) -> str:
    return (
        f"cnorm {meta['cnorm']} (OpenMP: {meta['cnorm_openmp']}) | torch "
        f"{meta['torch'] or 'not timed'} | numpy {meta['numpy']} | {meta['cpu']}, "
        f"{meta['cpu_count']} cpus | threads {','.join(map(str, threads))} | "
        f"{'quick' if quick else 'full'}: median of {settings.reps} interleaved reps "
        f">= {settings.min_rep_s * 1e3:g} ms"
    )


def run_notes(meta: dict, threads) -> list[str]:
    """Warnings about the machine: a busy one, or a serial build asked for threads."""
    notes = []
    load = meta["loadavg_start"]
    ncpu = meta["cpu_affinity"] or meta["cpu_count"] or 1
    if load is not None and load >= max(1.0, 0.25 * ncpu):
        notes.append(
            f"note: 1-min load average {load:.2f} on {ncpu} cpus: other work on the "
            "machine makes timings noisy (multi-thread rows above all); see the "
            "noise% column"
        )
    if meta["cnorm_openmp"] is False and any(n > 1 for n in threads):
        notes.append("note: cnorm was built without OpenMP: its multi-thread rows run on one thread")
    return notes


def write_json(path: str, meta: dict, records: list[dict]) -> None:
    with open(path, "w") as fh:
        json.dump({"metadata": meta, "results": records}, fh, indent=1)
        fh.write("\n")


# --------------------------------------------------------------------------- plot

_OP_COLORS = {"train_fwd": "tab:blue", "eval_fwd": "tab:green", "fwd": "tab:orange", "fwd_bwd": "tab:red"}


def write_plot(path: str, records: list[dict], threads: Sequence[int]) -> None:
    """A bar chart of torch time / cnorm time per (case, op, dtype), one panel per thread
    count, on a log axis centred on 1 (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    dtypes = sorted({r["dtype"] for r in records})
    labels = list(dict.fromkeys((r["case"], r["op"], r["dtype"]) for r in records))
    fig, axes = plt.subplots(
        1,
        len(threads),
        squeeze=False,
        sharey=True,
        sharex=True,
        figsize=(5.5 * len(threads), 0.28 * len(labels) + 1.8),
    )
    ypos = np.arange(len(labels))
    allvals = []
    for ax, n in zip(axes[0], threads):
        vals, cols = [], []
        for lab in labels:
            rec = next(
                (r for r in records if (r["case"], r["op"], r["dtype"]) == lab and r["threads"] == n), None
            )
            ratio = rec["ratio_cnorm_torch"] if rec else None
            vals.append(1.0 / ratio if ratio else float("nan"))
            cols.append(_OP_COLORS.get(lab[1], "gray"))
        allvals += [v for v in vals if math.isfinite(v)]
        # bars grow from 1 (no difference) on a log axis: right = cnorm faster
        ax.barh(ypos, [v - 1 if math.isfinite(v) else 0 for v in vals], left=1.0, color=cols)
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(f"{n} thread{'s' if n > 1 else ''}")
        ax.set_xlabel("speedup = torch time / cnorm time  (>1: cnorm faster)")
        for y, v in zip(ypos, vals):
            if math.isfinite(v):
                ax.text(v, y, f" {v:.2f} ", va="center", fontsize=7, ha="left" if v >= 1 else "right")
        ax.grid(axis="x", which="both", alpha=0.3)
    lim = max([abs(math.log(v)) for v in allvals] + [math.log(1.25)]) * 1.3
    axes[0][0].set_xlim(math.exp(-lim), math.exp(lim))
    ticks = [
        t for t in (0.1, 0.2, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 10) if math.exp(-lim) <= t <= math.exp(lim)
    ]
    for ax in axes[0]:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    axes[0][0].set_yticks(ypos)
    axes[0][0].set_yticklabels(
        [f"{c} {o}" + (f" {d}" if len(dtypes) > 1 else "") for c, o, d in labels], fontsize=8
    )
    axes[0][0].invert_yaxis()  # shared y axis: invert once
    used = [op for op in _OP_COLORS if any(lab[1] == op for lab in labels)]
    axes[0][-1].legend(
        handles=[Patch(color=_OP_COLORS[op], label=op) for op in used], fontsize=8, loc="lower right"
    )
    fig.suptitle("cnorm vs torch.nn (CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
