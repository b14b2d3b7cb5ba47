"""Drop-in torch.nn norm layers whose CPU float32/float64/bfloat16/float16 forward and
backward run the cnorm kernels (see :mod:`cnorm.torch` for the user documentation)."""

from __future__ import annotations

import math
import threading
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Dict, Iterator, Optional, Tuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from .._ops import momentum_factor
from ..modules import TORCH_NN_TWINS
from ._autograd import (
    HALF,
    as_numpy,
    batch_norm,
    batch_norm_channels_last,
    group_norm,
    instance_norm,
    layer_norm,
    needs_grad,
    rms_norm,
)
from ._library import (
    batch_norm_op,
    group_norm_channels_last_op,
    group_norm_op,
    instance_norm_channels_last_op,
    instance_norm_op,
    layer_norm_op,
    rms_norm_op,
)

__all__ = [
    *TORCH_NN_TWINS,  # the drop-in classes
    "torch_fallback",
    "cnorm_batch_norm",
    "cnorm_group_norm",
    "cnorm_instance_norm",
    "FLOATS",
    "HALF",
    "TORCH_BELOW",
]

# the input dtypes the drop-in layers run on cnorm: the half ones (HALF: float16, and
# bfloat16 with ml_dtypes) with parameters of their dtype or all float32 (torch's mixed
# precision, see _param_dtype)
FLOATS = (torch.float32, torch.float64, *HALF)
_F32 = torch.float32
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
_functorch_active = torch._C._are_functorch_transforms_active
# the ATen calls of F.batch_norm / F.layer_norm (cudnn_enabled: no effect on the CPU)
_aten_batch_norm = torch.batch_norm
_aten_layer_norm = torch.layer_norm
_aten_group_norm = torch.group_norm  # and F.group_norm, F.instance_norm, F.rms_norm's
_aten_instance_norm = torch.instance_norm
_aten_rms_norm = torch.rms_norm

#: numel below which an input runs torch's kernels, per norm: (no gradient, gradient).
#: There a Python call (and the autograd node of a Python Function) costs more than the
#: cnorm kernel saves; ``python -m cnorm bench --calibrate`` measures the crossover.
#: Those calls go straight to the ATen op that torch's forward ends in (same kernel,
#: same autograd node, same results), skipping the Python layers of torch's forward.
TORCH_BELOW: Dict[str, Tuple[int, int]] = {
    "batch_norm": (4096, 16384),  # batch statistics (training)
    "batch_norm_eval": (16384, 16384),  # running statistics: torch's kernel is cheaper there
    "layer_norm": (4096, 8192),
    # not calibrated yet: layer_norm's (per-row or per-(sample, group) statistics, as there)
    "group_norm": (4096, 8192),
    "instance_norm": (4096, 8192),
    "rms_norm": (4096, 8192),
}


def _input_ok(input) -> bool:
    """A plain, dense, C-contiguous CPU tensor of a dtype in FLOATS, outside of torch.jit
    tracing, torch.compile and torch.func transforms (all of which go to torch;
    torch.compile to :func:`_compile_ok` where a layer has a custom op). CPU autocast
    does not come in: its policy casts no norm (torch 2.13's lists name none of them, and
    each runs in its input's dtype there), so the call is the one without autocast."""
    return (
        type(input) in _PLAIN
        and input.dtype in FLOATS
        and input.is_cpu
        and input.layout == _STRIDED
        and input.is_contiguous()
        and not _is_compiling()  # before the checks dynamo does not trace
        and not input.is_neg()
        and not _is_tracing()
        and not _functorch_active()
    )


