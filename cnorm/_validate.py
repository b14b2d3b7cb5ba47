"""Argument checks of the Python layer, with torch's wording where torch has one.

Each check returns what the kernels take (C-contiguous, aligned, native byte order) and
copies only when it must. The functional layer runs them on every argument; the modules
run the input checks and trust their own state.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from typing import Any, Optional, Sequence, Tuple, Union, cast, overload

import numpy as np

__all__ = [
    "Array",
    "ShapeLike",
    "FLOAT32",
    "FLOAT64",
    "FLOAT16",
    "HALF_KINDS",
    "bfloat16",
    "bfloat16_available",
    "LAZY_BFLOAT16",
    "half_kind",
    "unsupported_dtype",
    "param_dtype",
    "check_dtype",
    "check_array",
    "check_grad",
    "check_same",
    "check_param",
    "batch_dims",
    "check_normalized_shape",
    "layer_dims",
    "rms_dims",
    "check_num_groups",
    "group_dims",
    "check_spatial",
    "torch_shape",
    "int64_count",
    "check_size",
    "check_real",
    "check_bool",
    "check_flag",
    "check_eval_eps",
    "refuse_masked",
    "check_assigned",
]

Array = np.ndarray
ShapeLike = Union[int, Sequence[int]]

FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)
FLOAT16 = np.dtype(np.float16)
# the half storage types and their kernel kind (the data are stored in half precision,
# every sum and coefficient is float32 or wider). bfloat16 is ml_dtypes' (the NumPy bfloat16
# of JAX and ONNX), an optional dependency that takes a second to import (its ufunc loops):
# it joins when first asked for, or with the first bfloat16 array (which exists only once
# its user has imported ml_dtypes). BFLOAT16 (module __getattr__): its dtype, or None.
HALF_KINDS = {FLOAT16: 1}
_SUPPORTED = [FLOAT32, FLOAT64, FLOAT16]
_BFLOAT16: list = []  # [] until looked up, then [its dtype or None]


def bfloat16() -> Optional[np.dtype]:
    """ml_dtypes' bfloat16 dtype (importing ml_dtypes the first time), or None without it."""
    if not _BFLOAT16:
        try:
            import ml_dtypes
        except ImportError:
            _BFLOAT16.append(None)
        else:
            dtype = np.dtype(ml_dtypes.bfloat16)
            HALF_KINDS[dtype] = 2
            _SUPPORTED.append(dtype)
            _BFLOAT16.append(dtype)
    return _BFLOAT16[0]


def half_kind(dtype: np.dtype) -> Optional[int]:
    """The kernels' half storage kind of ``dtype`` (1 float16, 2 bfloat16), or None."""
    kind = HALF_KINDS.get(dtype)
    if kind is None and not _BFLOAT16 and dtype.name == "bfloat16" and sys.modules.get("ml_dtypes"):
        bfloat16()
        kind = HALF_KINDS.get(dtype)
    return kind


def bfloat16_available() -> bool:
    """Whether bfloat16 arrays are supported (ml_dtypes is installed), without importing it."""
    if _BFLOAT16:
        return _BFLOAT16[0] is not None
    return importlib.util.find_spec("ml_dtypes") is not None


class _LazyBFloat16:
    """bfloat16 where NumPy takes a dtype (``a.view(LAZY_BFLOAT16)``: np.dtype reads its
    ``dtype``), importing ml_dtypes on first use: for the torch drop-in's bfloat16 tensors."""

    @property
    def dtype(self) -> np.dtype:
        dtype = bfloat16()
        if dtype is None:
            raise ImportError("bfloat16 needs the ml_dtypes package")
        return dtype


LAZY_BFLOAT16 = _LazyBFloat16()


def __getattr__(name: str):
    if name == "BFLOAT16":
        return bfloat16()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if sys.modules.get("ml_dtypes"):  # already imported: costs nothing
    bfloat16()
_TORCH_NAMES = {"float16": "Half", "bfloat16": "BFloat16", "float32": "Float", "float64": "Double"}


