"""Drop-in torch.nn norm layers whose CPU float32/float64 forward and backward run the
cnorm kernels (see :mod:`cnorm.torch` for the user documentation)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Dict, Iterator, Optional, Type, cast

import torch
from torch import nn

from .._ops import momentum_factor
from ._autograd import batch_norm, layer_norm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "LayerNorm",
    "convert",
    "torch_fallback",
    "cnorm_batch_norm",
    "FLOATS",
]

FLOATS = (torch.float32, torch.float64)
# exact types whose .numpy() is a plain view of the data (subclasses with
# __torch_function__ / __torch_dispatch__, e.g. FakeTensor or DTensor, go to torch)
_PLAIN = (torch.Tensor, nn.Parameter)
_STRIDED = torch.strided
_MISSING = object()  # a parameter not in Module._parameters (e.g. parametrized)


class _Switch(threading.local):
    enabled = True


_switch = _Switch()


@contextmanager
def torch_fallback() -> Iterator[None]:
    """Inside this context (in this thread) every ``cnorm.torch`` layer runs torch's own
    implementation, e.g. to take a double backward (gradient penalties, Hessian-vector
    products), which the cnorm autograd functions do not support."""
    previous = _switch.enabled
    _switch.enabled = False
    try:
        yield
    finally:
        _switch.enabled = previous


_is_scripting = torch.jit.is_scripting
_is_tracing = torch.jit.is_tracing
_is_compiling = torch.compiler.is_compiling
_is_autocast = torch.is_autocast_enabled
_functorch_active = torch._C._are_functorch_transforms_active


def _input_ok(input) -> bool:
    """A plain, dense, C-contiguous CPU float32/float64 tensor, outside of autocast,
    torch.jit, torch.compile and torch.func transforms (all of which go to torch)."""
    return (
        type(input) in _PLAIN
        and input.dtype in FLOATS
        and input.is_cpu
        and input.layout == _STRIDED
        and input.is_contiguous()
        and not input.is_neg()
        and not _is_autocast("cpu")
        and not _is_scripting()
        and not _is_tracing()
        and not _is_compiling()
        and not _functorch_active()
    )


def _ok(t, dtype, shape) -> bool:
    """None, or a plain contiguous CPU tensor of ``dtype`` and ``shape``."""
    return t is None or (
        type(t) in _PLAIN
        and t.dtype == dtype
        and t.is_cpu
        and t.layout == _STRIDED
        and t.is_contiguous()
        and t.shape == shape
    )


# ---------------------------------------------------------------------------- batch norm


def cnorm_batch_norm(module, input) -> Optional[torch.Tensor]:
    """torch's ``_BatchNorm.forward`` on the cnorm kernels, or None (and no side effect)
    when the call is not one cnorm handles: the caller then runs torch's forward, which
    also raises torch's own errors for bad inputs."""
    if not (module.use_cnorm and _switch.enabled and _input_ok(input)):
        return None
    # straight from the registries (Module.__getattr__ is slow); a parametrized or
    # hooked weight is not in there: torch's forward handles those
    params = module._parameters
    buffers = module._buffers
    try:
        weight = params["weight"]
        bias = params["bias"]
        running_mean = buffers["running_mean"]
        running_var = buffers["running_var"]
        num_batches_tracked = buffers["num_batches_tracked"]
    except KeyError:
        return None
    training = module.training
    track = module.track_running_stats
    # as torch: the running buffers are passed only when they are updated or used
    rm = running_mean if not training or track else None
    rv = running_var if not training or track else None
    bn_training = training or (rm is None and rv is None)
    eps = module.eps
    dtype = input.dtype
    shape = input.shape
    if len(shape) < 2 or (rm is None) != (rv is None):
        return None
    c = shape[1:2]
    if not (_ok(weight, dtype, c) and _ok(bias, dtype, c) and _ok(rm, dtype, c) and _ok(rv, dtype, c)):
        return None
    if bn_training:
        if not eps > 0:
            return None  # torch raises 'eps must be positive'
        if training and input.numel() == c[0]:
            return None  # 1 value per channel: torch raises
    elif not eps >= 0:
        return None
    module._check_input_dim(input)

    # the rest of torch's _BatchNorm.forward
    nbt = num_batches_tracked if training and track else None
    if nbt is not None:
        nbt.add_(1)
    factor = momentum_factor(module.momentum, nbt)
    # NumPy views: cnorm updates the running buffers in place when training
    rm = None if rm is None else rm.numpy()
    rv = None if rv is None else rv.numpy()
    return batch_norm(input, weight, bias, (rm, rv, bn_training, factor, eps))


if TYPE_CHECKING:  # the mixins sit before a torch module in the MRO: super().forward exists
    _TorchModule = nn.Module
