"""Messages as OpenAI-style chat dicts (text + image parts), model-agnostic.

User turns carry one ``<image>`` placeholder per image; rendering splits the text at the
placeholders so each image lands where the placeholder stood. No chat-template tokens are ever
emitted: agents and SFT exporters apply their own model's template.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .turns import IMAGE_TOKEN, Message

__all__ = ["render_messages", "message_to_dict", "message_parts", "image_part", "image_to_data_url", "transcript",
           "IMAGE_FORMATS"]

IMAGE_FORMATS = ("pil", "array", "data_url")


def image_to_data_url(img: Image.Image | np.ndarray, fmt: str = "PNG") -> str:
    """Encode an image as a ``data:`` URL (PNG by default, JPEG for large photos)."""
    pil = Image.fromarray(img) if isinstance(img, np.ndarray) else img
    buf = io.BytesIO()
    pil.save(buf, format=fmt)
    mime = "jpeg" if fmt.upper() in ("JPG", "JPEG") else fmt.lower()
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_part(arr: np.ndarray, image_format: str = "pil", url_cache: dict[int, str] | None = None) -> dict[str, Any]:
    """One image content part: ``{"type": "image", "image": PIL|ndarray}`` or OpenAI's
    ``{"type": "image_url", "image_url": {"url": "data:..."}}``. ``url_cache`` (keyed by array
    identity) encodes each image once when a conversation is rendered again and again."""
    if image_format == "array":
        return {"type": "image", "image": arr}
    if image_format == "pil":
        return {"type": "image", "image": Image.fromarray(arr)}
    if image_format != "data_url":
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}")
    url = url_cache.get(id(arr)) if url_cache is not None else None
    if url is None:
        url = image_to_data_url(arr)
        if url_cache is not None:
            url_cache[id(arr)] = url
    return {"type": "image_url", "image_url": {"url": url}}


def message_parts(m: Message, image_format: str = "pil", url_cache: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """OpenAI-style content parts: text chunks and one image part where each placeholder stood."""
    parts: list[dict[str, Any]] = []
    chunks = m.text.split(IMAGE_TOKEN)
    for i, chunk in enumerate(chunks):
        if chunk:
            parts.append({"type": "text", "text": chunk})
        if i < len(m.images):
            parts.append(image_part(m.images[i], image_format, url_cache))
    return parts


def message_to_dict(m: Message, image_format: str = "pil", url_cache: dict[int, str] | None = None) -> dict[str, Any]:
    """``{"role", "content"}``: a str for system/assistant, a part list for user messages."""
    if m.role != "user":
        return {"role": m.role, "content": m.text}
    return {"role": m.role, "content": message_parts(m, image_format, url_cache)}


def render_messages(
    messages: Sequence[Message], image_format: str = "pil", url_cache: dict[int, str] | None = None
) -> list[dict[str, Any]]:
    """Messages as dicts. System and assistant content is a str; user content is a list of
    ``{"type": "text", "text": ...}`` and image parts (see :func:`image_part`)."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}")
    return [message_to_dict(m, image_format, url_cache) for m in messages]


def transcript(messages: Sequence[Message]) -> str:
    """A plain-text transcript (images shown as placeholders)."""
    return "\n".join(f"[{m.role}]\n{m.text}" for m in messages)
