"""Replay a recorded search cache (DeepEyesV2 / MMSearch-R1 style) instead of searching.

Image-search caches map a sample id (the dataset ``index`` the release keys on, e.g.
``"fvqa_train_12"``) to ``{"tool_returned_web_title": [...], "cached_images_path": [...]}``;
entries whose image file is missing are skipped, as the release does. Text caches map a query to
its results, in any of the shapes the tools produced: a list of ``{title, link|url, snippet,
date}``, the release's ``{"data": [...]}``, Serper's ``{"organic": [...]}`` or SerpAPI's
``{"organic_results": [...]}``. A cache is a JSON object, a JSON list of records
(``{"query"|"id"|"index"|..., ...}``) or JSONL of such records; text and image entries may share a
file and are told apart by their shape.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from PIL import Image

from .base import (
    DEFAULT_TOP_K,
    ImageHit,
    ImageQuery,
    ImageSearchBackend,
    ImageSearchResult,
    SearchError,
    TextHit,
    TextSearchBackend,
    TextSearchResult,
    checked_image,
)

__all__ = ["ReplaySearch", "normalize_query"]

log = logging.getLogger(__name__)

_TITLE_KEYS = ("tool_returned_web_title", "tool_returned_web_title_list", "titles")
_PATH_KEYS = ("cached_images_path", "cached_image_paths", "image_paths", "images")
_RECORD_KEYS = ("query", "data_idx", "index", "sample_id", "id", "key")
_TEXT_LIST_KEYS = ("data", "organic", "organic_results", "results", "hits")

CacheSource = str | os.PathLike[str] | Mapping[str, Any] | Sequence[Any]


def normalize_query(query: str) -> str:
    return " ".join(query.split()).casefold()


class ReplaySearch(TextSearchBackend, ImageSearchBackend):
    """Serve text and image search from recorded caches; misses go to ``fallback`` or fail clearly.

    ``cache`` is a path, a dict, a list of records, or a list of paths.
    """

    name = "replay"

    def __init__(
        self,
        cache: CacheSource | Sequence[str | os.PathLike[str]],
        *,
        image_root: str | os.PathLike[str] | None = None,
        fallback: TextSearchBackend | ImageSearchBackend | None = None,
        key_fn: Callable[[ImageQuery], Iterable[str]] | None = None,
    ) -> None:
        sources: Sequence[CacheSource]
        if isinstance(cache, (str, os.PathLike, Mapping)):
            sources = [cache]
        elif all(isinstance(s, (str, os.PathLike)) for s in cache):
            sources = list(cache)  # several cache files
        else:
            sources = [cache]  # one in-memory list of records
        self.text: dict[str, list[TextHit]] = {}
        self._text_norm: dict[str, str] = {}
        self.images: dict[str, list[tuple[str, Path]]] = {}
        self.image_root = Path(image_root) if image_root is not None else None
        self.fallback = fallback
        self.key_fn = key_fn
        for source in sources:
            self._load(source)

    # -- loading
    def _load(self, source: CacheSource) -> None:
        base_dir = self.image_root
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.exists():
                raise FileNotFoundError(f"search cache not found: {path}")
            base_dir = base_dir or path.parent
            text = path.read_text(encoding="utf-8", errors="replace")
            if path.suffix == ".jsonl":
                data: Any = [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                data = json.loads(text)
        else:
            data = source
        base_dir = base_dir or Path.cwd()
        items: Iterable[tuple[str, Any]]
        if isinstance(data, Mapping):
            items = ((str(k), v) for k, v in data.items())
        elif isinstance(data, Sequence) and not isinstance(data, str):
            items = (_record_item(r) for r in data)
        else:
            raise ValueError("a search cache must be a JSON object or a list of records")
        for key, value in items:
            if key is None:
                continue
            if isinstance(value, Mapping) and any(k in value for k in _TITLE_KEYS):
                self.images[key] = _image_entry(value, base_dir)
            else:
                hits = _text_entry(value)
                if hits is not None:
                    self.text[key] = hits
                    self._text_norm.setdefault(normalize_query(key), key)

    # -- searching
    def search(self, query: str, *, top_k: int = DEFAULT_TOP_K) -> TextSearchResult:
        key = query if query in self.text else self._text_norm.get(normalize_query(query))
        if key is None:
            if isinstance(self.fallback, TextSearchBackend):
                return self.fallback.search(query, top_k=top_k)
            raise SearchError("not_found", "this query is not in the replayed search cache; try another query")
        return TextSearchResult(query=query, hits=self.text[key][: max(0, top_k)], backend=self.name,
                                from_cache=True, metadata={"cache_key": key})

    def search_image(self, query: ImageQuery, *, top_k: int = DEFAULT_TOP_K) -> ImageSearchResult:
        keys = list(self.key_fn(query)) if self.key_fn else [*query.key_candidates, query.task_id]
        key = next((k for k in keys if k and k in self.images), None)
        if key is None:
            if isinstance(self.fallback, ImageSearchBackend):
                return self.fallback.search_image(query, top_k=top_k)
            raise SearchError("not_found", "no cached image search results for this sample")
        hits = []
        for title, path in self.images[key]:
            if len(hits) >= top_k:
                break
            if not path.exists():
                continue  # the release drops results whose cached image is missing
            try:
                with Image.open(path) as raw:
                    img = checked_image(raw)
            except (OSError, SearchError) as exc:
                log.warning("replay: skipping unreadable cached image %s (%s)", path, exc)
                continue
            hits.append(ImageHit(title=title, image=img, image_url=str(path)))
        return ImageSearchResult(hits=hits, backend=self.name, from_cache=True, metadata={"cache_key": key})


def _record_item(record: Any) -> tuple[str | None, Any]:
    if not isinstance(record, Mapping):
        return None, None
    for k in _RECORD_KEYS:
        if record.get(k) is not None:
            return str(record[k]), record
    return None, None


def _first(entry: Mapping[str, Any], keys: Sequence[str]) -> list[Any]:
    for k in keys:
        if isinstance(entry.get(k), list):
            return entry[k]
    return []


def _image_entry(entry: Mapping[str, Any], base_dir: Path) -> list[tuple[str, Path]]:
    out = []
    for title, p in zip(_first(entry, _TITLE_KEYS), _first(entry, _PATH_KEYS)):
        if not p or not isinstance(p, str):
            continue
        path = Path(p)
        out.append((str(title or ""), path if path.is_absolute() else base_dir / path))
    return out


def _text_entry(value: Any) -> list[TextHit] | None:
    if isinstance(value, Mapping):
        for k in _TEXT_LIST_KEYS:
            if isinstance(value.get(k), list):
                value = value[k]
                break
        else:
            return None
    if not isinstance(value, list):
        return None
    hits = []
    for r in value:
        if not isinstance(r, Mapping):
            continue
        hits.append(TextHit(
            title=str(r.get("title") or ""),
            url=str(r.get("link") or r.get("url") or ""),
            snippet=str(r.get("snippet") or r.get("text") or ""),
            date=str(r["date"]) if r.get("date") else None,
        ))
    return hits
