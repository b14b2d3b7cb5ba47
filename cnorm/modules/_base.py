"""State handling shared by every cnorm module: parameters, buffers, gradients, train/eval,
state_dict in torch's key order, and the forward -> backward hand-off."""

from __future__ import annotations

import warnings
from collections import namedtuple
from typing import Any, Dict, List, Mapping, NoReturn, Optional, Tuple

import numpy as np

from .._validate import check_array, check_assigned, check_dtype, check_grad, int64_count

_ComplexWarning = getattr(np, "exceptions", np).ComplexWarning  # np.exceptions: NumPy >= 1.25

# the arrays a module hands to the kernels as they are: checked when assigned
_CHECKED_ON_ASSIGNMENT = frozenset(("weight", "bias", "running_mean", "running_var"))

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _to_numpy(value) -> np.ndarray:
    """A NumPy view of an array or a torch tensor (torch is never imported here)."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _stage(key: str, current, value) -> Tuple[Any, str]:
    """(``value`` converted for ``key``, "") or (None, the problem in torch's wording)."""
    try:
        value = _to_numpy(value)
    except Exception as exc:  # a ragged list, an object NumPy cannot take, ...
        return None, f"could not convert {key} to an array: {exc}"
    if key == "num_batches_tracked":
        if value.shape != ():
            return None, (
                f"size mismatch for {key}: copying a param with shape {value.shape} "
                "from checkpoint, the shape in current model is ()."
            )
        count = int64_count(value.item())
        if count is None:
            return None, (
                f'While copying the parameter named "{key}", expected a finite '
                f"integer representable in int64, got {value.item()!r}."
            )
        return count, ""
    if value.shape != current.shape:
        return None, (
            f"size mismatch for {key}: copying a param with shape {value.shape} from "
            f"checkpoint, the shape in current model is {current.shape}."
        )
    if not current.flags.writeable:
        return None, f"{key} is read-only in the current model."
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", _ComplexWarning)
            return np.asarray(value, dtype=current.dtype), ""
    except (TypeError, ValueError, _ComplexWarning) as exc:
        return None, f"could not convert {key} to {current.dtype}: {exc}"


class Module:
    """Base of the cnorm modules (the role of ``torch.nn.Module`` for NumPy arrays).

    Subclasses list their state in ``_param_names`` (trainable, with a ``<name>_grad``)
    and ``_buffer_names``; a name whose attribute is None is absent, as in torch.
    ``num_batches_tracked`` is kept as a Python int and exported as a 0-d int64 array.
    Assigning a parameter or running buffer (``m.weight = a``) checks it at once: None or
    a C-contiguous array of the module's dtype and of ``_param_shape`` (set by the
    subclass's constructor before its parameters).
    """

    _param_names: Tuple[str, ...] = ()
    _buffer_names: Tuple[str, ...] = ()
    # the parameters and gradients of the subclasses (bias and bias_grad: those that have one)
    weight: Optional[np.ndarray]
    weight_grad: Optional[np.ndarray]
    bias: Optional[np.ndarray]
    bias_grad: Optional[np.ndarray]

    def __init__(self, dtype=np.float32) -> None:
        self.dtype = check_dtype(dtype)
        self.training = True
        self._saved: Optional[tuple] = None  # what backward() needs from the last forward()
        self._forward_seen = False
        for name in self._param_names:
            setattr(self, name + "_grad", None)

    def __setattr__(self, name: str, value) -> None:
        # reads stay plain attribute reads; only these four names pay for a check
        if name in _CHECKED_ON_ASSIGNMENT and (name in self._param_names or name in self._buffer_names):
            shape = self.__dict__.get("_param_shape")
            if shape is not None:
                value = check_assigned(value, name, shape, self.dtype)
        object.__setattr__(self, name, value)

    def __call__(self, input: np.ndarray) -> np.ndarray:
        """``self.forward(input)``, as torch modules are called."""
        return self.forward(input)

    def forward(self, input: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """Gradient w.r.t. the input of the latest forward, with the statistics it used;
        accumulates the gradients of the parameters present (``weight_grad``, ...)."""
        saved, dy = self._saved_and_grad(grad_output)
        dx, grad_weight, grad_bias = self._backward(dy, saved)
        self._accumulate(grad_weight, grad_bias)
        return dx

    def _backward(self, dy: np.ndarray, saved: tuple) -> tuple:  # pragma: no cover - abstract
        """``(dx, grad_weight, grad_bias)`` (None without a bias) from the state forward saved."""
        raise NotImplementedError

    def _take_saved(self) -> tuple:
        """The state saved by the last forward(), released so backward runs once per forward."""
        saved = self._saved
        if saved is None:
            self._no_saved_state()
        self._saved = None
        return saved

    def _saved_and_grad(self, grad_output) -> Tuple[tuple, np.ndarray]:
        """(the saved state, ``grad_output`` checked against the saved input ``saved[0]``);
        the state is released only when the check passes (a bad call frees nothing)."""
        saved = self._saved
        if saved is None:
            self._no_saved_state()
        dy = check_grad(grad_output, saved[0])
        self._saved = None
        return saved, dy

    def _no_saved_state(self) -> NoReturn:
        if not self._forward_seen:
            raise RuntimeError("backward() called before forward()")
        raise RuntimeError(
            "Trying to backward through the graph a second time: call forward() again before backward()"
        )

    def _accumulate(self, grad_weight: np.ndarray, grad_bias: Optional[np.ndarray] = None) -> None:
        """``weight_grad += grad_weight`` and ``bias_grad += grad_bias`` (torch's .grad
        accumulation), for the parameters present."""
        if self.weight is not None:
            self.weight_grad = grad_weight if self.weight_grad is None else self.weight_grad + grad_weight
        if grad_bias is not None and self.bias is not None:
            self.bias_grad = grad_bias if self.bias_grad is None else self.bias_grad + grad_bias

    def _init_params(self, shape: Tuple[int, ...], affine: bool, bias: bool = True) -> None:
        """``_param_shape``, then ``weight`` (ones) and, where the module has one, ``bias``
        (zeros) of that shape; None where absent (no bias without ``affine``, as torch)."""
        self._param_shape = shape
        self.weight = np.ones(shape, self.dtype) if affine else None
        if "bias" in self._param_names:
            self.bias = np.zeros(shape, self.dtype) if affine and bias else None

    def _input(self, input) -> np.ndarray:
        """``input`` as a C-contiguous array of the module's dtype (TypeError otherwise)."""
        x = check_array(input)
        if x.dtype != self.dtype:
            raise TypeError(f"input dtype {x.dtype} does not match the module dtype {self.dtype}")
        return x

    def reset_parameters(self) -> None:
        """Weight to ones, bias to zeros (those present), in place."""
        weight, bias = getattr(self, "weight", None), getattr(self, "bias", None)
        if weight is not None:
            weight.fill(1)
        if bias is not None:
            bias.fill(0)

    def zero_grad(self) -> None:
        """Set every parameter gradient to None (torch's ``zero_grad(set_to_none=True)``)."""
        for name in self._param_names:
            setattr(self, name + "_grad", None)

    def train(self, mode: bool = True) -> "Module":
        """Set training mode (``mode=True``) or evaluation mode (``mode=False``) and return
        the module, as :meth:`torch.nn.Module.train`. In training mode the batch norms use
        and update the batch statistics; in eval mode they use the running ones."""
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.training = mode
        return self

    def eval(self) -> "Module":
        """Set evaluation mode (``train(False)``) and return the module."""
        return self.train(False)

    def parameters(self):
        """The present parameter arrays (for an optimizer loop)."""
        return [p for p in (getattr(self, n) for n in self._param_names) if p is not None]

    def named_parameters(self):
        """``(name, array)`` of the present parameters, in torch's order."""
        return [(n, getattr(self, n)) for n in self._param_names if getattr(self, n) is not None]

    def _state_items(self):
        for name in self._param_names + self._buffer_names:
            value = getattr(self, name)
            if value is not None:
                yield name, value

    def state_dict(self) -> Dict[str, np.ndarray]:
        """Copies of the parameters and buffers, keyed and ordered as in torch."""
        out = {}
        for name, value in self._state_items():
            out[name] = np.array(value, dtype=np.int64) if name == "num_batches_tracked" else value.copy()
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy parameters and buffers from ``state_dict`` (NumPy arrays or torch tensors).

        All or nothing: every value is checked and converted first; any problem (missing
        or unexpected keys when ``strict``, a shape mismatch, a value that does not convert
        to the parameter's dtype, a ``num_batches_tracked`` that is not a finite integer in
        the int64 range) raises torch's ``RuntimeError("Error(s) in loading state_dict for
        <Class>: ...")`` listing every problem, and the module is left unchanged.
        A missing ``num_batches_tracked`` keeps the current count, as in torch.
        """
        expected = dict(self._state_items())
        errors, ignored = self._checkpoint_errors(state_dict)
        missing = [k for k in expected if k not in state_dict and k != "num_batches_tracked"]
        unexpected = [k for k in state_dict if k not in expected and k not in ignored]
        if strict and missing:
            errors.append("Missing key(s) in state_dict: {}. ".format(", ".join(f'"{k}"' for k in missing)))
        if strict and unexpected:
            errors.append(
                "Unexpected key(s) in state_dict: {}. ".format(", ".join(f'"{k}"' for k in unexpected))
            )
        staged = {}
        for key, current in expected.items():
            if key not in state_dict:
                continue
            value, problem = _stage(key, current, state_dict[key])
            if problem:
                errors.append(problem)
            else:
                staged[key] = value
        if errors:
            raise RuntimeError(
                "Error(s) in loading state_dict for {}:\n\t{}".format(
                    type(self).__name__, "\n\t".join(errors)
                )
            )
        # nothing below can fail: same shapes, same dtypes, writable targets, an int count
        for key, value in staged.items():
            if key == "num_batches_tracked":
                self.num_batches_tracked = value
            else:
                np.copyto(getattr(self, key), value)
        return IncompatibleKeys(missing, unexpected)

    def _checkpoint_errors(self, state_dict: Mapping[str, Any]) -> Tuple[List[str], Tuple[str, ...]]:
        """(problems of the checkpoint as a whole that a subclass knows about, keys they
        cover, which are then not reported again as unexpected): none here."""
        return [], ()

    def __getstate__(self):
        """The state for pickle and copy, without the saved forward state (transient,
        like torch's autograd graph)."""
        state = self.__dict__.copy()
        state["_saved"] = None
        return state

    # the arguments repr() shows: str.format'ed with the attributes (and has_bias), as torch
    _repr_format = ""

    def extra_repr(self) -> str:
        """The arguments shown inside ``repr(module)``."""
        return self._repr_format.format(**vars(self), has_bias=getattr(self, "bias", None) is not None)

    def __repr__(self) -> str:
        """``ClassName(extra_repr())``, as torch modules print."""
        return f"{type(self).__name__}({self.extra_repr()})"
