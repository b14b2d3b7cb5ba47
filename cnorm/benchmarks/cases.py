"""The benchmark case table and the builders of the timed callables.

The bottom of :mod:`cnorm.benchmarks` (it imports no other module of the package):
shared by ``python -m cnorm bench`` (:mod:`cnorm.benchmarks.cli`), by
:mod:`cnorm.benchmarks.torch_cases` and by the pytest-benchmark suite in ``bench/``.
It imports neither torch nor the compiled cnorm core at import time: every builder
imports what it needs lazily and raises :class:`ImplUnavailable` when that is missing.

Every callable returned by :func:`build` takes no argument and runs one
operation.  Everything else (module construction, input / grad arrays, the
output buffer of the copy roofline) is done once, in :func:`build`, from
deterministic data (``numpy.random.default_rng(0)``).

Implementations ("impls"):

``cnorm``
    the cnorm module: ``y = m(x)``; fwd_bwd: ``m.zero_grad(); y = m(x); m.backward(dy)``.
    (``add_ln``: ``y, s = m(x, r)`` with :class:`cnorm.AddLayerNorm`, ``m.backward(dy)``.)
``torch``
    the matching ``torch.nn`` module on ``torch.from_numpy`` copies of the same data.
    (``add_ln``: the unfused ``s = x + r; y = F.layer_norm(s)`` with ``nn.LayerNorm``.)
    Forward-only ops use a module whose parameters do not require grad (so no
    autograd graph is recorded -- the same kernel as under ``torch.no_grad()``,
    without the context-manager cost); fwd_bwd: ``x.grad = p.grad = None;
    m(x).backward(dy)`` with ``x.requires_grad_()``.
``numpy``
    the pure NumPy reference ``cnorm.slow``.
``copy``
    the memory roofline: ``np.copyto(out, x)`` into a preallocated ``out``.

Both sides allocate their output on every call.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = [  # noqa: RUF022 - grouped: table, data, selection, builders
    "Case",
    "CASES",
    "CASES_BY_NAME",
    "BN_OPS",
    "LN_OPS",
    "ALL_OPS",
    "IMPLS",
    "DTYPES",
    "EPS",
    "MOMENTUM",
    "OP_DOC",
    "ImplUnavailable",
    "CaseData",
    "make_data",
    "build",
    "select_cases",
    "select_ops",
    "select_dtypes",
    "op_bytes",
    "copy_bytes",
    "numpy_ref_is_heavy",
    "iter_params",
    "torch_available",
    "slow_available",
    "import_torch",
    "torch_module",
    "torch_fwd_bwd",
]

BN_OPS: tuple[str, ...] = ("train_fwd", "eval_fwd", "fwd_bwd")
LN_OPS: tuple[str, ...] = ("fwd", "fwd_bwd")
ALL_OPS: tuple[str, ...] = ("train_fwd", "eval_fwd", "fwd", "fwd_bwd")
IMPLS: tuple[str, ...] = ("cnorm", "torch", "numpy", "copy")
DTYPES: tuple[str, ...] = ("float32", "float64")

EPS = 1e-5
MOMENTUM = 0.1

OP_DOC = {
    "train_fwd": "BatchNorm forward in training mode (batch stats + running-stat update)",
    "eval_fwd": "BatchNorm forward in eval mode (running stats)",
    "fwd": "forward (LayerNorm, GroupNorm, InstanceNorm, RMSNorm, residual add + LayerNorm)",
    "fwd_bwd": "forward + backward (training mode for BatchNorm): dx, dweight, dbias",
}

_MODULE_NAME = {
    "bn1d": "BatchNorm1d",
    "bn2d": "BatchNorm2d",
    "bn3d": "BatchNorm3d",
    "ln": "LayerNorm",
    "gn": "GroupNorm",
    "in2d": "InstanceNorm2d",
    "rms": "RMSNorm",
    "add_ln": "AddLayerNorm",
}

# kind -> family (every bn* kind is "bn"). Families: "bn" (train_fwd, eval_fwd, fwd_bwd;
# running statistics), "ln", "gn", "in", "rms", "add_ln" (fwd, fwd_bwd). "gn" and "in"
# have per-channel parameters (C,), the others parameters of shape normalized_shape.
_FAMILY = {"ln": "ln", "gn": "gn", "in2d": "in", "rms": "rms", "add_ln": "add_ln"}
_CHANNEL_FAMILIES = ("bn", "gn", "in")


class ImplUnavailable(RuntimeError):
    """The requested implementation cannot be built here (torch / cnorm.slow missing...)."""


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "bn1d", "bn2d", "bn3d", "ln", "gn", "in2d", "rms", "add_ln"
    shape: tuple[int, ...]
    normalized_shape: tuple[int, ...] | None = None  # ln, rms, add_ln
    note: str = ""
    num_groups: int | None = None  # gn only

    @property
    def family(self) -> str:
        return _FAMILY.get(self.kind, "bn")

    @property
    def module_name(self) -> str:
        return _MODULE_NAME[self.kind]

    @property
    def ops(self) -> tuple[str, ...]:
        return BN_OPS if self.family == "bn" else LN_OPS

    @property
    def numel(self) -> int:
        return int(math.prod(self.shape))

    @property
    def num_features(self) -> int:
        """C for BatchNorm, GroupNorm, InstanceNorm; prod(normalized_shape) otherwise."""
        if self.family in _CHANNEL_FAMILIES:
            return self.shape[1]
        return int(math.prod(self.normalized_shape or ()))

    @property
    def param_shape(self) -> tuple[int, ...]:
        if self.family in _CHANNEL_FAMILIES:
            return (self.shape[1],)
        return tuple(self.normalized_shape or ())

    def nbytes(self, dtype) -> int:
        return self.numel * np.dtype(dtype).itemsize

    def describe(self) -> str:
        if self.family == "gn":
            args = f"{self.num_groups}, {self.num_features}"
        elif self.family in _CHANNEL_FAMILIES:
            args = f"{self.num_features}"
        else:
            args = f"{self.normalized_shape}"
        return f"{self.module_name}({args}) x{self.shape}"


def _bn(name, kind, shape, note=""):
    return Case(name, kind, tuple(shape), None, note)


def _ln(name, shape, note="", kind="ln"):
    return Case(name, kind, tuple(shape), (shape[-1],), note)


def _gn(name, num_groups, shape, note=""):
    return Case(name, "gn", tuple(shape), None, note, num_groups)


CASES: tuple[Case, ...] = (
    _bn("bn2d_resnet", "bn2d", (32, 64, 56, 56), "ResNet stage-1 activation"),
    _bn("bn2d_mid", "bn2d", (32, 256, 14, 14), "ResNet stage-3, small spatial"),
    _bn("bn2d_fewC", "bn2d", (64, 4, 64, 64), "few channels, large planes"),
    _bn("bn1d_mlp", "bn1d", (256, 1024), "(N, C) MLP features"),
    _bn("bn1d_seq", "bn1d", (32, 128, 512), "(N, C, L) sequence"),
    _bn("bn3d", "bn3d", (4, 32, 16, 32, 32), "video / volumetric"),
    _bn("bn2d_tiny", "bn2d", (1, 64, 8, 8), "tiny: call overhead"),
    _ln("ln_bert", (32, 128, 768), "BERT-base"),
    _ln("ln_gpt", (8, 512, 1024), "GPT-2 medium"),
    _ln("ln_smallD", (4096, 64), "many short rows"),
    _ln("ln_token", (1, 1, 768), "single token: call overhead"),
    _gn("gn", 32, (32, 256, 28, 28), "GroupNorm(32, 256): detection / diffusion backbones"),
    Case("in2d", "in2d", (16, 64, 64, 64), None, "InstanceNorm2d(64): style transfer"),
    _ln("rms", (8, 512, 1024), "RMSNorm(1024): LLaMA-style transformer", kind="rms"),
    _ln(
        "add_ln",
        (8, 512, 1024),
        "residual add + LayerNorm(1024) fused (torch: x + r, then layer_norm)",
        kind="add_ln",
    ),
)
CASES_BY_NAME: dict[str, Case] = {c.name: c for c in CASES}


# --------------------------------------------------------------------------- selection


def _split(spec) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, str):
        spec = spec.split(",")
    return [s.strip() for s in spec if s and s.strip()]


def select_cases(spec=None, cases: Sequence[Case] = CASES) -> list[Case]:
    """Cases named by ``spec`` (comma list or sequence of names).

    Each token selects the case with exactly that name, or else every case whose
    name contains it (case-insensitive): ``"bn2d"``, ``"ln_"``, ``"tiny,token"``.
    ``None``/empty selects all.  Table order is kept.  A token that matches
    nothing raises ``ValueError``.
    """
    tokens = _split(spec)
    if not tokens:
        return list(cases)
    chosen = set()
    for tok in tokens:
        exact = [c.name for c in cases if c.name == tok]
        hits = exact or [c.name for c in cases if tok.lower() in c.name.lower()]
        if not hits:
            raise ValueError(f"no benchmark case matches {tok!r}; cases: " + ", ".join(c.name for c in cases))
        chosen.update(hits)
    return [c for c in cases if c.name in chosen]


def select_ops(spec=None) -> list[str]:
    """Ops named by ``spec`` (comma list); ``None``/empty selects all; unknown -> ValueError."""
    tokens = _split(spec)
    if not tokens:
        return list(ALL_OPS)
    bad = [t for t in tokens if t not in ALL_OPS]
    if bad:
        raise ValueError(f"unknown op(s) {', '.join(bad)}; ops: {', '.join(ALL_OPS)}")
    return [op for op in ALL_OPS if op in tokens]


def select_dtypes(spec: str = "float32") -> list[str]:
    """``"both"`` -> every dtype of :data:`DTYPES`; else the one named dtype."""
    if spec == "both":
        return list(DTYPES)
    if spec not in DTYPES:
        raise ValueError(f"unsupported dtype {spec!r}; dtypes: {', '.join(DTYPES)}, both")
    return [spec]


# --------------------------------------------------------------------------- bytes


def op_bytes(case: Case, op: str, dtype) -> int:
    """Bytes an ideal implementation must move (parameters/statistics ignored).

    forward ops: x read once + y written once            = 2 * numel * itemsize
    fwd_bwd    : x, y (forward) + dy read, dx written     = 4 * numel * itemsize
                 (the second read of x in backward is not counted)
    add_ln     : x, r read, y, s written (fwd: 4 * numel * itemsize); fwd_bwd adds
                 dy read and dx written (6 * numel * itemsize; s read again not counted)
    """
    if case.family == "add_ln":
        return (6 if op == "fwd_bwd" else 4) * case.nbytes(dtype)
    return (4 if op == "fwd_bwd" else 2) * case.nbytes(dtype)


def copy_bytes(case: Case, dtype) -> int:
    """Bytes moved by the copy roofline ``np.copyto(out, x)``: read x + write out."""
    return 2 * case.nbytes(dtype)


# Rough cost model of the NumPy reference (cnorm.slow, all float64, ~10-20 full
# passes per op): ~25-70 ms per million elements for fwd_bwd on one core
# (bn2d_resnet fwd_bwd ~0.45 s on a 2-core EPYC VM, heading for ~1 s on a slow or
# busy CI core).  Above this "work" limit the pytest suite skips the reference;
# only bn2d_resnet fwd_bwd is above it.
NUMPY_REF_MAX_WORK = 12_000_000


def numpy_ref_is_heavy(case: Case, op: str) -> bool:
    """True when the NumPy reference would take about a second or more per call."""
    work = case.numel * (2.5 if op == "fwd_bwd" else 1)
    return work > NUMPY_REF_MAX_WORK


def iter_params(
    cases: Iterable[Case] = CASES,
    ops: Iterable[str] = ALL_OPS,
    impls: Iterable[str] = IMPLS,
    dtypes: Iterable[str] = ("float32",),
):
    """Yield ``(case, dtype, op, impl)`` in an order that keeps one case's data hot."""
    ops, impls, dtypes = list(ops), list(impls), list(dtypes)
    for case in cases:
        for dtype in dtypes:
            for op in case.ops:
                if op in ops:
                    for impl in impls:
                        yield case, dtype, op, impl


