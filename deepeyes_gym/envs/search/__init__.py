"""Search backends for the ``search`` and ``image_search`` tools.

* ``offline`` (default): an sqlite FTS5 text index and a perceptual-hash image index built from a
  corpus directory — no key, no network.
* ``serpapi`` / ``serper``: real Google / Google Lens results with a persistent cache, retries
  and a rate limit (key from the constructor or ``$SERPAPI_API_KEY`` / ``$SERPER_API_KEY``).
* ``replay``: a recorded DeepEyesV2 / MMSearch-R1 search cache.

:func:`make_backend` builds one by name; the tools accept a name or a backend object.
"""

from __future__ import annotations

import os
from typing import Any

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
    render_error,
    render_image_results,
    render_text_results,
)
from .corpus import CorpusError

__all__ = [
    "DEFAULT_TOP_K",
    "OfflineSearch",
    "OfflineTextIndex",
    "OfflineImageIndex",
    "SerpApiSearch",
    "SerperSearch",
    "SearchCache",
    "ReplaySearch",
    "BACKENDS",
    "CorpusError",
    "ImageHit",
    "ImageQuery",
    "ImageSearchBackend",
    "ImageSearchResult",
    "SearchError",
    "TextHit",
    "TextSearchBackend",
    "TextSearchResult",
    "make_backend",
    "render_error",
    "render_image_results",
    "render_text_results",
]

BACKENDS = ("offline", "serpapi", "serper", "replay")

_LAZY = {  # backend classes, imported on first use
    "OfflineSearch": ".offline",
    "OfflineTextIndex": ".offline",
    "OfflineImageIndex": ".offline",
    "SerpApiSearch": ".online",
    "SerperSearch": ".online",
    "SearchCache": ".online",
    "ReplaySearch": ".replay",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_backend(kind: str, **kwargs: Any) -> Any:
    """Build a backend by name.

    ``offline``: ``corpus`` (directory), ``index_dir``; one shared instance per corpus.
    ``serpapi`` / ``serper``: see :class:`.online.OnlineSearch` (``api_key``, ``base_url``,
    ``cache_path``, ``timeout_s``, ``max_retries``, ``rate_limit_per_s``, ...).
    ``replay``: ``cache`` (path(s) or dict), ``image_root``, ``fallback``.
    """
    if kind == "offline":
        from .offline import open_offline

        corpus = kwargs.pop("corpus", None)
        if corpus is None:
            raise ValueError("the offline search backend needs corpus=<directory>")
        if kwargs.keys() - {"index_dir"}:
            raise TypeError(f"unexpected offline backend options: {sorted(kwargs.keys() - {'index_dir'})}")
        return open_offline(os.fspath(corpus), index_dir=kwargs.get("index_dir"))
    if kind == "serpapi":
        from .online import SerpApiSearch

        return SerpApiSearch(**kwargs)
    if kind == "serper":
        from .online import SerperSearch

        return SerperSearch(**kwargs)
    if kind == "replay":
        from .replay import ReplaySearch

        if "cache" not in kwargs:
            raise ValueError("the replay search backend needs cache=<path or dict>")
        return ReplaySearch(**kwargs)
    raise ValueError(f"unknown search backend {kind!r}; choose one of {', '.join(BACKENDS)}")
