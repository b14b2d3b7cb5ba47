"""``python -m cnorm bench``: cnorm vs torch.nn on CPU, with a memory-copy roofline.

Entry point: :func:`main` (``cnorm/__main__.py`` dispatches ``bench`` to it).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import textwrap
import time
from typing import List, Optional, Sequence

import numpy as np

from . import cases as C
from .timing import METHOD_TEXT, TimingSettings, measure_interleaved

__all__ = ["main", "build_parser", "parse_threads", "run_benchmarks", "geomean"]

PROG = "python -m cnorm bench"

FULL_SETTINGS = TimingSettings(reps=15, min_rep_s=2e-3, warmup_s=0.02, max_measure_s=6.0)
QUICK_SETTINGS = TimingSettings(reps=5, min_rep_s=1e-3, warmup_s=0.005, max_measure_s=0.6)

def _wrap(text: str, indent: str = "") -> str:
    return textwrap.fill(text, width=86, initial_indent=indent, subsequent_indent=indent + "  ")


EPILOG = f"""\
{_wrap(METHOD_TEXT)}

columns (one table per case and dtype; one row per op and thread count):
  cnorm ms / torch ms / copy ms
              median time of one call. torch = the torch.nn module on the same data
              (forward-only ops without an autograd graph; fwd_bwd: y = m(x) with
              x.requires_grad_(), y.backward(dy)); copy = np.copyto(out, x) into a
              preallocated out (single-threaded NumPy copy of the same input).
              torch and cnorm both run with the row's thread count
              (torch.set_num_threads(n) and cnorm.set_num_threads(n); restored at exit).
  cnorm/torch ratio of the medians: < 1 means cnorm is faster.
  GB/s        bytes / cnorm time, with bytes = x read once + y written once for the
              forward ops (2 * x.nbytes), and x, y, dy, dx for fwd_bwd (4 * x.nbytes;
              the backward's second read of x and the parameters/statistics are not
              counted).
  copy%       bandwidth of cnorm relative to the copy: (GB/s of cnorm) / (GB/s of the
              copy) * 100 = copy ms / cnorm ms * (bytes / copy bytes) * 100. For the
              forward ops that is simply copy ms / cnorm ms * 100: 100% = as fast as one
              copy of the input. For fwd_bwd (twice the bytes) 100% = as fast as two
              copies. With more than one thread it can exceed 100% (the copy is
              single-threaded).
  noise%      spread of the reps: the larger of the interquartile ranges of the cnorm
              and torch reps, in % of their median. Large values (> ~10%) mean a busy
              or throttling machine: rerun, or raise --reps.

the last line is a one-line summary: the geometric mean over the cases (and dtypes)
of cnorm/torch per op and thread count.

ops:
{chr(10).join(_wrap(f"{op}: {C.OP_DOC[op]}", "  ") for op in C.ALL_OPS)}
cases:
{_wrap(", ".join(f"{c.name} {c.shape}" for c in C.CASES), "  ")}

examples:
  {PROG} --quick
  {PROG} --cases bn2d,ln_bert --ops fwd_bwd --threads 1 --json out.json
  {PROG} --dtype both --plot speedup.png
