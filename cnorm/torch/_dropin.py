"""Drop-in torch.nn norm layers whose CPU float32/float64 forward and backward run the
cnorm kernels (see :mod:`cnorm.torch` for the user documentation)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Dict, Iterator, Optional, Tuple, Type, cast

import torch
import torch.nn.functional as F
from torch import nn

from .._ops import momentum_factor
from ._autograd import batch_norm, layer_norm, needs_grad
from ._library import batch_norm_op, layer_norm_op

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "LayerNorm",
    "convert",
    "torch_fallback",
    "cnorm_batch_norm",
    "FLOATS",
    "TORCH_BELOW",
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


_is_compiling = torch.compiler.is_compiling  # torch.compile (dynamo) and torch.export
_is_tracing = torch._C._is_tracing  # torch.jit.trace (scripting: see _script_forward)
_is_autocast = torch.is_autocast_enabled
_functorch_active = torch._C._are_functorch_transforms_active
# the ATen calls of F.batch_norm / F.layer_norm (cudnn_enabled: no effect on the CPU)
_aten_batch_norm = torch.batch_norm
_aten_layer_norm = torch.layer_norm

#: numel below which an input runs torch's kernels, per norm: (no gradient, gradient).
#: There a Python call (and the autograd node of a Python Function) costs more than the
#: cnorm kernel saves; ``python -m cnorm bench --calibrate`` measures the crossover.
#: Those calls go straight to the ATen op that torch's forward ends in (same kernel,
#: same autograd node, same results), skipping the Python layers of torch's forward.
TORCH_BELOW: Dict[str, Tuple[int, int]] = {
    "batch_norm": (4096, 16384),  # batch statistics (training)
    "batch_norm_eval": (16384, 16384),  # running statistics: torch's kernel is cheaper there
    "layer_norm": (4096, 8192),
}


def _input_ok(input) -> bool:
    """A plain, dense, C-contiguous CPU float32/float64 tensor, outside of autocast,
    torch.jit tracing, torch.compile and torch.func transforms (all of which go to torch;
    torch.compile to :func:`_compile_ok` where a layer has a custom op)."""
    return (
        type(input) in _PLAIN
        and input.dtype in FLOATS
        and input.is_cpu
        and input.layout == _STRIDED
        and input.is_contiguous()
        and not _is_compiling()  # before the checks dynamo does not trace
        and not input.is_neg()
        and not _is_autocast("cpu")
        and not _is_tracing()
        and not _functorch_active()
    )


def _compile_ok(input) -> bool:
    """Under torch.compile / torch.export (dynamo traces this; the checks become guards):
    a dense C-contiguous CPU float32/float64 tensor outside autocast, for the cnorm custom
    ops (:mod:`cnorm.torch._library`). Fake and functional tensors pass."""
    return (
        _is_compiling()
        and input.dtype in FLOATS
        and input.is_cpu
        and input.layout == _STRIDED
        and input.is_contiguous()
        and not _is_autocast("cpu")
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


def _traced_ok(t, dtype, shape) -> bool:
    """:func:`_ok` without the type check (compile and export trace fake tensors)."""
    return t is None or (
        t.dtype == dtype and t.is_cpu and t.layout == _STRIDED and t.is_contiguous() and t.shape == shape
    )


# ---------------------------------------------------------------------------- batch norm


def cnorm_batch_norm(module, input) -> Optional[torch.Tensor]:
    """torch's ``_BatchNorm.forward`` on the cnorm kernels, or None (and no side effect)
    when the call is not one cnorm handles: the caller then runs torch's forward, which
    also raises torch's own errors for bad inputs. Eager: the cnorm autograd Function,
    or below ``TORCH_BELOW`` torch's ATen op; under torch.compile / torch.export: the
    ``cnorm::batch_norm`` custom op."""
    if not (module.use_cnorm and _switch.enabled):
        return None
    # straight from the registries (Module.__getattr__ is slow); a parametrized or
    # hooked weight is not in there: torch's forward handles those
    params = module._parameters
    buffers = module._buffers
    weight = params.get("weight", _MISSING)
    bias = params.get("bias", _MISSING)
    running_mean = buffers.get("running_mean", _MISSING)
    running_var = buffers.get("running_var", _MISSING)
    num_batches_tracked = buffers.get("num_batches_tracked", _MISSING)
    if (
        weight is _MISSING
        or bias is _MISSING
        or running_mean is _MISSING
        or running_var is _MISSING
        or num_batches_tracked is _MISSING
    ):
        return None
    training = module.training
    track = module.track_running_stats
    # as torch: the running buffers are passed only when they are updated or used
    rm = running_mean if not training or track else None
    rv = running_var if not training or track else None
    bn_training = training or (rm is None and rv is None)
    # the size threshold first: the checks below cost more than a tiny call
    small = False
    if type(input) in _PLAIN:
        grad = needs_grad(input, weight, bias)
        small = input.numel() < TORCH_BELOW["batch_norm" if bn_training else "batch_norm_eval"][grad]
    if small:
        ok = None  # torch's kernel, which checks its arguments itself
    elif _input_ok(input):
        ok = _ok
    elif _compile_ok(input):
        ok = _traced_ok
    else:
        return None
    eps = module.eps
    dtype = input.dtype
    shape = input.shape
    if len(shape) < 2 or (rm is None) != (rv is None):
        return None
    c = shape[1:2]
    if ok is not None and not (
        ok(weight, dtype, c) and ok(bias, dtype, c) and ok(rm, dtype, c) and ok(rv, dtype, c)
    ):
        return None
    if bn_training:
        if not eps > 0:
            return None  # torch raises 'eps must be positive'
        if training and input.numel() == c[0]:
            return None  # 1 value per channel: torch raises
    elif not eps >= 0:
        return None
    momentum = module.momentum
    nbt = num_batches_tracked if training and track else None
    if ok is _traced_ok:
        if momentum is None and nbt is not None:
            return None  # 1 / num_batches_tracked: a host sync, as in torch's forward
        module._check_input_dim(input)
        if nbt is not None:
            nbt.add_(1)
        return batch_norm_op.forward(
            input, weight, bias, rm, rv, bn_training, 0.0 if momentum is None else momentum, eps
        )[0]
    module._check_input_dim(input)

    # the rest of torch's _BatchNorm.forward
    if nbt is not None:
        nbt.add_(1)
    factor = momentum if momentum is not None else momentum_factor(None, nbt)
    if ok is None:
        # torch's kernel as F.batch_norm calls it (its checks passed above), without
        # the Python layers of torch's forward: below torch.nn's own cost
        return _aten_batch_norm(input, weight, bias, rm, rv, bn_training, factor, eps, True)
    # NumPy views: cnorm updates the running buffers in place when training
    rm = None if rm is None else rm.numpy()
    rv = None if rv is None else rv.numpy()
    return batch_norm(input, weight, bias, (rm, rv, bn_training, factor, eps), grad)


if TYPE_CHECKING:  # the mixins sit before a torch module in the MRO: super().forward exists
    _TorchModule = nn.modules.batchnorm._BatchNorm
else:
    _TorchModule = object


class _CnormBatchNorm(_TorchModule):
    """Mixin placed before the torch class: forward on cnorm, else torch's forward."""

    #: set to False on an instance to always use torch's implementation
    use_cnorm = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # static in TorchScript: the rest is not compiled
            return self._torch_forward(input)
        out = cnorm_batch_norm(self, input)
        if out is None:
            return super().forward(input)
        return out

    def _torch_forward(self, input: torch.Tensor) -> torch.Tensor:
        """torch's ``_BatchNorm.forward``, in a form TorchScript compiles (a scripted model
        runs torch's kernels) and that SyncBatchNorm shares."""
        self._check_input_dim(input)
        factor = 0.0
        if self.momentum is not None:
            factor = self.momentum
        if self.training and self.track_running_stats:
            nbt = self.num_batches_tracked
            if nbt is not None:
                nbt.add_(1)
                if self.momentum is None:
                    factor = 1.0 / float(nbt)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return F.batch_norm(
            input,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            bn_training,
            factor,
            self.eps,
        )


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
        if torch.jit.is_scripting():  # static in TorchScript: the rest is not compiled
            return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)
        ns = self.normalized_shape
        if self.use_cnorm and _switch.enabled and ns:
            params = self._parameters
            weight = params.get("weight", _MISSING)
            bias = params.get("bias", _MISSING)
            if weight is _MISSING or bias is _MISSING:
                return super().forward(input)
            # _MISSING ruled out: None or a parameter
            w, b = cast(Optional[torch.Tensor], weight), cast(Optional[torch.Tensor], bias)
            grad = False
            if type(input) in _PLAIN:
                grad = needs_grad(input, w, b)
                if input.numel() < TORCH_BELOW["layer_norm"][grad]:
                    # torch's kernel as F.layer_norm calls it (cheaper than torch's forward)
                    return _aten_layer_norm(input, ns, w, b, self.eps, True)
            if _input_ok(input):
                ok = _ok
            elif _compile_ok(input):
                ok = _traced_ok
            else:
                return super().forward(input)
            dtype = input.dtype
            if input.shape[-len(ns) :] == ns and ok(w, dtype, ns) and ok(b, dtype, ns):
                if ok is _traced_ok:
                    return layer_norm_op.forward(input, w, b, list(ns), self.eps)[0]
                return layer_norm(input, w, b, (ns, self.eps), grad)
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
