"""The registry of the norms under test: one entry per public module class.

Each entry knows, for its norm and nothing else: how to call the functional forward and
backward (cnorm.functional), the float64 reference (cnorm.slow), the module, which
parameters and running statistics it has, and the input shapes of each concern (ordinary
and odd ones, empty ones, ones big enough for two threads, ...).  A concern file that is
parametrized over NORMS runs on every norm; a new norm needs an entry here.

Calls are uniform across norms:

    p = norm.params(rng, case, dtype)               # weight, bias, running stats, residual
    outs, saved = norm.forward(x, case, p, training) # native_*: outs (y,) or (y, sum) for AddLayerNorm
    outs = norm.plain(x, case, p, training)          # the plain functional (F.batch_norm, ...)
    grads = norm.backward(douts, x, case, p, saved, training)   # {"input": dx, "weight": ...}
    outs = norm.ref_forward(x, case, p, training); grads = norm.ref_backward(douts, x, case, p, training)
"""

import math
from typing import NamedTuple

import numpy as np
import pytest
from conftest import DTYPES, dtype_id

import cnorm
import cnorm.functional as F
from cnorm import slow as reference  # the float64 NumPy twins (the one import of them)

EPS = 1e-5
MOMENTUM = 0.1
f64 = np.float64


class Case(NamedTuple):
    """An input shape and the norm's structural argument: normalized_shape (row norms) or
    num_groups (GroupNorm); None for the channel norms."""

    shape: tuple
    arg: object = None

    @property
    def id(self):
        return str(self.shape) if self.arg is None else f"{self.shape}-{self.arg}"


def _cases(items):
    return [c if isinstance(c, Case) else Case(*c) if isinstance(c[0], tuple) else Case(c) for c in items]


class Norm:
    """One norm; the family subclasses below implement the calls.

    The case lists: ``shapes`` ordinary and odd inputs (values), ``fd`` tiny ones (finite
    differences), ``big`` ones split across two threads, ``simd`` ones with long vector runs
    and odd tails, ``empty`` zero-size ones, ``small`` the module tests' input; ``steps`` =
    (case, module kwargs, dtype) of the multi-step module runs; ``configs`` named module
    kwargs (state, pickle); ``full_kw`` the kwargs that switch every optional part on;
    ``ndims`` the input ranks the module takes (batched).
    """

    family = ""
    param_names = ("weight", "bias")  # trainable parameters of the functional form
    has_running = False  # running statistics
    modes = (True,)  # training values that make a difference
    torch_twin = ""  # the torch.nn class it matches

    def __init__(
        self,
        name,
        shapes,
        fd,
        big,
        simd,
        small,
        empty,
        steps=None,
        configs=None,
        full_kw=None,
        torch_twin=None,
        ndims=None,
    ):
        self.name = name
        self.shapes, self.fd, self.big = _cases(shapes), _cases(fd), _cases(big)
        self.simd, self.empty = _cases(simd), _cases(empty)
        self.small = _cases([small])[0]
        steps = steps or (small, {}, np.float32)
        self.steps = (_cases([steps[0]])[0],) + tuple(steps[1:])
        self.configs = configs or {"default": {}}
        self.full_kw = full_kw or {}
        self.torch_twin = torch_twin or type(self).torch_twin or name
        self.ndims = ndims

    def __repr__(self):
        return self.name

    # ---- the module
    @property
    def cls(self):
        return getattr(cnorm, self.name)

    def make(self, case, dtype=np.float32, **kw):
        """The module for inputs of ``case`` (kw: constructor options; ``dtype`` there wins)."""
        kw.setdefault("dtype", dtype)
        return self.cls(case.shape[1], **kw)

    def call(self, m, x, r=None):
        """The module's forward; a tuple of outputs."""
        return (m(x),)

    def module_backward(self, m, douts):
        return m.backward(douts[0])

    def inputs(self, rng, case, dtype):
        """The extra forward input of the module (AddLayerNorm's residual); None for the others."""

    # ---- shapes
    def reduce_axes(self, case):
        """The axes that weight / bias gradients sum over."""
        return (0,) + tuple(range(2, len(case.shape)))

    def param_shape(self, case):
        return (case.shape[1],)

    def n_outputs(self):
        return 1

    def stats_of(self, saved):
        """The float64 statistics among what forward saved for backward."""
        return saved

    # ---- data
    def params(self, rng, case, dtype, affine=True, running=True):
        shape = self.param_shape(case)
        p = {name: None for name in self.param_names}
        if affine:
            p["weight"] = rng.normal(1.0, 0.5, shape).astype(dtype)
            if "bias" in p:
                p["bias"] = rng.normal(0.0, 0.5, shape).astype(dtype)
        p["running_mean"] = p["running_var"] = None
        if self.has_running and running:
            p["running_mean"] = rng.normal(0.0, 1.0, shape).astype(dtype)
            p["running_var"] = rng.uniform(0.5, 2.0, shape).astype(dtype)
        return p


