"""Robustness: nothing crashes, nothing is lost.

* HOSTILE: a table of hostile calls (description, callable, exception type, message regex)
  through the modules and cnorm.functional; KERNEL_CASES: the same for the private kernels
  in cnorm._kernels, run in child processes so that a crash is a test failure, not the end
  of the test session;
* edge cases that must WORK like torch: zero-size in every dimension, C = 0, N = 1 in
  eval, every memory layout (non-contiguous, Fortran, negative strides, read-only,
  memory-mapped, byte-swapped, misaligned);
* threads: the same / different modules called from 4 Python threads at once give the
  results of serial calls; 1 vs 2 OpenMP threads agree; repeated calls are bitwise equal;
* pickle and copy.deepcopy round trips keep every piece of state.
"""

import copy
import json
import os
import pickle
import re
import subprocess
import sys
import threading
from typing import Callable, NamedTuple

import numpy as np
import pytest

import cnorm
import cnorm.functional as F
from cnorm import slow

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None


# =======================================================================================
# the hostile-input table
# =======================================================================================

class Case(NamedTuple):
    desc: str
    fn: Callable[[], object]
    exc: type
    match: str


HOSTILE = []


def hostile(desc, fn, exc, match):
    HOSTILE.append(Case(desc, fn, exc, match))


f32 = np.float32

# valid inputs of each module (the hostile cases vary one thing at a time)
MODULES = {
    "BatchNorm1d": (lambda: cnorm.BatchNorm1d(3), (4, 3, 5)),
    "BatchNorm2d": (lambda: cnorm.BatchNorm2d(3), (4, 3, 5, 5)),
    "BatchNorm3d": (lambda: cnorm.BatchNorm3d(3), (4, 3, 2, 5, 5)),
    "LayerNorm": (lambda: cnorm.LayerNorm(5), (4, 3, 5)),
    "LayerNorm2": (lambda: cnorm.LayerNorm((3, 5)), (4, 3, 5)),
}
FUNCTIONAL = {
    "F.batch_norm": (lambda x: F.batch_norm(x, None, None, training=True), (4, 3, 5)),
    "F.native_batch_norm": (lambda x: F.native_batch_norm(x, None, None, None, None, True, 0.1, 1e-5),
                            (4, 3, 5)),
    "F.layer_norm": (lambda x: F.layer_norm(x, (5,)), (4, 3, 5)),
    "F.native_layer_norm": (lambda x: F.native_layer_norm(x, (5,), None, None, 1e-5), (4, 3, 5)),
    "F.batch_norm_stats": (lambda x: F.batch_norm_stats(x), (4, 3, 5)),
}


def _call_module(make, x):
    return lambda: make()(x)


def _call_fn(fn, x):
    return lambda: fn(x)


def _targets():
    """(name, callable taking the input) for every public entry point."""
    out = []
    for name, (make, _) in MODULES.items():
        out.append((name, lambda x, make=make: make()(x)))
    for name, (fn, _) in FUNCTIONAL.items():
        out.append((name, fn))
    return out


# -- wrong number of dimensions ---------------------------------------------------------
for shape in [(), (3,), (4, 3, 5, 5), (4, 3, 2, 5, 5), (4, 3, 1, 1, 1, 1)]:
    hostile(f"BatchNorm1d ndim {len(shape)}", _call_module(lambda: cnorm.BatchNorm1d(3), np.ones(shape, f32)),
            ValueError, re.escape(f"expected 2D or 3D input (got {len(shape)}D input)"))
for shape in [(), (3,), (4, 3), (4, 3, 5), (4, 3, 2, 5, 5), (4, 3, 1, 1, 1, 1)]:
    hostile(f"BatchNorm2d ndim {len(shape)}", _call_module(lambda: cnorm.BatchNorm2d(3), np.ones(shape, f32)),
            ValueError, re.escape(f"expected 4D input (got {len(shape)}D input)"))
for shape in [(), (4, 3), (4, 3, 5), (4, 3, 5, 5), (4, 3, 1, 1, 1, 1)]:
    hostile(f"BatchNorm3d ndim {len(shape)}", _call_module(lambda: cnorm.BatchNorm3d(3), np.ones(shape, f32)),
            ValueError, re.escape(f"expected 5D input (got {len(shape)}D input)"))
for shape in [(), (3,)]:
    hostile(f"F.batch_norm ndim {len(shape)}",
            _call_fn(lambda x: F.batch_norm(x, None, None, training=True), np.ones(shape, f32)),
            ValueError, re.escape(f"expected at least 2D input (got {len(shape)}D input)"))

# -- wrong number of channels -----------------------------------------------------------
for cls, shape in [("BatchNorm1d", (4, 4)), ("BatchNorm1d", (4, 2, 5)), ("BatchNorm2d", (2, 4, 5, 5)),
                   ("BatchNorm2d", (2, 0, 5, 5)), ("BatchNorm3d", (2, 2, 2, 2, 2))]:
    hostile(f"{cls}(3) input {shape}", _call_module(lambda cls=cls: getattr(cnorm, cls)(3), np.ones(shape, f32)),
            ValueError, re.escape(f"expected input with 3 channels (num_features), got input of shape {shape}"))
hostile("BatchNorm2d(0) input with 3 channels",
        _call_module(lambda: cnorm.BatchNorm2d(0), np.ones((2, 3, 4, 4), f32)),
        ValueError, re.escape("expected input with 0 channels (num_features)"))

# -- wrong normalized_shape -------------------------------------------------------------
for ns, shape in [(5, (4, 6)), (5, (5, 4)), (5, ()), (5, (0,)), ((4, 5), (2, 5, 4)), ((4, 5), (5,)),
                  ((4, 5), (4, 5, 1)), ((2, 3), (6,))]:
    nss = ", ".join(map(str, (ns,) if isinstance(ns, int) else ns))
    hostile(f"LayerNorm({ns}) input {shape}", _call_module(lambda ns=ns: cnorm.LayerNorm(ns), np.ones(shape, f32)),
            ValueError, re.escape(f"Given normalized_shape=[{nss}], expected input with shape [*, {nss}], "
                                  f"but got input of size[{', '.join(map(str, shape))}]"))
    hostile(f"F.layer_norm({ns}) input {shape}", _call_fn(lambda x, ns=ns: F.layer_norm(x, ns), np.ones(shape, f32)),
            ValueError, re.escape(f"Given normalized_shape=[{nss}]"))

# -- every unsupported dtype, at every entry point ---------------------------------------
BAD_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_,
              np.complex64, np.complex128, np.object_, np.float16, ">f2", "U3", "S3", "datetime64[s]",
              "timedelta64[ms]", [("a", "f4")], "V4", np.longdouble]


def _bad_array(dtype, shape):
    dt = np.dtype(dtype)
    if dt.kind == "O":
        return np.full(shape, 1.0, dtype=object)
    if dt.kind in "US":
        return np.full(shape, "1", dtype=dt)
    return np.zeros(shape, dtype=dt)


for dtype in BAD_DTYPES:
    dname = "struct" if isinstance(dtype, list) else np.dtype(dtype).str.replace("|", "").replace("<", "")
    for name, fn in _targets():
        shape = (MODULES.get(name) or FUNCTIONAL.get(name))[1]
        # np.longdouble is float64 on some platforms: then it is supported
        if np.dtype(dtype) in (np.dtype(np.float32), np.dtype(np.float64)):
            continue
        hostile(f"{name} dtype {dname}", _call_fn(fn, _bad_array(dtype, shape)),
                TypeError, r"^unsupported dtype .*: cnorm works on float32 and float64 arrays$")

# -- dtype different from the module's ---------------------------------------------------
for name, (make, shape) in MODULES.items():
    hostile(f"{name} float32 module, float64 input", _call_module(make, np.ones(shape, np.float64)),
            TypeError, re.escape("input dtype float64 does not match the module dtype float32"))
    hostile(f"{name} float32 module, '>f8' input", _call_module(make, np.ones(shape, ">f8")),
            TypeError, re.escape("input dtype float64 does not match the module dtype float32"))
