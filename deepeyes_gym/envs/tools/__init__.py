"""Tool registry: tools are looked up by name and imported lazily (heavy ones stay unloaded)."""

from __future__ import annotations

from typing import Any, Callable

from ...registry import Registry
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

_TOOLS: Registry[Tool] = Registry("tool", {
    "image_zoom_in_tool": ("deepeyes_gym.envs.tools.image_ops:ZoomInTool", "DeepEyes v1 zoom-in"),
    "image_rotate_tool": ("deepeyes_gym.envs.tools.image_ops:RotateTool", "DeepEyes v1 rotate"),
    "python": ("deepeyes_gym.envs.tools.python:PythonTool", "stateful Python sandbox per episode"),
    "search": ("deepeyes_gym.envs.tools.search:TextSearchTool", "text search"),
    "image_search": ("deepeyes_gym.envs.tools.search:ImageSearchTool", "reverse image search"),
})


def register_tool(name: str, factory: str | Callable[..., Tool], *, overwrite: bool = False) -> None:
    """Register a tool factory (a Tool subclass, a callable, or a lazy "module:attr" string)."""
    _TOOLS.register(name, factory, overwrite=overwrite)


def available_tools() -> list[str]:
    return _TOOLS.names()


def make_tool(name: str, **kwargs: Any) -> Tool:
    return _TOOLS.resolve(name)(**kwargs)