def unsupported_dtype(dtype: np.dtype) -> TypeError:
    if not bfloat16_available():
        return TypeError(
            f"unsupported dtype {dtype}: cnorm works on float32, float64 and float16 arrays "
            "(bfloat16 needs the ml_dtypes package)"
        )
    return TypeError(
        f"unsupported dtype {dtype}: cnorm works on float32, float64, float16 and bfloat16 arrays"
    )


def param_dtype(dtype: np.dtype, params, *, wording: str = "mixed") -> np.dtype:
    """The dtype the parameters (weight, bias, running statistics: None or arrays) of an
    input of ``dtype`` must all have. float32/float64 inputs: their own. A half input
    (float16, bfloat16): its own, or float32 for all of them (torch's mixed precision on the
    CPU: they stay float32 and are updated in float32); another mix gets torch's
    RuntimeError (``wording="strict"``: batch norm's, which names the first mismatch)."""
    if dtype is FLOAT32 or dtype is FLOAT64 or half_kind(dtype) is None:  # identity first
        return dtype
    found = [a.dtype for a in params if isinstance(a, np.ndarray)]
    if all(d == dtype for d in found):
        return dtype
    if all(d == FLOAT32 for d in found):
        return FLOAT32
    # torch's RuntimeError (a dtype mix torch refuses, not an unsupported dtype)
    if wording == "strict" and all(d in (dtype, FLOAT32) for d in found):
        raise RuntimeError(f"expected scalar type {_TORCH_NAMES[dtype.name]} but found Float")
    raise RuntimeError("mixed dtype (CPU): expect parameter to have scalar type of Float")


