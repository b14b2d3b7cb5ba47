"""cnorm.torch: drop-in :mod:`torch.nn` norm layers on the cnorm kernels (CPU).

``import cnorm`` never imports torch; ``import cnorm.torch`` does. :class:`BatchNorm1d`,
:class:`BatchNorm2d`, :class:`BatchNorm3d`, :class:`LayerNorm`, :class:`GroupNorm`,
:class:`InstanceNorm1d`, :class:`InstanceNorm2d`, :class:`InstanceNorm3d` and
:class:`RMSNorm` subclass the torch.nn classes of the same name; on contiguous (and, for
the batch, group and instance norms, channels_last) CPU float32/float64 tensors, and on
contiguous bfloat16/float16 ones (channels_last too for the batch norms) with parameters of
their dtype or float32 (torch's mixed precision), in or outside CPU autocast, their
forward and backward run the cnorm kernels, everything else runs torch's own
implementation. :func:`convert` swaps those layers of a model in place, and the
third-party norm classes of :func:`register_norm` (transformers' ``LlamaRMSNorm`` family,
``T5LayerNorm``, ``GemmaRMSNorm``, ``ConvNextLayerNorm``, ... built in);
:func:`kernel_mapping` is the mapping for ``kernels.kernelize``; :class:`SyncBatchNorm` and
:func:`convert_sync_batchnorm` synchronize batch statistics across processes on the CPU
(gloo); :func:`torch_fallback` runs torch's kernels in a block (e.g. double backward);
:func:`to_torch_state_dict` turns a NumPy module's state into one a ``torch.nn`` layer
loads::

    model = cnorm.torch.convert(model)
    loss = model(x).sum(); loss.backward()  # forward and backward on cnorm

The user guide (semantics, what goes to torch, SyncBatchNorm, threads and OpenMP next to
torch) is ``docs/torch.md``.
"""

from ..modules import TORCH_NN_TWINS
from ._autograd import (
    BatchNormChannelsLastFunction,
    BatchNormFunction,
    GroupNormFunction,
    InstanceNormFunction,
    LayerNormFunction,
    RMSNormFunction,
)
from ._convert import convert
from ._dropin import (
    TORCH_BELOW,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
    RMSNorm,
    torch_fallback,
)
from ._hub import kernel_mapping
from ._registry import register_norm
from ._state import to_torch_state_dict
from ._sync import SyncBatchNorm, SyncBatchNormFunction, convert_sync_batchnorm

__all__ = [
    *TORCH_NN_TWINS,  # the drop-in classes
    "SyncBatchNorm",
    "convert",
    "register_norm",
    "kernel_mapping",
    "convert_sync_batchnorm",
    "torch_fallback",
    "TORCH_BELOW",
    "BatchNormFunction",
    "LayerNormFunction",
    "GroupNormFunction",
    "InstanceNormFunction",
    "RMSNormFunction",
    "BatchNormChannelsLastFunction",
    "SyncBatchNormFunction",
    "to_torch_state_dict",
]