# =======================================================================================
# channel norms: statistics per channel (BatchNorm), per (sample, channel) (InstanceNorm)
# or per (sample, group) (GroupNorm)
# =======================================================================================


def forms(name):
    """The functional forms of the norm ``name`` (staticmethods), by the names every norm
    has: ``(F.native_<name>, F.<name>_backward, F.<name>, reference.<name>_forward,
    reference.<name>_backward)``."""
    fns = [getattr(F, f"native_{name}"), getattr(F, f"{name}_backward"), getattr(F, name)]
    fns += [getattr(reference, f"{name}_forward"), getattr(reference, f"{name}_backward")]
    return tuple(staticmethod(f) for f in fns)


class RunningStatsNorm(Norm):
    """A norm with running statistics: its functional forms take (x, weight, bias,
    running_mean, running_var, training, momentum, eps) and (dy, x, weight, mean, invstd,
    training); its reference forward the parameters and statistics in ``ref_order``."""

    has_running = True
    modes = (True, False)
    native = native_backward = plain_fn = ref_native = None
    ref_order = ("weight", "bias", "running_mean", "running_var")

    def plain(self, x, case, p, training=True, eps=EPS, momentum=MOMENTUM):
        return (
            self.plain_fn(
                x, p["running_mean"], p["running_var"], p["weight"], p["bias"], training, momentum, eps
            ),
        )

    def forward(self, x, case, p, training=True, eps=EPS, momentum=MOMENTUM):
        y, mean, invstd = self.native(
            x, p["weight"], p["bias"], p["running_mean"], p["running_var"], training, momentum, eps
        )
        return (y,), (mean, invstd)

    def backward(self, douts, x, case, p, saved, training=True):
        dx, dw, db = self.native_backward(douts[0], x, p["weight"], *saved, training)
        return {"input": dx, "weight": dw, "bias": db}

    def ref_forward(self, x, case, p, training=True, eps=EPS, momentum=MOMENTUM):
        state = [p[name] for name in self.ref_order]
        return (self.ref_native(x, *state, training, momentum, eps)[0],)


class BatchNorm(RunningStatsNorm):
    family = "batch"
    native, native_backward, plain_fn, ref_native, _ = forms("batch_norm")

    def ref_stats(self, x, p, training, eps):
        """(mean, invstd) that normalize x: the batch's or the running ones."""
        if training or p["running_mean"] is None:
            mean, var = reference.batch_norm_stats(x)
        else:
            mean, var = p["running_mean"].astype(f64), p["running_var"].astype(f64)
        return mean, 1 / np.sqrt(var + eps)

    def ref_backward(self, douts, x, case, p, training=True, eps=EPS):
        mean, invstd = self.ref_stats(x, p, training, eps)
        dx, dw, db = reference.batch_norm_backward(douts[0], x, p["weight"], mean, invstd, training)
        return {"input": dx, "weight": dw, "bias": db}

    def stats_shape(self, case, training):
        return (case.shape[1],)


