"""Drop-in torch.nn norm layers whose CPU float32/float64/bfloat16/float16 forward and
backward run the cnorm kernels (see :mod:`cnorm.torch` for the user documentation)."""

from __future__ import annotations

import math
import threading
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Dict, Iterator, Optional, Tuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from .._ops import momentum_factor
from ..modules import TORCH_NN_TWINS
from . import _lean
from ._autograd import (
    HALF,
    as_tensor,
    batch_norm,
    batch_norm_channels_last,
    group_norm,
    instance_norm,
    layer_norm,
    needs_grad,
    rms_norm,
)
from ._checks import _PLAIN, FLOATS, _params, _route
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

_F32 = torch.float32
_from_numpy = torch.from_numpy
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


# the ATen calls of F.batch_norm / F.layer_norm (cudnn_enabled: no effect on the CPU)
_aten_batch_norm = torch.batch_norm
_aten_layer_norm = torch.layer_norm
_aten_group_norm = torch.group_norm  # and F.group_norm, F.instance_norm, F.rms_norm's
_aten_instance_norm = torch.instance_norm
_aten_rms_norm = torch.rms_norm

#: numel below which an input runs torch's kernels, per norm: (no gradient, gradient).
#: Keys ``<norm>`` for float32/float64 inputs, ``<norm>_half`` for bfloat16/float16 ones
#: (the Python path around a half kernel costs more: widening half parameters, bfloat16
#: views). Below a threshold the Python call (with a gradient: the autograd node of a
#: Python Function) costs more than the cnorm kernel saves; those calls go straight to
#: the ATen op that torch's forward ends in (same kernel, same autograd node, same
#: results), skipping the Python layers of torch's forward.
#: ``python -m cnorm bench --calibrate`` measures the crossovers (docs/torch.md).
TORCH_BELOW: Dict[str, Tuple[int, int]] = {
    # the worst of two calibrations on the 2-core AMD EPYC (1 and 2 threads; half: bfloat16
    # and float16), capped at the largest size swept (1048576): docs/torch.md
    "batch_norm": (16384, 65536),  # batch statistics (training)
    "batch_norm_eval": (1048576, 1048576),  # running statistics
    "layer_norm": (786433, 786433),
    "group_norm": (1048576, 1048576),
    "instance_norm": (0, 16384),
    "rms_norm": (0, 768),
    "batch_norm_half": (1048576, 1048576),
    "batch_norm_eval_half": (1048576, 1048576),
    "layer_norm_half": (786432, 786432),
    "group_norm_half": (1048576, 1048576),
    "instance_norm_half": (262144, 262144),
    "rms_norm_half": (0, 3072),
}
_HALF_KEY = {norm: norm + "_half" for norm in TORCH_BELOW if not norm.endswith("_half")}


def _small(norm: str, grad: bool, input) -> bool:
    """Below the size threshold of ``TORCH_BELOW`` for ``norm`` and the input's dtype
    (torch's kernel takes it)."""
    limit = TORCH_BELOW[_HALF_KEY[norm] if input.dtype in HALF else norm][grad]
    return bool(limit) and type(input) in _PLAIN and input.numel() < limit


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
    if (rm is None) != (rv is None):
        return None
    # the size threshold first: the checks below cost more than a tiny call
    grad = needs_grad(input, weight, bias)
    small = _small("batch_norm" if bn_training else "batch_norm_eval", grad, input)
    layout, x = 1, None  # small: torch's kernel, which checks its arguments itself
    if not small:
        layout, x = _route(input, input.dtype)  # channels_last: the (N*H*W, C) problem of BatchNorm1d
        if not layout:
            return None
    shape = input.shape
    if len(shape) < 2:
        return None
    c = shape[1:2]
    if not small:
        views = _params(module, x, input.dtype, c, (weight, bias, rm, rv))
        if views is None:
            return None
    eps = module.eps
    if bn_training:
        if not eps > 0:
            return None  # torch raises 'eps must be positive'
        if training and input.numel() == c[0]:
            return None  # 1 value per channel: torch raises
    elif not eps >= 0:
        return None
    momentum = module.momentum
    nbt = num_batches_tracked if training and track else None
    if x is None and not small:  # under torch.compile / torch.export
        if momentum is None and nbt is not None:
            return None  # 1 / num_batches_tracked: a host sync, as in torch's forward
        module._check_input_dim(input)
        if nbt is not None:
            nbt.add_(1)
        xt = input if layout == 1 else input.movedim(1, -1)
        y = batch_norm_op.forward(
            xt.reshape(-1, c[0]) if layout == 2 else xt,
            weight,
            bias,
            rm,
            rv,
            bn_training,
            0.0 if momentum is None else momentum,
            eps,
        )[0]
        return y if layout == 1 else y.reshape(xt.shape).movedim(-1, 1)
    module._check_input_dim(input)

    # the rest of torch's _BatchNorm.forward
    if nbt is not None:
        nbt.add_(1)
    factor = momentum if momentum is not None else momentum_factor(None, nbt)
    if small:
        # torch's kernel as F.batch_norm calls it (its checks passed above), without
        # the Python layers of torch's forward: below torch.nn's own cost
        return _aten_batch_norm(input, weight, bias, rm, rv, bn_training, factor, eps, True)
    # NumPy views: cnorm updates the running buffers in place when training
    wa, ba, rma, rva = views
    run = batch_norm_channels_last if layout == 2 else batch_norm
    return run(input, weight, bias, (rma, rva, bn_training, factor, eps), grad, (x, wa, ba))


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
            w: Any = params.get("weight", _MISSING)  # None, a parameter or _MISSING
            b: Any = params.get("bias", _MISSING)
            if w is _MISSING or b is _MISSING:
                return super().forward(input)
            grad = needs_grad(input, w, b)
            if _small("layer_norm", grad, input):
                # torch's kernel as F.layer_norm calls it (cheaper than torch's forward)
                return _aten_layer_norm(input, ns, w, b, self.eps, True)
            dtype = input.dtype
            layout, x = _route(input, dtype)
            if layout == 1 and (input if x is None else x).shape[-len(ns) :] == ns:
                views = _params(self, x, dtype, ns, (w, b))
                if views is True:  # under torch.compile / torch.export
                    return layer_norm_op.forward(input, w, b, list(ns), self.eps)[0]
                if views is not None:
                    if grad:
                        return layer_norm(input, w, b, (ns, self.eps), True, (x, *views))
                    y = _lean.layer_norm_forward(x, views[0], views[1], (ns, self.eps))[0]
                    return _from_numpy(y) if y.dtype.kind == "f" else as_tensor(y)
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
    grad = needs_grad(input, w, b)
    # torch 2.13's channels-last GroupNorm backward without an input gradient crashes
    # (SIGSEGV, tests/test_torch_reach.py): such a call stays on cnorm at any size
    if _small("group_norm", grad, input) and (input.requires_grad or not grad or input.is_contiguous()):
        return _aten_group_norm(input, g, w, b, eps, True)  # as F.group_norm calls it
    dtype = input.dtype
    layout, x = _route(input, dtype)
    if not layout:
        return None
    views = _params(module, x, dtype, (c,), (w, b))
    if views is None:
        return None
    if views is True:  # under torch.compile / torch.export
        if layout == 1:
            return group_norm_op.forward(input, w, b, g, eps)[0]
        return group_norm_channels_last_op.forward(input.movedim(1, -1), w, b, g, eps)[0].movedim(-1, 1)
    return group_norm(input, w, b, (g, eps, layout == 2), grad, (x, *views))


