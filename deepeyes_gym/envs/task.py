"""The task schema every suite and loader produces."""

from __future__ import annotations

import base64
import io
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

__all__ = ["Task", "TaskImageError", "load_image", "CAPABILITIES"]

CAPABILITIES = ("perception", "reasoning", "search")

# Decompression-bomb guard: refuse images above this many pixels (a 20000x20000 PNG is 400 MP).
MAX_IMAGE_PIXELS = 8192 * 8192

_B64 = re.compile(r"[A-Za-z0-9+/=\s]+")


class TaskImageError(ValueError):
    """An input image could not be read (missing file, corrupt bytes, too large)."""


def load_image(ref: Any, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Load one image reference as an RGB PIL image.

    A reference is a path, raw bytes, a base64 string (``data:`` URL or bare), a PIL image, or an
    H×W×3 / H×W uint8 array. Raises :class:`TaskImageError` with a readable message on failure.
    """
    try:
        if isinstance(ref, Image.Image):
            img = ref
        elif isinstance(ref, np.ndarray):
            img = Image.fromarray(np.ascontiguousarray(ref))
        elif isinstance(ref, (bytes, bytearray, memoryview)):
            img = _open_bytes(bytes(ref), max_pixels)
        elif isinstance(ref, Mapping) and "bytes" in ref:  # datasets/parquet image struct
            if ref["bytes"] is not None:
                img = _open_bytes(ref["bytes"], max_pixels)
            else:
                return load_image(ref.get("path"), max_pixels=max_pixels)
        elif isinstance(ref, (str, os.PathLike)):
            s = os.fspath(ref)
            if s.startswith("data:image"):
                img = _open_bytes(base64.b64decode(s.split(",", 1)[1]), max_pixels)
            elif os.path.exists(s):
                with open(s, "rb") as f:
                    img = _open_bytes(f.read(), max_pixels)
            elif len(s) > 256 and _B64.fullmatch(s[:1024]):  # JPEG base64 starts with "/9j/"
                img = _open_bytes(base64.b64decode(s), max_pixels)
            else:
                raise TaskImageError(f"image file not found: {s!r}")
        else:
            raise TaskImageError(f"unsupported image reference of type {type(ref).__name__}")
        if img.width * img.height > max_pixels:
            raise TaskImageError(
                f"image of {img.width}x{img.height} exceeds the {max_pixels} pixel limit"
            )
        return img.convert("RGB") if img.mode != "RGB" else img
    except TaskImageError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt data
        raise TaskImageError(f"cannot read image: {type(exc).__name__}: {exc}") from exc


def _open_bytes(data: bytes, max_pixels: int) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    # Check the header size before decoding the pixels (bomb guard).
    if img.width * img.height > max_pixels:
        raise TaskImageError(f"image of {img.width}x{img.height} exceeds the {max_pixels} pixel limit")
    img.load()
    return img


@dataclass
class Task:
    """One problem: image(s) + question, with its ground truth.

    ``answer`` is never shown to the agent; ``public_info()`` is what may be.
    """

    id: str
    question: str
    answer: str
    images: Sequence[Any] = field(default=(), repr=False)
    answer_kind: str | None = None  # numeric, choice, text, math, yesno, list ...
    options: Mapping[str, str] | None = None  # {"A": "red", "B": "blue"}
    domain: str = "general"
    capabilities: frozenset[str] = frozenset()
    reference_solution: Sequence[str] | None = None  # assistant turns (tool calls) that solve it
    source: str = "custom"
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.capabilities = frozenset(self.capabilities)
        unknown = self.capabilities - set(CAPABILITIES)
        if unknown:
            raise ValueError(f"unknown capabilities {sorted(unknown)}; use {CAPABILITIES}")
        self.images = tuple(self.images)

    def load_images(self) -> list[Image.Image]:
        return [load_image(ref) for ref in self.images]

    def prompt_text(self) -> str:
        """The question as shown to the model, with options appended when present."""
        if not self.options:
            return self.question
        opts = "\n".join(f"{k}. {v}" for k, v in self.options.items())
        return f"{self.question}\nOptions:\n{opts}"

    def public_info(self) -> dict[str, Any]:
        """Facts an agent may see (never the answer or the reference solution)."""
        return {
            "task_id": self.id,
            "domain": self.domain,
            "capabilities": tuple(sorted(self.capabilities)),
            "answer_kind": self.answer_kind,
            "options": dict(self.options) if self.options else None,
            "source": self.source,
        }
