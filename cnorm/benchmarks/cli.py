"""``python -m cnorm bench``: cnorm vs torch.nn on CPU, with a memory-copy roofline.

Entry point: :func:`main` (``cnorm/__main__.py`` dispatches ``bench`` to it). The top
of :mod:`cnorm.benchmarks`: it imports cases, torch_cases, timing and report, and
nothing imports it.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from collections.abc import Sequence

from . import cases as C
from . import report as R
from . import torch_cases as T
from .timing import (
    BANDWIDTH_TEXT,
    METHOD_TEXT,
    SameThreads,
    TimingSettings,
    measure_interleaved,
    stream_bandwidth,
    stream_buffer_bytes,
)

__all__ = ["build_parser", "main", "measure_bandwidth", "parse_threads", "run_benchmarks", "run_dropin"]

PROG = "python -m cnorm bench"

FULL_SETTINGS = TimingSettings(reps=15, min_rep_s=2e-3, warmup_s=0.02, max_measure_s=6.0)
QUICK_SETTINGS = TimingSettings(reps=5, min_rep_s=1e-3, warmup_s=0.005, max_measure_s=0.6)


def _wrap(text: str, indent: str = "") -> str:
    return textwrap.fill(text, width=86, initial_indent=indent, subsequent_indent=indent + "  ")


EPILOG = f"""\
{_wrap(METHOD_TEXT)}

{_wrap(BANDWIDTH_TEXT)}

{_wrap(C.FLOOR_BYTES_TEXT)}

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
  x floor     cnorm ms / floor ms, floor ms = floor bytes (below) / the stream
              bandwidth at the row's thread count (the line above the tables): how many
              times the time of moving the bytes the op cannot avoid at the measured
              memory bandwidth. 1 = at the floor; below 1 when the data stay in cache.
  noise%      spread of the reps: the larger of the interquartile ranges of the cnorm
              and torch reps, in % of their median. Large values (> ~10%) mean a busy
              or throttling machine: rerun, or raise --reps.

the last line is a one-line summary: the geometric mean over the cases (and dtypes)
of cnorm/torch, then of x floor, per op and thread count. docs/benchmarks.md has more.

ops:
{chr(10).join(_wrap(f"{op}: {C.OP_DOC[op]}", "  ") for op in C.ALL_OPS)}
cases:
{_wrap(", ".join(f"{c.name} {c.shape}" for c in C.CASES), "  ")}

examples:
  {PROG} --quick
  {PROG} --cases bn2d,ln_bert --ops fwd_bwd --threads 1 --json out.json
  {PROG} --dtype both --plot speedup.png
