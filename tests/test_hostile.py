"""Hostile inputs: a table of hostile calls (description, callable, exception type, message
regex) through the modules and cnorm.functional -- every one must raise the documented
error, none may crash.  The private kernels get the same treatment in child processes:
test_hostile_kernels.py.
"""

import re
from typing import Callable, NamedTuple

import numpy as np
import pytest
from _internals import unsupported_dtype_message
from norms import ONE_VALUE_PER_CHANNEL

import cnorm
import cnorm.functional as F

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
    "F.native_batch_norm": (
        lambda x: F.native_batch_norm(x, None, None, None, None, True, 0.1, 1e-5),
        (4, 3, 5),
    ),
    "F.layer_norm": (lambda x: F.layer_norm(x, (5,)), (4, 3, 5)),
    "F.native_layer_norm": (lambda x: F.native_layer_norm(x, (5,), None, None, 1e-5), (4, 3, 5)),
    "F.batch_norm_stats": (lambda x: F.batch_norm_stats(x), (4, 3, 5)),
}


def _call_module(make, x):
    return lambda: make()(x)


def bn3_input_row(id, cls, shape, message, **kw):
    """A row: ``cnorm.<cls>(3, **kw)`` (in eval mode with ``eval=True``) called on float32
    ones of ``shape`` raises ValueError(message)."""
    eval_mode = kw.pop("eval", False)

    def make():
        m = getattr(cnorm, cls)(3, **kw)
        return m.eval() if eval_mode else m

    hostile(id, _call_module(make, np.ones(shape, f32)), ValueError, re.escape(message))


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
    hostile(
        f"BatchNorm1d ndim {len(shape)}",
        _call_module(lambda: cnorm.BatchNorm1d(3), np.ones(shape, f32)),
        ValueError,
        re.escape(f"expected 2D or 3D input (got {len(shape)}D input)"),
    )
for shape in [(), (3,), (4, 3), (4, 3, 5), (4, 3, 2, 5, 5), (4, 3, 1, 1, 1, 1)]:
    hostile(
        f"BatchNorm2d ndim {len(shape)}",
        _call_module(lambda: cnorm.BatchNorm2d(3), np.ones(shape, f32)),
        ValueError,
        re.escape(f"expected 4D input (got {len(shape)}D input)"),
    )
for shape in [(), (4, 3), (4, 3, 5), (4, 3, 5, 5), (4, 3, 1, 1, 1, 1)]:
    hostile(
        f"BatchNorm3d ndim {len(shape)}",
        _call_module(lambda: cnorm.BatchNorm3d(3), np.ones(shape, f32)),
        ValueError,
        re.escape(f"expected 5D input (got {len(shape)}D input)"),
    )
for shape in [(), (3,)]:
    hostile(
        f"F.batch_norm ndim {len(shape)}",
        _call_fn(lambda x: F.batch_norm(x, None, None, training=True), np.ones(shape, f32)),
        ValueError,
        re.escape(f"expected at least 2D input (got {len(shape)}D input)"),
    )

# -- wrong number of channels -----------------------------------------------------------
for cls, shape in [
    ("BatchNorm1d", (4, 4)),
    ("BatchNorm1d", (4, 2, 5)),
    ("BatchNorm2d", (2, 4, 5, 5)),
    ("BatchNorm2d", (2, 0, 5, 5)),
    ("BatchNorm3d", (2, 2, 2, 2, 2)),
]:
    msg = f"expected input with 3 channels (num_features), got input of shape {shape}"
    bn3_input_row(f"{cls}(3) input {shape}", cls, shape, msg)
hostile(
    "BatchNorm2d(0) input with 3 channels",
    _call_module(lambda: cnorm.BatchNorm2d(0), np.ones((2, 3, 4, 4), f32)),
    ValueError,
    re.escape("expected input with 0 channels (num_features)"),
)

# -- wrong normalized_shape -------------------------------------------------------------
for ns, shape in [
    (5, (4, 6)),
    (5, (5, 4)),
    (5, ()),
    (5, (0,)),
    ((4, 5), (2, 5, 4)),
    ((4, 5), (5,)),
    ((4, 5), (4, 5, 1)),
    ((2, 3), (6,)),
]:
    nss = ", ".join(map(str, (ns,) if isinstance(ns, int) else ns))
    hostile(
        f"LayerNorm({ns}) input {shape}",
        _call_module(lambda ns=ns: cnorm.LayerNorm(ns), np.ones(shape, f32)),
        ValueError,
        re.escape(
            f"Given normalized_shape=[{nss}], expected input with shape [*, {nss}], "
            f"but got input of size[{', '.join(map(str, shape))}]"
        ),
    )
    hostile(
        f"F.layer_norm({ns}) input {shape}",
        _call_fn(lambda x, ns=ns: F.layer_norm(x, ns), np.ones(shape, f32)),
        ValueError,
        re.escape(f"Given normalized_shape=[{nss}]"),
    )

