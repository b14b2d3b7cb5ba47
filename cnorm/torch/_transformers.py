"""The built-in registry entries: HuggingFace transformers' norm classes.

transformers copies one norm implementation into many model files (``LlamaRMSNorm``,
``MistralRMSNorm``, ``Qwen2RMSNorm``, ... are the same code). An entry here is the code of
such an implementation (the methods below are copies of transformers 5.20's, Apache-2.0)
and what it computes; a class matches when its methods have exactly that code (the same
syntax tree: the source may differ only in annotations, comments, layout and
docstrings), so every verbatim copy matches, including in remote-code models, and a class
whose forward differs in anything does not. Nothing is imported from transformers.

All the RMS norms here compute in float32 whatever the input dtype and cast back, so
they run on cnorm for float32 and half inputs (``dtypes``: a float64 input would be
computed in float32 there); ``weight_after_cast`` records which side of the cast the
weight multiplies, ``mixed`` whether a float32 weight with a half input is cnorm's mixed
precision.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ._dropin import HALF
from ._registry import NormSpec

__all__ = ["builtin_entries", "TEMPLATES"]

F32 = (torch.float32, *HALF)  # computed in float32 (see above)


# ------------------------------------------------------------------ the code of each family
# (method bodies exactly as transformers has them; only the names of the functions differ)


def _llama_forward(self, hidden_states):
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(torch.float32)
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
    return self.weight * hidden_states.to(input_dtype)


def _olmo2_forward(self, hidden_states):
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(torch.float32)
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
    return (self.weight * hidden_states).to(input_dtype)


def _nemotron_h_forward(self, hidden_states):
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(torch.float32)
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
    return (self.weight.to(torch.float32) * hidden_states).to(input_dtype)


def _t5_forward(self, hidden_states):
    variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
    if self.weight.dtype in [torch.float16, torch.bfloat16]:
        hidden_states = hidden_states.to(self.weight.dtype)
    return self.weight * hidden_states


def _gemma_norm(self, x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def _gemma_forward(self, x):
    output = self._norm(x.float())
    output = output * (1.0 + self.weight.float())
    return output.type_as(x)


def _gemma3n_norm(self, hidden_states):
    mean_squared = hidden_states.pow(2).mean(-1, keepdim=True) + self.eps
    return hidden_states * torch.pow(mean_squared, -0.5)


def _gemma3n_forward(self, hidden_states):
    normed_output = self._norm(hidden_states.float())
    if self.with_scale:
        normed_output = normed_output * self.weight.float()
    return normed_output.type_as(hidden_states)


class _ConvNextLayerNorm(nn.LayerNorm):
    def forward(self, features):  # super(): the code has a __class__ cell, as the original
        if self.data_format == "channels_first":
            features = features.permute(0, 2, 3, 1)
            features = super().forward(features)
            features = features.permute(0, 3, 1, 2)
        else:
            features = super().forward(features)
        return features


def _layer_norm_super(cls: type) -> bool:
    """The class that defines cls.forward derives from torch.nn.LayerNorm directly, so
    its ``super().forward`` is torch's layer norm."""
    for klass in cls.__mro__:
        if "forward" in vars(klass):
            return klass.__mro__[1] is nn.LayerNorm
    return False


def _always(cls: type) -> bool:
    return True


RMS = "rms_norm"
LLAMA = NormSpec(RMS, eps="variance_epsilon", dtypes=F32)
# (methods -> template code, class condition, [(attribute values, spec)])
TEMPLATES: List[
    Tuple[Dict[str, Callable[..., Any]], Callable[[type], bool], List[Tuple[Dict[str, Any], NormSpec]]]
] = [
    ({"forward": _llama_forward}, _always, [({}, LLAMA)]),
    (
        {"forward": _olmo2_forward},
        _always,
        [({}, NormSpec(RMS, eps="variance_epsilon", dtypes=F32, weight_after_cast=False))],
    ),
    (
        {"forward": _nemotron_h_forward},
        _always,
        [({}, NormSpec(RMS, eps="variance_epsilon", dtypes=F32, weight_after_cast=False))],
    ),
    # a float32 weight with a half input: a float32 result, never rounded to the half dtype
    (
        {"forward": _t5_forward},
        _always,
        [({}, NormSpec(RMS, eps="variance_epsilon", dtypes=F32, mixed=False))],
    ),
    (
        {"forward": _gemma_forward, "_norm": _gemma_norm},
        _always,
        [({}, NormSpec(RMS, eps="eps", weight_offset=1.0, dtypes=F32, weight_after_cast=False))],
    ),
    (
        {"forward": _gemma3n_forward, "_norm": _gemma3n_norm},
        _always,
        [
            ({"with_scale": True}, NormSpec(RMS, eps="eps", dtypes=F32, weight_after_cast=False)),
            ({"with_scale": False}, NormSpec(RMS, eps="eps", weight=None, dtypes=F32)),
        ],
    ),
    (
        {"forward": _ConvNextLayerNorm.forward},
        _layer_norm_super,
        [
            (
                {"data_format": "channels_first"},
                NormSpec("layer_norm_channels_first", bias="bias", normalized_shape="normalized_shape"),
            ),
            (
                {"data_format": "channels_last"},
                NormSpec("layer_norm", bias="bias", normalized_shape="normalized_shape"),
            ),
        ],
    ),
]


def _code_key(fn) -> Optional[str]:
    """What a function computes: the syntax tree of its source without its name,
    annotations and docstring (comments and layout are not in the tree). The tree, not
    the bytecode: CPython compiles ``torch.rsqrt(...)`` differently when ``torch`` came
    from an ``import`` than from an assignment. None without source."""
    if not inspect.isfunction(fn):
        return None
    try:
        node = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        return None
    if not isinstance(node, ast.FunctionDef):
        return None
    node.name = ""
    node.returns = None
    args = node.args
    for arg in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
        if arg is not None:
            arg.annotation = None
    first = node.body[0]
    doc = first.value if isinstance(first, ast.Expr) else None
    if isinstance(doc, ast.Constant) and isinstance(doc.value, str) and len(node.body) > 1:
        node.body = node.body[1:]
    return ast.dump(node)


_TEMPLATE_KEYS = [
    ({name: _code_key(fn) for name, fn in methods.items()}, ok, entries) for methods, ok, entries in TEMPLATES
]
_METHODS = sorted({name for methods, _, _ in TEMPLATES for name in methods})
_CACHE: Dict[type, List[Tuple[Dict[str, Any], NormSpec]]] = {}


def builtin_entries(cls: type) -> List[Tuple[Dict[str, Any], NormSpec]]:
    """The built-in entries whose code ``cls`` has ([] for any other class)."""
    entries = _CACHE.get(cls)
    if entries is None:
        entries = []
        code = {name: _code_key(getattr(cls, name, None)) for name in _METHODS}  # parsed once
        for keys, ok, family in _TEMPLATE_KEYS:
            if all(code[name] == key for name, key in keys.items()) and ok(cls):
                entries = family
                break
        _CACHE[cls] = entries
    return entries