class BatchNormReLU(BatchNorm):
    family = "batch_relu"
    native, _, plain_fn, ref_native, _ = forms("batch_norm_relu")

    def forward(self, x, case, p, training=True, eps=EPS, momentum=MOMENTUM):
        outs, saved = super().forward(x, case, p, training, eps, momentum)
        return outs, saved + outs  # backward takes the output (its mask)

    def stats_of(self, saved):
        return saved[:2]

    def backward(self, douts, x, case, p, saved, training=True):
        mean, invstd, y = saved
        dx, dw, db = F.batch_norm_relu_backward(douts[0], x, p["weight"], mean, invstd, training, y)
        return {"input": dx, "weight": dw, "bias": db}

    def ref_backward(self, douts, x, case, p, training=True, eps=EPS):
        mean, invstd = self.ref_stats(x, p, training, eps)  # the mask is recomputed
        dx, dw, db = reference.batch_norm_relu_backward(
            douts[0], x, p["weight"], p["bias"], mean, invstd, training
        )
        return {"input": dx, "weight": dw, "bias": db}


class InstanceNorm(RunningStatsNorm):
    """training means use_input_stats (the running statistics are used otherwise)."""

    family = "instance"
    native, native_backward, plain_fn, ref_native, _ = forms("instance_norm")
    ref_order = ("running_mean", "running_var", "weight", "bias")

    def ref_backward(self, douts, x, case, p, training=True, eps=EPS):
        dx, dw, db = reference.instance_norm_backward(
            douts[0], x, p["weight"], eps, p["running_mean"], p["running_var"], training
        )
        return {"input": dx, "weight": dw, "bias": db}

    def stats_shape(self, case, training):
        return case.shape[:2] if training else (case.shape[1],)


class ArgNorm(Norm):
    """A norm whose functional forms take its structural argument after x: (x, arg, weight,
    bias, eps) -> (y, mean, rstd) and (dy, x, arg, mean, rstd, weight); the reference's
    (x, arg, weight, bias, eps) and (dy, x, arg, weight, eps)."""

    native = native_backward = plain_fn = ref_native = ref_native_backward = None

    def plain(self, x, case, p, training=True, eps=EPS, momentum=MOMENTUM):
        return (self.plain_fn(x, case.arg, p["weight"], p["bias"], eps),)

    def forward(self, x, case, p, training=True, eps=EPS, momentum=MOMENTUM):
        y, mean, rstd = self.native(x, case.arg, p["weight"], p["bias"], eps)
        return (y,), (mean, rstd)

    def backward(self, douts, x, case, p, saved, training=True):
        dx, dw, db = self.native_backward(douts[0], x, case.arg, *saved, p["weight"])
        return {"input": dx, "weight": dw, "bias": db}

    def ref_forward(self, x, case, p, training=True, eps=EPS, momentum=MOMENTUM):
        return (self.ref_native(x, case.arg, p["weight"], p["bias"], eps)[0],)

    def ref_backward(self, douts, x, case, p, training=True, eps=EPS):
        dx, dw, db = self.ref_native_backward(douts[0], x, case.arg, p["weight"], eps)
        return {"input": dx, "weight": dw, "bias": db}


class GroupNorm(ArgNorm):
    family = "group"
    native, native_backward, plain_fn, ref_native, ref_native_backward = forms("group_norm")

    def make(self, case, dtype=np.float32, **kw):
        kw.setdefault("dtype", dtype)
        return cnorm.GroupNorm(case.arg, case.shape[1], **kw)

    def stats_shape(self, case, training):
        return (case.shape[0], case.arg)


# =======================================================================================
# row norms: statistics over the trailing normalized_shape
# =======================================================================================


class RowNorm(Norm):
    def make(self, case, dtype=np.float32, **kw):
        kw.setdefault("dtype", dtype)
        return self.cls(case.arg, **kw)

    def reduce_axes(self, case):
        return tuple(range(len(case.shape) - len(case.arg)))

    def param_shape(self, case):
        return tuple(case.arg)

    def stats_shape(self, case, training):
        return case.shape[: len(case.shape) - len(case.arg)]