# -- every unsupported dtype, at every entry point ---------------------------------------
BAD_DTYPES = [
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.bool_,
    np.complex64,
    np.complex128,
    np.object_,
    "U3",
    "S3",
    "datetime64[s]",
    "timedelta64[ms]",
    [("a", "f4")],
    "V4",
    np.longdouble,
]


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
        hostile(
            f"{name} dtype {dname}",
            _call_fn(fn, _bad_array(dtype, shape)),
            TypeError,
            "^" + re.escape(unsupported_dtype_message(dtype)) + "$",
        )

# -- dtype different from the module's ---------------------------------------------------
for name, (make, shape) in MODULES.items():
    hostile(
        f"{name} float32 module, float64 input",
        _call_module(make, np.ones(shape, np.float64)),
        TypeError,
        re.escape("input dtype float64 does not match the module dtype float32"),
    )
    hostile(
        f"{name} float32 module, '>f8' input",
        _call_module(make, np.ones(shape, ">f8")),
        TypeError,
        re.escape("input dtype float64 does not match the module dtype float32"),
    )
hostile(
    "BatchNorm2d float64 module, float32 input",
    _call_module(lambda: cnorm.BatchNorm2d(3, dtype=np.float64), np.ones((2, 3, 4, 4), f32)),
    TypeError,
    re.escape("input dtype float32 does not match the module dtype float64"),
)
hostile(
    "LayerNorm float64 module, float32 input",
    _call_module(lambda: cnorm.LayerNorm(4, dtype=np.float64), np.ones((2, 4), f32)),
    TypeError,
    re.escape("input dtype float32 does not match the module dtype float64"),
)

# -- not an array --------------------------------------------------------------------------
NOT_ARRAYS = [
    ("list", [[1.0, 2.0, 3.0]] * 2),
    ("NoneType", None),
    ("tuple", ((1.0, 2.0, 3.0),) * 2),
    ("int", 3),
    ("float", 1.5),
    ("float32", np.float32(1.0)),
    ("dict", {"x": 1}),
    ("str", "abc"),
    ("bytes", b"abc"),
    ("memoryview", memoryview(b"abcd")),
]
if torch is not None:
    NOT_ARRAYS.append(("Tensor", torch.ones(2, 3, 4)))
for tname, obj in NOT_ARRAYS:
    for name, fn in _targets():
        hostile(
            f"{name} input {tname}",
            _call_fn(fn, obj),
            TypeError,
            re.escape(f"expected a NumPy array, got {tname}"),
        )

# -- one value per channel in training -------------------------------------------------------
for cls, shape in ONE_VALUE_PER_CHANNEL:
    msg = f"Expected more than 1 value per channel when training, got input size {shape}"
    bn3_input_row(f"{cls} training with input {shape}", cls, shape, msg)
    msg = "Expected more than 1 value per channel when training"
    bn3_input_row(
        f"{cls} eval without running stats, input {shape}",
        cls,
        shape,
        msg,
        track_running_stats=False,
        eval=True,
    )
hostile(
    "F.batch_norm training with input (1, 3)",
    _call_fn(lambda x: F.batch_norm(x, None, None, training=True), np.ones((1, 3), f32)),
    ValueError,
    re.escape("Expected more than 1 value per channel when training, got input size (1, 3)"),
)

# -- eps <= 0 when batch statistics are used --------------------------------------------------
for eps in [0.0, -1e-5, -1.0, float("nan"), -float("inf")]:
    hostile(
        f"BatchNorm2d eps={eps} training",
        _call_module(lambda eps=eps: cnorm.BatchNorm2d(3, eps=eps), np.ones((2, 3, 2, 2), f32)),
        ValueError,
        re.escape(f"batch_norm eps must be positive during training, but got {eps}"),
    )
    hostile(
        f"F.batch_norm eps={eps} training",
        _call_fn(
            lambda x, eps=eps: F.batch_norm(x, None, None, training=True, eps=eps), np.ones((2, 3), f32)
        ),
        ValueError,
        re.escape(f"batch_norm eps must be positive during training, but got {eps}"),
    )