# --------------------------------------------------------------------------- data


@dataclass
class CaseData:
    """Deterministic arrays of one (case, dtype); shared by all impls, never written to."""

    x: np.ndarray
    dy: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    running_mean: np.ndarray | None
    running_var: np.ndarray | None
    residual: np.ndarray | None = None  # add_ln only


def _make_data(case: Case, dtype: str) -> CaseData:
    dt = np.dtype(dtype)
    rng = np.random.default_rng(0)
    # standard_normal(dtype=...) only supports float32/float64, which is all we need
    x = rng.standard_normal(case.shape, dtype=dt)
    x *= 2.0
    x += 0.5  # non-zero mean, non-unit variance
    dy = rng.standard_normal(case.shape, dtype=dt)
    weight = (1.0 + 0.1 * rng.standard_normal(case.param_shape)).astype(dt)
    bias = (0.1 * rng.standard_normal(case.param_shape)).astype(dt)
    rm: np.ndarray | None = None
    rv: np.ndarray | None = None
    if case.family == "bn":
        rm = (0.5 + 0.1 * rng.standard_normal(case.param_shape)).astype(dt)
        rv = (4.0 + 0.1 * rng.standard_normal(case.param_shape)).astype(dt)
    residual: np.ndarray | None = None
    if case.family == "add_ln":  # drawn last: the other arrays stay as they were
        residual = rng.standard_normal(case.shape, dtype=dt)
    # left writable on purpose: a read-only input could push an implementation onto a
    # slower (copying) path that user code would not hit.  No builder writes to them.
    return CaseData(x, dy, weight, bias, rm, rv, residual)


