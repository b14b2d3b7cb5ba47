"""Drop-in benchmark cases: ``cnorm.torch`` modules vs ``torch.nn`` inside torch autograd.

Shared by ``bench/test_bench_torch.py`` (pytest-benchmark) and
``python -m cnorm bench --dropin`` (:func:`run_dropin`). torch is imported lazily:
importing this module needs neither torch nor the compiled core.

Ops:

``fwd_bwd``
    ``y = m(x); y.backward(dy)`` with ``x.requires_grad_()`` and the module's
    parameters requiring grad (their ``.grad`` and ``x.grad`` reset to None before each
    call, as ``zero_grad(set_to_none=True)``): training mode for BatchNorm. The
    normalization cases of :data:`cnorm.benchmarks.cases.CASES`, same data.
``infer``
    ``m(x)`` in eval mode under ``torch.no_grad()``.
``cnn_step``
    one SGD training step (zero_grad, forward, cross-entropy, backward, step) of the
    CNN of ``examples/train_digits_torch.py`` on a ``(batch, 1, 8, 8)`` input:
    torch.nn vs the same model after ``cnorm.torch.convert``.

Impls: ``"cnorm.torch"`` and ``"torch.nn"``.
"""
from __future__ import annotations

import copy
import sys
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from . import cases as C

__all__ = ["DROPIN_IMPLS", "DROPIN_OPS", "DROPIN_KINDS", "CNN_BATCH", "dropin_cases",
           "make_cnn", "build_dropin", "build_cnn_step", "iter_dropin_params", "run_dropin"]

DROPIN_IMPLS = ("cnorm.torch", "torch.nn")
DROPIN_OPS = ("fwd_bwd", "infer")
DROPIN_KINDS = ("bn1d", "bn2d", "bn3d", "ln")     # the layers cnorm.torch has drop-ins for
CNN_BATCH = 128


def dropin_cases(cases: Sequence[C.Case] = C.CASES) -> List[C.Case]:
    """The cases of ``cases`` that have a cnorm.torch drop-in (BatchNorm, LayerNorm)."""
    return [c for c in cases if c.kind in DROPIN_KINDS]


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise C.ImplUnavailable("torch is not installed") from exc
    return torch


def _module_namespace(impl):
    torch = _torch()
    if impl == "torch.nn":
        return torch.nn
    if impl == "cnorm.torch":
        try:
            import cnorm.torch as ct
        except ImportError as exc:  # pragma: no cover - the core is not built
            raise C.ImplUnavailable(f"cnorm.torch is not importable: {exc}") from exc
        return ct
    raise ValueError(f"unknown drop-in impl {impl!r}; impls: {DROPIN_IMPLS}")


def build_dropin(case: C.Case, op: str, impl: str, dtype="float32",
                 data: Optional[C.CaseData] = None) -> Callable[[], object]:
    """A zero-argument callable running ``op`` of ``case`` with the ``impl`` module."""
    torch = _torch()
    ns = _module_namespace(impl)
    if op not in DROPIN_OPS:
        raise ValueError(f"unknown drop-in op {op!r}; ops: {DROPIN_OPS}")
    if case.kind not in DROPIN_KINDS:
        raise ValueError(f"case {case.name!r} ({case.kind}) has no cnorm.torch drop-in")
    dtype = str(np.dtype(dtype))
    data = data if data is not None else C.make_data(case, dtype)
    tdt = getattr(torch, dtype)
    if case.family == "bn":
        m = getattr(ns, case.module_name)(case.num_features, eps=C.EPS, momentum=C.MOMENTUM,
                                          dtype=tdt)
    else:
        m = ns.LayerNorm(case.normalized_shape, eps=C.EPS, dtype=tdt)
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(data.weight))
        m.bias.copy_(torch.from_numpy(data.bias))
        if case.family == "bn":
            m.running_mean.copy_(torch.from_numpy(data.running_mean))
            m.running_var.copy_(torch.from_numpy(data.running_var))
    x = torch.from_numpy(data.x.copy())
    if op == "infer":
        m.eval()
        no_grad = torch.no_grad

        def fn():
            with no_grad():
                return m(x)
        fn.__name__ = f"{case.name}_{op}_{impl}_{dtype}"
        return fn

    m.train()
    x.requires_grad_(True)
    dy = torch.from_numpy(data.dy.copy())
    params = list(m.parameters())

    def fn():
        x.grad = None
        for p in params:
            p.grad = None
        m(x).backward(dy)
        return x.grad
    fn.__name__ = f"{case.name}_{op}_{impl}_{dtype}"
    return fn