def check_dtype(dtype) -> np.dtype:
    """A module's ``dtype=`` argument as a supported NumPy dtype; a torch dtype
    (``torch.float64``) is taken by name, without importing torch."""
    if type(dtype).__module__ == "torch":
        name = str(dtype).rpartition(".")[2]  # "torch.float64" -> "float64"
        if name not in ("float32", "float64", "float16") and not (name == "bfloat16" and bfloat16()):
            raise TypeError(
                f"unsupported dtype {dtype}: cnorm works on float32, float64, float16 and "
                "bfloat16 arrays (pass torch.float32, np.float32, ...; bfloat16 needs ml_dtypes)"
            )
        dtype = bfloat16() if name == "bfloat16" else name
    dt = np.dtype(dtype)
    if dt not in _SUPPORTED and half_kind(dt) is None:
        raise unsupported_dtype(dt)
    return dt


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def int64_count(value) -> Optional[int]:
    """``value`` (a Python or NumPy scalar) as an int in the int64 range, or None.

    A ``num_batches_tracked`` read from a state dict: an integer, or an integral finite
    float (torch loads ``tensor(5.)``); not a bool, a string, None, NaN, 1.5 or 2**70.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            return None
        value = int(value)
    if type(value) is not int or not _INT64_MIN <= value <= _INT64_MAX:
        return None
    return value


# ------------------------------------------------------------------- scalar arguments
# torch's argument parser: an int is an int (not a bool, a float or a string), a float
# is any real number, a bool is a bool. Constructors check once; the functional layer
# checks on every call, with an identity or exact-type test deciding the common case.


def _is_int(value) -> bool:
    return (type(value) is int or isinstance(value, (int, np.integer))) and not isinstance(
        value, (bool, np.bool_)
    )


def _is_real(value) -> bool:
    return type(value) is float or isinstance(value, (int, float, np.integer, np.floating))


def _iterable(value) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True


def check_size(value, name: str) -> int:
    """A constructor's ``num_features`` / ``num_channels``: a non-negative int."""
    if not _is_int(value):
        raise TypeError(f"{name} must be a non-negative integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def check_real(value, name: str, *, optional: bool = False):
    """``eps`` / ``momentum``: a real number (or None when ``optional``), returned as is."""
    if _is_real(value) or (optional and value is None):
        return value
    raise TypeError(
        f"{name} must be a real number{' or None' if optional else ''}, got {type(value).__name__} {value!r}"
    )


def check_bool(value, name: str):
    """A functional flag (``training``, ``use_input_stats``): True or False, as torch's
    argument parser wants (not 1, not a string)."""
    if value is True or value is False or isinstance(value, np.bool_):
        return value
    raise TypeError(f"argument '{name}' must be bool, not {type(value).__name__}")


def check_flag(value, name: str) -> bool:
    """A constructor flag (``affine``, ``bias``, ...): a bool, a NumPy bool or 0/1 (what
    torch's truth-value use of it means clearly); a string such as "False" is refused."""
    if value is True or value is False:
        return value
    if isinstance(value, np.bool_) or (_is_int(value) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def check_eval_eps(eps) -> None:
    """torch's batch-norm check when the running statistics are used (NaN refused too)."""
    if not eps >= 0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")


def _masked(name: str) -> TypeError:
    return TypeError(
        f"{name} is a numpy.ma masked array: cnorm would ignore its mask; pass "
        "np.ma.filled(a, value) or a.data explicitly"
    )


def refuse_masked(a, name: str):
    """``a`` unless it is a masked array (whose mask the kernels would silently ignore)."""
    if type(a) is not np.ndarray and isinstance(a, np.ma.MaskedArray):
        raise _masked(name)
    return a


# ---------------------------------------------------------------------------------- arrays


def check_array(x, name: str = "input") -> Array:
    """x as a C-contiguous float32/float64 ndarray (a copy only when x is not one)."""
    if type(x) is not np.ndarray:  # the common case: one identity test
        if not isinstance(x, np.ndarray):
            raise TypeError(
                f"expected a NumPy array{'' if name == 'input' else ' for ' + name}, got {type(x).__name__}"
            )
        refuse_masked(x, name)
    dtype = x.dtype
    # identity tests first: they decide the common case without dtype.__eq__
    if dtype is not FLOAT32 and dtype is not FLOAT64 and dtype not in _SUPPORTED and half_kind(dtype) is None:
        if dtype.kind == "f" and dtype.itemsize in (2, 4, 8) and not dtype.isnative:
            return np.ascontiguousarray(x, dtype=dtype.newbyteorder("="))
        raise unsupported_dtype(dtype)
    flags = x.flags
    if not (flags.c_contiguous and flags.aligned):
        x = np.array(x, order="C", copy=True)  # ascontiguousarray keeps misalignment
    return x


def check_assigned(value, name: str, shape: Tuple[int, ...], dtype: np.dtype) -> Optional[Array]:
    """A parameter or running buffer assigned to a module (``m.weight = a``): None, or an
    ndarray of the module's dtype and the parameter's shape that the kernels can take as
    it is (C-contiguous, aligned); checked on assignment, as torch's Parameter assignment
    is, so that a bad value fails here and not at the next forward."""
    if value is None:
        return None
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"cannot assign {type(value).__name__} as {name}: a NumPy array (or None) is expected"
        )
    refuse_masked(value, name)
    if value.dtype != dtype:
        raise TypeError(
            f"cannot assign an array of dtype {value.dtype} as {name}: the module has dtype {dtype}"
        )
    if value.shape != shape:
        raise ValueError(f"cannot assign an array of shape {value.shape} as {name}: expected shape {shape}")
    flags = value.flags
    if not (flags.c_contiguous and flags.aligned):
        raise ValueError(f"cannot assign a non-contiguous array as {name}: pass np.ascontiguousarray(value)")
    return value


def check_grad(grad_output, x: Array) -> Array:
    """The gradient of an output shaped like the forward's input ``x``."""
    g = check_array(grad_output, "grad_output")
    if g.shape != x.shape:
        raise ValueError(f"grad_output has shape {g.shape} but the input of forward() had shape {x.shape}")
    if g.dtype != x.dtype:
        raise TypeError(f"grad_output dtype {g.dtype} does not match the input dtype {x.dtype}")
    return g


def check_same(a, x: Array, name: str, what: str) -> Array:
    """Another array of the same shape and dtype as ``x`` (grad_sum, output, residual)."""
    a = check_array(a, name)
    if a.shape != x.shape:
        raise ValueError(f"{name} has shape {a.shape} but {what} has shape {x.shape}")
    if a.dtype != x.dtype:
        raise TypeError(f"{name} dtype {a.dtype} does not match the input dtype {x.dtype}")
    return a


# ------------------------------------------------------------------------------ parameters


def _mismatch(wording: str, name: str, a: Array, shape: Tuple[int, ...], input_shape: Tuple[int, ...]) -> str:
    """The shape-mismatch message of each family, as torch words it."""
    if wording == "normalized_shape":  # layer norm / RMS norm weight and bias
        return (
            f"Expected {name} to be of same shape as normalized_shape, but got {name} "
            f"of shape {list(a.shape)} and normalized_shape = {list(shape)}"
        )
    if wording == "channels":  # group norm weight and bias
        return (
            f"Expected {name} to be a vector of size equal to the number of channels "
            f"in input, but got {name} of shape {torch_shape(a.shape)} and input of "
            f"shape {torch_shape(input_shape)}"
        )
    if wording == "stats":  # float64 statistics handed back to a backward
        return f"{name} must have shape {shape}, got {a.shape}"
    return f"{name} should contain {shape[0]} elements not {a.size} (shape {a.shape})"


@overload
def check_param(
    a: Any,
    name: str,
    shape: Tuple[int, ...],
    dtype: None,
    wording: str = ...,
    *,
    writable: bool = ...,
    input_shape: Tuple[int, ...] = ...,
) -> Array: ...
@overload
def check_param(
    a: Any,
    name: str,
    shape: Tuple[int, ...],
    dtype: np.dtype,
    wording: str = ...,
    *,
    writable: bool = ...,
    input_shape: Tuple[int, ...] = ...,
) -> Optional[Array]: ...
def check_param(
    a,
    name: str,
    shape: Tuple[int, ...],
    dtype: Optional[np.dtype],
    wording: str = "elements",
    *,
    writable: bool = False,
    input_shape: Tuple[int, ...] = (),
) -> Optional[Array]:
    """A parameter, running buffer or statistic, as the kernels take it.

    ``dtype`` given (weight, bias, running statistics): None, or an ndarray of exactly
    ``dtype`` and ``shape``. ``dtype=None`` (the float64 statistics a forward returned:
    mean, invstd, rstd, ...): anything array-like, converted to float64.
    Returned C-contiguous and aligned, a copy when it is not: the caller writes a
    ``writable`` one back with ``np.copyto``. ``wording`` picks the shape-mismatch message
    ("elements", "normalized_shape", "channels" with ``input_shape``, "stats").
    """
    if type(a) is not np.ndarray:
        refuse_masked(a, name)
    if dtype is None:
        a = np.ascontiguousarray(a, dtype=np.float64)
        wording = "stats"
    elif a is None:
        return None
    elif not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array or None, got {type(a).__name__}")
    elif a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype} but the input has dtype {dtype}")
    if a.shape != shape:
        raise ValueError(_mismatch(wording, name, a, shape, input_shape))
    if writable and not a.flags.writeable:
        raise ValueError(f"{name} is read-only, but it is updated in place when training")
    flags = a.flags
    if flags.c_contiguous and flags.aligned:
        return a
    return np.array(a, order="C", copy=True)


