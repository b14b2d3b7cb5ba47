"""Third-party norm classes that :func:`cnorm.torch.convert` reaches.

A registry entry says what a class computes, in cnorm's terms: an RMS norm or a layer
norm over the trailing dims (or over dim 1 of an (N, C, H, W) input: a channels-first
layer norm), which attributes hold eps, the weight and the bias, and for which input
dtypes that is exactly what the class's own forward computes. Entries match by class
identity (:func:`register_norm`) or, for the built-in entries of transformers' classes
(:mod:`._transformers`), by the identity of the class's forward code with the code that
entry was written for; an entry may also require exact attribute values
(``data_format="channels_first"``). Nothing is matched by name or guessed.

A matching module is converted to a subclass of its own class (same parameters,
buffers, state_dict, repr and hooks; ``isinstance`` still holds) whose forward runs the
cnorm kernels when it can and the class's own forward otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type, cast

import torch
from torch import nn

from ._autograd import as_numpy, layer_norm, needs_grad, rms_norm
from ._checks import FLOATS, _param_dtype, _params, _route
from ._dropin import _MISSING, HALF, _small, _switch
from ._library import layer_norm_op, rms_norm_op

__all__ = ["NormSpec", "register_norm", "registered_spec", "converted_class", "cnorm_forward"]

KINDS = ("rms_norm", "layer_norm", "layer_norm_channels_first")


@dataclass(frozen=True)
class NormSpec:
    """What a norm class computes, in cnorm's terms (see :func:`register_norm`)."""

    kind: str
    eps: str = "eps"
    weight: Optional[str] = "weight"
    bias: Optional[str] = None
    normalized_shape: Optional[str] = None
    weight_offset: float = 0.0
    #: the input dtypes on which cnorm computes what the class computes (the built-in
    #: transformers entries compute in float32 and cast back: float32 and the half ones)
    dtypes: Tuple[torch.dtype, ...] = FLOATS
    #: half-precision rms_norm inputs only: the weight multiplies the normalized input
    #: after its cast back to the input dtype (Llama: ``weight * y.to(dtype)``, run as
    #: cnorm's unweighted norm times the weight) or before (Gemma, OLMo-2: one rounding)
    weight_after_cast: bool = True
    #: a half input with a float32 weight computes what cnorm's mixed precision does
    #: (False: T5, whose float32 result is never rounded to the half dtype; its own forward)
    mixed: bool = True


# class -> [(exact attribute values required, spec)], first match wins
_REGISTRY: Dict[type, List[Tuple[Dict[str, Any], NormSpec]]] = {}
_CLASSES: Dict[Tuple[type, NormSpec], type] = {}


def register_norm(
    cls: type,
    kind: str,
    *,
    eps: str = "eps",
    weight: Optional[str] = "weight",
    bias: Optional[str] = None,
    normalized_shape: Optional[str] = None,
    weight_offset: float = 0.0,
    dtypes: Tuple[torch.dtype, ...] = FLOATS,
    when: Optional[Mapping[str, Any]] = None,
) -> None:
    """Make :func:`cnorm.torch.convert` convert the instances of exactly ``cls`` (not its
    subclasses) to a cnorm-backed subclass of ``cls``.

    Args:
        cls: an :class:`torch.nn.Module` class whose ``forward(x)`` computes ``kind``.
        kind: ``"rms_norm"`` (``x / sqrt(mean(x**2) + eps) * (weight + weight_offset)``),
            ``"layer_norm"`` (``torch.nn.functional.layer_norm``), both over the trailing
            ``normalized_shape`` dims (the last dim when ``normalized_shape`` is None), or
            ``"layer_norm_channels_first"``: a layer norm over dim 1 of an (N, C, H, W)
            input (ConvNeXt's ``data_format="channels_first"``).
        eps, weight, bias, normalized_shape: the names of the attributes holding them
            (``weight``/``bias`` None: the class has none).
        weight_offset: added to the weight (Gemma's ``1 + weight``).
        dtypes: the input dtypes for which that is what ``cls`` computes (a class that
            computes in float32 whatever the input: ``(torch.float32,)``); other inputs
            run ``cls.forward``.
        when: exact attribute values an instance must have to be converted (e.g.
            ``{"data_format": "channels_first"}``); register a class several times for
            several kinds.

    Example::

        >>> cnorm.torch.register_norm(MyRMSNorm, "rms_norm", eps="variance_epsilon")  # doctest: +SKIP
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"cls must be a torch.nn.Module class, got {cls!r}")
    spec = NormSpec(kind, eps, weight, bias, normalized_shape, float(weight_offset), tuple(dtypes))
    _REGISTRY.setdefault(cls, []).insert(0, (dict(when or {}), spec))


def _matches(module: nn.Module, when: Mapping[str, Any]) -> bool:
    return all(
        type(getattr(module, k, _MISSING)) is type(v) and getattr(module, k) == v for k, v in when.items()
    )


def registered_spec(module: nn.Module) -> Optional[NormSpec]:
    """The spec of ``module``'s class that its attributes match, or None: the registry
    first, then the built-in transformers entries."""
    cls = type(module)
    entries = _REGISTRY.get(cls)
    if entries is None:
        from ._transformers import builtin_entries

        entries = builtin_entries(cls)
    for when, spec in entries:
        if _matches(module, when) and all(
            name is None or hasattr(module, name) for name in (spec.eps, spec.weight, spec.bias)
        ):
            return spec
    return None


class _ConvertedNorm(nn.Module):
    """Mixin placed before a third-party norm class: forward on cnorm, else the class's."""

    _cnorm_base: type
    _cnorm_spec: NormSpec
    #: set to False on an instance to always use the class's own forward
    use_cnorm = True

    def forward(self, *args, **kwargs):
        if len(args) == 1 and not kwargs:
            out = cnorm_forward(self, self._cnorm_spec, args[0])
            if out is not None:
                return out
        return self._cnorm_base.forward(self, *args, **kwargs)  # type: ignore[attr-defined]

    def __reduce_ex__(self, protocol):
        # the class is made at run time: pickle and deepcopy rebuild it from the registry
        return (_rebuild, (self._cnorm_base, self._cnorm_spec), self.__dict__)


