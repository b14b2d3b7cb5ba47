"""The benchmark case table (the cases, their ops and dtypes, their byte counts) and its
selection helpers: the bottom of :mod:`cnorm.benchmarks`, imported by :mod:`.cases`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

BN_OPS: tuple[str, ...] = ("train_fwd", "eval_fwd", "fwd_bwd")
LN_OPS: tuple[str, ...] = ("fwd", "fwd_bwd")
ALL_OPS: tuple[str, ...] = ("train_fwd", "eval_fwd", "fwd", "fwd_bwd")
IMPLS: tuple[str, ...] = ("cnorm", "torch", "numpy", "copy")
DTYPES: tuple[str, ...] = ("float32", "float64", "float16", "bfloat16")  # bfloat16: ml_dtypes

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
    """``"both"`` -> float32 and float64; else a comma list of :data:`DTYPES`
    (``"float16,bfloat16"``: the half-precision rows)."""
    if spec == "both":
        return list(DTYPES[:2])
    names = spec.split(",")
    for name in names:
        if name not in DTYPES:
            raise ValueError(f"unsupported dtype {name!r}; dtypes: {', '.join(DTYPES)}, both")
    if "bfloat16" in names:
        import ml_dtypes  # noqa: F401  - registers np.dtype("bfloat16")
    return names


# --------------------------------------------------------------------------- bytes


def op_bytes(case: Case, op: str, dtype) -> int:
    """Bytes of the GB/s and copy% columns (parameters/statistics ignored; the "x floor"
    column counts more: :func:`floor_bytes`).

    forward ops: x read once + y written once            = 2 * numel * itemsize
    fwd_bwd    : x, y (forward) + dy read, dx written     = 4 * numel * itemsize
                 (the second read of x in backward is not counted)
    add_ln     : x, r read, y, s written (fwd: 4 * numel * itemsize); fwd_bwd adds
                 dy read and dx written (6 * numel * itemsize; s read again not counted)
    """
    if case.family == "add_ln":
        return (6 if op == "fwd_bwd" else 4) * case.nbytes(dtype)
    return (4 if op == "fwd_bwd" else 2) * case.nbytes(dtype)


FLOOR_BYTES_TEXT = (
    "floor bytes: what the op must move at least -- every array it reads counted once, "
    "every array it writes counted once, at its dtype's size (x, dy, residual, y, dx, "
    "the sum of add_ln; the parameters and running statistics, small: BatchNorm reads "
    "weight, bias, running_mean, running_var and in training writes the running "
    "statistics; fwd_bwd writes the grad of each parameter). fwd_bwd also writes the "
    "saved statistics in the forward and reads them in the backward (per channel, row "
    "or group: mean and 1/std, RMSNorm 1/rms only; float32 for the half dtypes). A "
    "second pass over x (statistics, then normalize; or the backward reading x or "
    "add_ln's sum again) is not counted: the floor is a bound, and a fwd_bwd of two "
    "separate passes can come no closer than about 5/4 of it (add_ln 7/6)."
)


def _affine_names(case: Case) -> tuple[str, ...]:
    """The learnable parameters of the case's module (InstanceNorm2d: torch's default,
    no affine; RMSNorm: no bias)."""
    if case.family == "in":
        return ()
    if case.family == "rms":
        return ("weight",)
    return ("weight", "bias")


def _saved_stat_count(case: Case) -> int:
    """Values the forward saves for the backward: mean and 1/std per channel (BatchNorm),
    per row (LayerNorm, AddLayerNorm), per (sample, group) or (sample, channel)
    (GroupNorm, InstanceNorm); 1/rms per row (RMSNorm)."""
    if case.family == "bn":
        groups = case.num_features
    elif case.family == "gn":
        groups = case.shape[0] * (case.num_groups or 1)
    elif case.family == "in":
        groups = case.shape[0] * case.num_features
    else:
        groups = case.numel // max(case.num_features, 1)
    return groups * (1 if case.family == "rms" else 2)


def floor_traffic(case: Case, op: str, dtype) -> dict[str, dict[str, int]]:
    """``{"read": {array: bytes}, "write": {array: bytes}}``: the arrays ``op`` must read
    and write at least, each once (the definition: :data:`FLOOR_BYTES_TEXT`)."""
    item = np.dtype(dtype).itemsize
    big = case.numel * item
    param = int(math.prod(case.param_shape)) * item
    read, write = {"x": big}, {"y": big}
    if case.family == "add_ln":
        read["residual"], write["sum"] = big, big
    params = _affine_names(case)
    read.update(dict.fromkeys(params, param))
    if case.family == "bn":
        read.update(running_mean=param, running_var=param)
        if op != "eval_fwd":
            write.update(running_mean=param, running_var=param)
    if op == "fwd_bwd":
        read["dy"], write["dx"] = big, big
        write.update({f"grad_{p}": param for p in params})
        saved = _saved_stat_count(case) * max(item, 4)  # statistics: float32 or wider
        read["saved_stats"], write["saved_stats"] = saved, saved
    return {"read": read, "write": write}


def floor_bytes(case: Case, op: str, dtype) -> int:
    """The bytes ``op`` must move at least: the sum of :func:`floor_traffic`."""
    traffic = floor_traffic(case, op, dtype)
    return sum(traffic["read"].values()) + sum(traffic["write"].values())


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