"""


# --------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Benchmark the cnorm normalization layers against torch.nn (CPU) "
        "and against a plain memory copy of the input.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"fewer and shorter repetitions (reps={QUICK_SETTINGS.reps}, "
        f"min rep {QUICK_SETTINGS.min_rep_s * 1e3:g} ms, <= "
        f"{QUICK_SETTINGS.max_measure_s:g} s per measurement): the whole "
        "default run takes well under a minute",
    )
    p.add_argument(
        "--threads",
        default=None,
        metavar="LIST",
        help="comma list of thread counts, 'N' = cnorm.get_num_threads() at start (default: 1,N)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        metavar="DTYPES",
        help="input dtype, a comma list of float32, float64, float16, bfloat16 (ml_dtypes), or "
        "'both' (float32,float64) (default: float32; --calibrate: the keys of these dtypes, "
        "default all)",
    )
    p.add_argument(
        "--cases",
        default=None,
        metavar="NAMES",
        help="comma list of case names or substrings of names, e.g. 'bn2d,ln_bert' (default: all)",
    )
    p.add_argument(
        "--ops",
        default=None,
        metavar="OPS",
        help=f"comma list among {','.join(C.ALL_OPS)} (default: all; BatchNorm "
        "cases have train_fwd, eval_fwd, fwd_bwd; LayerNorm fwd, fwd_bwd; "
        f"with --dropin: {','.join(T.DROPIN_OPS)})",
    )
    p.add_argument(
        "--json",
        default=None,
        metavar="FILE",
        help="write every measurement (medians, minima, per-rep times, inner counts, "
        "bytes, floor bytes, floor ms, x floor) and metadata (versions, cpu, threads, date, "
        "the stream bandwidth per thread count) as JSON",
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="FILE.png",
        help="save a bar chart of the speedup torch/cnorm per case and op (needs matplotlib)",
    )
    p.add_argument(
        "--dropin",
        action="store_true",
        help="time the cnorm.torch drop-in modules against torch.nn under torch "
        "autograd, and a CNN training step (see cnorm/benchmarks/torch_cases.py)",
    )
    p.add_argument(
        "--layout",
        default=",".join(T.DROPIN_LAYOUTS),
        metavar="LAYOUTS",
        help="with --dropin: comma list of input memory formats, among "
        f"{','.join(T.DROPIN_LAYOUTS)} (channels_last: the 4-D / 5-D cases only; default: both)",
    )
    p.add_argument(
        "--compiled",
        action="store_true",
        help="with --dropin: also every end-to-end model under torch.compile, converted "
        "vs plain (Inductor's own norm kernels are the anchor; compiling takes minutes)",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="measure the input sizes below which the cnorm.torch drop-ins should run "
        "torch's kernels (cnorm.torch.TORCH_BELOW; see cnorm/benchmarks/calibrate.py)",
    )
    p.add_argument("--no-torch", action="store_true", help="do not time torch even if it is installed")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar on stderr (it is off anyway when stderr is not a tty)",
    )
    p.add_argument(
        "--stream-mb",
        type=float,
        default=None,
        metavar="MIB",
        help="size of each of the two buffers of the bandwidth measurement, in MiB "
        f"(default: 4x the last-level cache, >= 64 MiB: {stream_buffer_bytes() / 2**20:g} here; "
        "0: no bandwidth measurement and no x floor)",
    )
    p.add_argument(
        "--stream-reps",
        type=int,
        default=5,
        metavar="N",
        help="repetitions of the bandwidth copy, the best kept (default: 5)",
    )
    p.add_argument(
        "--reps",
        type=int,
        default=None,
        help="interleaved repetitions per measurement (default: "
        f"{FULL_SETTINGS.reps}, --quick {QUICK_SETTINGS.reps})",
    )
    p.add_argument(
        "--min-rep-ms",
        type=float,
        default=None,
        help="minimum duration of one repetition, in ms (default: "
        f"{FULL_SETTINGS.min_rep_s * 1e3:g}, --quick "
        f"{QUICK_SETTINGS.min_rep_s * 1e3:g})",
    )
    return p


def parse_threads(spec: str | None, n_default: int) -> list[int]:
    """``'1,N'`` -> ``[1, n_default]`` (deduplicated, order kept). 'N', 'all', 'max' = n_default."""
    if spec is None:
        spec = "1,N"
    out: list[int] = []
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


def stream_bytes_from_args(args) -> int:
    """The bandwidth buffer size in bytes from --stream-mb (ValueError if bad)."""
    if args.stream_reps < 1:
        raise ValueError("--stream-reps must be >= 1")
    if args.stream_mb is None:
        return stream_buffer_bytes()
    if args.stream_mb < 0:
        raise ValueError("--stream-mb must be >= 0")
    return int(args.stream_mb * 2**20)


def settings_from_args(args) -> TimingSettings:
    """--quick, --reps and --min-rep-ms on top of the full settings (ValueError if bad)."""
    settings = QUICK_SETTINGS if args.quick else FULL_SETTINGS
    if args.reps is not None:
        if args.reps < 1:
            raise ValueError("--reps must be >= 1")
        settings = TimingSettings(
            **{**settings.__dict__, "reps": args.reps, "min_reps": min(settings.min_reps, args.reps)}
        )
    if args.min_rep_ms is not None:
        if args.min_rep_ms < 0:
            raise ValueError("--min-rep-ms must be >= 0")
        settings = TimingSettings(**{**settings.__dict__, "min_rep_s": args.min_rep_ms / 1e3})
    return settings


def measure_bandwidth(threads, cnorm, torch, buffer_bytes: int, reps: int) -> dict:
    """threads -> the :class:`~cnorm.benchmarks.timing.Bandwidth` of cnorm's parallel copy
    (:mod:`cnorm._kernels.stream`) at that thread count; {} when ``buffer_bytes`` is 0."""
    if buffer_bytes <= 0:
        return {}
    from cnorm._kernels import stream

    out = {}
    with SameThreads(cnorm, torch) as thr:
        for n in threads:
            thr.set(n)
            out[n] = stream_bandwidth(stream.stream_copy, buffer_bytes, reps, stream.can_stream())
    return out


def _dropin_ops(spec: str | None) -> list[str]:
    """The drop-in ops named by --ops (the main table's op names other than fwd_bwd
    select nothing here); fwd_bwd when nothing is left."""
    return [op for op in T.DROPIN_OPS if not spec or op in spec.split(",")] or ["fwd_bwd"]


def _layouts(spec: str) -> list[str]:
    """--layout: a comma list of drop-in layouts."""
    layouts = [t.strip() for t in spec.split(",") if t.strip()]
    bad = [t for t in layouts if t not in T.DROPIN_LAYOUTS]
    if bad or not layouts:
        raise ValueError(f"unknown --layout {spec!r}; layouts: {', '.join(T.DROPIN_LAYOUTS)}")
    return layouts


def _torch_below():
    import cnorm.torch as ct

    return dict(ct.TORCH_BELOW)


# --------------------------------------------------------------------------- running


def run_benchmarks(
    cases, ops, dtypes, threads, settings, cnorm, torch, progress: R.Progress, out=None, bandwidth=None
) -> list[dict]:
    """Measure everything; print one table per (case, dtype) as soon as it is done.
    ``bandwidth``: threads -> Bandwidth (:func:`measure_bandwidth`), for the x floor."""
    bandwidth = bandwidth or {}
    out = out if out is not None else sys.stdout
    records: list[dict] = []
    try:
        with SameThreads(cnorm, torch) as thr:
            for case in cases:
                for dtype in dtypes:
                    case_records = []
                    data = C.make_data(case, dtype)
                    for op in case.ops:
                        if op in ops:
                            case_records += _measure_op(
                                case, dtype, op, data, threads, settings, torch, thr, progress, bandwidth
                            )
                    progress.clear()
                    R.print_table(case, dtype, case_records, torch is not None, out)
                    progress.show()
                    records.extend(case_records)
    finally:
        progress.clear()
    return records


def _measure_op(case, dtype, op, data, threads, settings, torch, thr, progress, bandwidth) -> list[dict]:
    """The records of one op at every thread count; a failure is recorded, not raised,
    so that the other cases still run."""
    progress.show(f"{case.name} {dtype} {op}")
    fns, error = {}, None
    try:
        fns["cnorm"] = C.build(case, op, "cnorm", dtype, data)
        if torch is not None:
            fns["torch"] = C.build(case, op, "torch", dtype, data)
        fns["copy"] = C.build(case, op, "copy", dtype, data)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        error = f"build failed: {type(exc).__name__}: {exc}"
    recs = []
    for n in threads:
        progress.show(f"{case.name} {dtype} {op} @{n}t")
        meas = None
        if error is None:
            try:
                thr.set(n)
                meas = measure_interleaved(fns, settings)
            except Exception as exc:  # noqa: BLE001 - reported in the table
                error = f"{type(exc).__name__}: {exc}"
        recs.append(R.record(case, dtype, op, n, meas, error, bandwidth.get(n)))
        progress.step()
    return recs


def run_dropin(
    cases,
    ops,
    dtypes,
    threads,
    settings,
    cnorm,
    torch,
    out=None,
    models=(),
    compiled=False,
    layouts=T.DROPIN_LAYOUTS,
) -> int:
    """``python -m cnorm bench --dropin``: cnorm.torch vs torch.nn in autograd, per case
    with a drop-in, layout (a channels_last row is labelled ``case/cl``) and op, plus the
    CNN training step, then the end-to-end ``models`` (:mod:`cnorm.benchmarks.models`).
    Returns the exit status."""
    out = out if out is not None else sys.stdout
    ratios: dict[tuple, list[float]] = {}
    out.write(
        f"drop-in: cnorm.torch vs torch.nn modules under torch autograd | torch "
        f"{torch.__version__} | min of {settings.reps} interleaved reps | "
        f"cnorm.torch.TORCH_BELOW = {_torch_below()}\n"
    )
    out.write(R.DROPIN_TABLE.header() + "\n")
    rows: list[tuple[C.Case | None, str, str, str]] = [
        (case, layout, dtype, op)
        for case in T.dropin_cases(cases)
        for layout in T.dropin_layouts(case, layouts)
        for dtype in dtypes
        for op in ops
    ]
    rows.append((None, "contiguous", "float32", "cnn_step"))
    with SameThreads(cnorm, torch) as thr:
        for n in threads:
            thr.set(n)
            for case, layout, dtype, op in rows:
                if case is None:
                    fns = {impl: T.build_cnn_step(impl) for impl in T.DROPIN_IMPLS}
                    label = f"cnn b{T.CNN_BATCH}"
                else:
                    data = C.make_data(case, dtype)
                    fns = {
                        impl: T.build_dropin(case, op, impl, dtype, data, layout) for impl in T.DROPIN_IMPLS
                    }
                    label = case.name + ("/cl" if layout == "channels_last" else "")
                meas = measure_interleaved(fns, settings)
                # the minimum: the call's own cost (per-call overheads are what it compares)
                a, b = min(meas.times["cnorm.torch"]), min(meas.times["torch.nn"])
                ratios.setdefault((op, n), []).append(a / b)
                out.write(R.dropin_row(label, op, dtype, n, a, b) + "\n")
                out.flush()
    if models:
        from .models import run_models

        out.write("end-to-end: one step of each model, converted vs plain torch.nn\n")
        ratios.update(run_models(models, threads, settings, cnorm, torch, out, compiled))
    out.write(R.dropin_summary(ratios) + "\n")
    return 0


def _case_spec(spec: str | None) -> str | None:
    """--cases without the tokens that name end-to-end models (None: every case)."""
    if spec is None:
        return None
    from .models import MODELS

    return ",".join(t for t in spec.split(",") if t.strip() and not any(t.strip() in m for m in MODELS))


def _models(spec: str | None) -> list[str]:
    """The end-to-end models named (or matched by a substring) in --cases; all without it."""
    from .models import MODELS

    if not spec:
        return list(MODELS)
    tokens = [t.strip() for t in spec.split(",") if t.strip()]
    return [m for m in MODELS if any(t in m for t in tokens)]


# --------------------------------------------------------------------------- main


def _fail(msg: str) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return 2


def _import_cnorm():
    """``(cnorm, None)``, or ``(None, why)`` when the compiled core is not importable."""
    try:
        import cnorm
    except ImportError as exc:
        return None, str(exc)
    for name in ("get_num_threads", "set_num_threads"):
        if not callable(getattr(cnorm, name, None)):
            return None, f"cnorm.{name} is missing"
    return cnorm, None


def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    cnorm, why = _import_cnorm()
    if cnorm is None:
        return _fail(f"cannot import the cnorm core ({why}); is the extension built?")
    torch = None if args.no_torch else _import_torch()

    try:
        cases = C.select_cases(_case_spec(args.cases)) if args.cases is None or _case_spec(args.cases) else []
        threads = parse_threads(args.threads, cnorm.get_num_threads())
        dtypes = C.select_dtypes(args.dtype or "float32")
        settings = settings_from_args(args)
        stream_bytes = stream_bytes_from_args(args)
        if args.calibrate:
            if torch is None:
                return _fail("--calibrate times cnorm.torch against torch.nn: it needs torch")
            from .calibrate import calibrate

            calibrate(threads, settings, cnorm, torch, dtypes=dtypes if args.dtype else None)
            return 0
        if args.dropin:
            if torch is None:
                return _fail(
                    "--dropin times cnorm.torch against torch.nn: it needs torch "
                    "(installed, and no --no-torch)"
                )
            return run_dropin(
                cases,
                _dropin_ops(args.ops),
                dtypes,
                threads,
                settings,
                cnorm,
                torch,
                models=_models(args.cases),
                compiled=args.compiled,
                layouts=_layouts(args.layout),
            )
        ops = C.select_ops(args.ops)
    except ValueError as exc:
        return _fail(str(exc))
    cases = [c for c in cases if any(op in ops for op in c.ops)]
    if not cases:
        return _fail(f"no selected case has any of the ops {', '.join(ops)}")
    if args.plot:
        if torch is None:
            return _fail("--plot shows torch/cnorm speedups: it needs torch (installed, and no --no-torch)")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return _fail(
                "--plot needs matplotlib, which is not installed (pip install matplotlib), or drop --plot"
            )

    meta = R.metadata(cnorm, torch, threads, settings, argv_list, dtypes)
    print(R.header_line(meta, threads, settings, args.quick))
    meta["loadavg_start"] = R.loadavg()
    for note in R.run_notes(meta, threads):
        print(note)
    bandwidth = measure_bandwidth(threads, cnorm, torch, stream_bytes, args.stream_reps)
    meta["stream_bandwidth"] = {str(n): bw.as_dict() for n, bw in bandwidth.items()}
    print(R.bandwidth_line(bandwidth))

    total = sum(len(dtypes) * len(threads) * sum(op in ops for op in c.ops) for c in cases)
    enabled = not args.no_progress and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    progress = R.Progress(total, enabled)
    t0 = time.perf_counter()
    try:
        records = run_benchmarks(
            cases, ops, dtypes, threads, settings, cnorm, torch, progress, bandwidth=bandwidth
        )
    except KeyboardInterrupt:
        progress.clear()
        print("interrupted", file=sys.stderr)
        return 130
    elapsed = time.perf_counter() - t0
    meta["elapsed_s"] = round(elapsed, 3)
    meta["loadavg_end"] = R.loadavg()

    print()
    print(f"(run took {elapsed:.1f} s)")
    if args.json:
        R.write_json(args.json, meta, records)
        print(f"wrote {args.json}")
    if args.plot:
        R.write_plot(args.plot, records, threads)
        print(f"wrote {args.plot}")
    print(R.summary_line(records, [op for op in C.ALL_OPS if op in ops], threads, torch is not None))
    return 1 if any(r["error"] for r in records) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
