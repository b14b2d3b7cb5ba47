"""Drop-in torch.nn norm layers whose CPU float32/float64 forward and backward run the
cnorm kernels (see :mod:`cnorm.torch` for the user documentation)."""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Dict, Iterator, Optional, Type, cast

import torch
from torch import nn

from .._ops import momentum_factor
from ._autograd import (
    batch_norm,
    batch_norm_channels_last,
    group_norm,
    instance_norm,
    layer_norm,
    rms_norm,
)

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "LayerNorm",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "RMSNorm",
    "convert",
    "torch_fallback",
    "cnorm_batch_norm",
    "FLOATS",
]

# the input dtypes the drop-in layers run on cnorm (half precision: add torch.bfloat16 and
# torch.float16 here once the kernels take them)
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


def _channels_last(input) -> bool:
    """A channels_last (4-D) or channels_last_3d (5-D) tensor that is not C-contiguous,
    whose (N, *S, C) view (``movedim(1, -1)``, contiguous) cnorm takes as it is."""
    return input.dim() in (4, 5) and _input_ok(input.movedim(1, -1))


def _layout(input) -> int:
    """1: a contiguous input for cnorm, 2: a channels_last one, 0: one for torch."""
    if _input_ok(input):
        return 1
    return 2 if _channels_last(input) else 0


# ---------------------------------------------------------------------------- batch norm


def cnorm_batch_norm(module, input) -> Optional[torch.Tensor]:
    """torch's ``_BatchNorm.forward`` on the cnorm kernels, or None (and no side effect)
    when the call is not one cnorm handles: the caller then runs torch's forward, which
    also raises torch's own errors for bad inputs."""
    if not (module.use_cnorm and _switch.enabled):
        return None
    channels_last = False
    if not _input_ok(input):
        if not _channels_last(input):
            return None
        channels_last = True  # the (N*H*W, C) problem of BatchNorm1d, on the same memory
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
    run = batch_norm_channels_last if channels_last else batch_norm
    return run(input, weight, bias, (rm, rv, bn_training, factor, eps))


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


# ---------------------------------------------------------------------------- group norm