class GroupNorm(nn.GroupNorm):
    r""":class:`torch.nn.GroupNorm` whose forward and backward on contiguous or
    channels_last CPU float32/float64/bfloat16/float16 tensors (half: float32 parameters
    too) run the cnorm kernels (everything else: torch's). Same constructor, parameters,
    state_dict."""

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
    grad = needs_grad(x, w, b)
    if _small("instance_norm", grad, x):
        y = _aten_instance_norm(x, w, b, rm, rv, use_input_stats, momentum, eps, True)
        return y.squeeze(0) if dim == no_batch else y
    dtype = x.dtype
    layout, xa = _route(x, dtype)
    if not layout:
        return None
    c = (module.num_features,)
    views = _params(module, xa, dtype, c, (w, b, rm, rv))
    if views is None:
        return None
    if views is True:  # under torch.compile / torch.export
        if layout == 1:
            y = instance_norm_op.forward(x, w, b, rm, rv, use_input_stats, momentum, eps)[0]
        else:  # a contiguous output, as torch's
            op = instance_norm_channels_last_op.forward
            y = op(x.movedim(1, -1), w, b, rm, rv, use_input_stats, momentum, eps)[0]
            y = y.movedim(-1, 1).contiguous()
    else:
        wa, ba, rma, rva = views
        args = (rma, rva, use_input_stats, momentum, eps, layout == 2)
        y = instance_norm(x, w, b, args, grad, (xa, wa, ba))
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
    channels_last CPU float32/float64/bfloat16/float16 tensors (half: float32 parameters
    too) run the cnorm kernels (everything else: torch's), running statistics included.
    Same constructor, parameters, buffers and state_dict."""


class InstanceNorm3d(_CnormInstanceNorm, nn.InstanceNorm3d):
    r""":class:`torch.nn.InstanceNorm3d` whose forward and backward on contiguous or
    channels_last_3d CPU float32/float64/bfloat16/float16 tensors (half: float32
    parameters too) run the cnorm kernels (everything else: torch's), running statistics
    included. Same constructor, parameters, buffers and state_dict."""


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
            grad = needs_grad(x, w, None)
            if _small("rms_norm", grad, x):
                return _aten_rms_norm(x, ns, w, self.eps)  # as F.rms_norm calls it
            dtype = x.dtype
            layout, xa = _route(x, dtype)
            if layout == 1 and x.dim() >= k and x.shape[x.dim() - k :] == ns:
                views = _params(self, xa, dtype, ns, (w,))
                if views is not None:
                    eps = self.eps
                    if eps is None:  # torch's: the eps of the compute dtype (float32 for half)
                        eps = torch.finfo(_F32 if x.dtype in HALF else x.dtype).eps
                    if views is True:  # under torch.compile / torch.export
                        return rms_norm_op.forward(x, w, None, list(ns), eps)[0]
                    return rms_norm(x, w, None, (ns, eps), grad, (xa, views[0], None))
        return super().forward(x)