hostile("BatchNorm2d float64 module, float32 input",
        _call_module(lambda: cnorm.BatchNorm2d(3, dtype=np.float64), np.ones((2, 3, 4, 4), f32)),
        TypeError, re.escape("input dtype float32 does not match the module dtype float64"))
hostile("LayerNorm float64 module, float32 input",
        _call_module(lambda: cnorm.LayerNorm(4, dtype=np.float64), np.ones((2, 4), f32)),
        TypeError, re.escape("input dtype float32 does not match the module dtype float64"))

# -- not an array --------------------------------------------------------------------------
NOT_ARRAYS = [("list", [[1.0, 2.0, 3.0]] * 2), ("NoneType", None), ("tuple", ((1.0, 2.0, 3.0),) * 2),
              ("int", 3), ("float", 1.5), ("float32", np.float32(1.0)), ("dict", {"x": 1}),
              ("str", "abc"), ("bytes", b"abc"), ("memoryview", memoryview(b"abcd"))]
if torch is not None:
    NOT_ARRAYS.append(("Tensor", torch.ones(2, 3, 4)))
for tname, obj in NOT_ARRAYS:
    for name, fn in _targets():
        hostile(f"{name} input {tname}", _call_fn(fn, obj),
                TypeError, re.escape(f"expected a NumPy array, got {tname}"))

# -- one value per channel in training -------------------------------------------------------
for cls, shape in [("BatchNorm1d", (1, 3)), ("BatchNorm1d", (1, 3, 1)), ("BatchNorm2d", (1, 3, 1, 1)),
                   ("BatchNorm3d", (1, 3, 1, 1, 1))]:
    hostile(f"{cls} training with input {shape}",
            _call_module(lambda cls=cls: getattr(cnorm, cls)(3), np.ones(shape, f32)), ValueError,
            re.escape(f"Expected more than 1 value per channel when training, got input size {shape}"))
    hostile(f"{cls} eval without running stats, input {shape}",
            _call_module(lambda cls=cls: getattr(cnorm, cls)(3, track_running_stats=False).eval(),
                         np.ones(shape, f32)), ValueError,
            re.escape("Expected more than 1 value per channel when training"))
hostile("F.batch_norm training with input (1, 3)",
        _call_fn(lambda x: F.batch_norm(x, None, None, training=True), np.ones((1, 3), f32)),
        ValueError, re.escape("Expected more than 1 value per channel when training, got input size (1, 3)"))

# -- eps <= 0 when batch statistics are used --------------------------------------------------
for eps in [0.0, -1e-5, -1.0, float("nan"), -float("inf")]:
    hostile(f"BatchNorm2d eps={eps} training",
            _call_module(lambda eps=eps: cnorm.BatchNorm2d(3, eps=eps), np.ones((2, 3, 2, 2), f32)),
            ValueError, re.escape(f"batch_norm eps must be positive during training, but got {eps}"))
    hostile(f"F.batch_norm eps={eps} training",
            _call_fn(lambda x, eps=eps: F.batch_norm(x, None, None, training=True, eps=eps), np.ones((2, 3), f32)),
            ValueError, re.escape(f"batch_norm eps must be positive during training, but got {eps}"))
hostile("BatchNorm1d eps=0 eval without running stats",
        _call_module(lambda: cnorm.BatchNorm1d(3, eps=0.0, track_running_stats=False).eval(), np.ones((2, 3), f32)),
        ValueError, re.escape("batch_norm eps must be positive during training, but got 0.0"))

# -- constructor arguments ---------------------------------------------------------------------
for cls in ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]:
    for nf in [-1, -5, 2.5, "3", None, True]:
        hostile(f"{cls}(num_features={nf!r})", lambda cls=cls, nf=nf: getattr(cnorm, cls)(nf),
                ValueError, re.escape(f"num_features must be a non-negative integer, got {nf!r}"))
    for dt in [np.int32, np.float16, np.complex64, "U3"]:
        hostile(f"{cls}(3, dtype={np.dtype(dt).name})", lambda cls=cls, dt=dt: getattr(cnorm, cls)(3, dtype=dt),
                TypeError, r"^unsupported dtype")
for ns in [(3, -2), (-4,), [-1]]:
    hostile(f"LayerNorm({ns})", lambda ns=ns: cnorm.LayerNorm(ns), ValueError,
            re.escape("normalized_shape must not contain negative sizes"))
# an int normalized_shape skips that check (see test_layer_norm_negative_int_shape_message)
hostile("LayerNorm(-1)", lambda: cnorm.LayerNorm(-1), ValueError, "negative")
for ns, tname in [(None, "NoneType"), (2.5, "float"), (object(), "object")]:
    hostile(f"LayerNorm({tname})", lambda ns=ns: cnorm.LayerNorm(ns), TypeError,
            re.escape(f"normalized_shape must be an int or a sequence of ints, got {tname}"))
hostile("LayerNorm(4, dtype=int64)", lambda: cnorm.LayerNorm(4, dtype=np.int64), TypeError, r"^unsupported dtype")
hostile("train('yes')", lambda: cnorm.BatchNorm2d(3).train("yes"), ValueError,
        re.escape("training mode is expected to be boolean"))
hostile("set_num_threads(0)", lambda: cnorm.set_num_threads(0), ValueError,
        re.escape("the number of threads must be at least 1, got 0"))
hostile("set_num_threads(-3)", lambda: cnorm.set_num_threads(-3), ValueError,
        re.escape("the number of threads must be at least 1, got -3"))
hostile("set_num_threads('a')", lambda: cnorm.set_num_threads("a"), TypeError, "integer")


# -- backward misuse ---------------------------------------------------------------------------
def _fresh(name):
    make, shape = MODULES[name]
    return make(), shape


def _backward_before_forward(name):
    m, shape = _fresh(name)
    return m.backward(np.ones(shape, f32))


def _backward_twice(name):
    m, shape = _fresh(name)
    m(np.random.default_rng(0).standard_normal(shape).astype(f32))
    m.backward(np.ones(shape, f32))
    return m.backward(np.ones(shape, f32))


def _backward_with(name, dy_fn):
    m, shape = _fresh(name)
    m(np.random.default_rng(0).standard_normal(shape).astype(f32))
    return m.backward(dy_fn(shape))


for name in MODULES:
    hostile(f"{name} backward before forward", lambda name=name: _backward_before_forward(name),
            RuntimeError, re.escape("backward() called before forward()"))
    hostile(f"{name} backward twice", lambda name=name: _backward_twice(name), RuntimeError,
            re.escape("Trying to backward through the graph a second time: call forward() again before backward()"))
    shape = MODULES[name][1]
    hostile(f"{name} backward wrong shape", lambda name=name: _backward_with(name, lambda s: np.ones(s[:-1] + (s[-1] + 1,), f32)),
            ValueError, re.escape(f"grad_output has shape {shape[:-1] + (shape[-1] + 1,)} "
                                  f"but the input of forward() had shape {shape}"))
    hostile(f"{name} backward transposed shape", lambda name=name: _backward_with(name, lambda s: np.ones(s[::-1], f32)),
            ValueError, re.escape(f"grad_output has shape {shape[::-1]}"))
    hostile(f"{name} backward flat", lambda name=name: _backward_with(name, lambda s: np.ones(int(np.prod(s)), f32)),
            ValueError, r"^grad_output has shape")
    hostile(f"{name} backward float64 grad", lambda name=name: _backward_with(name, lambda s: np.ones(s, np.float64)),
            TypeError, re.escape("grad_output dtype float64 does not match the input dtype float32"))
    hostile(f"{name} backward int grad", lambda name=name: _backward_with(name, lambda s: np.ones(s, np.int32)),
            TypeError, r"^unsupported dtype int32")
    hostile(f"{name} backward list", lambda name=name: _backward_with(name, lambda s: np.ones(s).tolist()),
            TypeError, re.escape("expected a NumPy array for grad_output, got list"))
    hostile(f"{name} backward None", lambda name=name: _backward_with(name, lambda s: None),
            TypeError, re.escape("expected a NumPy array for grad_output, got NoneType"))


