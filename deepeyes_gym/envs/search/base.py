"""Typed search results, the backend interfaces, and the observation rendering of the protocol.

The rendering reproduces the DeepEyesV2 release byte for byte: a text result reads
``"{i}. [{title}]({link})"`` + optional ``"\\nDate published: {date}"`` + ``"\\n"`` +
``"\\n{snippet}"`` (so a blank line separates the link line from the snippet), results are joined
by a blank line, and the whole block is wrapped as ``"<tool_response>\\n{results}\\n</tool_response>\\n"``
and then ``.strip()``-ed, as the release does before sending it back to the model.
"""

from __future__ import annotations

import abc
import hashlib
import io
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from PIL import Image

__all__ = [
    "DEFAULT_TOP_K",
    "MAX_QUERY_CHARS",
    "MAX_IMAGE_PIXELS",
    "SearchError",
    "TextHit",
    "ImageHit",
    "TextSearchResult",
    "ImageSearchResult",
    "ImageQuery",
    "TextSearchBackend",
    "ImageSearchBackend",
    "TOOL_RESPONSE_TEMPLATE",
    "sanitize_query",
    "checked_image",
    "image_sha256",
    "wrap_tool_response",
    "render_text_results",
    "render_image_results",
    "render_error",
]

DEFAULT_TOP_K = 5  # the release returns 5 results although its prompt promises 10
MAX_QUERY_CHARS = 2048  # Google's own limit on a query's length
MAX_IMAGE_PIXELS = 8192 * 8192  # same bomb guard as envs.task.load_image

TOOL_RESPONSE_TEMPLATE = "<tool_response>\n{search_result}\n</tool_response>\n"
_VIDEO_NOISE = "Your browser can't play this video."  # the release strips this Google artefact


class SearchError(Exception):
    """A search that could not be answered; ``kind`` says why, the message says what to do.

    Kinds: ``bad_query``, ``bad_image``, ``auth``, ``quota``, ``rate_limited``, ``timeout``,
    ``network``, ``server``, ``bad_response``, ``not_found``, ``config``, ``internal``.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class TextHit:
    """One web (or corpus) result for a text query."""

    title: str
    url: str
    snippet: str = ""
    date: str | None = None
    doc_id: str | None = None  # corpus id for offline hits
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "url": self.url,
            "snippet": self.snippet,
            "date": self.date,
            "doc_id": self.doc_id,
            "score": self.score,
        }


@dataclass
class ImageHit:
    """One reverse-image-search result: a page title and the result's image (thumbnail)."""

    title: str
    url: str = ""
    image: Image.Image | None = None  # RGB; None when the thumbnail could not be had
    image_id: str | None = None  # corpus id for offline hits
    image_url: str | None = None  # where the thumbnail came from (online)
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "url": self.url,
            "image_id": self.image_id,
            "image_url": self.image_url,
            "score": self.score,
            "has_image": self.image is not None,
        }


@dataclass
class TextSearchResult:
    query: str
    hits: list[TextHit]
    backend: str
    from_cache: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImageSearchResult:
    hits: list[ImageHit]
    backend: str
    from_cache: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImageQuery:
    """What an image backend may use: the checked image plus the episode's keys.

    ``key_candidates`` are sample ids in priority order (replayed caches are keyed by them);
    ``image_url`` is a public URL of the image when one is known (online Lens needs one).
    """

    image: Image.Image
    task_id: str = ""
    key_candidates: tuple[str, ...] = ()
    image_url: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


class TextSearchBackend(abc.ABC):
    """A text search engine. ``search`` returns hits or raises :class:`SearchError`."""

    name: str = "text"

    @abc.abstractmethod
    def search(self, query: str, *, top_k: int = DEFAULT_TOP_K) -> TextSearchResult:
        """Search for an already sanitised, non-empty query."""

    def close(self) -> None:
        """Release files, connections and sessions."""


class ImageSearchBackend(abc.ABC):
    """A reverse image search engine. ``search_image`` returns hits or raises SearchError."""

    name: str = "image"

    @abc.abstractmethod
    def search_image(self, query: ImageQuery, *, top_k: int = DEFAULT_TOP_K) -> ImageSearchResult:
        """Find pages/images matching ``query.image``."""

    def close(self) -> None:
        """Release files, connections and sessions."""