# ------------------------------------------------------------------------------------ dims


def torch_shape(shape: Sequence[int]) -> str:
    """A shape as torch's C++ messages print it: ``[2, 4, 3]``."""
    return "[" + ", ".join(map(str, shape)) + "]"


def batch_dims(x: Array) -> Tuple[int, int, int]:
    """(N, C, S) of a per-channel input (N, C, *spatial), S = prod(spatial)."""
    shape = x.shape
    if len(shape) < 2:
        raise ValueError(f"expected at least 2D input (got {len(shape)}D input)")
    n, c = shape[0], shape[1]
    s = 1
    for d in shape[2:]:
        s *= d
    return n, c, s


def check_normalized_shape(shape: ShapeLike) -> Tuple[int, ...]:
    """A ``normalized_shape`` argument as a tuple of non-negative ints (not floats,
    strings, bytes or bools, which torch refuses too)."""
    if type(shape) is tuple and all(type(d) is int for d in shape):
        dims = shape  # the common case, decided cheaply
    elif _is_int(shape):
        dims = (int(cast(int, shape)),)  # an int or np.integer, by _is_int
    elif isinstance(shape, (str, bytes, bytearray)) or not _iterable(shape):
        raise TypeError(f"normalized_shape must be an int or a sequence of ints, got {type(shape).__name__}")
    else:
        items = tuple(cast(Sequence[int], shape))  # iterable, by _iterable
        bad = [type(d).__name__ for d in items if not _is_int(d)]
        if bad:
            raise TypeError(
                "normalized_shape must be an int or a sequence of ints, "
                f"got a {type(shape).__name__} containing {bad[0]}"
            )
        dims = tuple(int(d) for d in items)
    if any(d < 0 for d in dims):
        raise ValueError(f"normalized_shape must not contain negative sizes, got {dims}")
    return dims