# -- load_state_dict ---------------------------------------------------------------------------
def _load(make, mutate, strict=True):
    m = make()
    sd = m.state_dict()
    mutate(sd)
    return m.load_state_dict(sd, strict=strict)


_BN = lambda: cnorm.BatchNorm2d(3)  # noqa: E731
_LN = lambda: cnorm.LayerNorm((2, 3))  # noqa: E731
_ERR = "Error(s) in loading state_dict for "
hostile("BN load_state_dict missing bias", lambda: _load(_BN, lambda d: d.pop("bias")), RuntimeError,
        re.escape(_ERR + 'BatchNorm2d:\n\tMissing key(s) in state_dict: "bias".'))
hostile("BN load_state_dict missing two", lambda: _load(_BN, lambda d: (d.pop("bias"), d.pop("running_mean"))),
        RuntimeError, re.escape(_ERR + 'BatchNorm2d:\n\tMissing key(s) in state_dict: "bias", "running_mean".'))
hostile("BN load_state_dict empty", lambda: _load(_BN, lambda d: d.clear()), RuntimeError,
        re.escape('Missing key(s) in state_dict: "weight", "bias", "running_mean", "running_var".'))
hostile("BN load_state_dict unexpected", lambda: _load(_BN, lambda d: d.update(foo=np.ones(3))), RuntimeError,
        re.escape(_ERR + 'BatchNorm2d:\n\tUnexpected key(s) in state_dict: "foo".'))
hostile("BN load_state_dict weight (4,)", lambda: _load(_BN, lambda d: d.update(weight=np.ones(4, f32))),
        RuntimeError, re.escape("size mismatch for weight: copying a param with shape (4,) from checkpoint, "
                                "the shape in current model is (3,)."))
hostile("BN load_state_dict running_var (3, 1)", lambda: _load(_BN, lambda d: d.update(running_var=np.ones((3, 1)))),
        RuntimeError, re.escape("size mismatch for running_var: copying a param with shape (3, 1)"))
hostile("BN load_state_dict num_batches_tracked (1,)",
        lambda: _load(_BN, lambda d: d.update(num_batches_tracked=np.ones(1, np.int64))), RuntimeError,
        re.escape("size mismatch for num_batches_tracked: copying a param with shape (1,) from checkpoint, "
                  "the shape in current model is ()."))
hostile("BN load_state_dict scalar weight", lambda: _load(_BN, lambda d: d.update(weight=np.float32(1))),
        RuntimeError, re.escape("size mismatch for weight: copying a param with shape ()"))
hostile("BN load_state_dict shape error even when not strict",
        lambda: _load(_BN, lambda d: d.update(bias=np.ones(2, f32)), strict=False), RuntimeError,
        re.escape("size mismatch for bias"))
hostile("BN(affine=False) load_state_dict with weight",
        lambda: _load(lambda: cnorm.BatchNorm2d(3, affine=False), lambda d: d.update(weight=np.ones(3, f32))),
        RuntimeError, re.escape('Unexpected key(s) in state_dict: "weight".'))
hostile("BN(track_running_stats=False) load_state_dict with running_mean",
        lambda: _load(lambda: cnorm.BatchNorm2d(3, track_running_stats=False),
                      lambda d: d.update(running_mean=np.ones(3, f32))),
        RuntimeError, re.escape('Unexpected key(s) in state_dict: "running_mean".'))
hostile("LN load_state_dict missing weight", lambda: _load(_LN, lambda d: d.pop("weight")), RuntimeError,
        re.escape(_ERR + 'LayerNorm:\n\tMissing key(s) in state_dict: "weight".'))
hostile("LN load_state_dict running_mean", lambda: _load(_LN, lambda d: d.update(running_mean=np.ones(3))),
        RuntimeError, re.escape('Unexpected key(s) in state_dict: "running_mean".'))
hostile("LN load_state_dict flat weight", lambda: _load(_LN, lambda d: d.update(weight=np.ones(6, f32))),
        RuntimeError, re.escape("size mismatch for weight: copying a param with shape (6,) from checkpoint, "
                                "the shape in current model is (2, 3)."))

# -- functional parameter checks -----------------------------------------------------------------
_X = np.ones((2, 3, 4), f32)
_R3 = lambda: np.ones(3, f32)  # noqa: E731
_RO = np.ones(3, f32)
_RO.setflags(write=False)
hostile("F.batch_norm weight (4,)", lambda: F.batch_norm(_X, None, None, np.ones(4, f32), training=True),
        ValueError, re.escape("weight should contain 3 elements not 4 (shape (4,))"))
hostile("F.batch_norm bias (3, 1)", lambda: F.batch_norm(_X, None, None, None, np.ones((3, 1), f32), training=True),
        ValueError, re.escape("bias should contain 3 elements not 3 (shape (3, 1))"))
hostile("F.batch_norm weight float64", lambda: F.batch_norm(_X, None, None, np.ones(3), training=True),
        TypeError, re.escape("weight has dtype float64 but the input has dtype float32"))
hostile("F.batch_norm weight list", lambda: F.batch_norm(_X, None, None, [1.0, 1.0, 1.0], training=True),
        TypeError, re.escape("weight must be a NumPy array or None, got list"))
hostile("F.batch_norm running_mean list", lambda: F.batch_norm(_X, [0.0] * 3, _R3(), training=True),
        TypeError, re.escape("running_mean must be a NumPy array or None, got list"))
hostile("F.batch_norm running_var int", lambda: F.batch_norm(_X, _R3(), np.ones(3, np.int32), training=True),
        TypeError, re.escape("running_var has dtype int32 but the input has dtype float32"))
hostile("F.batch_norm read-only running_mean", lambda: F.batch_norm(_X, _RO, _R3(), training=True),
        ValueError, re.escape("running_mean is read-only, but it is updated in place when training"))
hostile("F.batch_norm eval without running stats", lambda: F.batch_norm(_X, None, None, training=False),
        ValueError, re.escape("running_mean and running_var must be given when training=False"))
hostile("F.batch_norm eval with running_mean only", lambda: F.batch_norm(_X, _R3(), None, training=False),
        ValueError, re.escape("running_mean and running_var must be given when training=False"))
hostile("F.batch_norm_backward save_mean (4,)",
        lambda: F.batch_norm_backward(_X, _X, None, np.ones(4), np.ones(3), True),
        ValueError, re.escape("save_mean must have shape (3,), got (4,)"))
hostile("F.batch_norm_backward grad shape",
        lambda: F.batch_norm_backward(np.ones((2, 3), f32), _X, None, np.ones(3), np.ones(3), True),
        ValueError, re.escape("grad_output has shape (2, 3) but the input of forward() had shape (2, 3, 4)"))
hostile("F.batch_norm_backward_elemt count 0",
        lambda: F.batch_norm_backward_elemt(_X, _X, np.ones(3), np.ones(3), None, np.ones(3), np.ones(3), 0),
        ValueError, re.escape("count must be positive, got 0"))
hostile("F.layer_norm weight (4,)", lambda: F.layer_norm(_X, (4,), np.ones(3, f32)), ValueError,
        re.escape("Expected weight to be of same shape as normalized_shape, but got weight of shape [3] "
                  "and normalized_shape = [4]"))
hostile("F.layer_norm bias float64", lambda: F.layer_norm(_X, (4,), None, np.ones(4)), TypeError,
        re.escape("bias has dtype float64 but the input has dtype float32"))
hostile("F.layer_norm weight tuple", lambda: F.layer_norm(_X, (4,), (1.0,) * 4), TypeError,
        re.escape("weight must be a NumPy array or None, got tuple"))