def make_cnn():
    """The CNN of examples/train_digits_torch.py (torch.nn layers)."""
    nn = _torch().nn
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def build_cnn_step(impl: str, batch: int = CNN_BATCH, seed: int = 0) -> Callable[[], object]:
    """One SGD step of the example CNN (same initial weights and data for both impls)."""
    torch = _torch()
    _module_namespace(impl)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = make_cnn()
    if impl == "cnorm.torch":
        import cnorm.torch as ct
        model = ct.convert(copy.deepcopy(model))
    model.train()
    x = torch.randn((batch, 1, 8, 8), generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def fn():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss
    fn.__name__ = f"cnn_step_{impl}"
    return fn


def iter_dropin_params(cases: Sequence[C.Case] = C.CASES, ops: Sequence[str] = ("fwd_bwd",),
                       dtypes: Sequence[str] = ("float32",)):
    """``(case, dtype, op, impl)`` for the drop-in suite (the cases with a drop-in), one
    case's data kept hot."""
    for case in dropin_cases(cases):
        for dtype in dtypes:
            for op in ops:
                for impl in DROPIN_IMPLS:
                    yield case, dtype, op, impl


# --------------------------------------------------------------------------- runner hook

def run_dropin(args, settings, out=None) -> int:
    """``python -m cnorm bench --dropin``: cnorm.torch vs torch.nn in autograd, per case
    (``--cases``, ``--dtype``, ``--threads`` as for the main table; ops fwd_bwd and infer,
    or ``--ops fwd_bwd``), plus the CNN training step. Returns the exit status."""
    from .runner import geomean, parse_threads
    from .timing import measure_interleaved
    import cnorm

    out = out if out is not None else sys.stdout
    torch = _torch()
    cases = dropin_cases(C.select_cases(args.cases))
    ops = [op for op in DROPIN_OPS if not args.ops or op in args.ops.split(",")] or ["fwd_bwd"]
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    threads = parse_threads(args.threads, cnorm.get_num_threads())
    orig = cnorm.get_num_threads(), torch.get_num_threads()
    ratios: Dict[tuple, List[float]] = {}
    out.write(f"drop-in: cnorm.torch vs torch.nn modules under torch autograd | torch "
              f"{torch.__version__} | median of {settings.reps} interleaved reps\n")
    out.write(f"  {'case':14s} {'op':8s} {'dtype':8s} {'thr':>3s} {'cnorm.torch ms':>15s} "
              f"{'torch.nn ms':>12s} {'ratio':>6s}\n")
    try:
        for n in threads:
            cnorm.set_num_threads(n)
            torch.set_num_threads(n)
            rows = [(case, dtype, op) for case in cases for dtype in dtypes for op in ops]
            rows.append((None, "float32", "cnn_step"))
            for case, dtype, op in rows:
                if case is None:
                    fns = {impl: build_cnn_step(impl) for impl in DROPIN_IMPLS}
                    label = f"cnn b{CNN_BATCH}"
                else:
                    data = C.make_data(case, dtype)
                    fns = {impl: build_dropin(case, op, impl, dtype, data)
                           for impl in DROPIN_IMPLS}
                    label = case.name
                meas = measure_interleaved(fns, settings)
                a, b = meas.median("cnorm.torch"), meas.median("torch.nn")
                ratios.setdefault((op, n), []).append(a / b)
                out.write(f"  {label:14s} {op:8s} {dtype:8s} {n:3d} {a * 1e3:15.3f} "
                          f"{b * 1e3:12.3f} {a / b:6.2f}\n")
                out.flush()
    finally:
        cnorm.set_num_threads(orig[0])
        torch.set_num_threads(orig[1])
    parts = [f"{op}@{n}t {geomean(v):.2f}" for (op, n), v in ratios.items()]
    out.write("summary: geomean cnorm.torch/torch.nn (<1: cnorm faster): "
              + " | ".join(parts) + "\n")
    return 0