hostile(
    "BatchNorm1d eps=0 eval without running stats",
    _call_module(
        lambda: cnorm.BatchNorm1d(3, eps=0.0, track_running_stats=False).eval(), np.ones((2, 3), f32)
    ),
    ValueError,
    re.escape("batch_norm eps must be positive during training, but got 0.0"),
)

# -- constructor arguments ---------------------------------------------------------------------
for cls in ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]:
    for nf in [-1, -5, 2.5, "3", None, True]:
        # torch: a TypeError for a non-int (issue 14), a ValueError for a negative int
        hostile(
            f"{cls}(num_features={nf!r})",
            lambda cls=cls, nf=nf: getattr(cnorm, cls)(nf),
            ValueError if isinstance(nf, int) and not isinstance(nf, bool) else TypeError,
            re.escape(f"num_features must be a non-negative integer, got {nf!r}"),
        )
    for dt in [np.int32, np.complex64, "U3"]:
        hostile(
            f"{cls}(3, dtype={np.dtype(dt).name})",
            lambda cls=cls, dt=dt: getattr(cnorm, cls)(3, dtype=dt),
            TypeError,
            r"^unsupported dtype",
        )
for ns in [(3, -2), (-4,), [-1]]:
    hostile(
        f"LayerNorm({ns})",
        lambda ns=ns: cnorm.LayerNorm(ns),
        ValueError,
        re.escape("normalized_shape must not contain negative sizes"),
    )
# an int normalized_shape skips that check (see test_layer_norm_negative_int_shape_message)
hostile("LayerNorm(-1)", lambda: cnorm.LayerNorm(-1), ValueError, "negative")
for ns, tname in [(None, "NoneType"), (2.5, "float"), (object(), "object")]:
    hostile(
        f"LayerNorm({tname})",
        lambda ns=ns: cnorm.LayerNorm(ns),
        TypeError,
        re.escape(f"normalized_shape must be an int or a sequence of ints, got {tname}"),
    )
hostile(
    "LayerNorm(4, dtype=int64)", lambda: cnorm.LayerNorm(4, dtype=np.int64), TypeError, r"^unsupported dtype"
)
hostile(
    "train('yes')",
    lambda: cnorm.BatchNorm2d(3).train("yes"),
    ValueError,
    re.escape("training mode is expected to be boolean"),
)
hostile(
    "set_num_threads(0)",
    lambda: cnorm.set_num_threads(0),
    ValueError,
    re.escape("the number of threads must be at least 1, got 0"),
)
hostile(
    "set_num_threads(-3)",
    lambda: cnorm.set_num_threads(-3),
    ValueError,
    re.escape("the number of threads must be at least 1, got -3"),
)
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
    hostile(
        f"{name} backward before forward",
        lambda name=name: _backward_before_forward(name),
        RuntimeError,
        re.escape("backward() called before forward()"),
    )
    hostile(
        f"{name} backward twice",
        lambda name=name: _backward_twice(name),
        RuntimeError,
        re.escape(
            "Trying to backward through the graph a second time: call forward() again before backward()"
        ),
    )
    shape = MODULES[name][1]
    hostile(
        f"{name} backward wrong shape",
        lambda name=name: _backward_with(name, lambda s: np.ones(s[:-1] + (s[-1] + 1,), f32)),
        ValueError,
        re.escape(
            f"grad_output has shape {shape[:-1] + (shape[-1] + 1,)} "
            f"but the input of forward() had shape {shape}"
        ),
    )
    hostile(
        f"{name} backward transposed shape",
        lambda name=name: _backward_with(name, lambda s: np.ones(s[::-1], f32)),
        ValueError,
        re.escape(f"grad_output has shape {shape[::-1]}"),
    )
    hostile(
        f"{name} backward flat",
        lambda name=name: _backward_with(name, lambda s: np.ones(int(np.prod(s)), f32)),
        ValueError,
        r"^grad_output has shape",
    )
    hostile(
        f"{name} backward float64 grad",
        lambda name=name: _backward_with(name, lambda s: np.ones(s, np.float64)),
        TypeError,
        re.escape("grad_output dtype float64 does not match the input dtype float32"),
    )
    hostile(
        f"{name} backward int grad",
        lambda name=name: _backward_with(name, lambda s: np.ones(s, np.int32)),
        TypeError,
        r"^unsupported dtype int32",
    )
    hostile(
        f"{name} backward list",
        lambda name=name: _backward_with(name, lambda s: np.ones(s).tolist()),
        TypeError,
        re.escape("expected a NumPy array for grad_output, got list"),
    )
    hostile(
        f"{name} backward None",
        lambda name=name: _backward_with(name, lambda s: None),
        TypeError,
        re.escape("expected a NumPy array for grad_output, got NoneType"),
    )