hostile("F.layer_norm_backward rstd (3,)",
        lambda: F.layer_norm_backward(_X, _X, (4,), np.ones((2, 3)), np.ones(3), None),
        ValueError, re.escape("rstd must have shape (6,), got (3,)"))


def test_layer_norm_negative_int_shape_message():
    with pytest.raises(ValueError, match=re.escape("normalized_shape must not contain negative sizes")):
        cnorm.LayerNorm(-1)


def test_hostile_table_size():
    """The number of hostile cases (reported); a floor so that none gets lost."""
    print(f"\n{len(HOSTILE)} hostile cases in the module/functional table, "
          f"{len(KERNEL_CASES)} private-kernel cases")
    assert len(HOSTILE) >= 400
    assert len({c.desc for c in HOSTILE}) == len(HOSTILE), "duplicate descriptions"


@pytest.mark.parametrize("case", HOSTILE, ids=[c.desc for c in HOSTILE])
def test_hostile_input(case):
    with pytest.raises(case.exc, match=case.match):
        case.fn()


# =======================================================================================
# private kernels: run in child processes (a crash must be a failure, not the end)
# =======================================================================================

_KERNEL_PRELUDE = """
import numpy as np
from cnorm._kernels import batch_norm as B, row_norm as R
f32 = np.float32
x = np.ones((2, 3, 4), f32)           # (N, C, S) = (2, 3, 4)
x64 = x.astype(np.float64)
c3 = np.ones(3)                       # float64 per-channel statistics
w3 = np.ones(3, f32)                  # float32 per-channel parameters
xl = np.ones((2, 5), f32)             # (M, D) = (2, 5)
m2 = np.ones(2)
w5 = np.ones(5, f32)
nc = np.ones((2, 3, 8), f32)[:, :, ::2]
fo = np.asfortranarray(np.ones((2, 3, 4), f32))
mis = np.zeros(x.nbytes + 1, np.uint8)[1:].view(f32).reshape(x.shape)
swapped = x.astype(">f4")
ro = np.ones(3, f32); ro.setflags(write=False)
e = np.empty(0, f32)
e4 = np.ones(4); w4 = np.ones(4, f32)
"""

_OVERFLOW = ("private kernels check x.size == N*C*S (M*D) with a Py_ssize_t product that "
             "wraps around: N=2**62, C=4, S=1 gives 0, an empty array passes the check, and "
             "the kernel then reads 2**62 rows (segfault) or returns garbage; the product "
             "must be checked for overflow (or each dimension against x.size)")

_TYPE_OR_VALUE = ("TypeError", "ValueError")
_VALUE_OR_OVERFLOW = ("ValueError", "OverflowError")