"""


# --------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Benchmark the cnorm normalization layers against torch.nn (CPU) "
                    "and against a plain memory copy of the input.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"fewer and shorter repetitions (reps={QUICK_SETTINGS.reps}, "
                        f"min rep {QUICK_SETTINGS.min_rep_s * 1e3:g} ms, <= "
                        f"{QUICK_SETTINGS.max_measure_s:g} s per measurement): the whole "
                        "default run takes well under a minute")
    p.add_argument("--threads", default=None, metavar="LIST",
                   help="comma list of thread counts, 'N' = cnorm.get_num_threads() at "
                        "start (default: 1,N)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "both"],
                   help="input dtype (default: float32)")
    p.add_argument("--cases", default=None, metavar="NAMES",
                   help="comma list of case names or substrings of names, e.g. "
                        "'bn2d,ln_bert' (default: all)")
    p.add_argument("--ops", default=None, metavar="OPS",
                   help=f"comma list among {','.join(C.ALL_OPS)} (default: all; BatchNorm "
                        "cases have train_fwd, eval_fwd, fwd_bwd; LayerNorm fwd, fwd_bwd)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="write every measurement (medians, minima, per-rep times, inner counts, "
                        "bytes) and metadata (versions, cpu, threads, date) as JSON")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="save a bar chart of the speedup torch/cnorm per case and op "
                        "(needs matplotlib)")
    p.add_argument("--dropin", action="store_true",
                   help="time the cnorm.torch drop-in modules against torch.nn under torch "
                        "autograd, and a CNN training step (see cnorm/benchmarks/torch_cases.py)")
    p.add_argument("--no-torch", action="store_true",
                   help="do not time torch even if it is installed")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar on stderr (it is off anyway when stderr is not a tty)")
    p.add_argument("--reps", type=int, default=None,
                   help="interleaved repetitions per measurement (default: "
                        f"{FULL_SETTINGS.reps}, --quick {QUICK_SETTINGS.reps})")
    p.add_argument("--min-rep-ms", type=float, default=None,
                   help="minimum duration of one repetition, in ms (default: "
                        f"{FULL_SETTINGS.min_rep_s * 1e3:g}, --quick "
                        f"{QUICK_SETTINGS.min_rep_s * 1e3:g})")
    return p


def parse_threads(spec: Optional[str], n_default: int) -> List[int]:
    """``'1,N'`` -> ``[1, n_default]`` (deduplicated, order kept). 'N', 'all', 'max' = n_default."""
    if spec is None:
        spec = "1,N"
    out: List[int] = []
    for tok in spec.split(","):
        tok = tok.strip()
        if not tok:
            continue
        if tok.lower() in ("n", "all", "max"):
            n = n_default
        else:
            try:
                n = int(tok)
            except ValueError:
                raise ValueError(f"--threads: not an integer: {tok!r}") from None
            if n < 1:
                raise ValueError(f"--threads: thread counts must be >= 1, got {n}")
        if n not in out:
            out.append(n)
    if not out:
        raise ValueError("--threads: empty list")
    return out


# --------------------------------------------------------------------------- helpers

def geomean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not vals:
        return float("nan")
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


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

    def show(self, label: Optional[str] = None) -> None:
        if label is not None:
            self.label = label
        if not self.enabled:
            return
        frac = self.done / self.total
        fill = int(round(frac * self.width))
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


def _fmt_ms(seconds: Optional[float]) -> str:
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


def _fmt(v: Optional[float], spec: str) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return format(v, spec)


def _fmt_bytes(n: int) -> str:
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:.3g} {unit}"
    return f"{n} B"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _metadata(cnorm, torch, threads, settings, argv, dtypes) -> dict:
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    meta = {
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
        "cnorm_default_threads": None,
        "torch": getattr(torch, "__version__", None) if torch is not None else None,
        "threads": list(threads),
        "dtypes": list(dtypes),
        "settings": {"reps": settings.reps, "min_rep_s": settings.min_rep_s,
                     "warmup_s": settings.warmup_s, "max_measure_s": settings.max_measure_s,
                     "min_reps": settings.min_reps},
        "method": METHOD_TEXT,
        "bytes": "forward ops: 2*x.nbytes (x read + y written); fwd_bwd: 4*x.nbytes "
                 "(x, y, dy, dx); copy: 2*x.nbytes",
        "copy_pct": "(cnorm GB/s) / (copy GB/s) * 100",
    }
    return meta


def _loadavg() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _call(obj, name):
    f = getattr(obj, name, None)
    try:
        return f() if callable(f) else None
    except Exception:  # pragma: no cover - informational only
        return None


# --------------------------------------------------------------------------- running

class _Threads:
    """Set torch and cnorm to the same thread count; remember the originals."""

    def __init__(self, cnorm, torch):
        self.cnorm, self.torch = cnorm, torch
        self.orig_cnorm = cnorm.get_num_threads()
        self.orig_torch = torch.get_num_threads() if torch is not None else None

    def set(self, n: int) -> None:
        self.cnorm.set_num_threads(n)
        if self.torch is not None:
            self.torch.set_num_threads(n)

    def restore(self) -> None:
        self.cnorm.set_num_threads(self.orig_cnorm)
        if self.torch is not None:
            self.torch.set_num_threads(self.orig_torch)


def _record(case, dtype, op, n, meas, error=None) -> dict:
    nb = C.op_bytes(case, op, dtype)
    cb = C.copy_bytes(case, dtype)
    med = meas.medians if meas is not None else {}
    t_c, t_t, t_cp = med.get("cnorm"), med.get("torch"), med.get("copy")
    ratio = t_c / t_t if (t_c and t_t) else None
    gbps = nb / t_c / 1e9 if t_c else None
    copy_pct = (t_cp / t_c) * (nb / cb) * 100 if (t_c and t_cp) else None
    return {
        "case": case.name, "module": case.module_name, "shape": list(case.shape),
        "normalized_shape": list(case.normalized_shape) if case.normalized_shape else None,
        "dtype": dtype, "op": op, "threads": n,
        "bytes": nb, "copy_bytes": cb,
        "median_s": med,
        "min_s": {k: min(v) for k, v in meas.times.items()} if meas is not None else {},
        "times_s": meas.times if meas is not None else {},
        "inner": meas.inner if meas is not None else {},
        "ratio_cnorm_torch": ratio, "gbps": gbps,
        "copy_gbps": cb / t_cp / 1e9 if t_cp else None,
        "copy_pct": copy_pct,
        "noise_pct": _noise_pct(meas),
        "error": error,
    }


def _noise_pct(meas) -> Optional[float]:
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


def run_benchmarks(cases, ops, dtypes, threads, settings, cnorm, torch, progress: Progress,
                   out=None) -> List[dict]:
    """Measure everything; print one table per (case, dtype) as soon as it is done."""
    out = out if out is not None else sys.stdout
    records: List[dict] = []
    thr = _Threads(cnorm, torch)
    try:
        for case in cases:
            for dtype in dtypes:
                case_records = []
                data = C.make_data(case, dtype)
                for op in case.ops:
                    if op not in ops:
                        continue
                    progress.show(f"{case.name} {dtype} {op}")
                    fns, error = {}, None
                    try:
                        fns["cnorm"] = C.build(case, op, "cnorm", dtype, data)
                        if torch is not None:
                            fns["torch"] = C.build(case, op, "torch", dtype, data)
                        fns["copy"] = C.build(case, op, "copy", dtype, data)
                    except Exception as exc:  # report and go on with the other cases
                        error = f"build failed: {type(exc).__name__}: {exc}"
                    for n in threads:
                        progress.show(f"{case.name} {dtype} {op} @{n}t")
                        meas = None
                        if error is None:
                            try:
                                thr.set(n)
                                meas = measure_interleaved(fns, settings)
                            except Exception as exc:
                                error = f"{type(exc).__name__}: {exc}"
                        case_records.append(_record(case, dtype, op, n, meas, error))
                        progress.step()
                    del fns
                progress.clear()
                _print_table(case, dtype, case_records, torch is not None, out)
                progress.show()
                records.extend(case_records)
    finally:
        thr.restore()
        progress.clear()
    return records


# --------------------------------------------------------------------------- output

_HEAD = ("op", "thr", "cnorm ms", "torch ms", "copy ms", "cnorm/torch", "GB/s", "copy%",
         "noise%")
_WID = (9, 3, 9, 9, 9, 11, 7, 6, 6)


def _row(cells) -> str:
    first = cells[0].ljust(_WID[0])
    rest = [str(c).rjust(w) for c, w in zip(cells[1:], _WID[1:])]
    return "  " + "  ".join([first] + rest)


def _print_table(case, dtype, recs, have_torch, out) -> None:
    mb = case.nbytes(dtype)
    out.write(f"\n{case.name}: {case.describe()} {dtype}  "
              f"[{case.numel:,} elements, {_fmt_bytes(mb)} per array]\n")
    out.write(_row(_HEAD) + "\n")
    for r in recs:
        med = r["median_s"]
        if r["error"]:
            out.write(_row([r["op"], r["threads"], "ERROR"]) + "\n")
            out.write(f"    {r['error']}\n")
            continue
        out.write(_row([
            r["op"], r["threads"], _fmt_ms(med.get("cnorm")),
            _fmt_ms(med.get("torch")) if have_torch else "-",
            _fmt_ms(med.get("copy")),
            _fmt(r["ratio_cnorm_torch"], ".2f"),
            _fmt(r["gbps"], ".1f"),
            _fmt(r["copy_pct"], ".0f"),
            _fmt(r["noise_pct"], ".0f"),
        ]) + "\n")
    out.flush()


def summary_line(records: List[dict], ops: Sequence[str], threads: Sequence[int],
                 have_torch: bool) -> str:
    parts = []
    key, what = (("ratio_cnorm_torch", "geomean cnorm/torch (<1: cnorm faster)")
                 if have_torch else ("copy_pct", "geomean copy% (torch not timed)"))
    ncases = len({r["case"] for r in records})
    for op in ops:
        vals = []
        for n in threads:
            rs = [r[key] for r in records if r["op"] == op and r["threads"] == n]
            if rs:
                g = geomean(rs)
                vals.append(f"{_fmt(g, '.2f' if have_torch else '.0f')}@{n}t")
        if vals:
            parts.append(f"{op} " + " ".join(vals))
    errors = sum(1 for r in records if r["error"])
    tail = f" | {errors} measurement(s) FAILED" if errors else ""
    return f"summary: {what} over {ncases} case(s): " + " | ".join(parts) + tail


def write_plot(path: str, records: List[dict], threads: Sequence[int]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"train_fwd": "tab:blue", "eval_fwd": "tab:green", "fwd": "tab:orange",
              "fwd_bwd": "tab:red"}
    dtypes = sorted({r["dtype"] for r in records})
    labels = []
    for r in records:
        lab = (r["case"], r["op"], r["dtype"])
        if lab not in labels:
            labels.append(lab)
    fig, axes = plt.subplots(1, len(threads), squeeze=False, sharey=True, sharex=True,
                             figsize=(5.5 * len(threads), 0.28 * len(labels) + 1.8))
    ypos = np.arange(len(labels))
    allvals = []
    for ax, n in zip(axes[0], threads):
        vals, cols = [], []
        for lab in labels:
            rec = next((r for r in records if (r["case"], r["op"], r["dtype"]) == lab
                        and r["threads"] == n), None)
            ratio = rec["ratio_cnorm_torch"] if rec else None
            vals.append(1.0 / ratio if ratio else float("nan"))
            cols.append(colors.get(lab[1], "gray"))
        ok = [v for v in vals if math.isfinite(v)]
        allvals += ok
        # bars grow from 1 (no difference) on a log axis: right = cnorm faster
        ax.barh(ypos, [v - 1 if math.isfinite(v) else 0 for v in vals], left=1.0, color=cols)
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(f"{n} thread{'s' if n > 1 else ''}")
        ax.set_xlabel("speedup = torch time / cnorm time  (>1: cnorm faster)")
        for y, v in zip(ypos, vals):
            if math.isfinite(v):
                ax.text(v, y, f" {v:.2f} " , va="center", fontsize=7,
                        ha="left" if v >= 1 else "right")
        ax.grid(axis="x", which="both", alpha=0.3)
    lim = max([abs(math.log(v)) for v in allvals] + [math.log(1.25)]) * 1.3
    axes[0][0].set_xlim(math.exp(-lim), math.exp(lim))
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
    ticks = [t for t in (0.1, 0.2, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 10)
             if math.exp(-lim) <= t <= math.exp(lim)]
    for ax in axes[0]:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    axes[0][0].set_yticks(ypos)
    axes[0][0].set_yticklabels([f"{c} {o}" + (f" {d}" if len(dtypes) > 1 else "")
                                for c, o, d in labels], fontsize=8)
    axes[0][0].invert_yaxis()       # shared y axis: invert once
    from matplotlib.patches import Patch
    used = [op for op in colors if any(lab[1] == op for lab in labels)]
    axes[0][-1].legend(handles=[Patch(color=colors[op], label=op) for op in used],
                       fontsize=8, loc="lower right")
    fig.suptitle("cnorm vs torch.nn (CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)

    def fail(msg: str) -> int:
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2

    try:
        import cnorm
        for name in ("get_num_threads", "set_num_threads"):
            if not callable(getattr(cnorm, name, None)):
                raise ImportError(f"cnorm.{name} is missing")
    except ImportError as exc:
        return fail(f"cannot import the cnorm core ({exc}); is the extension built?")

    torch = None
    if not args.no_torch:
        try:
            import torch  # noqa: F811
        except ImportError:
            torch = None

    try:
        cases = C.select_cases(args.cases)
        ops = C.select_ops(args.ops)
        threads = parse_threads(args.threads, cnorm.get_num_threads())
    except ValueError as exc:
        return fail(str(exc))
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    cases = [c for c in cases if any(op in ops for op in c.ops)]
    if not cases:
        return fail(f"no selected case has any of the ops {', '.join(ops)}")
    if args.plot:
        if torch is None:
            return fail("--plot shows torch/cnorm speedups: it needs torch (installed, "
                        "and no --no-torch)")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return fail("--plot needs matplotlib, which is not installed "
                        "(pip install matplotlib), or drop --plot")

    settings = QUICK_SETTINGS if args.quick else FULL_SETTINGS
    if args.reps is not None:
        if args.reps < 1:
            return fail("--reps must be >= 1")
        settings = TimingSettings(**{**settings.__dict__, "reps": args.reps,
                                     "min_reps": min(settings.min_reps, args.reps)})
    if args.min_rep_ms is not None:
        if args.min_rep_ms < 0:
            return fail("--min-rep-ms must be >= 0")
        settings = TimingSettings(**{**settings.__dict__, "min_rep_s": args.min_rep_ms / 1e3})

    if args.dropin:  # the drop-in section lives in torch_cases.py
        from .torch_cases import run_dropin
        return run_dropin(args, settings)

    meta = _metadata(cnorm, torch, threads, settings, argv_list, dtypes)
    meta["cnorm_default_threads"] = cnorm.get_num_threads()
    meta["torch_default_threads"] = torch.get_num_threads() if torch is not None else None

    openmp = meta["cnorm_openmp"]
    print(f"cnorm {meta['cnorm']} (OpenMP: {openmp}) | torch "
          f"{meta['torch'] or 'not timed'} | numpy {meta['numpy']} | {meta['cpu']}, "
          f"{meta['cpu_count']} cpus | threads {','.join(map(str, threads))} | "
          f"{'quick' if args.quick else 'full'}: median of {settings.reps} interleaved reps "
          f">= {settings.min_rep_s * 1e3:g} ms")
    load = _loadavg()
    meta["loadavg_start"] = load
    ncpu = meta["cpu_affinity"] or meta["cpu_count"] or 1
    if load is not None and load >= max(1.0, 0.25 * ncpu):
        print(f"note: 1-min load average {load:.2f} on {ncpu} cpus: other work on the machine "
              "makes timings noisy (multi-thread rows above all); see the noise% column")
    if openmp is False and any(n > 1 for n in threads):
        print("note: cnorm was built without OpenMP: its multi-thread rows run on one thread")

    total = sum(len(dtypes) * len(threads) * sum(op in ops for op in c.ops) for c in cases)
    enabled = not args.no_progress and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    progress = Progress(total, enabled)
    t0 = time.perf_counter()
    try:
        records = run_benchmarks(cases, ops, dtypes, threads, settings, cnorm, torch, progress)
    except KeyboardInterrupt:
        progress.clear()
        print("interrupted", file=sys.stderr)
        return 130
    elapsed = time.perf_counter() - t0
    meta["elapsed_s"] = round(elapsed, 3)
    meta["loadavg_end"] = _loadavg()

    print()
    print(f"(run took {elapsed:.1f} s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"metadata": meta, "results": records}, fh, indent=1)
            fh.write("\n")
        print(f"wrote {args.json}")
    if args.plot:
        write_plot(args.plot, records, threads)
        print(f"wrote {args.plot}")
    print(summary_line(records, [op for op in C.ALL_OPS if op in ops], threads,
                       torch is not None))
    return 1 if any(r["error"] for r in records) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
