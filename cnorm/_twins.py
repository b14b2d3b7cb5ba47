"""``same_signature``: one function takes exactly the arguments of another, typed once.

The reference twins (:mod:`cnorm.reference`) take the arguments of the
:mod:`cnorm.functional` functions of the same names, a fused form those of its plain form,
InstanceNorm's constructor those of BatchNorm's (with other defaults); their annotated
signatures are written once, where the public documentation is.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable, List, Tuple, TypeVar

if TYPE_CHECKING:
    from typing_extensions import ParamSpec

    P = ParamSpec("P")

R = TypeVar("R")

__all__ = ["same_signature"]


def _arguments(f: Callable[..., Any]) -> List[Tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]


def same_signature(of: Callable[P, R], **defaults: Any) -> Callable[[Callable[..., Any]], Callable[P, R]]:
    """Decorator: the function takes the arguments of ``of``, with the same names, kinds and
    defaults, but for those given in ``defaults`` (checked here, once, at import), and gets
    its annotations (which ``help()``, :func:`inspect.signature` and type checkers show).
    Returns the function itself: no wrapper, no cost per call."""
    expected = [(name, kind, defaults.pop(name, default)) for name, kind, default in _arguments(of)]
    if defaults:
        raise TypeError(f"{of.__qualname__} has no arguments {sorted(defaults)}")

    def decorate(f: Callable[..., Any]) -> Any:
        if _arguments(f) != expected:
            raise TypeError(f"{f.__module__}.{f.__qualname__} must take the arguments of {of.__qualname__}")
        f.__annotations__ = dict(of.__annotations__)
        return f

    return decorate
