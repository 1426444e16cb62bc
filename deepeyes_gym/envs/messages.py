"""The conversation as OpenAI-style chat messages (text + image parts), model-agnostic.

User turns carry one ``<image>`` placeholder per image; rendering splits the text at the
placeholders so each image lands where the placeholder stood. No chat-template tokens are ever
emitted: agents and SFT exporters apply their own model's template.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["Conversation", "image_to_data_url", "IMAGE_FORMATS"]

IMAGE_TOKEN = "<image>"
IMAGE_FORMATS = ("pil", "array", "data_url")


def image_to_data_url(img: Image.Image | np.ndarray, fmt: str = "PNG") -> str:
    """Encode an image as a ``data:`` URL (PNG by default, JPEG for large photos)."""
    pil = Image.fromarray(img) if isinstance(img, np.ndarray) else img
    buf = io.BytesIO()
    pil.save(buf, format=fmt)
    mime = "jpeg" if fmt.upper() in ("JPG", "JPEG") else fmt.lower()
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class _Msg:
    role: str
    text: str
    images: list[np.ndarray] = field(default_factory=list)


class Conversation:
    """Append-only record of one episode's messages."""

    def __init__(self, system_prompt: str):
        self._msgs: list[_Msg] = [_Msg("system", system_prompt)]
        self._url_cache: dict[int, str] = {}

    def add_user(self, text: str, images: list[np.ndarray]) -> None:
        self._msgs.append(_Msg("user", text, list(images)))

    def add_assistant(self, text: str) -> None:
        self._msgs.append(_Msg("assistant", text))

    def __len__(self) -> int:
        return len(self._msgs)

    @property
    def images(self) -> list[np.ndarray]:
        """Every image of the conversation, in order."""
        return [im for m in self._msgs for im in m.images]

    def render(self, image_format: str = "pil") -> list[dict[str, Any]]:
        """Messages as dicts. System and assistant content is a str; user content is a list of
        ``{"type": "text", "text": ...}`` and image parts: ``{"type": "image", "image": PIL}``
        (``"pil"``), ``{"type": "image", "image": ndarray}`` (``"array"``), or OpenAI's
        ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`` (``"data_url"``).
        """
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}")
        out: list[dict[str, Any]] = []
        for m in self._msgs:
            if m.role != "user":
                out.append({"role": m.role, "content": m.text})
                continue
            parts: list[dict[str, Any]] = []
            chunks = m.text.split(IMAGE_TOKEN)
            for i, chunk in enumerate(chunks):
                if chunk:
                    parts.append({"type": "text", "text": chunk})
                if i < len(chunks) - 1 and i < len(m.images):
                    parts.append(self._image_part(m.images[i], image_format))
            out.append({"role": "user", "content": parts})
        return out

    def _image_part(self, arr: np.ndarray, image_format: str) -> dict[str, Any]:
        if image_format == "array":
            return {"type": "image", "image": arr}
        if image_format == "pil":
            return {"type": "image", "image": Image.fromarray(arr)}
        url = self._url_cache.get(id(arr))
        if url is None:  # encode each image once per episode
            url = self._url_cache[id(arr)] = image_to_data_url(arr)
        return {"type": "image_url", "image_url": {"url": url}}

    def transcript(self) -> str:
        """A plain-text transcript (images shown as placeholders)."""
        lines = []
        for m in self._msgs:
            lines.append(f"[{m.role}]")
            lines.append(m.text)
        return "\n".join(lines)