class LayerNorm(ArgNorm, RowNorm):
    family = "layer"
    native, native_backward, plain_fn, ref_native, ref_native_backward = forms("layer_norm")


class RMSNorm(RowNorm):
    """eps=None in the functional form: the machine epsilon of the dtype."""

    family = "rms"
    param_names = ("weight",)

    def forward(self, x, case, p, training=True, eps=EPS, momentum=MOMENTUM):
        y, rrms = F.native_rms_norm(x, case.arg, p["weight"], eps)
        return (y,), (rrms,)

    def plain(self, x, case, p, training=True, eps=EPS, momentum=MOMENTUM):
        return (F.rms_norm(x, case.arg, p["weight"], eps),)

    def backward(self, douts, x, case, p, saved, training=True):
        dx, dw = F.rms_norm_backward(douts[0], x, case.arg, *saved, p["weight"])
        return {"input": dx, "weight": dw}

    def ref_forward(self, x, case, p, training=True, eps=EPS, momentum=MOMENTUM):
        return (reference.rms_norm_forward(x, case.arg, p["weight"], eps)[0],)

    def ref_backward(self, douts, x, case, p, training=True, eps=EPS):
        dx, dw = reference.rms_norm_backward(douts[0], x, case.arg, p["weight"], eps)
        return {"input": dx, "weight": dw}


class AddLayerNorm(RowNorm):
    """y = layer_norm(x + residual), s = x + residual: two outputs, and the gradient of the
    input is the gradient of the residual."""

    family = "add_layer"
    torch_twin = "LayerNorm"

    def n_outputs(self):
        return 2

    def params(self, rng, case, dtype, affine=True, running=True):
        p = super().params(rng, case, dtype, affine, running)
        p["residual"] = rng.normal(-0.3, 1.0, case.shape).astype(dtype)
        return p

    def inputs(self, rng, case, dtype):
        return rng.normal(-0.3, 1.0, case.shape).astype(dtype)

    def call(self, m, x, r=None):
        return tuple(m(x, x[::-1].copy() if r is None else r))

    def module_backward(self, m, douts):
        return m.backward(*douts)

    def forward(self, x, case, p, training=True, eps=EPS, momentum=MOMENTUM):
        y, s, mean, rstd = F.native_add_layer_norm(x, p["residual"], case.arg, p["weight"], p["bias"], eps)
        return (y, s), (s, mean, rstd)

    def plain(self, x, case, p, training=True, eps=EPS, momentum=MOMENTUM):
        return tuple(F.add_layer_norm(x, p["residual"], case.arg, p["weight"], p["bias"], eps))

    def stats_of(self, saved):
        return saved[1:]

    def backward(self, douts, x, case, p, saved, training=True):
        s, mean, rstd = saved
        dsum = douts[1] if len(douts) > 1 else None
        dxr, dw, db = F.add_layer_norm_backward(douts[0], dsum, s, case.arg, mean, rstd, p["weight"])
        return {"input": dxr, "residual": dxr, "weight": dw, "bias": db}

    def ref_forward(self, x, case, p, training=True, eps=EPS, momentum=MOMENTUM):
        return tuple(
            reference.add_layer_norm_forward(x, p["residual"], case.arg, p["weight"], p["bias"], eps)[:2]
        )

    def ref_backward(self, douts, x, case, p, training=True, eps=EPS):
        dsum = douts[1] if len(douts) > 1 else None
        dxr, dw, db = reference.add_layer_norm_backward(
            douts[0], dsum, x + p["residual"], case.arg, p["weight"], eps
        )
        return {"input": dxr, "residual": dxr, "weight": dw, "bias": db}


# =======================================================================================
# the entries
# =======================================================================================

