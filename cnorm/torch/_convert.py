"""``convert(module)``: every torch.nn norm layer of a model (and every registered
third-party one) swapped for its cnorm.torch twin, in place."""

from __future__ import annotations

from typing import Dict, Optional, Type

from torch import nn

from . import _dropin

__all__ = ["convert"]

# torch.nn class -> its cnorm.torch twin (of the same name)
_TWINS = "BatchNorm1d BatchNorm2d BatchNorm3d LayerNorm GroupNorm InstanceNorm1d InstanceNorm2d InstanceNorm3d RMSNorm"
_REPLACEMENTS: Dict[type, Type[nn.Module]] = {
    getattr(nn, name): getattr(_dropin, name) for name in _TWINS.split()
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
        from ._registry import converted_class  # (imports _dropin; lazily: startup time)

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