KERNEL_CASES = [
    # (id, code, exception name(s), message regex, xfail reason or None)
    ("B.batch_norm_stats wrong size", "B.batch_norm_stats(x, 2, 3, 5)", "ValueError",
     r"input must be a C-contiguous float32 array of 30 elements", None),
    ("B.batch_norm_stats int32", "B.batch_norm_stats(x.astype(np.int32), 2, 3, 4)", "TypeError", r"unsupported dtype int32", None),
    ("B.batch_norm_stats float16", "B.batch_norm_stats(x.astype(np.float16), 2, 3, 4)", "TypeError", r"unsupported dtype float16", None),
    ("B.batch_norm_stats complex", "B.batch_norm_stats(x.astype(np.complex64), 2, 3, 4)", "TypeError", r"unsupported dtype", None),
    ("B.batch_norm_stats None", "B.batch_norm_stats(None, 2, 3, 4)", "TypeError", r"must be a NumPy array|incorrect type", None),
    ("B.batch_norm_stats list", "B.batch_norm_stats([1.0, 2.0], 1, 1, 2)", "TypeError", r"\S", None),
    ("B.batch_norm_stats non-contiguous", "B.batch_norm_stats(nc, 2, 3, 4)", "ValueError", r"C-contiguous", None),
    ("B.batch_norm_stats Fortran", "B.batch_norm_stats(fo, 2, 3, 4)", "ValueError", r"C-contiguous", None),
    ("B.batch_norm_stats misaligned", "B.batch_norm_stats(mis, 2, 3, 4)", "ValueError", r"C-contiguous", None),
    ("B.batch_norm_stats byte-swapped", "B.batch_norm_stats(swapped, 2, 3, 4)", "ValueError", r"C-contiguous", None),
    ("B.batch_norm_stats negative N", "B.batch_norm_stats(x, -2, -3, 4)", "ValueError", r"negative dimension", None),
    ("B.batch_norm_stats negative S", "B.batch_norm_stats(x, 2, 3, -4)", "ValueError", r"negative dimension", None),
    ("B.batch_norm_elemt mean float32", "B.batch_norm_elemt(x, 2, 3, 4, w3, c3, None, None)", "ValueError",
     r"mean must be a C-contiguous float64 array of 3 elements", None),
    ("B.batch_norm_elemt invstd (4,)", "B.batch_norm_elemt(x, 2, 3, 4, c3, e4, None, None)", "ValueError",
     r"invstd must be a C-contiguous float64 array of 3 elements", None),
    ("B.batch_norm_elemt weight float64", "B.batch_norm_elemt(x, 2, 3, 4, c3, c3, c3, None)", "ValueError",
     r"weight must be a C-contiguous float32 array of 3 elements, got float64", None),
    ("B.batch_norm_elemt bias (4,)", "B.batch_norm_elemt(x, 2, 3, 4, c3, c3, None, w4)", "ValueError", r"bias must be", None),
    # None for a required array (these segfaulted before the kernels declared them `not None`)
    ("B.batch_norm_elemt mean None", "B.batch_norm_elemt(x, 2, 3, 4, None, c3, None, None)", _TYPE_OR_VALUE, r"\S", None),
    ("B.batch_norm_elemt invstd None", "B.batch_norm_elemt(x, 2, 3, 4, c3, None, None, None)", _TYPE_OR_VALUE, r"\S", None),
    ("B.batch_norm_forward_train read-only running_mean",
     "B.batch_norm_forward_train(x, 2, 3, 4, None, None, ro, w3.copy(), 0.1, 1e-5)", "ValueError",
     r"running_mean must be a writeable C-contiguous float32 array of 3 elements", None),
    ("B.batch_norm_forward_train running_var only",
     "B.batch_norm_forward_train(x, 2, 3, 4, None, None, None, w3.copy(), 0.1, 1e-5)", "ValueError",
     r"both be given or both be None", None),
    ("B.batch_norm_forward_train one value per channel",
     "B.batch_norm_forward_train(np.ones((1, 3), f32), 1, 3, 1, None, None, w3.copy(), w3.copy(), 0.1, 1e-5)",
     "ValueError", r"more than 1 value per channel", None),
    ("B.batch_norm_forward_train running stats float64",
     "B.batch_norm_forward_train(x, 2, 3, 4, None, None, c3.copy(), c3.copy(), 0.1, 1e-5)", "ValueError",
     r"running_mean must be a writeable C-contiguous float32 array of 3 elements, got float64", None),
    ("B.batch_norm_forward_train weight (4,)", "B.batch_norm_forward_train(x, 2, 3, 4, w4, None, None, None, 0.1, 1e-5)",
     "ValueError", r"weight must be", None),
    ("B.batch_norm_forward_train non-contiguous", "B.batch_norm_forward_train(nc, 2, 3, 4, None, None, None, None, 0.1, 1e-5)",
     "ValueError", r"C-contiguous", None),
    ("B.batch_norm_forward_train None", "B.batch_norm_forward_train(None, 2, 3, 4, None, None, None, None, 0.1, 1e-5)",
     "TypeError", r"must be a NumPy array|incorrect type", None),
    ("B.batch_norm_forward_eval no running stats", "B.batch_norm_forward_eval(x, 2, 3, 4, None, None, None, None, 1e-5)",
     "ValueError", r"running_mean and running_var must be given", None),
    ("B.batch_norm_forward_eval running_var float64", "B.batch_norm_forward_eval(x, 2, 3, 4, None, None, w3, c3, 1e-5)",
     "ValueError", r"running_var must be", None),
    ("B.batch_norm_forward_eval wrong size", "B.batch_norm_forward_eval(x, 2, 3, 3, None, None, w3, w3, 1e-5)",
     "ValueError", r"input must be", None),
    ("B.batch_norm_backward grad float64", "B.batch_norm_backward(x64, x, 2, 3, 4, c3, c3, None, True)", "ValueError",
     r"grad_output must be a C-contiguous float32 array of 24 elements, got float64", None),
    ("B.batch_norm_backward grad wrong size", "B.batch_norm_backward(np.ones(23, f32), x, 2, 3, 4, c3, c3, None, True)",
     "ValueError", r"grad_output must be", None),
    ("B.batch_norm_backward grad non-contiguous", "B.batch_norm_backward(nc, x, 2, 3, 4, c3, c3, None, True)", "ValueError",
     r"grad_output must be", None),
    ("B.batch_norm_backward mean (4,)", "B.batch_norm_backward(x, x, 2, 3, 4, e4, c3, None, True)", "ValueError", r"mean must be", None),
    ("B.batch_norm_backward x None", "B.batch_norm_backward(x, None, 2, 3, 4, c3, c3, None, True)", "TypeError",
     r"must be a NumPy array|incorrect type", None),
    ("B.batch_norm_backward mean None", "B.batch_norm_backward(x, x, 2, 3, 4, None, c3, None, True)", _TYPE_OR_VALUE, r"\S", None),
    ("B.batch_norm_backward invstd None", "B.batch_norm_backward(x, x, 2, 3, 4, c3, None, None, True)", _TYPE_OR_VALUE, r"\S", None),
    ("B.batch_norm_backward grad None", "B.batch_norm_backward(None, x, 2, 3, 4, c3, c3, None, True)", _TYPE_OR_VALUE, r"\S", None),
    ("B.batch_norm_backward_reduce mean None", "B.batch_norm_backward_reduce(x, x, 2, 3, 4, None, c3)", _TYPE_OR_VALUE, r"\S", None),
    ("B.batch_norm_backward_elemt sum_dy None", "B.batch_norm_backward_elemt(x, x, 2, 3, 4, c3, c3, None, None, c3, 8.0)",
     _TYPE_OR_VALUE, r"\S", None),
    ("B.batch_norm_backward_elemt grad None", "B.batch_norm_backward_elemt(None, x, 2, 3, 4, c3, c3, None, c3, c3, 8.0)",
     _TYPE_OR_VALUE, r"\S", None),
    ("B.batch_norm_backward_elemt sum_dy float32", "B.batch_norm_backward_elemt(x, x, 2, 3, 4, c3, c3, None, w3, c3, 8.0)",
     "ValueError", r"sum_dy must be", None),
    ("R.layer_norm_forward wrong size", "R.layer_norm_forward(xl, 2, 4, None, None, 1e-5)", "ValueError",
     r"input must be a C-contiguous float32 array of 8 elements", None),
    ("R.layer_norm_forward weight (4,)", "R.layer_norm_forward(xl, 2, 5, w4, None, 1e-5)", "ValueError", r"weight must be", None),
    ("R.layer_norm_forward bias float64", "R.layer_norm_forward(xl, 2, 5, None, np.ones(5), 1e-5)", "ValueError", r"bias must be", None),
    ("R.layer_norm_forward int64", "R.layer_norm_forward(xl.astype(np.int64), 2, 5, None, None, 1e-5)", "TypeError",
     r"unsupported dtype int64", None),
    ("R.layer_norm_forward None", "R.layer_norm_forward(None, 2, 5, None, None, 1e-5)", "TypeError", r"must be a NumPy array|incorrect type", None),
    ("R.layer_norm_forward transposed", "R.layer_norm_forward(np.ones((5, 2), f32).T, 2, 5, None, None, 1e-5)", "ValueError",
     r"C-contiguous", None),
    ("R.layer_norm_forward negative", "R.layer_norm_forward(xl, -2, -5, None, None, 1e-5)", "ValueError", r"negative dimension", None),
    ("R.layer_norm_backward grad float64", "R.layer_norm_backward(xl.astype(np.float64), xl, 2, 5, m2, m2, None)", "ValueError",
     r"grad_output must be", None),
    ("R.layer_norm_backward mean float32", "R.layer_norm_backward(xl, xl, 2, 5, m2.astype(f32), m2, None)", "ValueError",
     r"mean must be", None),
    ("R.layer_norm_backward rstd (3,)", "R.layer_norm_backward(xl, xl, 2, 5, m2, np.ones(3), None)", "ValueError", r"rstd must be", None),
    ("R.layer_norm_backward weight (4,)", "R.layer_norm_backward(xl, xl, 2, 5, m2, m2, w4)", "ValueError", r"weight must be", None),
    ("R.layer_norm_backward mean None", "R.layer_norm_backward(xl, xl, 2, 5, None, m2, None)", _TYPE_OR_VALUE, r"\S", None),
    ("R.layer_norm_backward grad None", "R.layer_norm_backward(None, xl, 2, 5, m2, m2, None)", _TYPE_OR_VALUE, r"\S", None),
    # sizes whose product wraps around 2**64
    ("B.batch_norm_stats N*C*S overflow (cols)", "B.batch_norm_stats(e, 2**62, 4, 1)", _VALUE_OR_OVERFLOW, r"\S", None),
    ("B.batch_norm_stats N*C*S overflow (rows)", "B.batch_norm_stats(e, 1, 4, 2**62)", _VALUE_OR_OVERFLOW, r"\S", None),
    ("B.batch_norm_forward_train N*C*S overflow", "B.batch_norm_forward_train(e, 2**62, 4, 1, None, None, None, None, 0.1, 1e-5)",
     _VALUE_OR_OVERFLOW, r"\S", None),
    ("B.batch_norm_forward_eval N*C*S overflow", "B.batch_norm_forward_eval(e, 2**62, 4, 1, None, None, w4, w4, 1e-5)",
     _VALUE_OR_OVERFLOW, r"\S", None),
    ("B.batch_norm_elemt N*C*S overflow", "B.batch_norm_elemt(e, 2**62, 4, 1, e4, e4, None, None)", _VALUE_OR_OVERFLOW, r"\S", None),
    ("B.batch_norm_backward N*C*S overflow", "B.batch_norm_backward(e, e, 2**62, 4, 1, e4, e4, None, True)", _VALUE_OR_OVERFLOW, r"\S", None),
    ("R.layer_norm_forward M*D overflow", "R.layer_norm_forward(e, 4, 2**62, None, None, 1e-5)", _VALUE_OR_OVERFLOW, r"\S", None),
]

_KERNEL_RUNNER = r"""
import json, sys
cases = json.loads(sys.stdin.read())
for cid, code in cases:
    print("START " + json.dumps(cid), flush=True)
    try:
        eval(code)
        res = [cid, None, None]
    except BaseException as exc:
        res = [cid, type(exc).__name__, str(exc)]
    print("RESULT " + json.dumps(res), flush=True)
"""

_kernel_results = None