# -- load_state_dict ---------------------------------------------------------------------------
def _load(make, mutate, strict=True):
    m = make()
    sd = m.state_dict()
    mutate(sd)
    return m.load_state_dict(sd, strict=strict)


_BN = lambda: cnorm.BatchNorm2d(3)
_LN = lambda: cnorm.LayerNorm((2, 3))
_ERR = "Error(s) in loading state_dict for "
for short, make, key in [("BN", _BN, "bias"), ("LN", _LN, "weight")]:
    hostile(
        f"{short} load_state_dict missing {key}",
        lambda make=make, key=key: _load(make, lambda d: d.pop(key)),
        RuntimeError,
        re.escape(_ERR + f'{type(make()).__name__}:\n\tMissing key(s) in state_dict: "{key}".'),
    )
hostile(
    "BN load_state_dict missing two",
    lambda: _load(_BN, lambda d: (d.pop("bias"), d.pop("running_mean"))),
    RuntimeError,
    re.escape(_ERR + 'BatchNorm2d:\n\tMissing key(s) in state_dict: "bias", "running_mean".'),
)
hostile(
    "BN load_state_dict empty",
    lambda: _load(_BN, lambda d: d.clear()),
    RuntimeError,
    re.escape('Missing key(s) in state_dict: "weight", "bias", "running_mean", "running_var".'),
)
hostile(
    "BN load_state_dict unexpected",
    lambda: _load(_BN, lambda d: d.update(foo=np.ones(3))),
    RuntimeError,
    re.escape(_ERR + 'BatchNorm2d:\n\tUnexpected key(s) in state_dict: "foo".'),
)
hostile(
    "BN load_state_dict weight (4,)",
    lambda: _load(_BN, lambda d: d.update(weight=np.ones(4, f32))),
    RuntimeError,
    re.escape(
        "size mismatch for weight: copying a param with shape (4,) from checkpoint, "
        "the shape in current model is (3,)."
    ),
)
hostile(
    "BN load_state_dict running_var (3, 1)",
    lambda: _load(_BN, lambda d: d.update(running_var=np.ones((3, 1)))),
    RuntimeError,
    re.escape("size mismatch for running_var: copying a param with shape (3, 1)"),
)
hostile(
    "BN load_state_dict num_batches_tracked (1,)",
    lambda: _load(_BN, lambda d: d.update(num_batches_tracked=np.ones(1, np.int64))),
    RuntimeError,
    re.escape(
        "size mismatch for num_batches_tracked: copying a param with shape (1,) from checkpoint, "
        "the shape in current model is ()."
    ),
)
hostile(
    "BN load_state_dict scalar weight",
    lambda: _load(_BN, lambda d: d.update(weight=np.float32(1))),
    RuntimeError,
    re.escape("size mismatch for weight: copying a param with shape ()"),
)
hostile(
    "BN load_state_dict shape error even when not strict",
    lambda: _load(_BN, lambda d: d.update(bias=np.ones(2, f32)), strict=False),
    RuntimeError,
    re.escape("size mismatch for bias"),
)
hostile(
    "BN(affine=False) load_state_dict with weight",
    lambda: _load(lambda: cnorm.BatchNorm2d(3, affine=False), lambda d: d.update(weight=np.ones(3, f32))),
    RuntimeError,
    re.escape('Unexpected key(s) in state_dict: "weight".'),
)
hostile(
    "BN(track_running_stats=False) load_state_dict with running_mean",
    lambda: _load(
        lambda: cnorm.BatchNorm2d(3, track_running_stats=False),
        lambda d: d.update(running_mean=np.ones(3, f32)),
    ),
    RuntimeError,
    re.escape('Unexpected key(s) in state_dict: "running_mean".'),
)
hostile(
    "LN load_state_dict running_mean",
    lambda: _load(_LN, lambda d: d.update(running_mean=np.ones(3))),
    RuntimeError,
    re.escape('Unexpected key(s) in state_dict: "running_mean".'),
)
hostile(
    "LN load_state_dict flat weight",
    lambda: _load(_LN, lambda d: d.update(weight=np.ones(6, f32))),
    RuntimeError,
    re.escape(
        "size mismatch for weight: copying a param with shape (6,) from checkpoint, "
        "the shape in current model is (2, 3)."
    ),
)