@functools.lru_cache(maxsize=2)
def make_data(case: Case, dtype: str) -> CaseData:
    """Cached (the two most recent (case, dtype)) deterministic data from default_rng(0)."""
    return _make_data(case, str(np.dtype(dtype)))


# --------------------------------------------------------------------------- availability


def import_torch():
    """The torch module, or :class:`ImplUnavailable` when it is not installed."""
    try:
        import torch
    except ImportError as exc:
        raise ImplUnavailable("torch is not installed") from exc
    return torch


def torch_available() -> bool:
    try:
        import_torch()
    except ImplUnavailable:
        return False
    return True


def _import_slow():
    try:
        return importlib.import_module("cnorm.slow")
    except ImportError as exc:
        raise ImplUnavailable(f"NumPy reference cnorm.slow is not importable: {exc}") from exc


def slow_available() -> bool:
    try:
        _import_slow()
    except ImplUnavailable:
        return False
    return True


# --------------------------------------------------------------------------- builders


def _check(case: Case, op: str, impl: str, dtype: str):
    if op not in case.ops:
        raise ValueError(f"op {op!r} does not apply to case {case.name!r} (ops: {case.ops})")
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; impls: {IMPLS}")
    if str(np.dtype(dtype)) not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; dtypes: {DTYPES}")


