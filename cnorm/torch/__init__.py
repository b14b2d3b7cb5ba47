"""cnorm.torch: drop-in :mod:`torch.nn` norm layers on the cnorm kernels (CPU).

``import cnorm`` never imports torch; ``import cnorm.torch`` does. :class:`BatchNorm1d`,
:class:`BatchNorm2d`, :class:`BatchNorm3d` and :class:`LayerNorm` subclass the torch.nn
classes of the same name; on contiguous CPU float32/float64 tensors their forward and
backward run the cnorm kernels, everything else runs torch's own implementation.
:func:`convert` swaps those layers of a model in place; :class:`SyncBatchNorm` and
:func:`convert_sync_batchnorm` synchronize batch statistics across processes on the CPU
(gloo); :func:`torch_fallback` runs torch's kernels in a block (e.g. double backward);
:func:`to_torch_state_dict` turns a NumPy module's state into one a ``torch.nn`` layer
loads::

    model = cnorm.torch.convert(model)
    loss = model(x).sum(); loss.backward()  # forward and backward on cnorm

The user guide (semantics, what goes to torch, SyncBatchNorm, threads and OpenMP next to
torch) is ``docs/torch.md``.
"""

from ._autograd import BatchNormFunction, LayerNormFunction
from ._dropin import TORCH_BELOW, BatchNorm1d, BatchNorm2d, BatchNorm3d, LayerNorm, convert, torch_fallback
from ._state import to_torch_state_dict
from ._sync import SyncBatchNorm, SyncBatchNormFunction, convert_sync_batchnorm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "LayerNorm",
    "SyncBatchNorm",
    "convert",
    "convert_sync_batchnorm",
    "torch_fallback",
    "TORCH_BELOW",
    "BatchNormFunction",
    "LayerNormFunction",
    "SyncBatchNormFunction",
    "to_torch_state_dict",
]