class GroupNorm(nn.GroupNorm):
    r""":class:`torch.nn.GroupNorm` whose forward and backward on contiguous or
    channels_last CPU float32/float64 tensors run the cnorm kernels (everything else:
    torch's). Same constructor, parameters and state_dict as torch's class."""

    #: set to False on an instance to always use torch's implementation
    use_cnorm = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        layout = _layout(input) if self.use_cnorm and _switch.enabled else 0
        if layout and input.dim() >= 2:
            params = self._parameters
            weight = params.get("weight", _MISSING)
            bias = params.get("bias", _MISSING)
            g = self.num_groups
            n, c = input.shape[0], input.shape[1]
            channels = (c,)
            # what torch raises for (F.group_norm's batch-size check, C % G): torch's forward
            if (
                c % g == 0
                and (n * c // g) * math.prod(input.shape[2:]) != 1
                and _ok(weight, input.dtype, channels)
                and _ok(bias, input.dtype, channels)
            ):
                w, b = cast(Optional[torch.Tensor], weight), cast(Optional[torch.Tensor], bias)
                return group_norm(input, w, b, (g, self.eps, layout == 2))
        return super().forward(input)


# ------------------------------------------------------------------------- instance norm


def cnorm_instance_norm(module, input) -> Optional[torch.Tensor]:
    """torch's ``_InstanceNorm.forward`` on the cnorm kernels, or None: the caller then runs
    torch's forward (which also warns and raises as torch does)."""
    if not (module.use_cnorm and _switch.enabled):
        return None
    no_batch = module._get_no_batch_dim()
    dim = input.dim()
    if dim not in (no_batch, no_batch + 1) or input.shape[dim - no_batch] != module.num_features:
        return None  # torch raises, or warns about num_features (affine=False)
    x = input.unsqueeze(0) if dim == no_batch else input
    layout = _layout(x)
    params = module._parameters
    buffers = module._buffers
    weight = params.get("weight", _MISSING)
    bias = params.get("bias", _MISSING)
    running_mean = buffers.get("running_mean", _MISSING)
    running_var = buffers.get("running_var", _MISSING)
    use_input_stats = module.training or not module.track_running_stats
    c = (module.num_features,)
    dtype = x.dtype
    if not (
        layout
        and all(_ok(t, dtype, c) for t in (weight, bias, running_mean, running_var))
        and (running_mean is None) == (running_var is None)
        and (running_mean is not None or use_input_stats)
        and (not use_input_stats or math.prod(x.shape[2:]) != 1)  # 1 spatial element: torch raises
    ):
        return None
    rm = None if running_mean is None else cast(torch.Tensor, running_mean).numpy()
    rv = None if running_var is None else cast(torch.Tensor, running_var).numpy()
    momentum = module.momentum if module.momentum is not None else 0.0  # as torch's
    w, b = cast(Optional[torch.Tensor], weight), cast(Optional[torch.Tensor], bias)
    y = instance_norm(x, w, b, (rm, rv, use_input_stats, momentum, module.eps, layout == 2))
    return y.squeeze(0) if dim == no_batch else y


class _CnormInstanceNorm(_TorchModule):
    """Mixin placed before torch's InstanceNorm classes (see _CnormBatchNorm)."""

    use_cnorm = True  # False on an instance: always torch's implementation

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out = cnorm_instance_norm(self, input)
        return super().forward(input) if out is None else out


class InstanceNorm1d(_CnormInstanceNorm, nn.InstanceNorm1d):
    r""":class:`torch.nn.InstanceNorm1d` whose forward and backward on contiguous CPU
    float32/float64 tensors run the cnorm kernels (everything else: torch's), running
    statistics included. Same constructor, parameters, buffers and state_dict."""


class InstanceNorm2d(_CnormInstanceNorm, nn.InstanceNorm2d):
    r""":class:`torch.nn.InstanceNorm2d` whose forward and backward on contiguous or
    channels_last CPU float32/float64 tensors run the cnorm kernels (everything else:
    torch's), running statistics included. Same constructor, parameters, buffers and
    state_dict."""


class InstanceNorm3d(_CnormInstanceNorm, nn.InstanceNorm3d):
    r""":class:`torch.nn.InstanceNorm3d` whose forward and backward on contiguous or
    channels_last_3d CPU float32/float64 tensors run the cnorm kernels (everything else:
    torch's), running statistics included. Same constructor, parameters, buffers and
    state_dict."""


# ------------------------------------------------------------------------------ RMS norm


class RMSNorm(nn.RMSNorm):
    r""":class:`torch.nn.RMSNorm` whose forward and backward on contiguous CPU
    float32/float64 tensors run the cnorm kernels (everything else: torch's); ``eps=None``
    is ``torch.finfo(input.dtype).eps``, as torch's. Same constructor, parameters and
    state_dict as torch's class."""

    #: set to False on an instance to always use torch's implementation
    use_cnorm = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ns = self.normalized_shape
        k = len(ns)
        if self.use_cnorm and _switch.enabled and k and _input_ok(x):
            weight = self._parameters.get("weight", _MISSING)
            if x.dim() >= k and x.shape[x.dim() - k :] == ns and _ok(weight, x.dtype, ns):
                eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
                return rms_norm(x, cast(Optional[torch.Tensor], weight), None, (ns, eps))
        return super().forward(x)


# ---------------------------------------------------------------------------- convert

_REPLACEMENTS: Dict[type, Type[nn.Module]] = {
    nn.BatchNorm1d: BatchNorm1d,
    nn.BatchNorm2d: BatchNorm2d,
    nn.BatchNorm3d: BatchNorm3d,
    nn.LayerNorm: LayerNorm,
    nn.GroupNorm: GroupNorm,
    nn.InstanceNorm1d: InstanceNorm1d,
    nn.InstanceNorm2d: InstanceNorm2d,
    nn.InstanceNorm3d: InstanceNorm3d,
    nn.RMSNorm: RMSNorm,
}

# per-instance containers that must not be shared between the old and the new module
_OWN_CONTAINERS = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set")


def _replacement(module: nn.Module, cls: Type[nn.Module]) -> nn.Module:
    """A cnorm.torch twin of a norm layer (an instance of ``cls``): the same Parameter and
    buffer objects, attributes (training, eps, momentum, ...) and hooks; nothing is
    allocated."""
    new = cls.__new__(cls)
    state = dict(module.__dict__)
    for name in _OWN_CONTAINERS:
        if name in state:
            state[name] = state[name].copy()
    new.__dict__.update(state)
    return new


def _target(module: nn.Module) -> Optional[Type[nn.Module]]:
    """The class ``module`` converts to: its cnorm.torch twin, that of a registered
    third-party norm class (:func:`register_norm`), or None."""
    cls = _REPLACEMENTS.get(type(module))
    if cls is None:
        from ._registry import converted_class  # (imports this module)

        cls = converted_class(module)
    return cls


def convert(module: nn.Module) -> nn.Module:
    """Replace every :class:`torch.nn.BatchNorm1d`/``2d``/``3d``,
    :class:`~torch.nn.LayerNorm`, :class:`~torch.nn.GroupNorm`,
    :class:`~torch.nn.InstanceNorm1d`/``2d``/``3d`` and :class:`~torch.nn.RMSNorm` in
    ``module`` (exactly those classes; nested modules too) by its :mod:`cnorm.torch` twin,
    and every module of a registered third-party norm class (:func:`register_norm`: the
    transformers norm classes are built in) by its cnorm-backed subclass, in place, and
    return ``module``.

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
        key = id(m)
        if key not in memo:
            cls = _target(m)
            memo[key] = m if cls is None else _replacement(m, cls)
        return memo[key]

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