def _run_kernel_cases():
    """{id: ('raised', name, message) | ('returned',) | ('crashed', returncode, stderr)}.

    All cases run in one child process; when it dies, the case it was running is recorded
    as a crash and a new child goes on with the remaining ones."""
    global _kernel_results
    if _kernel_results is not None:
        return _kernel_results
    results = {}
    pending = [(c[0], c[1]) for c in KERNEL_CASES]
    script = _KERNEL_PRELUDE + _KERNEL_RUNNER
    while pending:
        proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", script],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = proc.communicate(json.dumps(pending), timeout=120)
        except subprocess.TimeoutExpired:   # a hang counts as a crash of the running case
            proc.kill()
            stdout, stderr = proc.communicate()
            stderr = "(hung: killed after 120 s)\n" + stderr
        started = None
        for line in stdout.splitlines():
            if line.startswith("START "):
                started = json.loads(line[6:])
            elif line.startswith("RESULT "):
                cid, name, msg = json.loads(line[7:])
                results[cid] = ("returned",) if name is None else ("raised", name, msg)
                started = None
        if started is not None:             # died inside this case
            results[started] = ("crashed", proc.returncode, stderr[-2000:])
        elif proc.returncode != 0 and len(results) < len(KERNEL_CASES):
            raise RuntimeError(f"kernel case runner failed: {stderr[-2000:]}")
        pending = [p for p in pending if p[0] not in results]
    _kernel_results = results
    return results


def _kernel_params():
    out = []
    for cid, code, exc, match, xfail in KERNEL_CASES:
        marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
        out.append(pytest.param(cid, exc, match, marks=marks, id=cid))
    return out


@pytest.mark.parametrize("cid, exc, match", _kernel_params())
def test_private_kernel_hostile_call(cid, exc, match):
    res = _run_kernel_cases()[cid]
    if res[0] == "crashed":
        pytest.fail(f"{cid}: the process died (return code {res[1]}):\n{res[2]}")
    assert res[0] == "raised", f"{cid}: returned instead of raising {exc}"
    allowed = (exc,) if isinstance(exc, str) else exc
    assert res[1] in allowed, f"{cid}: raised {res[1]}: {res[2]} (expected {exc})"
    assert re.search(match, res[2]), f"{cid}: message {res[2]!r} does not match {match!r}"


# =======================================================================================
# edge cases that must work (as torch does)
# =======================================================================================

BN_EMPTY = []
for cls, shape in [("BatchNorm1d", (4, 3)), ("BatchNorm1d", (4, 3, 5)), ("BatchNorm2d", (4, 3, 5, 6)),
                   ("BatchNorm3d", (4, 3, 2, 5, 6))]:
    for dim in range(len(shape)):
        if dim == 1:
            continue                        # C = 0: below
        s = list(shape)
        s[dim] = 0
        BN_EMPTY.append((cls, tuple(s)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cls, shape", BN_EMPTY, ids=[f"{c}-{s}" for c, s in BN_EMPTY])
def test_bn_empty_batch_works(cls, shape, training, dtype):
    C = shape[1]
    m = getattr(cnorm, cls)(C, dtype=dtype)
    # non-default running statistics first
    full = tuple(d if d else 2 for d in shape)
    m(np.random.default_rng(0).standard_normal(full).astype(dtype))
    rm, rv, nbt = m.running_mean.copy(), m.running_var.copy(), m.num_batches_tracked
    m.zero_grad()
    m.train(training)
    x = np.zeros(shape, dtype)
    y = m(x)
    assert y.shape == shape and y.dtype == dtype
    np.testing.assert_array_equal(m.running_mean, rm)
    np.testing.assert_array_equal(m.running_var, rv)
    assert m.num_batches_tracked == nbt + (1 if training else 0)
    dx = m.backward(np.zeros(shape, dtype))
    assert dx.shape == shape and dx.dtype == dtype
    np.testing.assert_array_equal(m.weight_grad, np.zeros(C, dtype))
    np.testing.assert_array_equal(m.bias_grad, np.zeros(C, dtype))
    assert m.weight_grad.dtype == dtype
    if torch is not None:
        tm = getattr(torch.nn, cls)(C, dtype=torch.float32 if dtype == np.float32 else torch.float64)
        tm.train(training)
        xt = torch.zeros(shape, dtype=tm.weight.dtype, requires_grad=True)
        yt = tm(xt)
        yt.sum().backward()
        assert tuple(yt.shape) == y.shape
        np.testing.assert_array_equal(tm.weight.grad.numpy(), m.weight_grad)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cls, shape", [("BatchNorm1d", (4, 0)), ("BatchNorm1d", (4, 0, 5)),
                                         ("BatchNorm2d", (4, 0, 5, 6)), ("BatchNorm3d", (4, 0, 2, 5, 6)),
                                         ("BatchNorm2d", (0, 0, 0, 0))])
def test_bn_zero_channels_works(cls, shape, training):
    m = getattr(cnorm, cls)(0).train(training)
    y = m(np.zeros(shape, f32))
    assert y.shape == shape
    dx = m.backward(np.zeros(shape, f32))
    assert dx.shape == shape
    assert m.weight_grad.shape == (0,) and m.running_mean.shape == (0,)
    assert m.num_batches_tracked == (1 if training else 0)
    assert m.state_dict()["weight"].shape == (0,)


@pytest.mark.parametrize("shape, ns", [((0, 5), (5,)), ((3, 0), (0,)), ((2, 0, 4), (4,)), ((2, 3, 0), (3, 0)),
                                       ((0,), (0,)), ((0, 0), (0, 0)), ((2, 0, 3), (0, 3))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_ln_empty_works(shape, ns, dtype):
    m = cnorm.LayerNorm(ns, dtype=dtype)
    y = m(np.zeros(shape, dtype))
    assert y.shape == shape and y.dtype == dtype
    dx = m.backward(np.zeros(shape, dtype))
    assert dx.shape == shape
    np.testing.assert_array_equal(m.weight_grad, np.zeros(ns, dtype))
    np.testing.assert_array_equal(m.bias_grad, np.zeros(ns, dtype))
    yf, mean, rstd = F.native_layer_norm(np.zeros(shape, dtype), ns, None, None, 1e-5)
    lead = shape[: len(shape) - len(ns)]
    assert yf.shape == shape and mean.shape == lead and rstd.shape == lead


@pytest.mark.parametrize("cls, shape", [("BatchNorm1d", (1, 3)), ("BatchNorm1d", (1, 3, 1)),
                                         ("BatchNorm2d", (1, 3, 1, 1)), ("BatchNorm3d", (1, 3, 1, 1, 1))])
def test_bn_one_value_per_channel_in_eval_works(cls, shape):
    rng = np.random.default_rng(3)
    m = getattr(cnorm, cls)(3).eval()
    m.running_mean[...] = rng.standard_normal(3)
    m.running_var[...] = rng.uniform(0.5, 2, 3)
    x = rng.standard_normal(shape).astype(f32)
    y = m(x)
    ref = slow.batch_norm_forward(x, m.weight, m.bias, m.running_mean, m.running_var, False, 0.1, 1e-5)[0]
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)
    dy = rng.standard_normal(shape).astype(f32)
    dx = m.backward(dy)
    np.testing.assert_allclose(dx, dy / np.sqrt(m.running_var.reshape((1, 3) + (1,) * (len(shape) - 2)) + 1e-5),
                               rtol=1e-6)
    assert m.num_batches_tracked == 0


def test_bn_eps_zero_in_eval_with_running_stats_works():
    m = cnorm.BatchNorm2d(3, eps=0.0).eval()
    y = m(np.ones((2, 3, 2, 2), f32))
    np.testing.assert_array_equal(y, np.ones((2, 3, 2, 2), f32))


def test_bad_backward_call_loses_nothing():
    """A rejected backward call keeps the saved forward: a correct one still works."""
    rng = np.random.default_rng(4)
    for make, shape in MODULES.values():
        m = make()
        x = rng.standard_normal(shape).astype(f32)
        dy = rng.standard_normal(shape).astype(f32)
        m(x)
        for bad in (np.ones(shape, np.float64), np.ones(shape[:-1], f32), [1.0], None):
            with pytest.raises((TypeError, ValueError)):
                m.backward(bad)
        assert m.weight_grad is None
        dx = m.backward(dy)
        ref = make()
        ref(x)
        np.testing.assert_array_equal(dx, ref.backward(dy))


def test_failed_forward_changes_no_state():
    """A forward that raises leaves running stats, num_batches_tracked and the saved input."""
    rng = np.random.default_rng(5)
    m = cnorm.BatchNorm2d(3)
    x = rng.standard_normal((4, 3, 5, 5)).astype(f32)
    m(x)
    state = {k: np.array(v, copy=True) for k, v in m.state_dict().items()}
    for bad in (np.ones((4, 4, 5, 5), f32), np.ones((1, 3, 1, 1), f32), np.ones((4, 3, 5, 5), np.int32),
                np.ones((4, 3, 5), f32), [1.0]):
        with pytest.raises((TypeError, ValueError)):
            m(bad)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)
    dx = m.backward(np.ones_like(x))           # still the gradient of the good forward
    assert dx.shape == x.shape


