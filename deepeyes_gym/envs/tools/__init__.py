"""Tool registry: tools are looked up by name and imported lazily (heavy ones stay unloaded)."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from .base import Tool, ToolContext, ToolError, ToolResult, resize_returned_image

__all__ = [
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolResult",
    "resize_returned_image",
    "register_tool",
    "make_tool",
    "available_tools",
]

# name -> "module:attr" (lazy) or a factory callable
_REGISTRY: dict[str, str | Callable[..., Tool]] = {
    "image_zoom_in_tool": "deepeyes_gym.envs.tools.image_ops:ZoomInTool",
    "image_rotate_tool": "deepeyes_gym.envs.tools.image_ops:RotateTool",
    "python": "deepeyes_gym.envs.tools.python:PythonTool",
    "search": "deepeyes_gym.envs.tools.search:TextSearchTool",
    "image_search": "deepeyes_gym.envs.tools.search:ImageSearchTool",
}


def register_tool(name: str, factory: str | Callable[..., Tool], *, overwrite: bool = False) -> None:
    """Register a tool factory (a Tool subclass, a callable, or a lazy "module:attr" string)."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"tool {name!r} is already registered (pass overwrite=True)")
    _REGISTRY[name] = factory


def available_tools() -> list[str]:
    return sorted(_REGISTRY)


def make_tool(name: str, **kwargs: Any) -> Tool:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown tool {name!r}; registered: {', '.join(available_tools())}") from None
    if isinstance(factory, str):
        module, attr = factory.split(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(**kwargs)
