"""A name -> factory table whose entries may be lazy ``"module:attr"`` strings.

Heavy factories (an in-process engine, a sandbox) are imported only when first asked for. The
tool and agent registries are instances of it.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """``register(name, factory)``; ``resolve(name)`` imports a lazy entry on first use.

    ``resolve`` raises ``KeyError`` (naming what is registered) for an unknown name and lets the
    import's own ``ModuleNotFoundError``/``AttributeError`` through, so callers can word them.
    """

    def __init__(self, kind: str, entries: dict[str, tuple[str | Callable[..., T], str]] | None = None):
        self.kind = kind
        self._entries: dict[str, tuple[str | Callable[..., T], str]] = dict(entries or {})

    def register(self, name: str, factory: str | Callable[..., T], description: str = "", *,
                 overwrite: bool = False) -> None:
        if name in self._entries and not overwrite:
            raise ValueError(f"{self.kind} {name!r} is already registered (pass overwrite=True)")
        self._entries[name] = (factory, description)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def description(self, name: str) -> str:
        return self._entries[name][1] if name in self._entries else ""

    def spec(self, name: str) -> str | Callable[..., T]:
        try:
            return self._entries[name][0]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}") from None

    def resolve(self, name: str) -> Callable[..., T]:
        factory = self.spec(name)
        if not isinstance(factory, str):
            return factory
        module, attr = factory.split(":")
        return getattr(importlib.import_module(module), attr)

    def __contains__(self, name: Any) -> bool:
        return name in self._entries