def build(
    case: Case, op: str, impl: str, dtype="float32", data: CaseData | None = None
) -> Callable[[], object]:
    """Return a zero-argument callable running ``op`` of ``case`` with ``impl``.

    All allocation of inputs/modules happens here; the callable only runs the op
    (allocating its own output, as a user call would).  Raises
    :class:`ImplUnavailable` when ``impl`` cannot be built in this environment.
    """
    dtype = str(np.dtype(dtype))
    _check(case, op, impl, dtype)
    if data is None:
        data = make_data(case, dtype)
    builder = {"cnorm": _build_cnorm, "torch": _build_torch, "numpy": _build_numpy, "copy": _build_copy}[impl]
    fn = builder(case, op, dtype, data)
    fn.__name__ = f"{case.name}_{op}_{impl}_{dtype}"
    fn.__qualname__ = fn.__name__
    return fn


def _build_copy(case, op, dtype, data):
    x = data.x
    out = np.empty_like(x)
    copyto = np.copyto

    def fn():
        copyto(out, x)

    return fn


def _module_args(case: Case):
    """Constructor arguments of the case's module, the same for cnorm, torch.nn and
    cnorm.torch (InstanceNorm: torch's defaults, no affine; RMSNorm: eps=None, the
    dtype's machine epsilon)."""
    if case.family == "bn":
        return (case.num_features,), {"eps": EPS, "momentum": MOMENTUM}
    if case.family == "gn":
        return (case.num_groups, case.num_features), {"eps": EPS}
    if case.family == "in":
        return (case.num_features,), {"eps": EPS}
    if case.family == "rms":
        return (case.normalized_shape,), {}
    return (case.normalized_shape,), {"eps": EPS}


def _build_cnorm(case, op, dtype, data):
    try:
        import cnorm

        cls = getattr(cnorm, case.module_name)
    except (ImportError, AttributeError) as exc:
        raise ImplUnavailable(f"cnorm.{case.module_name} is not available: {exc}") from exc
    args, kwargs = _module_args(case)
    m = cls(*args, **kwargs, dtype=np.dtype(dtype))
    if case.family == "bn":
        m.running_mean[...] = data.running_mean
        m.running_var[...] = data.running_var
    if m.weight is not None:
        m.weight[...] = data.weight
    if getattr(m, "bias", None) is not None:
        m.bias[...] = data.bias
    m.train(op != "eval_fwd")
    x, dy = data.x, data.dy

    if case.family == "add_ln":
        r = data.residual
        if op == "fwd_bwd":

            def fn():
                m.zero_grad()
                m(x, r)
                return m.backward(dy)  # the gradient of x (== that of r)

            return fn

        def fn():
            return m(x, r)

        return fn

    if op == "fwd_bwd":

        def fn():
            m.zero_grad()
            m(x)
            return m.backward(dy)

        return fn

    def fn():
        return m(x)

    return fn