_BN_CONFIGS = {
    "default": {},
    "cumulative_nobias_f64": {"eps": 1e-3, "momentum": None, "bias": False, "dtype": f64},
    "noaffine": {"affine": False},
    "untracked_f64": {"track_running_stats": False, "dtype": f64},
    "noaffine_untracked": {"affine": False, "track_running_stats": False},
}
# BatchNormReLU: the BatchNorm configurations and two more in float32
_BNR_CONFIGS = {**_BN_CONFIGS, "cumulative": {"momentum": None}, "untracked": {"track_running_stats": False}}
_IN_CONFIGS = {
    "default": {},
    "affine_track": {"affine": True, "track_running_stats": True},
    "track_cumulative_f64": {"track_running_stats": True, "momentum": None, "dtype": f64},
    "affine_nobias": {"affine": True, "bias": False},
}
_IN_FULL = {"affine": True, "track_running_stats": True}
# the cases RMSNorm and AddLayerNorm share
_NEWER_ROW_CASES = dict(
    big=[((16, 64, 33, 33), (33, 33)), ((2, 32, 64, 96), (64, 96))],
    simd=[((4, 8, 1001), (1001,)), ((2, 6, 24, 24), (24, 24)), ((33, 4, 129), (129,)), ((3, 64, 7), (7,))],
    small=((4, 3, 5), (5,)),
    steps=(((128, 12, 60), (12, 60)), {}, np.float32),
    empty=[((0, 3), (3,)), ((2, 0), (0,)), ((0,), (0,)), ((2, 0, 3), (3,))],
)