def _converted(base: type, spec: NormSpec) -> type:
    key = (base, spec)
    cls = _CLASSES.get(key)
    if cls is None:
        cls = type(
            base.__name__,
            (_ConvertedNorm, base),
            {
                "__module__": __name__,
                "__qualname__": base.__qualname__,
                "__doc__": f"{base.__qualname__} on the cnorm kernels ({spec.kind}); see cnorm.torch.register_norm",
                "_cnorm_base": base,
                "_cnorm_spec": spec,
            },
        )
        _CLASSES[key] = cls
    return cls


def _rebuild(base: type, spec: NormSpec) -> nn.Module:
    cls = cast(Type[nn.Module], _converted(base, spec))
    return cls.__new__(cls)


def converted_class(module: nn.Module) -> Optional[Type[nn.Module]]:
    """The cnorm-backed class ``module`` converts to, or None (not registered, or already
    converted)."""
    if isinstance(module, _ConvertedNorm):
        return None
    spec = registered_spec(module)
    return None if spec is None else _converted(type(module), spec)


def cnorm_forward(module: nn.Module, spec: NormSpec, x) -> Optional[torch.Tensor]:
    """``module``'s forward of ``x`` on the cnorm kernels as ``spec`` says, or None when
    cnorm does not take the call (the caller runs the class's own forward)."""
    if not (getattr(module, "use_cnorm", True) and _switch.enabled):
        return None
    kind = spec.kind
    if kind == "layer_norm_channels_first":
        if type(x) is not torch.Tensor or x.dim() != 4:
            return None
        xl = x.permute(0, 2, 3, 1)  # zero-copy when x is channels_last
        layout, xa = _route(xl, xl.dtype)
        if layout != 1:
            if not _route(x, x.dtype)[0]:
                return None
            xl = xl.contiguous()  # the copy torch's layer_norm makes too
            layout, xa = _route(xl, xl.dtype)
    else:
        xl = x
        layout, xa = _route(x, x.dtype)
    if layout != 1:
        return None
    dtype = xl.dtype
    if dtype not in spec.dtypes or not xl.dim():
        return None
    eps = getattr(module, spec.eps)
    if type(eps) not in (float, int):
        return None
    params = module._parameters
    weight = None if spec.weight is None else params.get(spec.weight, _MISSING)
    bias = None if spec.bias is None else params.get(spec.bias, _MISSING)
    if weight is _MISSING or bias is _MISSING:
        return None
    w, b = cast("Optional[torch.Tensor]", weight), cast("Optional[torch.Tensor]", bias)
    grad = needs_grad(x, w, b)  # below the size threshold: the class's own forward
    if _small("rms_norm" if kind == "rms_norm" else "layer_norm", grad, x):
        return None
    ns = (xl.shape[-1],) if spec.normalized_shape is None else tuple(getattr(module, spec.normalized_shape))
    k = len(ns)
    pdt = _param_dtype(dtype, w if w is not None else b)
    if pdt is not dtype and not spec.mixed:
        return None
    if not (k and xl.dim() >= k and xl.shape[xl.dim() - k :] == ns):
        return None
    views = _params(module, xa, dtype, ns, (w, b))
    if views is None:
        return None
    arrays = None if views is True else (xa, *views)  # True: under torch.compile / torch.export
    if kind == "rms_norm":
        return _rms_forward(spec, xl, w, ns, float(eps), grad, arrays)
    if arrays is None:
        y = layer_norm_op.forward(xl, w, b, list(ns), float(eps))[0]
    else:
        y = layer_norm(xl, w, b, (ns, eps), grad, arrays)
    return y.permute(0, 3, 1, 2) if kind == "layer_norm_channels_first" else y


def _rms_forward(spec: NormSpec, x, w, ns, eps: float, grad, arrays) -> torch.Tensor:
    """An RMS-norm entry's forward; the weight (+ offset: autograd carries its gradient
    through) is applied by the kernel, or for a half input with ``weight_after_cast`` by
    torch after the kernel's rounding to the input dtype, as the class does. ``arrays``:
    the views of (x, w, None); None under torch.compile / torch.export (the custom op)."""
    after = w is not None and spec.weight_after_cast and x.dtype in HALF
    if w is not None and spec.weight_offset:
        # in float32 for a half input (Gemma: 1.0 + weight.float())
        w = (w.float() if x.dtype in HALF else w) + spec.weight_offset
        if arrays is not None:
            arrays = (arrays[0], None if after else as_numpy(w), None)
    if after:
        w, scale = None, w
        grad = None  # the kernel's gradient is the input's only
        if arrays is not None:
            arrays = (arrays[0], None, None)
    if arrays is None:
        y = rms_norm_op.forward(x, w, None, list(ns), eps)[0]
    else:
        y = rms_norm(x, w, None, (ns, eps), grad, arrays)
    return scale * y if after else y
