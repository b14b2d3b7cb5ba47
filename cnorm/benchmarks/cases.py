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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = [  # noqa: RUF022 - grouped: table, data, selection, builders
    "dtype_name",
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
    "floor_bytes",
    "floor_traffic",
    "FLOOR_BYTES_TEXT",
    "copy_bytes",
    "numpy_ref_is_heavy",
    "iter_params",
    "torch_available",
    "slow_available",
    "import_torch",
    "tensor",
    "torch_module",
    "torch_fwd_bwd",
]

from .table import (  # noqa: F401 - re-exported: the public names of this module
    _CHANNEL_FAMILIES,
    _FAMILY,
    _MODULE_NAME,
    ALL_OPS,
    BN_OPS,
    CASES,
    CASES_BY_NAME,
    DTYPES,
    EPS,
    FLOOR_BYTES_TEXT,
    IMPLS,
    LN_OPS,
    MOMENTUM,
    NUMPY_REF_MAX_WORK,
    OP_DOC,
    Case,
    ImplUnavailable,
    _bn,
    _gn,
    _ln,
    _split,
    copy_bytes,
    floor_bytes,
    floor_traffic,
    iter_params,
    numpy_ref_is_heavy,
    op_bytes,
    select_cases,
    select_dtypes,
    select_ops,
)


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
    # standard_normal(dtype=...) only supports float32/float64: halves are drawn in float32
    draw = dt if dt.itemsize >= 4 else np.dtype(np.float32)
    x = rng.standard_normal(case.shape, dtype=draw).astype(dt, copy=False)
    x *= 2.0
    x += 0.5  # non-zero mean, non-unit variance
    dy = rng.standard_normal(case.shape, dtype=draw).astype(dt, copy=False)
    weight = (1.0 + 0.1 * rng.standard_normal(case.param_shape)).astype(dt)
    bias = (0.1 * rng.standard_normal(case.param_shape)).astype(dt)
    rm: np.ndarray | None = None
    rv: np.ndarray | None = None
    if case.family == "bn":
        rm = (0.5 + 0.1 * rng.standard_normal(case.param_shape)).astype(dt)
        rv = (4.0 + 0.1 * rng.standard_normal(case.param_shape)).astype(dt)
    residual: np.ndarray | None = None
    if case.family == "add_ln":  # drawn last: the other arrays stay as they were
        residual = rng.standard_normal(case.shape, dtype=draw).astype(dt, copy=False)
    # left writable on purpose: a read-only input could push an implementation onto a
    # slower (copying) path that user code would not hit.  No builder writes to them.
    return CaseData(x, dy, weight, bias, rm, rv, residual)


def dtype_name(dtype) -> str:
    """NumPy's name of ``dtype`` (a name, a NumPy dtype or type): "bfloat16" needs
    ml_dtypes imported first, which registers it with NumPy."""
    if isinstance(dtype, str) and dtype == "bfloat16":
        import ml_dtypes  # noqa: F401  - registers np.dtype("bfloat16")
    return str(np.dtype(dtype))


@functools.lru_cache(maxsize=2)
def make_data(case: Case, dtype: str) -> CaseData:
    """Cached (the two most recent (case, dtype)) deterministic data from default_rng(0)."""
    return _make_data(case, dtype_name(dtype))


# --------------------------------------------------------------------------- availability


def import_torch():
    """The torch module, or :class:`ImplUnavailable` when it is not installed."""
    try:
        import torch
    except ImportError as exc:
        raise ImplUnavailable("torch is not installed") from exc
    return torch


def tensor(a: np.ndarray):
    """``torch.from_numpy(a)``; a bfloat16 array (ml_dtypes) through its int16 bits."""
    torch = import_torch()
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


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
    if dtype_name(dtype) not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; dtypes: {DTYPES}")


def build(
    case: Case, op: str, impl: str, dtype="float32", data: CaseData | None = None
) -> Callable[[], object]:
    """Return a zero-argument callable running ``op`` of ``case`` with ``impl``.

    All allocation of inputs/modules happens here; the callable only runs the op
    (allocating its own output, as a user call would).  Raises
    :class:`ImplUnavailable` when ``impl`` cannot be built in this environment.
    """
    dtype = dtype_name(dtype)
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
            m.weight.copy_(tensor(data.weight))
        if getattr(m, "bias", None) is not None:
            m.bias.copy_(tensor(data.bias))
        if case.family == "bn":
            m.running_mean.copy_(tensor(data.running_mean))
            m.running_var.copy_(tensor(data.running_var))
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
    m = torch_module(case, dtype, data)
    x = tensor(data.x.copy())
    inputs = [x]
    if case.family == "add_ln":
        r = tensor(data.residual.copy())
        inputs.append(r)

        def forward():
            return m(x + r)
    else:

        def forward():
            return m(x)

    if op == "fwd_bwd":
        for t in inputs:
            t.requires_grad_(True)
        return torch_fwd_bwd(forward, inputs, list(m.parameters()), tensor(data.dy.copy()))

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