NORMS = [
    BatchNorm(
        "BatchNorm1d",
        ndims=(2, 3),
        configs=_BN_CONFIGS,
        shapes=[(5, 3), (2, 1), (7, 3, 11), (1, 3, 7), (3, 4, 513)],
        fd=[(6, 3), (4, 3, 5), (3, 1, 2)],
        big=[(256, 1024)],
        simd=[(4, 3, 1001), (3, 2, 4099), (64, 1030), (33, 517), (40, 600)],
        small=(6, 4, 3),
        steps=((128, 700), {}, np.float32),
        empty=[(0, 3), (0, 3, 5), (0, 3, 4), (4, 3, 0), (2, 3, 0), (4, 0), (4, 0, 5), (5, 0), (3, 0, 4)],
    ),
    BatchNorm(
        "BatchNorm2d",
        ndims=(4,),
        configs=_BN_CONFIGS,
        shapes=[(7, 3, 5, 11), (1, 1, 1, 2), (2, 3, 1, 1), (3, 5, 2, 3)],
        fd=[(2, 2, 3, 3)],
        big=[(16, 64, 33, 33), (4, 3, 160, 160)],
        simd=[(2, 5, 24, 24)],
        small=(3, 4, 5, 5),
        steps=((16, 6, 30, 30), {"momentum": None}, np.float32),
        empty=[
            (0, 3, 5, 6),
            (4, 3, 0, 6),
            (4, 3, 5, 0),
            (0, 2, 4, 4),
            (2, 2, 3, 0),
            (0, 3, 2, 2),
            (4, 0, 5, 6),
            (2, 0, 3, 3),
            (0, 0, 0, 0),
        ],
    ),
    BatchNorm(
        "BatchNorm3d",
        ndims=(5,),
        configs=_BN_CONFIGS,
        shapes=[(2, 3, 1, 5, 7), (1, 1, 1, 1, 3), (3, 5, 2, 3, 4)],
        fd=[(2, 2, 1, 2, 3)],
        big=[(2, 8, 16, 32, 32)],
        simd=[(2, 3, 4, 9, 31)],
        small=(2, 4, 2, 3, 3),
        steps=((4, 4, 8, 24, 24), {}, np.float64),
        empty=[
            (0, 3, 2, 5, 6),
            (4, 3, 0, 5, 6),
            (4, 3, 2, 0, 6),
            (4, 3, 2, 5, 0),
            (2, 3, 0, 2, 2),
            (2, 3, 2, 0, 1),
            (4, 0, 2, 5, 6),
            (2, 0, 1, 2, 2),
        ],
    ),
    LayerNorm(
        "LayerNorm",
        configs={
            "default_eps": {"eps": 1e-3},
            "noaffine": {"elementwise_affine": False},
            "nobias_f64": {"bias": False, "eps": 1e-4, "dtype": f64},
        },
        shapes=[
            ((4, 5), (5,)),
            ((6, 13), (13,)),
            ((17,), (17,)),
            ((2, 3, 4, 5), (4, 5)),
            ((3, 5, 1), (5, 1)),
        ],
        fd=[((3, 5), (5,)), ((2, 3, 4), (3, 4)), ((4, 2), (2,)), ((7,), (7,)), ((2, 2, 3), (3,))],
        big=[((512, 1024), (1024,)), ((64, 4096), (4096,)), ((8, 32, 64, 48), (64, 48))],
        simd=[((33, 777), (777,)), ((8, 2048), (2048,)), ((5, 4, 129), (4, 129)), ((17, 513), (513,))],
        small=((2, 3, 5), (3, 5)),
        steps=(((128, 12, 60), (12, 60)), {}, np.float32),
        empty=[
            ((0, 8), (8,)),
            ((2, 0, 6), (6,)),
            ((0, 3, 4), (3, 4)),
            ((0, 5), (5,)),
            ((3, 0), (0,)),
            ((2, 3, 0), (3, 0)),
            ((0,), (0,)),
            ((0, 0), (0, 0)),
            ((2, 0, 3), (0, 3)),
        ],
    ),
    GroupNorm(
        "GroupNorm",
        configs={"default": {}, "noaffine": {"affine": False}, "nobias_eps": {"bias": False, "eps": 1e-3}},
        shapes=[((2, 6, 5), 3), ((3, 8, 4, 4), 4), ((4, 6), 3), ((1, 2, 3, 5, 7), 1), ((5, 3, 2), 1)],
        fd=[((2, 6, 3), 3), ((2, 4, 2, 2), 2), ((3, 4), 2), ((1, 2, 5), 1)],
        big=[((16, 64, 33, 33), 8), ((2, 32, 64, 96), 8)],
        simd=[((4, 8, 1001), 8), ((2, 6, 24, 24), 2), ((33, 4, 129), 4), ((3, 64, 7), 8)],
        small=((4, 6, 5), 3),
        steps=(((16, 6, 30, 30), 3), {}, np.float32),
        empty=[((0, 4, 3), 2), ((2, 4, 0), 2), ((2, 0, 3), 1), ((0, 4), 2), ((2, 4, 0, 5), 2)],
    ),
    InstanceNorm(
        "InstanceNorm1d",
        ndims=(3,),
        configs=_IN_CONFIGS,
        full_kw=_IN_FULL,
        shapes=[(2, 3, 5), (2, 3, 1031), (1, 5, 2)],
        fd=[(2, 3, 4)],
        big=[],
        simd=[(4, 8, 1001), (33, 4, 129), (3, 64, 7)],
        small=(2, 3, 7),
        steps=((32, 16, 300), _IN_FULL, np.float32),
        empty=[(0, 3, 4), (2, 3, 0), (2, 0, 4), (0, 3, 0)],
    ),
    InstanceNorm(
        "InstanceNorm2d",
        ndims=(4,),
        configs=_IN_CONFIGS,
        full_kw=_IN_FULL,
        shapes=[(3, 4, 6, 6), (6, 1, 7, 3)],
        fd=[(2, 2, 2, 3)],
        big=[(16, 64, 33, 33)],
        simd=[(2, 6, 24, 24)],
        small=(2, 3, 4, 5),
        steps=((8, 6, 30, 30), _IN_FULL, np.float32),
        empty=[(0, 3, 4, 4), (2, 3, 0, 2)],
    ),
    InstanceNorm(
        "InstanceNorm3d",
        ndims=(5,),
        configs=_IN_CONFIGS,
        full_kw=_IN_FULL,
        shapes=[(2, 2, 3, 4, 5)],
        fd=[(1, 2, 2, 1, 3)],
        big=[],
        simd=[(2, 3, 4, 9, 31)],
        small=(2, 3, 2, 3, 4),
        steps=((2, 4, 8, 24, 24), _IN_FULL, np.float32),
        empty=[(2, 3, 0, 2, 2)],
    ),
    RMSNorm(
        "RMSNorm",
        configs={
            "default": {},
            "eps_noaffine": {"eps": 1e-6, "elementwise_affine": False},
            "f64": {"dtype": f64},
        },
        shapes=[((5, 11), (11,)), ((4, 513), (513,)), ((2, 3, 7), (3, 7)), ((7,), (7,))],
        fd=[((4, 5), (5,)), ((2, 3, 4), (3, 4)), ((3, 1), (1,))],
        **_NEWER_ROW_CASES,
    ),
    AddLayerNorm(
        "AddLayerNorm",
        configs={"default": {}, "nobias": {"bias": False}, "noaffine": {"elementwise_affine": False}},
        shapes=[((5, 11), (11,)), ((6, 3, 7), (3, 7)), ((4, 513), (513,))],
        fd=[((4, 5), (5,)), ((2, 3, 4), (3, 4))],
        **_NEWER_ROW_CASES,
    ),
    BatchNormReLU(
        "BatchNormReLU1d",
        ndims=(2, 3),
        configs=_BNR_CONFIGS,
        torch_twin="BatchNorm1d",
        shapes=[(6, 5), (4, 5, 7), (64, 3), (2, 4, 1031)],
        fd=[(6, 3), (3, 2, 4)],
        big=[(256, 1024)],
        simd=[(4, 8, 1001), (33, 4, 129), (3, 64, 7)],
        small=(6, 3),
        steps=((128, 700), {}, np.float32),
        empty=[(0, 3), (2, 3, 0), (2, 0, 4)],
    ),
    BatchNormReLU(
        "BatchNormReLU2d",
        ndims=(4,),
        configs=_BNR_CONFIGS,
        torch_twin="BatchNorm2d",
        shapes=[(3, 5, 4, 6)],
        fd=[(2, 2, 2, 3)],
        big=[(16, 64, 33, 33), (2, 32, 64, 96)],
        simd=[(2, 6, 24, 24)],
        small=(4, 3, 2, 5),
        steps=((16, 6, 30, 30), {}, np.float32),
        empty=[(0, 3, 2, 2), (2, 3, 0, 2)],
    ),
    BatchNormReLU(
        "BatchNormReLU3d",
        ndims=(5,),
        configs=_BNR_CONFIGS,
        torch_twin="BatchNorm3d",
        shapes=[(2, 3, 2, 3, 4)],
        fd=[(2, 2, 1, 2, 3)],
        big=[],
        simd=[(2, 3, 4, 9, 31)],
        small=(2, 3, 2, 2, 3),
        steps=((4, 4, 8, 24, 24), {}, np.float32),
        empty=[(2, 3, 0, 2, 2)],
    ),
]
BY_NAME = {n.name: n for n in NORMS}


