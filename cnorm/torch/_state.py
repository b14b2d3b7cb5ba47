"""State dicts between the NumPy modules and torch.nn: ``to_torch_state_dict``."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping, Union

import numpy as np
import torch

from ..modules import Module

__all__ = ["to_torch_state_dict"]


def to_torch_state_dict(
    module_or_state_dict: Union[Module, Mapping[str, Any]],
) -> "OrderedDict[str, torch.Tensor]":
    """A cnorm module's state as a state dict of torch tensors, for ``torch.nn`` modules.

    ``module_or_state_dict`` is a NumPy module (``cnorm.BatchNorm2d``, ``cnorm.LayerNorm``,
    ...) or its ``state_dict()``. Every value becomes a CPU tensor holding a COPY (the
    module may move on; the result does not), with the dtype of the array
    (float32/float64); ``num_batches_tracked`` becomes a 0-d ``torch.int64`` tensor, as
    torch keeps it. Keys and order are torch's, so the result loads, strictly, into the
    matching torch layer::

        sd = cnorm.torch.to_torch_state_dict(cnorm_bn)
        torch.nn.BatchNorm2d(64).load_state_dict(sd)

    (a ``cnorm.BatchNormReLU2d`` loads into a ``torch.nn.BatchNorm2d``, a
    ``cnorm.AddLayerNorm`` into a ``torch.nn.LayerNorm``). The way back needs no
    conversion: ``cnorm_module.load_state_dict(torch_module.state_dict())`` takes the
    tensors, bit for bit.
    """
    state = (
        module_or_state_dict.state_dict()
        if isinstance(module_or_state_dict, Module)
        else module_or_state_dict
    )
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            tensor = value.detach().to("cpu", copy=True)
        else:
            tensor = torch.from_numpy(np.array(value, copy=True, order="C"))
        if key == "num_batches_tracked" or key.endswith(".num_batches_tracked"):
            tensor = tensor.to(torch.int64).reshape(())
        out[key] = tensor
    return out
