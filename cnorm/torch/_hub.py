"""The ``kernels`` package's door: :func:`kernel_mapping` for
``kernels.register_kernel_mapping`` / ``kernels.use_kernel_mapping``.

transformers tags its norm classes with ``@use_kernel_forward_from_hub("RMSNorm")``;
``kernels.kernelize(model, device="cpu", mode=...)`` then replaces the forward of every
tagged module by the ``forward`` of the layer class the mapping gives for that name,
device and mode, called with the module itself as ``self``. cnorm's layer classes are
stateless, as ``kernels`` requires: their forward looks the module's class up in the
registry (:mod:`._registry`, the built-in transformers entries included) and runs the
cnorm kernels, or the module class's own forward for anything cnorm does not take.

Only ``kernels`` (imported by :func:`kernel_mapping`, not by ``import cnorm.torch``) is
needed, not the Hugging Face Hub: the repository objects load from cnorm itself.
"""

from __future__ import annotations

from typing import Any, Dict, Type

from torch import nn

from ._registry import cnorm_forward, registered_spec

__all__ = ["kernel_mapping", "CnormRepository", "LAYERS"]


def _hub_forward(module: nn.Module, x):
    spec = registered_spec(module)
    if spec is not None:
        out = cnorm_forward(module, spec, x)
        if out is not None:
            return out
    return type(module).forward(module, x)  # the class's own (kernelize set the instance's)


class RMSNorm(nn.Module):
    """The "RMSNorm" layer of :func:`kernel_mapping` (a ``kernels`` layer: no state, only
    ``forward``; ``self`` is the kernelized module)."""

    has_backward = True  # the cnorm autograd functions have a backward

    def forward(self, hidden_states):
        return _hub_forward(self, hidden_states)


class LayerNorm(nn.Module):
    """The "LayerNorm" layer of :func:`kernel_mapping` (see :class:`RMSNorm`)."""

    has_backward = True

    def forward(self, input):
        return _hub_forward(self, input)


LAYERS: Dict[str, Type[nn.Module]] = {"RMSNorm": RMSNorm, "LayerNorm": LayerNorm}


class CnormRepository:
    """A ``kernels`` repository whose layer is in cnorm (``load()`` returns the class)."""

    def __init__(self, layer_name: str):
        if layer_name not in LAYERS:
            raise ValueError(f"cnorm has no kernels layer {layer_name!r}; it has {sorted(LAYERS)}")
        self.layer_name = layer_name

    def load(self) -> Type[nn.Module]:
        return LAYERS[self.layer_name]

    def __eq__(self, other):
        return isinstance(other, CnormRepository) and other.layer_name == self.layer_name

    def __hash__(self):
        return hash(("cnorm", self.layer_name))

    def __repr__(self):
        return f"CnormRepository({self.layer_name!r})"


def kernel_mapping() -> Dict[str, Dict[str, Any]]:
    """The mapping that ``kernels.register_kernel_mapping`` and
    ``kernels.use_kernel_mapping`` take: layer names ("RMSNorm", "LayerNorm") -> "cpu" ->
    {``Mode.INFERENCE``: cnorm, ``Mode.TRAINING``: cnorm}, so that
    ``kernels.kernelize(model, device="cpu", mode=Mode.INFERENCE)`` (or
    ``Mode.TRAINING``) runs the tagged norm layers of a transformers model on cnorm::

        from kernels import Mode, kernelize, use_kernel_mapping

        with use_kernel_mapping(cnorm.torch.kernel_mapping()):
            model = kernelize(model, device="cpu", mode=Mode.INFERENCE)

    Modes with ``Mode.TORCH_COMPILE`` keep the original forward (``kernels`` falls back:
    the cnorm layers do not declare ``can_torch_compile``). Needs the ``kernels`` package.
    """
    from kernels import Mode

    return {
        name: {"cpu": {Mode.INFERENCE: CnormRepository(name), Mode.TRAINING: CnormRepository(name)}}
        for name in LAYERS
    }
