"""The DeepEyesV2 search tools: ``search`` (text, a ``query`` argument) and ``image_search``
(reverse image search of the ORIGINAL first input image, no arguments).

The observation is the release's ``<tool_response>`` block (see
:mod:`deepeyes_gym.envs.search.base`); image results carry one ``<image>`` per attached image.
Failures of any kind — bad query, unreadable or oversized image, API errors — come back as an
error observation with ``ToolResult.error`` set; ``execute`` never raises.

The backend is a constructor argument: ``"offline"`` (default; ``corpus=`` a corpus directory,
else ``$DEEPEYES_GYM_SEARCH_CORPUS``, else the bundled RealX corpus), ``"serpapi"``,
``"serper"``, ``"replay"``, or any backend object; extra keyword arguments go to the backend.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from ..search import make_backend
from ..search.corpus import CorpusError
from ..search.base import (
    DEFAULT_TOP_K,
    ImageQuery,
    SearchError,
    checked_image,
    render_error,
    render_image_results,
    render_text_results,
    sanitize_query,
)
from .base import Tool, ToolContext, ToolError, ToolResult

__all__ = ["TextSearchTool", "ImageSearchTool", "default_corpus"]

log = logging.getLogger(__name__)

MAX_IMAGES_PER_TURN = 10  # protocol: at most 10 images come back per turn
_SAMPLE_KEYS = ("index", "data_idx", "sample_id", "data_id")  # metadata keys replayed caches use


def default_corpus() -> Path:
    """The corpus the offline backend uses when none is given."""
    env = os.environ.get("DEEPEYES_GYM_SEARCH_CORPUS")
    if env:
        return Path(env)
    try:
        from ..suites.realx import load_suite  # the bundled suite ships the default corpus
    except ImportError as exc:
        raise SearchError("config", "no search corpus configured (pass corpus=<directory>)") from exc
    return Path(load_suite(split="eval").corpus_dir)


class _SearchTool(Tool):
    """Backend selection and the never-raise wrapper shared by both tools."""

    _method = ""  # backend method the tool needs

    def __init__(
        self,
        backend: Any = "offline",
        *,
        corpus: str | os.PathLike[str] | None = None,
        top_k: int = DEFAULT_TOP_K,
        **backend_kwargs: Any,
    ) -> None:
        self.top_k = int(top_k)
        if self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        self._lock = threading.Lock()
        self._owns_backend = False
        self._backend: Any = None
        self._pending: tuple[str, dict[str, Any]] | None = None
        if isinstance(backend, str):
            if backend == "offline":
                kwargs = dict(backend_kwargs)
                if corpus is not None:
                    kwargs["corpus"] = os.fspath(corpus)
                    self._backend = make_backend("offline", **kwargs)
                else:
                    self._pending = ("offline", kwargs)  # resolve the default corpus on first use
            else:
                if corpus is not None:
                    raise ValueError(f"corpus= applies to the offline backend, not {backend!r}")
                self._backend = make_backend(backend, **backend_kwargs)
                self._owns_backend = True
        else:
            if backend_kwargs or corpus is not None:
                raise ValueError("options cannot be combined with a backend object")
            if not callable(getattr(backend, self._method, None)):
                raise TypeError(f"the backend of '{self.name}' must have a {self._method}() method")
            self._backend = backend

    @property
    def backend(self) -> Any:
        """The backend object (built now if it was deferred)."""
        with self._lock:
            if self._backend is None and self._pending is not None:
                kind, kwargs = self._pending
                self._backend = make_backend(kind, corpus=default_corpus(), **kwargs)
                self._pending = None
            return self._backend

    def execute(self, args: Any, ctx: ToolContext) -> ToolResult:
        start = time.perf_counter()
        try:
            result = self._run(args, ctx)
        except SearchError as exc:
            result = _error(exc.kind, exc.message)
        except CorpusError as exc:  # a malformed or missing corpus: a setup problem, reported
            result = _error("config", str(exc))
        except Exception as exc:  # a backend bug must not end the episode; it is logged
            log.exception("%s tool failed", self.name)
            result = _error("internal", f"{type(exc).__name__}: {exc}")
        result.metadata.setdefault("latency_s", time.perf_counter() - start)
        return result

    def _run(self, args: Any, ctx: ToolContext) -> ToolResult:
        raise NotImplementedError

    def close(self) -> None:
        if self._owns_backend and self._backend is not None:
            self._backend.close()


def _error(kind: str, message: str) -> ToolResult:
    return ToolResult(render_error(kind, message), error=f"{kind}: {message}", metadata={"error_kind": kind})


class TextSearchTool(_SearchTool):
    """Web search for a text query; the top results (title, link, snippet, date)."""

    name = "search"
    description = (
        "Web search: returns the top results (title, link, snippet) for a text query. "
        "Use it to look up facts you do not know."
    )
    parameters = {
        "type": "object",
        "properties": {"query": {"type": "string", "description": "Search query to find relevant information."}},
        "required": ["query"],
    }
    _method = "search"

    def parse(self, arguments: Any) -> Any:
        if isinstance(arguments, Mapping) and isinstance(arguments.get("query"), (bytes, bytearray)):
            arguments = {**arguments, "query": bytes(arguments["query"]).decode("utf-8", errors="replace")}
        return super().parse(arguments)

    def _run(self, args: Any, ctx: ToolContext) -> ToolResult:
        if not isinstance(args, Mapping) or "query" not in args:
            raise SearchError("bad_query", "the search tool needs a 'query' string argument")
        query = sanitize_query(args["query"])
        result = self.backend.search(query, top_k=self.top_k)
        hits = list(result.hits)[: self.top_k]
        return ToolResult(
            render_text_results(query, hits),
            metadata={
                "backend": result.backend,
                "query": query,
                "from_cache": result.from_cache,
                "hits": [h.to_dict() for h in hits],
                "doc_ids": [h.doc_id for h in hits],
            },
        )


class ImageSearchTool(_SearchTool):
    """Reverse image search (Google Lens style) of the original first input image."""

    name = "image_search"
    description = (
        "Reverse image search with the original input image: returns the top matching web "
        "images with their page titles. Takes no arguments."
    )
    parameters = {"type": "object", "properties": {}, "required": []}
    _method = "search_image"

    def parse(self, arguments: Any) -> Any:
        if arguments is None:  # {"name": "image_search"} with "arguments": null
            return {}
        if not isinstance(arguments, Mapping):
            raise ToolError("'image_search' takes no arguments; call it as {\"name\": \"image_search\"}")
        return super().parse(arguments)

    def _run(self, args: Any, ctx: ToolContext) -> ToolResult:
        if not ctx.images:
            raise SearchError("bad_image", "this task has no input image to search with")
        image = checked_image(ctx.images[0])
        md: Mapping[str, Any] = (ctx.task.metadata or {}) if ctx.task is not None else {}
        keys = tuple(str(md[k]) for k in _SAMPLE_KEYS if md.get(k) is not None)
        query = ImageQuery(
            image=image,
            task_id=ctx.task_id,
            key_candidates=keys,
            image_url=str(md["image_url"]) if md.get("image_url") else None,
            metadata=md,
        )
        result = self.backend.search_image(query, top_k=self.top_k)
        hits = [h for h in result.hits if h.image is not None][: min(self.top_k, MAX_IMAGES_PER_TURN)]
        return ToolResult(
            render_image_results(hits),
            images=[h.image for h in hits],
            metadata={
                "backend": result.backend,
                "from_cache": result.from_cache,
                "hits": [h.to_dict() for h in hits],
                "image_ids": [h.image_id for h in hits],
            },
        )