else:
    _TorchModule = object


class _CnormBatchNorm(_TorchModule):
    """Mixin placed before the torch class: forward on cnorm, else torch's forward."""

    #: set to False on an instance to always use torch's implementation
    use_cnorm = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out = cnorm_batch_norm(self, input)
        if out is None:
            return super().forward(input)
        return out


class BatchNorm1d(_CnormBatchNorm, nn.BatchNorm1d):
    r""":class:`torch.nn.BatchNorm1d` whose forward and backward on contiguous CPU
    float32/float64 tensors run the cnorm kernels (everything else: torch's).
    Same constructor, parameters, buffers and state_dict as torch's class."""


class BatchNorm2d(_CnormBatchNorm, nn.BatchNorm2d):
    r""":class:`torch.nn.BatchNorm2d` whose forward and backward on contiguous CPU
    float32/float64 tensors run the cnorm kernels (everything else: torch's).
    Same constructor, parameters, buffers and state_dict as torch's class."""


class BatchNorm3d(_CnormBatchNorm, nn.BatchNorm3d):
    r""":class:`torch.nn.BatchNorm3d` whose forward and backward on contiguous CPU
    float32/float64 tensors run the cnorm kernels (everything else: torch's).
    Same constructor, parameters, buffers and state_dict as torch's class."""


# ---------------------------------------------------------------------------- layer norm


class LayerNorm(nn.LayerNorm):
    r""":class:`torch.nn.LayerNorm` whose forward and backward on contiguous CPU
    float32/float64 tensors run the cnorm kernels (everything else: torch's).
    Same constructor, parameters and state_dict as torch's class."""

    #: set to False on an instance to always use torch's implementation
    use_cnorm = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        ns = self.normalized_shape
        k = len(ns)
        if self.use_cnorm and _switch.enabled and k and _input_ok(input):
            params = self._parameters
            dtype = input.dtype
            weight = params.get("weight", _MISSING)
            bias = params.get("bias", _MISSING)
            if (
                input.dim() >= k
                and input.shape[input.dim() - k :] == ns
                and _ok(weight, dtype, ns)
                and _ok(bias, dtype, ns)
            ):
                # _ok passed: None or a plain tensor, never _MISSING
                w, b = cast(Optional[torch.Tensor], weight), cast(Optional[torch.Tensor], bias)
                return layer_norm(input, w, b, (ns, self.eps))
        return super().forward(input)


# ---------------------------------------------------------------------------- convert

_REPLACEMENTS: Dict[type, Type[nn.Module]] = {
    nn.BatchNorm1d: BatchNorm1d,
    nn.BatchNorm2d: BatchNorm2d,
    nn.BatchNorm3d: BatchNorm3d,
    nn.LayerNorm: LayerNorm,
}

# per-instance containers that must not be shared between the old and the new module
_OWN_CONTAINERS = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set")


def _replacement(module: nn.Module) -> nn.Module:
    """A cnorm.torch twin of a torch norm layer: the same Parameter and buffer objects,
    attributes (training, eps, momentum, ...) and hooks; nothing is allocated."""
    new = _REPLACEMENTS[type(module)].__new__(_REPLACEMENTS[type(module)])
    state = dict(module.__dict__)
    for name in _OWN_CONTAINERS:
        if name in state:
            state[name] = state[name].copy()
    new.__dict__.update(state)
    return new


def convert(module: nn.Module) -> nn.Module:
    """Replace every :class:`torch.nn.BatchNorm1d`/``2d``/``3d`` and
    :class:`torch.nn.LayerNorm` in ``module`` (exactly those classes; nested modules too)
    by its :mod:`cnorm.torch` twin, in place, and return ``module``.

    The twins keep the same :class:`~torch.nn.Parameter` objects (an optimizer built
    before keeps working), buffers, training flag, attributes and hooks. A module that
    is itself one of those layers is not modified: its replacement is returned (as
    :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm` does). A layer that appears
    several times in the model gets a single replacement.

    Example::

        >>> model = torchvision.models.resnet18()           # doctest: +SKIP
        >>> model = cnorm.torch.convert(model)               # doctest: +SKIP
    """
    memo: Dict[int, nn.Module] = {}

    def swap(m: nn.Module) -> nn.Module:
        if type(m) in _REPLACEMENTS:
            key = id(m)
            if key not in memo:
                memo[key] = _replacement(m)
            return memo[key]
        return m

    def visit(m: nn.Module, seen: set) -> None:
        if id(m) in seen:
            return
        seen.add(id(m))
        for name, child in list(m._modules.items()):
            if child is None:
                continue
            new = swap(child)
            if new is not child:
                m._modules[name] = new
            visit(new, seen)

    top = swap(module)
    visit(top, set())
    return top