def mode_id(norm, training):
    if norm.family == "instance":
        return "input_stats" if training else "running_stats"
    return "train" if training else "eval"


def norm_cases(attr, modes=False, dtypes=None, norms=NORMS):
    """pytest params (norm, case[, dtype][, training]) over every norm's ``attr`` cases."""
    out = []
    for norm in norms:
        cases = getattr(norm, attr)
        for case in cases if isinstance(cases, list) else [cases]:
            for dtype in dtypes or [None]:
                for training in norm.modes if modes else [None]:
                    values = [norm, case] + ([dtype] if dtypes else []) + ([training] if modes else [])
                    ids = (
                        [norm.name, case.id]
                        + ([np.dtype(dtype).name] if dtypes else [])
                        + ([mode_id(norm, training)] if modes else [])
                    )
                    out.append(pytest.param(*values, id="-".join(ids)))
    return out


def norm_configs(norms=NORMS):
    """pytest params (norm, config name) over every norm's module configurations."""
    return [pytest.param(n, c, id=f"{n.name}-{c}") for n in norms for c in n.configs]


# =======================================================================================
# the shape tables of the detailed BatchNorm / LayerNorm tests (values and gradients)
# =======================================================================================

BN_SHAPES = [  # per rank: ordinary shapes, then empty ones
    # (N, C)
    *[(2, 1), (5, 3), (1, 4), (64, 7), (256, 1024)],
    # (N, C, L)
    *[(4, 3, 1), (1, 3, 7), (7, 3, 11), (2, 1, 100), (3, 4, 1000), (16, 64, 33)],
    *[(0, 3, 5), (2, 5, 0), (4, 0, 5)],
    # (N, C, H, W)
    *[(7, 3, 5, 11), (1, 1, 1, 2), (2, 3, 1, 1), (1, 2, 1, 1), (4, 4, 32, 32), (2, 16, 8, 8), (8, 3, 64, 64)],
    *[(0, 3, 4, 4), (2, 3, 0, 4), (3, 0, 2, 2)],
    # (N, C, D, H, W)
    *[(2, 3, 1, 5, 7), (1, 2, 3, 3, 3), (3, 5, 2, 3, 4), (2, 4, 8, 16, 16), (1, 1, 1, 1, 3)],
    *[(0, 2, 3, 3, 3), (2, 3, 2, 0, 2), (2, 0, 2, 2, 2)],
]


