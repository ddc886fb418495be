"""Name -> builder registry for everything selected by name (timm's `_registry.py` idea).

Kinds in use: ``method`` (continual methods), ``fewshot_method`` (CLIP prompt tuning), ``dataset``,
``backbone`` (every backbone) and ``clip`` (the CLIP ones, which CLIP recipes accept), ``mapper``
(label mappers), ``tokenizer_stage``, ``recipe`` (experiment kinds: what `madapt run` dispatches on).

    @register("method", "lwf")
    class LwF: ...

    build("method", "lwf", **cfg)   # LwF(**cfg)
    names("method")                 # ['lwf', ...]

Registration happens when the defining module is imported; `madapt.catalog` imports all of them
so that listing and building by name sees everything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from madapt.errors import UnknownNameError, closest

T = TypeVar("T", bound=Callable[..., Any])

_ENTRIES: dict[str, dict[str, Callable[..., Any]]] = {}


def register(kind: str, name: str) -> Callable[[T], T]:
    """Decorator registering a class or function under ``kind/name``."""

    def deco(obj: T) -> T:
        table = _ENTRIES.setdefault(kind, {})
        if name in table and table[name] is not obj:
            raise ValueError(f"{kind} '{name}' registered twice ({table[name]!r} and {obj!r})")
        table[name] = obj
        return obj

    return deco


def get(kind: str, name: str) -> Callable[..., Any]:
    """The registered object, or a `UnknownNameError` naming the closest valid name."""
    table = _ENTRIES.get(kind, {})
    if name not in table:
        valid = ", ".join(sorted(table)) or "none registered"
        raise UnknownNameError(
            f"{kind} '{name}'", "is not a known name" + closest(name, table), f"one of: {valid}"
        )
    return table[name]


def build(kind: str, name: str, /, **cfg: Any) -> Any:
    """Call the registered builder with ``cfg``."""
    return get(kind, name)(**cfg)


def names(kind: str) -> list[str]:
    """Sorted names registered under ``kind``."""
    return sorted(_ENTRIES.get(kind, {}))


def kinds() -> list[str]:
    return sorted(_ENTRIES)