# --------------------------------------------------------------------------- input checks

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def sanitize_query(query: Any, *, max_chars: int = MAX_QUERY_CHARS) -> str:
    """Return a clean query string or raise ``SearchError('bad_query', ...)``.

    Bytes are decoded as UTF-8 with replacement, lone surrogates become U+FFFD (sqlite and HTTP
    cannot encode them), control characters become spaces.
    """
    if isinstance(query, (bytes, bytearray, memoryview)):
        query = bytes(query).decode("utf-8", errors="replace")
    if not isinstance(query, str):
        raise SearchError("bad_query", f"the search query must be a string, not {type(query).__name__}")
    query = query.encode("utf-8", errors="surrogatepass").decode("utf-8", errors="replace")
    query = _CONTROL.sub(" ", query).strip()
    if not query:
        raise SearchError("bad_query", "the search query is empty; give a non-empty 'query' string")
    if len(query) > max_chars:
        raise SearchError(
            "bad_query",
            f"the search query is {len(query)} characters long; the limit is {max_chars}. "
            "Use a short query of key words.",
        )
    return query


def checked_image(img: Any, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Return ``img`` as a decoded RGB PIL image, refusing bombs by header size before decoding.

    Accepts a PIL image (possibly lazily opened), an ndarray, bytes or a path.
    """
    try:
        if isinstance(img, np.ndarray):
            if img.ndim not in (2, 3) or img.size == 0:
                raise SearchError("bad_image", f"the image array has shape {img.shape}")
            if img.shape[0] * img.shape[1] > max_pixels:
                raise SearchError("bad_image", _too_big(img.shape[1], img.shape[0], max_pixels))
            arr = img if img.dtype == np.uint8 else np.clip(img, 0, 255).astype(np.uint8)
            pil = Image.fromarray(np.ascontiguousarray(arr))
        elif isinstance(img, Image.Image):
            pil = img
        elif isinstance(img, (bytes, bytearray, memoryview)):
            pil = Image.open(io.BytesIO(bytes(img)))
        elif isinstance(img, str):
            pil = Image.open(img)
        else:
            raise SearchError("bad_image", f"unsupported image of type {type(img).__name__}")
        w, h = pil.size  # header only: nothing is decoded yet for lazily opened files
        if w < 1 or h < 1:
            raise SearchError("bad_image", f"the image is empty ({w}x{h})")
        if w * h > max_pixels:
            raise SearchError("bad_image", _too_big(w, h, max_pixels))
        pil.load()
        return pil.convert("RGB") if pil.mode != "RGB" else pil
    except SearchError:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own header check fired first
        raise SearchError(
            "bad_image", f"the image is above the {max_pixels}-pixel limit ({exc}); it was not decoded"
        ) from exc
    except Exception as exc:  # PIL raises many types for corrupt data
        raise SearchError("bad_image", f"the image cannot be read ({type(exc).__name__}: {exc})") from exc


def _too_big(w: int, h: int, max_pixels: int) -> str:
    return f"the image is {w}x{h} pixels, above the {max_pixels}-pixel limit; it was not decoded"


def image_sha256(img: Image.Image) -> str:
    """Content hash of the decoded pixels (stable across file formats)."""
    h = hashlib.sha256()
    h.update(f"{img.mode}:{img.width}x{img.height}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- rendering


def wrap_tool_response(content: str) -> str:
    """Wrap search output the way the release does (template, then ``.strip()``)."""
    return TOOL_RESPONSE_TEMPLATE.format(search_result=content).strip()


def render_text_results(query: str, hits: list[TextHit]) -> str:
    """The observation for a text search, exactly as the release formats it."""
    parts = []
    for idx, hit in enumerate(hits, 1):
        date = f"\nDate published: {hit.date}" if hit.date else ""
        snippet = f"\n{hit.snippet}" if hit.snippet else ""
        part = f"{idx}. [{hit.title}]({hit.url}){date}\n{snippet}"
        parts.append(part.replace(_VIDEO_NOISE, ""))
    content = f"A Google search for '{query}' found {len(parts)} results:\n\n## Web Results\n" + "\n\n".join(parts)
    return wrap_tool_response(content)


def render_image_results(hits: list[ImageHit]) -> str:
    """The observation for an image search: one ``<image>`` per hit, as the release formats it.

    Only hits that carry an image are listed (the release skips results whose image is missing),
    so the number of ``<image>`` placeholders equals the number of images attached.
    """
    parts = []
    for idx, hit in enumerate([h for h in hits if h.image is not None], 1):
        part = f"{idx}. <image>\n[{hit.title}] \n"  # the release's empty date leaves "] \n"
        parts.append(part.replace(_VIDEO_NOISE, ""))
    content = (
        f"A Google image search for the image found {len(parts)} results:\n\n## Web Results\n"
        + "\n\n".join(parts)
    )
    return wrap_tool_response(content)


def render_error(kind: str, message: str) -> str:
    """A clear, recoverable error observation inside the tool-response block."""
    return wrap_tool_response(f"Search error ({kind}): {message}")
