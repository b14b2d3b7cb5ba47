"""Drop-in benchmark cases: ``cnorm.torch`` modules vs ``torch.nn`` inside torch autograd.

Shared by ``bench/test_bench_torch.py`` (pytest-benchmark) and
``python -m cnorm bench --dropin`` (:func:`cnorm.benchmarks.cli.run_dropin`). Imports
only :mod:`cnorm.benchmarks.cases`; torch is imported lazily: importing this module
needs neither torch nor the compiled core.

Ops:

``fwd_bwd``
    ``y = m(x); y.backward(dy)`` with ``x.requires_grad_()`` and the module's
    parameters requiring grad (their ``.grad`` and ``x.grad`` reset to None before each
    call, as ``zero_grad(set_to_none=True)``): training mode for BatchNorm. The
    normalization cases of :data:`cnorm.benchmarks.cases.CASES`, same data.
``fwd``
    ``m(x)`` under ``torch.no_grad()`` in training mode (BatchNorm: batch statistics,
    running statistics updated).
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
from collections.abc import Sequence
from typing import Callable

from . import cases as C

__all__ = [
    "CNN_BATCH",
    "DROPIN_IMPLS",
    "DROPIN_KINDS",
    "DROPIN_LAYOUTS",
    "DROPIN_OPS",
    "build_cnn_step",
    "build_dropin",
    "dropin_cases",
    "dropin_layouts",
    "iter_dropin_params",
    "make_cnn",
]

DROPIN_IMPLS = ("cnorm.torch", "torch.nn")
DROPIN_OPS = ("fwd_bwd", "fwd", "infer")
DROPIN_KINDS = ("bn1d", "bn2d", "bn3d", "ln", "gn", "in2d", "rms")  # the layers with a cnorm.torch drop-in
CNN_BATCH = 128
# memory formats of the input (and of dy): channels_last for the 4-D / 5-D cases whose
# drop-in takes it (BatchNorm2d/3d, GroupNorm, InstanceNorm2d)
DROPIN_LAYOUTS = ("contiguous", "channels_last")
_CHANNELS_LAST_KINDS = ("bn2d", "bn3d", "gn", "in2d")


def dropin_cases(cases: Sequence[C.Case] = C.CASES) -> list[C.Case]:
    """The cases of ``cases`` that have a cnorm.torch drop-in (every kind but add_ln)."""
    return [c for c in cases if c.kind in DROPIN_KINDS]


def dropin_layouts(case: C.Case, layouts: Sequence[str] = DROPIN_LAYOUTS) -> list[str]:
    """The layouts of ``layouts`` that ``case`` runs in (channels_last: 4-D / 5-D cases)."""
    return [lay for lay in layouts if lay == "contiguous" or case.kind in _CHANNELS_LAST_KINDS]


def _in_layout(t, layout: str):
    """``t`` in the memory format ``layout`` (channels_last_3d for a 5-D tensor)."""
    if layout == "contiguous":
        return t
    torch = C.import_torch()
    fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
    return t.contiguous(memory_format=fmt)


def _module_namespace(impl):
    torch = C.import_torch()
    if impl == "torch.nn":
        return torch.nn
    if impl == "cnorm.torch":
        try:
            import cnorm.torch as ct
        except ImportError as exc:  # pragma: no cover - the core is not built
            raise C.ImplUnavailable(f"cnorm.torch is not importable: {exc}") from exc
        return ct
    raise ValueError(f"unknown drop-in impl {impl!r}; impls: {DROPIN_IMPLS}")


def build_dropin(
    case: C.Case,
    op: str,
    impl: str,
    dtype="float32",
    data: C.CaseData | None = None,
    layout: str = "contiguous",
) -> Callable[[], object]:
    """A zero-argument callable running ``op`` of ``case`` with the ``impl`` module, the
    input (and dy) in the memory format ``layout`` (:data:`DROPIN_LAYOUTS`)."""
    torch = C.import_torch()
    ns = _module_namespace(impl)
    if op not in DROPIN_OPS:
        raise ValueError(f"unknown drop-in op {op!r}; ops: {DROPIN_OPS}")
    if case.kind not in DROPIN_KINDS:
        raise ValueError(f"case {case.name!r} ({case.kind}) has no cnorm.torch drop-in")
    dtype = C.dtype_name(dtype)
    data = data if data is not None else C.make_data(case, dtype)
    m = C.torch_module(case, dtype, data, ns)
    if layout not in dropin_layouts(case):
        raise ValueError(f"case {case.name!r} has no {layout!r} layout; layouts: {dropin_layouts(case)}")
    x = _in_layout(C.tensor(data.x.copy()), layout)
    if op in ("fwd", "infer"):
        m.train(op == "fwd")
        no_grad = torch.no_grad

        def fn():
            with no_grad():
                return m(x)
    else:
        x.requires_grad_(True)

        def forward():
            return m(x)

        fn = C.torch_fwd_bwd(forward, [x], list(m.parameters()), _in_layout(C.tensor(data.dy.copy()), layout))
    fn.__name__ = f"{case.name}_{op}_{impl}_{dtype}" + ("_cl" if layout == "channels_last" else "")
    return fn


def make_cnn():
    """The CNN of examples/train_digits_torch.py (torch.nn layers)."""
    nn = C.import_torch().nn
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def build_cnn_step(impl: str, batch: int = CNN_BATCH, seed: int = 0) -> Callable[[], object]:
    """One SGD step of the example CNN (same initial weights and data for both impls)."""
    torch = C.import_torch()
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


def iter_dropin_params(
    cases: Sequence[C.Case] = C.CASES, ops: Sequence[str] = ("fwd_bwd",), dtypes: Sequence[str] = ("float32",)
):
    """``(case, dtype, op, impl)`` for the drop-in suite (the cases with a drop-in), one
    case's data kept hot."""
    for case in dropin_cases(cases):
        for dtype in dtypes:
            for op in ops:
                for impl in DROPIN_IMPLS:
                    yield case, dtype, op, impl
