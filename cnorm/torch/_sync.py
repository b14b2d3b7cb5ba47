"""A CPU SyncBatchNorm (torch.distributed, e.g. the gloo backend) on the cnorm kernels."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.autograd.function import once_differentiable

from .. import functional as CF
from .._ops import momentum_factor, update_running_stats
from ._autograd import as_numpy
from ._dropin import _CnormBatchNorm, cnorm_batch_norm

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm", "SyncBatchNormFunction"]

# the input dtypes of the synchronized path (the local one, cnorm_batch_norm, takes half too)
_SYNC_FLOATS = (torch.float32, torch.float64)
# dtype <-> the code the ranks exchange (-1: another dtype, named by none of these)
_DTYPE_CODES = (
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.complex64,
    torch.complex128,
    torch.int64,
    torch.int32,
)


def _dtype_name(code: int) -> str:
    return str(_DTYPE_CODES[code]).replace("torch.", "") if 0 <= code < len(_DTYPE_CODES) else "another dtype"


def _check_sync_arguments(dtype, c, weight, bias, rm, rv) -> Optional[Exception]:
    """The error the synchronized path has for these tensors, or None (returned, not
    raised: the other ranks must learn of it first)."""
    tensors = (("weight", weight), ("bias", bias), ("running_mean", rm), ("running_var", rv))
    bad = [
        f"{n} {t.dtype} on {t.device}"
        for n, t in tensors
        if t is not None and (t.dtype != dtype or not t.is_cpu)
    ]
    if dtype not in _SYNC_FLOATS or bad:
        return TypeError(
            "cnorm.torch.SyncBatchNorm on CPU needs a float32 or float64 "
            "input and parameters/buffers of its dtype on the CPU; got input "
            f"{dtype}" + "".join(", " + b for b in bad)
        )
    for n, t in tensors:
        if t is not None and t.numel() != c:
            return RuntimeError(f"{n} should contain {c} elements not {t.numel()}")
    if rm is not None and not (rm.is_contiguous() and rv.is_contiguous()):
        return TypeError("cnorm.torch.SyncBatchNorm needs contiguous running statistics")
    return None


def _agree_on_input(
    c: int, dtype: torch.dtype, local_error: Optional[Exception], group, world_size: int
) -> None:
    """Make every rank check, before the statistics all-gather, that all ranks have the
    same channel count and dtype and that none rejected its input; raise on every rank
    otherwise. A (C, dtype) mismatch would make the all-gather's tensors differ in size
    (gloo aborts the process) or silently mix precisions; an error on one rank alone
    would leave the others waiting in the collective. Costs one all-gather of 3 int64
    per rank and training forward (a few gloo messages of 24 bytes); nothing is cached,
    so a later change (another input, a converted module) is seen at once."""
    code = _DTYPE_CODES.index(dtype) if dtype in _DTYPE_CODES else -1
    local = torch.tensor([c, code, local_error is not None], dtype=torch.int64)
    gathered = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(gathered, local, group=group)
    ranks = torch.stack(gathered).tolist()  # [[C, dtype code, failed]] by rank
    if len({(r[0], r[1]) for r in ranks}) > 1:
        what = ", ".join(f"rank {i}: {r[0]} channels {_dtype_name(r[1])}" for i, r in enumerate(ranks))
        channels_differ = len({r[0] for r in ranks}) > 1
        exc = ValueError if channels_differ else TypeError
        raise exc(
            "cnorm.torch.SyncBatchNorm: the ranks of the process group called it with "
            f"different {'channel counts' if channels_differ else 'dtypes'} ({what}); "
            "every rank needs inputs of the same number of channels (num_features) "
            "and dtype"
        )
    if local_error is not None:
        raise local_error
    failed = [i for i, r in enumerate(ranks) if r[2]]
    if failed:
        raise RuntimeError(
            f"cnorm.torch.SyncBatchNorm: rank(s) {failed} rejected their input "
            "(see the error there); this rank stops too instead of waiting "
            "in the statistics all-gather"
        )


def _gather_stats(count: int, mean: np.ndarray, m2: np.ndarray, group, world_size: int):
    """All-gather every rank's (count, mean, m2) and merge them in rank order."""
    c = mean.shape[0]
    packed = np.empty(2 * c + 1)
    packed[0] = count
    packed[1 : c + 1] = mean
    packed[c + 1 :] = m2
    local = torch.from_numpy(packed)
    gathered = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(gathered, local, group=group)
    allstats = torch.stack(gathered).numpy()
    return CF.merge_stats(allstats[:, 0], allstats[:, 1 : c + 1], allstats[:, c + 1 :])


class SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm with statistics over every rank of ``process_group``.

    forward: all-gather of the per-rank ``(count, mean, m2)`` (float64), merged with
    Chan's formula in rank order (so every rank gets the same numbers), normalization
    of the local input with the global mean and ``invstd = 1/sqrt(m2/count + eps)``,
    running statistics updated with the global mean and unbiased variance.
    backward: all-reduce of the per-channel ``(Σdy, Σdy·x̂)`` (float64); weight/bias
    gradients stay local (DDP averages them), as in torch's SyncBatchNorm.
    """

    @staticmethod
    def forward(
        ctx, input, weight, bias, running_mean, running_var, eps, momentum, process_group, world_size
    ):
        x = as_numpy(input)
        c = x.shape[1]
        count, mean, m2 = CF.batch_norm_stats(x)
        total, mean, m2 = _gather_stats(count, mean, m2, process_group, world_size)
        if total == 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, got 1 "
                f"value per channel over {world_size} processes"
            )
        if total > 0:
            var = m2 / total
            invstd = 1.0 / np.sqrt(var + eps)
            if running_mean is not None:
                update_running_stats(running_mean, running_var, mean, var * (total / (total - 1.0)), momentum)
        else:
            invstd = np.zeros(c)  # empty everywhere: nothing to normalize
        y = CF.batch_norm_elemt(x, mean, invstd, as_numpy(weight), as_numpy(bias))
        ctx.save_for_backward(input, weight)
        ctx.stats = (mean, invstd, total, process_group)
        return torch.from_numpy(y)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        mean, invstd, total, group = ctx.stats
        x = as_numpy(input)
        dy = as_numpy(grad_output)
        sum_dy, sum_dy_xhat = CF.batch_norm_backward_reduce(dy, x, mean, invstd)
        need = ctx.needs_input_grad
        grad_input = grad_weight = grad_bias = None
        if need[0]:
            c = sum_dy.shape[0]
            both = torch.from_numpy(np.concatenate([sum_dy, sum_dy_xhat]))
            dist.all_reduce(both, op=dist.ReduceOp.SUM, group=group)
            g = both.numpy()
            grad_input = torch.from_numpy(
                CF.batch_norm_backward_elemt(dy, x, mean, invstd, as_numpy(weight), g[:c], g[c:], total)
            )
        dtype = x.dtype
        if weight is not None and need[1]:
            grad_weight = torch.from_numpy(sum_dy_xhat.astype(dtype))
        if need[2]:
            grad_bias = torch.from_numpy(sum_dy.astype(dtype))
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


class SyncBatchNorm(nn.SyncBatchNorm):
    r""":class:`torch.nn.SyncBatchNorm` that also works on CPU tensors (gloo backend).

    In training mode with ``torch.distributed`` initialized and more than one process in
    ``process_group``, the batch statistics are those of the union of the batches of
    all ranks (which may differ in size, or be empty); outputs, running statistics and
    input gradients equal those of a BatchNorm over the concatenated batch, and the
    weight/bias gradients are each rank's local share (their sum over the ranks is the
    full gradient; DDP averages them). Otherwise (eval mode, no process group, one
    process) it is a plain BatchNorm on the cnorm kernels. Inputs on other devices go
    to torch's implementation. Same constructor, parameters, buffers and state_dict
    keys as torch's class; inputs ``(N, C, *)``.
    """

    #: set to False on an instance to use torch's kernels when no synchronization is needed
    use_cnorm = True
    _torch_forward = _CnormBatchNorm._torch_forward

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript has no torch.distributed: local statistics
            return self._torch_forward(input)  # type: ignore[misc]
        if not input.is_cpu:
            return super().forward(input)
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        training = self.training
        bn_training = training or (self.running_mean is None and self.running_var is None)
        need_sync = bn_training and training and dist.is_available() and dist.is_initialized()
        if need_sync:
            group = self.process_group if self.process_group else dist.group.WORLD
            world_size = dist.get_world_size(group)
            need_sync = world_size > 1
        if not need_sync:
            out = cnorm_batch_norm(self, input)
            # not torch's SyncBatchNorm.forward: it refuses CPU tensors in a process group
            return self._torch_forward(input) if out is None else out  # type: ignore[misc]

        dtype = input.dtype
        weight, bias = self.weight, self.bias
        rm = self.running_mean if self.track_running_stats else None
        rv = self.running_var if self.track_running_stats else None
        c = input.shape[1]
        # the local checks raise only after every rank has heard of the outcome
        local_error = _check_sync_arguments(dtype, c, weight, bias, rm, rv)
        _agree_on_input(c, dtype, local_error, group, world_size)
        if not input.is_contiguous():
            input = input.contiguous()

        nbt = self.num_batches_tracked if self.track_running_stats else None
        if nbt is not None:
            nbt.add_(1)
        factor = momentum_factor(self.momentum, nbt)
        rm_np = None if rm is None else rm.detach().numpy()  # updated in place
        rv_np = None if rv is None else rv.detach().numpy()
        return SyncBatchNormFunction.apply(
            input,
            weight.contiguous() if weight is not None else None,
            bias.contiguous() if bias is not None else None,
            rm_np,
            rv_np,
            self.eps,
            factor,
            group,
            world_size,
        )


def convert_sync_batchnorm(module: nn.Module, process_group: Optional[Any] = None) -> nn.Module:
    """Replace every BatchNorm layer (any :class:`torch.nn.modules.batchnorm._BatchNorm`:
    torch's BatchNorm1d/2d/3d, SyncBatchNorm, the cnorm.torch ones) of ``module`` by a
    :class:`cnorm.torch.SyncBatchNorm`, as :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`
    does (same Parameter objects, buffers and training flag); returns the module, or the
    replacement when ``module`` itself is a BatchNorm."""
    module_output = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        module_output = SyncBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            process_group,
            device="meta",
            bias=module.bias is not None,
        )
        if module.affine:
            with torch.no_grad():
                module_output.weight = module.weight
                module_output.bias = module.bias
        module_output.running_mean = module.running_mean
        module_output.running_var = module.running_var
        module_output.num_batches_tracked = module.num_batches_tracked
        module_output.training = module.training
        if hasattr(module, "qconfig"):
            module_output.qconfig = module.qconfig
    for name, child in module.named_children():
        module_output.add_module(name, convert_sync_batchnorm(child, process_group))
    del module
    return module_output
