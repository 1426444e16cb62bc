"""Chat renderers: env deltas to model token ids (token in / token out), one per model family.

``base`` (the interface, :class:`Rendered`, run-time invariant checks) needs no torch;
``Qwen25VLRenderer`` needs transformers and is imported on first use.
"""

from __future__ import annotations

from typing import Any

from .base import (
    ChatRenderer, Rendered, RenderInvariantError, check_image_tokens, check_prefix,
    check_transcript, concat_mm_inputs,
)

__all__ = [
    "ChatRenderer", "Rendered", "RenderInvariantError", "check_image_tokens", "check_prefix",
    "check_transcript", "concat_mm_inputs", "Qwen25VLRenderer", "VisionSpec",
]


def __getattr__(name: str) -> Any:
    if name == "Qwen25VLRenderer":
        from .qwen25vl import Qwen25VLRenderer

        return Qwen25VLRenderer
    if name == "VisionSpec":
        from .images import VisionSpec

        return VisionSpec
    raise AttributeError(name)