def torch_module(case: Case, dtype: str, data: CaseData, nn=None):
    """The module of ``case`` from ``nn`` (default ``torch.nn``; ``cnorm.torch`` has the
    same classes for the bn and ln kinds) with the parameters and running statistics of
    ``data``; in training mode (a new module's default). add_ln: a LayerNorm (torch has
    no fused add)."""
    torch = import_torch()
    nn = torch.nn if nn is None else nn
    args, kwargs = _module_args(case)
    cls = getattr(nn, "LayerNorm" if case.family == "add_ln" else case.module_name)
    m = cls(*args, **kwargs, dtype=getattr(torch, dtype))
    with torch.no_grad():
        if m.weight is not None:
            m.weight.copy_(torch.from_numpy(data.weight))
        if getattr(m, "bias", None) is not None:
            m.bias.copy_(torch.from_numpy(data.bias))
        if case.family == "bn":
            m.running_mean.copy_(torch.from_numpy(data.running_mean))
            m.running_var.copy_(torch.from_numpy(data.running_var))
    return m


def torch_fwd_bwd(
    forward: Callable[[], object], inputs: Sequence, params: Sequence, dy
) -> Callable[[], object]:
    """``forward().backward(dy)`` after resetting the ``.grad`` of ``inputs`` and ``params``
    to None, like a training step with ``zero_grad(set_to_none=True)`` (no accumulation
    pass); returns the gradient of ``inputs[0]``."""
    x = inputs[0]

    def fn():
        for t in inputs:
            t.grad = None
        for p in params:
            p.grad = None
        forward().backward(dy)
        return x.grad

    return fn


def _build_torch(case, op, dtype, data):
    torch = import_torch()
    m = torch_module(case, dtype, data)
    x = torch.from_numpy(data.x.copy())
    inputs = [x]
    if case.family == "add_ln":
        r = torch.from_numpy(data.residual.copy())
        inputs.append(r)

        def forward():
            return m(x + r)
    else:

        def forward():
            return m(x)

    if op == "fwd_bwd":
        for t in inputs:
            t.requires_grad_(True)
        return torch_fwd_bwd(forward, inputs, list(m.parameters()), torch.from_numpy(data.dy.copy()))

    # forward only: no autograd graph (same kernel as under torch.no_grad())
    m.requires_grad_(False)
    m.train(op != "eval_fwd")
    if case.family == "add_ln":

        def fn():
            s = x + r
            return m(s), s

        return fn
    return forward


def _build_numpy(case, op, dtype, data):
    """The NumPy reference ``cnorm.slow``, configured as the cnorm modules are (GroupNorm
    and RMSNorm affine, InstanceNorm2d without affine or running statistics, RMSNorm
    eps=None)."""
    slow = _import_slow()
    x, dy, w, b = data.x, data.dy, data.weight, data.bias
    family = case.family
    ns = tuple(case.normalized_shape or ())
    if family == "bn":
        # the reference returns new running statistics: its inputs stay unchanged
        rm, rv = data.running_mean.copy(), data.running_var.copy()
        training = op != "eval_fwd"

        def fwd():
            return slow.batch_norm_forward(x, w, b, rm, rv, training, MOMENTUM, EPS)

        def bwd():
            mean, var = slow.batch_norm_stats(x)
            return slow.batch_norm_backward(dy, x, w, mean, 1.0 / np.sqrt(var + EPS), True)
    elif family == "ln":

        def fwd():
            return slow.layer_norm_forward(x, ns, w, b, EPS)

        def bwd():
            return slow.layer_norm_backward(dy, x, ns, w, EPS)
    elif family == "gn":
        G = case.num_groups

        def fwd():
            return slow.group_norm_forward(x, G, w, b, EPS)

        def bwd():
            return slow.group_norm_backward(dy, x, G, w, EPS)
    elif family == "in":

        def fwd():
            return slow.instance_norm_forward(x, None, None, None, None, True, MOMENTUM, EPS)

        def bwd():
            return slow.instance_norm_backward(dy, x, None, EPS)
    elif family == "rms":

        def fwd():
            return slow.rms_norm_forward(x, ns, w, None)

        def bwd():
            return slow.rms_norm_backward(dy, x, ns, w, None)
    else:
        r = data.residual

        def fwd():
            return slow.add_layer_norm_forward(x, r, ns, w, b, EPS)

        def bwd():
            s = fwd()[1]  # the backward needs the sum: it runs the forward
            return slow.add_layer_norm_backward(dy, None, s, ns, w, EPS)

    if op != "fwd_bwd":
        return fwd
    if family == "add_ln":
        return bwd

    def fn():
        fwd()
        return bwd()

    return fn