def _compile_ok(input) -> bool:
    """Under torch.compile / torch.export (dynamo traces this; the checks become guards):
    a dense C-contiguous CPU tensor of a dtype in FLOATS, for the cnorm custom ops
    (:mod:`cnorm.torch._library`). Fake and functional tensors pass."""
    return (
        _is_compiling()
        and input.dtype in FLOATS
        and input.is_cpu
        and input.layout == _STRIDED
        and input.is_contiguous()
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


def _param_dtype(dtype, first) -> torch.dtype:
    """The dtype all parameters (weight, bias, running stats) of an input of ``dtype``
    need for cnorm: its own, or float32 if a half input's first parameter ``first`` is
    (torch's mixed precision); any other mix goes to torch, which computes or raises it."""
    if first is not None and first.dtype is _F32 and dtype in HALF:
        return _F32
    return dtype


def _traced_ok(t, dtype, shape) -> bool:
    """:func:`_ok` without the type check (compile and export trace fake tensors)."""
    return t is None or (
        t.dtype == dtype and t.is_cpu and t.layout == _STRIDED and t.is_contiguous() and t.shape == shape
    )


def _check(input) -> Optional[Callable[..., bool]]:
    """The check of a C-contiguous input's parameters: :func:`_ok` in eager,
    :func:`_traced_ok` under torch.compile / torch.export (the custom ops); None: torch's."""
    if _input_ok(input):
        return _ok
    return _traced_ok if _compile_ok(input) else None


def _route(input) -> Tuple[int, Optional[Callable[..., bool]]]:
    """(layout, :func:`_check`) of a call cnorm takes: layout 1 for a C-contiguous input,
    2 for a channels_last (4-D) / channels_last_3d (5-D) one, whose (N, *S, C) view
    (``movedim(1, -1)``) is C-contiguous and runs without a copy. ``(0, None)``: torch's."""
    ok = _check(input)
    if ok is not None:
        return 1, ok
    if input.dim() in (4, 5):
        ok = _check(input.movedim(1, -1))
        if ok is not None:
            return 2, ok
    return 0, None


# ---------------------------------------------------------------------------- batch norm


def cnorm_batch_norm(module, input) -> Optional[torch.Tensor]:
    """torch's ``_BatchNorm.forward`` on the cnorm kernels, or None (and no side effect)
    when the call is not one cnorm handles: the caller then runs torch's forward, which
    also raises torch's own errors for bad inputs. Eager: the cnorm autograd Function,
    or below ``TORCH_BELOW`` torch's ATen op; under torch.compile / torch.export: the
    ``cnorm::batch_norm`` custom op (a channels_last input: on its (N*H*W, C) view)."""
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
    layout, ok = 1, None  # small: torch's kernel, which checks its arguments itself
    if not small:
        layout, ok = _route(input)  # channels_last: the (N*H*W, C) problem of BatchNorm1d
        if not layout:
            return None
    eps = module.eps
    dtype = input.dtype
    shape = input.shape
    if len(shape) < 2 or (rm is None) != (rv is None):
        return None
    c = shape[1:2]
    if ok is not None:
        pdt = _param_dtype(dtype, weight if weight is not None else rm)
        if not (ok(weight, pdt, c) and ok(bias, pdt, c) and ok(rm, pdt, c) and ok(rv, pdt, c)):
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
        x = input if layout == 1 else input.movedim(1, -1)
        y = batch_norm_op.forward(
            x.reshape(-1, c[0]) if layout == 2 else x,
            weight,
            bias,
            rm,
            rv,
            bn_training,
            0.0 if momentum is None else momentum,
            eps,
        )[0]
        return y if layout == 1 else y.reshape(x.shape).movedim(-1, 1)
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
    try:
        rm = None if rm is None else rm.numpy()
        rv = None if rv is None else rv.numpy()
    except TypeError:  # bfloat16 buffers
        rm, rv = as_numpy(rm), as_numpy(rv)
    run = batch_norm_channels_last if layout == 2 else batch_norm
    return run(input, weight, bias, (rm, rv, bn_training, factor, eps), grad)


if TYPE_CHECKING:  # the mixins sit before a torch module in the MRO: super().forward exists
    _TorchModule = nn.modules.batchnorm._BatchNorm
    _TorchInstanceNorm = nn.modules.instancenorm._InstanceNorm
else:
    _TorchModule = _TorchInstanceNorm = object


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
    r""":class:`torch.nn.BatchNorm1d` whose forward and backward on contiguous CPU float32,
    float64, bfloat16 and float16 tensors (half: float32 parameters too) run the cnorm
    kernels (everything else: torch's). Same constructor, parameters, buffers, state_dict."""


class BatchNorm2d(_CnormBatchNorm, nn.BatchNorm2d):
    r""":class:`torch.nn.BatchNorm2d` whose forward and backward on contiguous or
    channels_last CPU float32/float64/bfloat16/float16 tensors (half: float32 parameters
    too) run the cnorm kernels (everything else: torch's). Same constructor, parameters,
    buffers and state_dict as torch's class."""


class BatchNorm3d(_CnormBatchNorm, nn.BatchNorm3d):
    r""":class:`torch.nn.BatchNorm3d` whose forward and backward on contiguous or
    channels_last CPU float32/float64/bfloat16/float16 tensors (half: float32 parameters
    too) run the cnorm kernels (everything else: torch's). Same constructor, parameters,
    buffers and state_dict as torch's class."""


# ---------------------------------------------------------------------------- layer norm


class LayerNorm(nn.LayerNorm):
    r""":class:`torch.nn.LayerNorm` whose forward and backward on contiguous CPU float32,
    float64, bfloat16 and float16 tensors (half: float32 parameters too) run the cnorm
    kernels (everything else: torch's). Same constructor, parameters and state_dict."""

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
            w, b = cast("Optional[torch.Tensor]", weight), cast("Optional[torch.Tensor]", bias)
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
            dtype = _param_dtype(input.dtype, w if w is not None else b)
            if input.shape[-len(ns) :] == ns and ok(w, dtype, ns) and ok(b, dtype, ns):
                if ok is _traced_ok:
                    return layer_norm_op.forward(input, w, b, list(ns), self.eps)[0]
                return layer_norm(input, w, b, (ns, self.eps), grad)
        return super().forward(input)


# ---------------------------------------------------------------------------- group norm


def cnorm_group_norm(module, input) -> Optional[torch.Tensor]:
    """torch's ``GroupNorm.forward`` on the cnorm kernels (below ``TORCH_BELOW``: torch's
    ATen op; under torch.compile / torch.export: the ``cnorm::group_norm`` ops), or None:
    the caller runs torch's forward."""
    if not (module.use_cnorm and _switch.enabled and input.dim() >= 2):
        return None
    params = module._parameters
    weight = params.get("weight", _MISSING)
    bias = params.get("bias", _MISSING)
    g = module.num_groups
    n, c = input.shape[0], input.shape[1]
    # what torch raises for (C % G, F.group_norm's batch-size check): torch's forward
    if weight is _MISSING or bias is _MISSING or c % g or (n * c // g) * math.prod(input.shape[2:]) == 1:
        return None
    w, b = cast("Optional[torch.Tensor]", weight), cast("Optional[torch.Tensor]", bias)
    eps = module.eps
    grad = None
    if type(input) in _PLAIN:
        grad = needs_grad(input, w, b)
        if input.numel() < TORCH_BELOW["group_norm"][grad]:
            return _aten_group_norm(input, g, w, b, eps, True)  # as F.group_norm calls it
    layout, ok = _route(input)
    if not ok or (layout == 2 and input.dtype in HALF):
        return None  # channels-last half: torch's (cnorm's kernel is measured 2.5-9x slower)
    dtype = _param_dtype(input.dtype, w if w is not None else b)
    if not (ok(w, dtype, (c,)) and ok(b, dtype, (c,))):
        return None
    if ok is _traced_ok:
        if layout == 1:
            return group_norm_op.forward(input, w, b, g, eps)[0]
        return group_norm_channels_last_op.forward(input.movedim(1, -1), w, b, g, eps)[0].movedim(-1, 1)
    return group_norm(input, w, b, (g, eps, layout == 2), grad)


class GroupNorm(nn.GroupNorm):
    r""":class:`torch.nn.GroupNorm` whose forward and backward on contiguous or
    channels_last CPU float32/float64 tensors (contiguous: bfloat16/float16 too) run the
    cnorm kernels (everything else: torch's). Same constructor, parameters, state_dict."""

    #: set to False on an instance to always use torch's implementation
    use_cnorm = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # static in TorchScript: the rest is not compiled
            return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)
        out = cnorm_group_norm(self, input)
        return super().forward(input) if out is None else out


# ------------------------------------------------------------------------- instance norm


def cnorm_instance_norm(module, input) -> Optional[torch.Tensor]:
    """torch's ``_InstanceNorm.forward`` on the cnorm kernels (below ``TORCH_BELOW``:
    torch's ATen op; under torch.compile / torch.export: the ``cnorm::instance_norm``
    ops), or None: the caller then runs torch's forward (which also warns and raises as
    torch does)."""
    if not (module.use_cnorm and _switch.enabled):
        return None
    no_batch = module._get_no_batch_dim()
    dim = input.dim()
    if dim not in (no_batch, no_batch + 1) or input.shape[dim - no_batch] != module.num_features:
        return None  # torch raises, or warns about num_features (affine=False)
    x = input.unsqueeze(0) if dim == no_batch else input
    params = module._parameters
    buffers = module._buffers
    weight = params.get("weight", _MISSING)
    bias = params.get("bias", _MISSING)
    running_mean = buffers.get("running_mean", _MISSING)
    running_var = buffers.get("running_var", _MISSING)
    use_input_stats = module.training or not module.track_running_stats
    if (
        any(t is _MISSING for t in (weight, bias, running_mean, running_var))
        or (running_mean is None) != (running_var is None)
        or (running_mean is None and not use_input_stats)
        or (use_input_stats and math.prod(x.shape[2:]) == 1)  # 1 spatial element: torch raises
    ):
        return None
    w, b = cast("Optional[torch.Tensor]", weight), cast("Optional[torch.Tensor]", bias)
    rm, rv = cast("Optional[torch.Tensor]", running_mean), cast("Optional[torch.Tensor]", running_var)
    momentum = module.momentum if module.momentum is not None else 0.0  # as torch's
    eps = module.eps
    grad = None
    if type(x) in _PLAIN:
        grad = needs_grad(x, w, b)
        if x.numel() < TORCH_BELOW["instance_norm"][grad]:
            y = _aten_instance_norm(x, w, b, rm, rv, use_input_stats, momentum, eps, True)
            return y.squeeze(0) if dim == no_batch else y
    layout, ok = _route(x)
    if not ok or (layout == 2 and x.dtype in HALF):
        return None  # channels-last half: torch's (cnorm's kernel is measured 2.5-9x slower)
    c = (module.num_features,)
    dtype = _param_dtype(x.dtype, w if w is not None else rm)
    if not all(ok(t, dtype, c) for t in (w, b, rm, rv)):
        return None
    if ok is _traced_ok:
        if layout == 1:
            y = instance_norm_op.forward(x, w, b, rm, rv, use_input_stats, momentum, eps)[0]
        else:  # a contiguous output, as torch's
            op = instance_norm_channels_last_op.forward
            y = op(x.movedim(1, -1), w, b, rm, rv, use_input_stats, momentum, eps)[0]
            y = y.movedim(-1, 1).contiguous()
    else:
        args = (as_numpy(rm), as_numpy(rv), use_input_stats, momentum, eps, layout == 2)
        y = instance_norm(x, w, b, args, grad)
    return y.squeeze(0) if dim == no_batch else y


class _CnormInstanceNorm(_TorchInstanceNorm):
    """Mixin placed before torch's InstanceNorm classes (see _CnormBatchNorm)."""

    use_cnorm = True  # False on an instance: always torch's implementation

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # static in TorchScript: the rest is not compiled
            return self._torch_forward(input)
        out = cnorm_instance_norm(self, input)
        return super().forward(input) if out is None else out

    def _torch_forward(self, input: torch.Tensor) -> torch.Tensor:
        """torch's ``_InstanceNorm.forward`` in a form TorchScript compiles (no super())."""
        self._check_input_dim(input)
        feature_dim = input.dim() - self._get_no_batch_dim()
        if input.size(feature_dim) != self.num_features:
            if self.affine:
                raise ValueError(
                    f"expected input's size at dim={feature_dim} to match num_features"
                    f" ({self.num_features}), but got: {input.size(feature_dim)}."
                )
            warnings.warn(
                f"input's size at dim={feature_dim} does not match num_features. "
                "You can silence this warning by not passing in num_features, "
                "which is not used because affine=False",
                stacklevel=2,
            )
        if input.dim() == self._get_no_batch_dim():
            return self._handle_no_batch_input(input)
        return self._apply_instance_norm(input)


class InstanceNorm1d(_CnormInstanceNorm, nn.InstanceNorm1d):
    r""":class:`torch.nn.InstanceNorm1d` whose forward and backward on contiguous CPU
    float32/float64/bfloat16/float16 tensors (half: float32 parameters too) run the cnorm
    kernels (everything else: torch's), running statistics included. Same constructor,
    parameters, buffers and state_dict."""


class InstanceNorm2d(_CnormInstanceNorm, nn.InstanceNorm2d):
    r""":class:`torch.nn.InstanceNorm2d` whose forward and backward on contiguous or
    channels_last CPU float32/float64 tensors (contiguous: bfloat16/float16 too) run the
    cnorm kernels (everything else: torch's), running statistics included. Same
    constructor, parameters, buffers and state_dict."""


class InstanceNorm3d(_CnormInstanceNorm, nn.InstanceNorm3d):
    r""":class:`torch.nn.InstanceNorm3d` whose forward and backward on contiguous or
    channels_last_3d CPU float32/float64 tensors (contiguous: bfloat16/float16 too) run
    the cnorm kernels (everything else: torch's), running statistics included. Same
    constructor, parameters, buffers and state_dict."""


# ------------------------------------------------------------------------------ RMS norm


class RMSNorm(nn.RMSNorm):
    r""":class:`torch.nn.RMSNorm` whose forward and backward on contiguous CPU float32,
    float64, bfloat16 and float16 tensors (half: a float32 weight too) run the cnorm
    kernels (everything else: torch's); ``eps=None`` is the eps of the compute dtype, as
    torch's (the input's, float32 for half). Same constructor, parameters, state_dict."""

    #: set to False on an instance to always use torch's implementation
    use_cnorm = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # static in TorchScript: the rest is not compiled
            return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)
        ns = self.normalized_shape
        k = len(ns)
        weight = self._parameters.get("weight", _MISSING)
        if self.use_cnorm and _switch.enabled and k and weight is not _MISSING:
            w = cast("Optional[torch.Tensor]", weight)
            grad = None
            if type(x) in _PLAIN:
                grad = needs_grad(x, w, None)
                if x.numel() < TORCH_BELOW["rms_norm"][grad]:
                    return _aten_rms_norm(x, ns, w, self.eps)  # as F.rms_norm calls it
            layout, ok = _route(x)
            pdt = _param_dtype(x.dtype, w)
            if layout == 1 and ok and x.dim() >= k and x.shape[x.dim() - k :] == ns and ok(w, pdt, ns):
                eps = self.eps
                if eps is None:  # torch's: the eps of the compute dtype (float32 for half)
                    eps = torch.finfo(_F32 if x.dtype in HALF else x.dtype).eps
                if ok is _traced_ok:
                    return rms_norm_op.forward(x, w, None, list(ns), eps)[0]
                return rms_norm(x, w, None, (ns, eps), grad)
        return super().forward(x)