# batch-norm inputs with one value per channel: a ValueError in training, fine in eval
ONE_VALUE_PER_CHANNEL = [
    ("BatchNorm1d", (1, 3)),
    ("BatchNorm1d", (1, 3, 1)),
    ("BatchNorm2d", (1, 3, 1, 1)),
    ("BatchNorm3d", (1, 3, 1, 1, 1)),
]


def values_per_channel(shape):
    return shape[0] * math.prod(shape[2:])


def bn_params(training_values=(True, False)):
    """(shape, training) pairs; training with exactly one value per channel is an error case."""
    out = []
    for shape in BN_SHAPES:
        for training in training_values:
            if training and values_per_channel(shape) == 1:
                continue
            out.append(pytest.param(shape, training, id=f"{shape}-{'train' if training else 'eval'}"))
    return out


def bn_cases(test):
    """Parametrize a BatchNorm values / gradients test over bn_params() (shape, training),
    the dtypes and affine or not."""
    test = pytest.mark.parametrize("shape,training", bn_params())(test)
    test = pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)(test)
    return pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])(test)


LN_CASES = [
    ((4, 5), (5,)),
    ((3, 1), (1,)),  # D = 1
    ((6, 13), (13,)),  # prime D
    ((1, 17), (17,)),  # M = 1
    ((17,), (17,)),  # no leading dims
    ((2, 3, 4, 5), (4, 5)),  # 2-dim normalized_shape
    ((2, 3, 7), (3, 7)),
    ((3, 5, 1), (5, 1)),
    ((5, 1, 1), (1, 1)),
    ((64, 1024), (1024,)),
    ((512, 96), (96,)),
    ((4, 33, 257), (257,)),
    ((0, 8), (8,)),  # empty
    ((2, 0, 6), (6,)),
    ((0, 3, 4), (3, 4)),
]


def ln_id(case):
    return f"{case[0]}-{case[1]}"


LN_AFFINE = {"affine": (True, True), "weight_only": (True, False), "none": (False, False)}


def ln_cases(test):
    """Parametrize a LayerNorm values / gradients test over LN_CASES, the dtypes and LN_AFFINE."""
    test = pytest.mark.parametrize("case", LN_CASES, ids=ln_id)(test)
    test = pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)(test)
    return pytest.mark.parametrize("affine", list(LN_AFFINE), ids=str)(test)