def layer_dims(x: Array, shape: Tuple[int, ...]) -> Tuple[int, int]:
    """(M rows, D values per row) of a layer-norm input (*, *normalized_shape)."""
    k = len(shape)
    if k == 0 or x.ndim < k or x.shape[x.ndim - k :] != shape:
        ns = ", ".join(map(str, shape))
        raise ValueError(
            f"Given normalized_shape=[{ns}], expected input with shape "
            f"[*, {ns}], but got input of size[{', '.join(map(str, x.shape))}]"
        )
    d = math.prod(shape)
    return (x.size // d if d else math.prod(x.shape[: x.ndim - k])), d


def rms_dims(x: Array, shape: Tuple[int, ...]) -> Tuple[int, int]:
    """(M, D) of an RMS-norm input, with torch's RMSNorm messages."""
    k = len(shape)
    if k == 0:
        raise ValueError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., "
            "containing at least one element, but got normalized_shape = []"
        )
    if x.ndim < k:
        raise ValueError(f"Input tensor must have at least {k} dimensions, but got {x.ndim}")
    if x.shape[x.ndim - k :] != shape:
        ns = ", ".join(map(str, shape))
        raise ValueError(
            f"Given normalized_shape=[{ns}], expected input with shape [*{ns}], "
            f"but got input of size{torch_shape(x.shape)}"
        )
    return math.prod(x.shape[: x.ndim - k]), math.prod(shape)


def check_num_groups(groups) -> int:
    """A ``num_groups`` argument: a positive int (not a bool)."""
    if not _is_int(groups):
        raise TypeError(
            f"group_norm(): argument 'num_groups' (position 2) must be int, not {type(groups).__name__}"
        )
    if groups <= 0:
        raise ValueError(f"Expected num groups to be greater than 0, got {int(groups)}")
    return int(groups)


def group_dims(x: Array, groups) -> Tuple[int, int, int, int]:
    """(N, G, Cg, S) of a group-norm input, with torch's checks in torch's order."""
    if x.ndim < 2:
        raise ValueError(f"Expected at least 2 dimensions for input tensor but received {x.ndim}")
    g = check_num_groups(groups)
    n, c, s = batch_dims(x)
    # torch's F.group_norm: _verify_batch_size([N * C // G, G, *spatial])
    if (n * c // g) * s == 1:
        size = [n * c // g, g] + list(x.shape[2:])
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")
    if c % g:
        raise ValueError(
            "Expected number of channels in input to be divisible by num_groups, "
            f"but got input of shape {torch_shape(x.shape)} and num_groups={g}"
        )
    return n, g, c // g, s


def check_spatial(shape: Sequence[int]) -> None:
    """torch's F.instance_norm check when the input's own statistics are used."""
    if math.prod(shape[2:]) == 1:
        raise ValueError(f"Expected more than 1 spatial element when training, got input size {tuple(shape)}")
