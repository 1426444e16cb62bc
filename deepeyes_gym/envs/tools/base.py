"""The tool plug-in interface: a tool is a small class with one parse and one execute."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
from PIL import Image

from ..task import Task

__all__ = [
    "Tool",
    "ToolError",
    "ToolContext",
    "ToolResult",
    "resize_returned_image",
    "MIN_SHORT_SIDE",
    "MAX_ASPECT",
]

MIN_SHORT_SIDE = 32  # protocol: upscale returned images whose short side is below this
MAX_ASPECT = 200  # protocol: shrink returned images whose aspect ratio exceeds this


class ToolError(Exception):
    """A recoverable tool failure; its message becomes the observation the model sees."""


@dataclass
class ToolContext:
    """What a tool may know about the running episode (never the answer)."""

    task_id: str
    images: Sequence[Image.Image]  # input images at original resolution
    turn: int = 0
    public_info: Mapping[str, Any] = field(default_factory=dict)
    # The env passes the full task so tools such as replayed search can key on its id/metadata;
    # tools must not read task.answer.
    task: Task | None = None


@dataclass
class ToolResult:
    """What a tool returns: observation text, optional images, and structured extras."""

    text: str
    images: list[Any] = field(default_factory=list)  # PIL images or HxWx3 uint8 arrays
    error: str | None = None  # set when the call failed (the text still explains it)
    metadata: dict[str, Any] = field(default_factory=dict)


class Tool(abc.ABC):
    """Base class for tools.

    ``action_kind`` is ``"tool_call"`` for tools invoked as ``<tool_call>{"name": ...}</tool_call>``
    and ``"code"`` for the one tool that runs ``<code>`` blocks. ``parameters`` is a JSON schema of
    the arguments object; the default :meth:`parse` checks required keys, unknown keys and simple
    types against it and raises :class:`ToolError` with a message the model can act on.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}, "required": []}
    action_kind: ClassVar[str] = "tool_call"

    def schema(self) -> dict[str, Any]:
        """OpenAI/Qwen function schema, as shown in the system prompt."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def parse(self, arguments: Any) -> Any:
        """Validate raw arguments (a dict for tool calls, a code string for code tools)."""
        if not isinstance(arguments, Mapping):
            raise ToolError(f"the arguments of '{self.name}' must be a JSON object")
        props: Mapping[str, Any] = self.parameters.get("properties", {})
        required = self.parameters.get("required", [])
        missing = [k for k in required if k not in arguments]
        if missing:
            raise ToolError(f"'{self.name}' is missing required argument(s): {', '.join(missing)}")
        extra = [k for k in arguments if k not in props]
        if extra:
            raise ToolError(
                f"'{self.name}' got unexpected argument(s): {', '.join(map(str, extra))}; "
                f"it accepts: {', '.join(props) or 'no arguments'}"
            )
        for key, value in arguments.items():
            expected = props[key].get("type")
            if expected and not _type_ok(value, expected):
                raise ToolError(f"argument '{key}' of '{self.name}' must be of type {expected}")
        return dict(arguments)

    @abc.abstractmethod
    def execute(self, args: Any, ctx: ToolContext) -> ToolResult:
        """Run the tool. Raise ToolError (or return a result with ``error``) on failure."""

    def start_episode(self, ctx: ToolContext) -> None:
        """Called by ``reset()`` before the first turn (e.g. take a sandbox worker)."""

    def end_episode(self) -> None:
        """Called when an episode ends or is abandoned by a new ``reset()``."""

    def abort(self) -> None:
        """Cancel the running episode now, from any thread, without waiting for a running call
        (``env.abort()``). The default ends the episode; tools with slow calls kill them."""
        self.end_episode()

    def close(self) -> None:
        """Release everything the tool holds; called by ``env.close()``."""


_JSON_TYPES = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "array": (list, tuple),
    "object": Mapping,
}


def _type_ok(value: Any, expected: str | list[str]) -> bool:
    names = [expected] if isinstance(expected, str) else list(expected)
    for name in names:
        if name == "null" and value is None:
            return True
        py = _JSON_TYPES.get(name)
        if py is None:
            return True
        if name in ("integer", "number") and isinstance(value, bool):
            continue
        if isinstance(value, py):
            return True
    return False


def resize_returned_image(img: Any, max_pixels: int | None = None, max_side: int | None = None) -> np.ndarray:
    """Bring a tool's image into protocol shape and return it as an HxWx3 uint8 array.

    Upscale when the short side is < 32 px, shrink the long side when the aspect ratio exceeds
    200, and (optionally) downscale to at most ``max_pixels`` pixels and ``max_side`` per side
    (the observation space's bound).
    """
    if isinstance(img, np.ndarray):
        arr = img
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[..., :3]
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        pil = Image.fromarray(np.ascontiguousarray(arr))
    elif isinstance(img, Image.Image):
        pil = img
    else:
        raise TypeError(f"tool returned an image of type {type(img).__name__}")
    pil = pil.convert("RGB") if pil.mode != "RGB" else pil
    w, h = pil.size
    w, h = max(w, 1), max(h, 1)
    if max(w, h) / min(w, h) > MAX_ASPECT:  # shrink the long side
        if w > h:
            w = h * MAX_ASPECT
        else:
            h = w * MAX_ASPECT
    if min(w, h) < MIN_SHORT_SIDE:  # upscale keeping the aspect ratio
        s = MIN_SHORT_SIDE / min(w, h)
        w, h = round(w * s), round(h * s)
    if max_pixels and w * h > max_pixels:
        s = (max_pixels / (w * h)) ** 0.5
        w, h = max(MIN_SHORT_SIDE, int(w * s)), max(MIN_SHORT_SIDE, int(h * s))
    if max_side and max(w, h) > max_side:
        s = max_side / max(w, h)
        w, h = max(1, min(max_side, int(w * s))), max(1, min(max_side, int(h * s)))
    if (w, h) != pil.size:
        pil = pil.resize((int(w), int(h)), Image.BICUBIC)
    return np.asarray(pil, dtype=np.uint8).copy()