def test_load_state_dict_is_atomic_on_bad_values():
    m = cnorm.BatchNorm2d(3)
    sd = m.state_dict()
    sd["weight"] = np.full(3, 5.0, f32)
    sd["bias"] = np.array(["a", "b", "c"])
    with pytest.raises(Exception):
        m.load_state_dict(sd)
    np.testing.assert_array_equal(m.weight, np.ones(3, f32))


# -- every memory layout: must work and equal the contiguous result --------------------------

def _layouts(x, tmp_path):
    """name -> an array equal to x with another memory layout."""
    out = {}
    out["fortran"] = np.asfortranarray(x)
    big = np.zeros(x.shape[:-1] + (2 * x.shape[-1] + 1,), x.dtype)
    big[..., 1::2] = x
    out["strided"] = big[..., 1::2]
    out["negative"] = np.flip(np.flip(x, axis=0).copy(), axis=0)
    out["negative_last"] = np.flip(np.flip(x, axis=-1).copy(), axis=-1)
    ro = x.copy()
    ro.setflags(write=False)
    out["readonly"] = ro
    path = os.path.join(str(tmp_path), f"x_{x.dtype.name}_{x.ndim}.bin")
    mm = np.memmap(path, dtype=x.dtype, mode="w+", shape=x.shape)
    mm[...] = x
    mm.flush()
    del mm
    out["memmap_r"] = np.memmap(path, dtype=x.dtype, mode="r", shape=x.shape)
    out["memmap_c"] = np.memmap(path, dtype=x.dtype, mode="c", shape=x.shape)
    out["byteswapped"] = x.astype(x.dtype.newbyteorder(">"))
    buf = np.zeros(x.nbytes + 1, np.uint8)
    mis = buf[1:].view(x.dtype).reshape(x.shape)
    mis[...] = x
    out["misaligned"] = mis
    bs = x.astype(x.dtype.newbyteorder(">"))
    out["byteswapped_fortran"] = np.asfortranarray(bs)
    for name, a in out.items():
        np.testing.assert_array_equal(a, x, err_msg=name)
    return out


LAYOUT_MODULES = {
    "bn1d_NC": (lambda dt: cnorm.BatchNorm1d(5, dtype=dt), (9, 5)),
    "bn1d_NCL": (lambda dt: cnorm.BatchNorm1d(5, dtype=dt), (4, 5, 6)),
    "bn2d": (lambda dt: cnorm.BatchNorm2d(3, dtype=dt), (3, 3, 4, 5)),
    "bn3d": (lambda dt: cnorm.BatchNorm3d(3, dtype=dt), (2, 3, 2, 3, 4)),
    "ln": (lambda dt: cnorm.LayerNorm(6, dtype=dt), (4, 5, 6)),
    "ln_2d": (lambda dt: cnorm.LayerNorm((5, 6), dtype=dt), (4, 5, 6)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", list(LAYOUT_MODULES))
def test_every_layout_equals_contiguous(tmp_path, case, dtype):
    make, shape = LAYOUT_MODULES[case]
    rng = np.random.default_rng(len(case) * 31 + len(shape))
    x = (3.0 + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    (tmp_path / "x").mkdir()
    (tmp_path / "dy").mkdir()
    xs = _layouts(x, tmp_path / "x")
    dys = _layouts(dy, tmp_path / "dy")
    for training in (True, False):
        ref_m = make(dtype).train(training)
        y_ref = ref_m(x)
        dx_ref = ref_m.backward(dy)
        for name in xs:
            before = np.array(xs[name], copy=True)
            m = make(dtype).train(training)
            y = m(xs[name])
            dx = m.backward(dys[name])
            assert y.flags.c_contiguous and y.dtype == np.dtype(dtype), name
            np.testing.assert_array_equal(y, y_ref, err_msg=f"{name} forward")
            np.testing.assert_array_equal(dx, dx_ref, err_msg=f"{name} backward")
            np.testing.assert_array_equal(m.weight_grad, ref_m.weight_grad, err_msg=name)
            if hasattr(m, "running_mean"):
                np.testing.assert_array_equal(m.running_mean, ref_m.running_mean, err_msg=name)
                np.testing.assert_array_equal(m.running_var, ref_m.running_var, err_msg=name)
            np.testing.assert_array_equal(xs[name], before, err_msg=f"{name} input modified")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_functional_every_layout(tmp_path, dtype):
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((6, 4, 7)) - 2.0).astype(dtype)
    dy = rng.standard_normal((6, 4, 7)).astype(dtype)
    (tmp_path / "x").mkdir()
    (tmp_path / "dy").mkdir()
    xs = _layouts(x, tmp_path / "x")
    dys = _layouts(dy, tmp_path / "dy")
    rm0 = rng.standard_normal(4).astype(dtype)
    rv0 = rng.uniform(0.5, 2, 4).astype(dtype)
    w = rng.uniform(0.5, 1.5, 4).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)

    def run(xx, gg):
        rm, rv = rm0.copy(), rv0.copy()
        y, mean, invstd = F.native_batch_norm(xx, w, b, rm, rv, True, 0.1, 1e-5)
        dx, dw, db = F.batch_norm_backward(gg, xx, w, mean, invstd, True)
        ye = F.batch_norm(xx, rm0, rv0, w, b, training=False)
        yl, ml, rl = F.native_layer_norm(xx, (4, 7), None, None, 1e-5)
        dxl = F.layer_norm_backward(gg, xx, (4, 7), ml, rl, None)[0]
        return [y, mean, invstd, dx, dw, db, rm, rv, ye, yl, ml, rl, dxl]

    ref = run(x, dy)
    for name in xs:
        for i, (a, r) in enumerate(zip(run(xs[name], dys[name]), ref)):
            np.testing.assert_array_equal(a, r, err_msg=f"{name} output {i}")


# =======================================================================================
# threads
# =======================================================================================

def _in_fresh_thread(fn, *args):
    """Run fn in a new Python thread (the same OpenMP defaults as the workers below)."""
    out = {}

    def target():
        out["result"] = fn(*args)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    return out["result"]


def _run_concurrently(fns, n_threads=4):
    """Call fns[i]() in thread i, all released together by a Barrier; return the results."""
    barrier = threading.Barrier(n_threads)
    results = [None] * n_threads
    errors = []

    def worker(i):
        try:
            barrier.wait()
            results[i] = fns[i]()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _assert_nested_equal(a, b, what):
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_nested_equal(u, v, f"{what}[{i}]")
    elif a is None:
        assert b is None, what
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=what)


@pytest.mark.parametrize("cap", [1, 2])
def test_same_module_from_four_threads(restore_threads, cap):
    """One eval-mode BatchNorm2d and one LayerNorm shared by 4 threads (forward is
    stateless there apart from the saved input): the results of serial calls."""
    cnorm.set_num_threads(cap)
    rng = np.random.default_rng(10)
    bn = cnorm.BatchNorm2d(8)
    bn(rng.standard_normal((8, 8, 20, 20)).astype(f32))
    bn.eval()
    ln = cnorm.LayerNorm(300)
    ln.weight[...] = rng.uniform(0.5, 1.5, 300)
    inputs = [[rng.standard_normal((16, 8, 24, 24)).astype(f32) for _ in range(5)] for _ in range(4)]
    ln_inputs = [[rng.standard_normal((256, 300)).astype(f32) for _ in range(5)] for _ in range(4)]

    def work(i):
        return ([bn(x) for x in inputs[i]] + [ln(x) for x in ln_inputs[i]]
                + [F.layer_norm(x, (300,), ln.weight, ln.bias) for x in ln_inputs[i]])

    serial = [_in_fresh_thread(work, i) for i in range(4)]
    for _ in range(3):
        concurrent = _run_concurrently([lambda i=i: work(i) for i in range(4)])
        _assert_nested_equal(concurrent, serial, "concurrent vs serial")


