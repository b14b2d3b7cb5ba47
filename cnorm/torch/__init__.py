"""cnorm.torch: drop-in torch.nn norm layers on the cnorm kernels (draft docstring)."""
from ._dropin import (BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormFunction, LayerNorm,
                      LayerNormFunction, convert, torch_fallback)
from ._sync import SyncBatchNorm, SyncBatchNormFunction, convert_sync_batchnorm

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "SyncBatchNorm",
           "convert", "convert_sync_batchnorm", "torch_fallback", "BatchNormFunction",
           "LayerNormFunction", "SyncBatchNormFunction"]