# -- functional parameter checks -----------------------------------------------------------------
_X = np.ones((2, 3, 4), f32)
_R3 = lambda: np.ones(3, f32)
_RO = np.ones(3, f32)
_RO.setflags(write=False)
hostile(
    "F.batch_norm weight (4,)",
    lambda: F.batch_norm(_X, None, None, np.ones(4, f32), training=True),
    ValueError,
    re.escape("weight should contain 3 elements not 4 (shape (4,))"),
)
hostile(
    "F.batch_norm bias (3, 1)",
    lambda: F.batch_norm(_X, None, None, None, np.ones((3, 1), f32), training=True),
    ValueError,
    re.escape("bias should contain 3 elements not 3 (shape (3, 1))"),
)
hostile(
    "F.batch_norm weight float64",
    lambda: F.batch_norm(_X, None, None, np.ones(3), training=True),
    TypeError,
    re.escape("weight has dtype float64 but the input has dtype float32"),
)
hostile(
    "F.batch_norm weight list",
    lambda: F.batch_norm(_X, None, None, [1.0, 1.0, 1.0], training=True),
    TypeError,
    re.escape("weight must be a NumPy array or None, got list"),
)
hostile(
    "F.batch_norm running_mean list",
    lambda: F.batch_norm(_X, [0.0] * 3, _R3(), training=True),
    TypeError,
    re.escape("running_mean must be a NumPy array or None, got list"),
)
hostile(
    "F.batch_norm running_var int",
    lambda: F.batch_norm(_X, _R3(), np.ones(3, np.int32), training=True),
    TypeError,
    re.escape("running_var has dtype int32 but the input has dtype float32"),
)
hostile(
    "F.batch_norm read-only running_mean",
    lambda: F.batch_norm(_X, _RO, _R3(), training=True),
    ValueError,
    re.escape("running_mean is read-only, but it is updated in place when training"),
)
hostile(
    "F.batch_norm eval without running stats",
    lambda: F.batch_norm(_X, None, None, training=False),
    ValueError,
    re.escape("running_mean and running_var must be given when training=False"),
)
hostile(
    "F.batch_norm eval with running_mean only",
    lambda: F.batch_norm(_X, _R3(), None, training=False),
    ValueError,
    re.escape("running_mean and running_var must be given when training=False"),
)
hostile(
    "F.batch_norm_backward save_mean (4,)",
    lambda: F.batch_norm_backward(_X, _X, None, np.ones(4), np.ones(3), True),
    ValueError,
    re.escape("save_mean must have shape (3,), got (4,)"),
)
hostile(
    "F.batch_norm_backward grad shape",
    lambda: F.batch_norm_backward(np.ones((2, 3), f32), _X, None, np.ones(3), np.ones(3), True),
    ValueError,
    re.escape("grad_output has shape (2, 3) but the input of forward() had shape (2, 3, 4)"),
)
hostile(
    "F.batch_norm_backward_elemt count 0",
    lambda: F.batch_norm_backward_elemt(_X, _X, np.ones(3), np.ones(3), None, np.ones(3), np.ones(3), 0),
    ValueError,
    re.escape("count must be positive, got 0"),
)
hostile(
    "F.layer_norm weight (4,)",
    lambda: F.layer_norm(_X, (4,), np.ones(3, f32)),
    ValueError,
    re.escape(
        "Expected weight to be of same shape as normalized_shape, but got weight of shape [3] "
        "and normalized_shape = [4]"
    ),
)
hostile(
    "F.layer_norm bias float64",
    lambda: F.layer_norm(_X, (4,), None, np.ones(4)),
    TypeError,
    re.escape("bias has dtype float64 but the input has dtype float32"),
)
hostile(
    "F.layer_norm weight tuple",
    lambda: F.layer_norm(_X, (4,), (1.0,) * 4),
    TypeError,
    re.escape("weight must be a NumPy array or None, got tuple"),
)
hostile(
    "F.layer_norm_backward rstd (3,)",
    lambda: F.layer_norm_backward(_X, _X, (4,), np.ones((2, 3)), np.ones(3), None),
    ValueError,
    re.escape("rstd must have shape (6,), got (3,)"),
)


def test_layer_norm_negative_int_shape_message():
    with pytest.raises(ValueError, match=re.escape("normalized_shape must not contain negative sizes")):
        cnorm.LayerNorm(-1)


def test_hostile_table_size():
    """The number of hostile cases (reported); a floor so that none gets lost."""
    print(f"\n{len(HOSTILE)} hostile cases in the module/functional table")
    assert len(HOSTILE) >= 400
    assert len({c.desc for c in HOSTILE}) == len(HOSTILE), "duplicate descriptions"


@pytest.mark.parametrize("case", HOSTILE, ids=[c.desc for c in HOSTILE])
def test_hostile_input(case):
    with pytest.raises(case.exc, match=case.match):
        case.fn()