def _training_run(kind, seed):
    """A few training steps (forward + backward) on a fresh module; everything it produced."""
    rng = np.random.default_rng(seed)
    if kind == "bn2d":
        m, shape = cnorm.BatchNorm2d(6, momentum=None), (16, 6, 30, 30)
    elif kind == "bn1d":
        m, shape = cnorm.BatchNorm1d(700), (128, 700)
    elif kind == "bn3d":
        m, shape = cnorm.BatchNorm3d(4, dtype=np.float64), (4, 4, 8, 24, 24)
    else:
        m, shape = cnorm.LayerNorm((12, 60)), (128, 12, 60)
    out = []
    for step in range(4):
        x = (rng.standard_normal(shape) * (step + 1) + step).astype(m.dtype)
        y = m(x)
        dx = m.backward(rng.standard_normal(shape).astype(m.dtype))
        out += [y, dx]
    out += [m.weight_grad, m.bias_grad]
    if hasattr(m, "running_mean"):
        out += [m.running_mean, m.running_var, np.array(m.num_batches_tracked)]
    m.eval()
    out.append(m(np.ones(shape, m.dtype)))
    return out


@pytest.mark.parametrize("cap", [1, 2])
def test_different_modules_from_four_threads(restore_threads, cap):
    cnorm.set_num_threads(cap)
    kinds = ["bn2d", "bn1d", "bn3d", "ln"]
    serial = [_in_fresh_thread(_training_run, k, 100 + i) for i, k in enumerate(kinds)]
    for _ in range(2):
        concurrent = _run_concurrently([lambda i=i, k=k: _training_run(k, 100 + i) for i, k in enumerate(kinds)])
        _assert_nested_equal(concurrent, serial, "concurrent vs serial")
    # the same kind of module in every thread, different data
    serial = [_in_fresh_thread(_training_run, "bn2d", 200 + i) for i in range(4)]
    concurrent = _run_concurrently([lambda i=i: _training_run("bn2d", 200 + i) for i in range(4)])
    _assert_nested_equal(concurrent, serial, "bn2d x4")


@pytest.mark.parametrize("kind", ["bn2d", "bn1d", "bn3d", "ln"])
def test_one_vs_two_openmp_threads(restore_threads, kind):
    """Inputs big enough to be split: 1 and 2 threads agree to 1e-6 relative, and each
    thread count repeats its own bits exactly."""
    cnorm.set_num_threads(1)
    one = _training_run(kind, 300)
    cnorm.set_num_threads(2)
    two = _training_run(kind, 300)
    again = _training_run(kind, 300)
    _assert_nested_equal(again, two, "repeat with 2 threads")
    cnorm.set_num_threads(1)
    _assert_nested_equal(_training_run(kind, 300), one, "repeat with 1 thread")
    for i, (a, b) in enumerate(zip(one, two)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = max(float(np.abs(a).max(initial=0.0)), 1e-30)
        assert np.abs(a - b).max(initial=0.0) <= 1e-6 * scale, f"output {i}: 1 vs 2 threads"


# =======================================================================================
# pickle / deepcopy
# =======================================================================================

def _state(m):
    names = ["weight", "bias", "weight_grad", "bias_grad", "running_mean", "running_var",
             "num_batches_tracked", "training", "eps", "momentum", "dtype", "affine",
             "track_running_stats", "num_features", "normalized_shape", "elementwise_affine"]
    return {n: getattr(m, n) for n in names if hasattr(m, n)}


def _assert_same_state(a, b):
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        if isinstance(sa[k], np.ndarray):
            assert isinstance(sb[k], np.ndarray), k
            assert sa[k].dtype == sb[k].dtype, k
            np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
        else:
            assert sa[k] == sb[k], k
    assert repr(a) == repr(b)
    assert type(a) is type(b)


PICKLE_MODULES = [
    ("bn1d", lambda: cnorm.BatchNorm1d(4), (6, 4, 3)),
    ("bn2d_cumulative", lambda: cnorm.BatchNorm2d(4, momentum=None), (3, 4, 5, 5)),
    ("bn2d_no_affine", lambda: cnorm.BatchNorm2d(4, affine=False), (3, 4, 5, 5)),
    ("bn2d_no_bias", lambda: cnorm.BatchNorm2d(4, bias=False), (3, 4, 5, 5)),
    ("bn3d_untracked_f64", lambda: cnorm.BatchNorm3d(4, track_running_stats=False, dtype=np.float64),
     (2, 4, 2, 3, 3)),
    ("ln", lambda: cnorm.LayerNorm((3, 5), eps=1e-3), (2, 3, 5)),
    ("ln_no_affine", lambda: cnorm.LayerNorm(5, elementwise_affine=False), (4, 5)),
    ("ln_no_bias_f64", lambda: cnorm.LayerNorm(5, bias=False, dtype=np.float64), (4, 5)),
]


@pytest.mark.parametrize("how", ["pickle", "pickle0", "deepcopy", "copy"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name, make, shape", PICKLE_MODULES, ids=[p[0] for p in PICKLE_MODULES])
def test_pickle_and_deepcopy_round_trip(name, make, shape, training, how):
    rng = np.random.default_rng(len(name))
    m = make()
    for _ in range(2):                           # running stats, counters, accumulated grads
        x = rng.standard_normal(shape).astype(m.dtype)
        m(x)
        m.backward(rng.standard_normal(shape).astype(m.dtype))
    if m.weight is not None:
        m.weight[...] = rng.uniform(0.5, 1.5, m.weight.shape)
    m.train(training)
    if how == "pickle":
        c = pickle.loads(pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL))
    elif how == "pickle0":
        c = pickle.loads(pickle.dumps(m, protocol=0))
    elif how == "deepcopy":
        c = copy.deepcopy(m)
    else:
        c = copy.deepcopy(copy.copy(m))
    _assert_same_state(m, c)
    # the copy is independent and behaves the same
    x = rng.standard_normal(shape).astype(m.dtype)
    dy = rng.standard_normal(shape).astype(m.dtype)
    y1, y2 = m(x), c(x)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(m.backward(dy), c.backward(dy))
    _assert_same_state(m, c)
    if c.weight is not None:
        c.weight += 1
        assert not np.array_equal(c.weight, m.weight)
    if getattr(c, "running_mean", None) is not None:
        c.running_mean += 1
        assert not np.array_equal(c.running_mean, m.running_mean)


def test_pickled_module_has_no_saved_forward():
    """Like torch's autograd graph, the saved forward is not pickled: backward needs a new
    forward (and says so)."""
    m = cnorm.BatchNorm2d(3)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(f32)
    m(x)
    c = pickle.loads(pickle.dumps(m))
    with pytest.raises(RuntimeError, match="forward"):
        c.backward(np.ones_like(x))
    c(x)
    np.testing.assert_array_equal(c.backward(np.ones_like(x)), m.backward(np.ones_like(x)))


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_state_dict_round_trip_through_torch():
    rng = np.random.default_rng(12)
    m = cnorm.BatchNorm2d(4)
    for _ in range(3):
        m(rng.standard_normal((3, 4, 5, 5)).astype(f32))
    tm = torch.nn.BatchNorm2d(4)
    tm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in m.state_dict().items()})
    back = cnorm.BatchNorm2d(4)
    back.load_state_dict(tm.state_dict())
    _assert_same_state(m, back.train(m.training))
