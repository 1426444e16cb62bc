"""Online search: SerpAPI (Google, Google Lens) and Serper, over ``requests``.

Every answer is cached in a persistent sqlite file keyed by the request (query, or the image's
content hash for reverse image search) — never by the API key — so a repeated query costs no HTTP
call and no money. Requests are rate limited per provider across the process, retried with
exponential back-off (honouring ``Retry-After``) on 429, 5xx, time-outs and dropped connections,
and every failure ends as a :class:`~.base.SearchError` whose kind and message the tool turns
into a clear observation (auth failure, quota, time-out, ...), never an empty result list.

Google Lens needs a public URL of the image: give ``image_url_resolver`` (e.g. an uploader
returning a URL) or put ``image_url`` in the task metadata. A cached image needs neither.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import requests
from PIL import Image

from ...http import RETRY_STATUS, HTTPRetryError, RetryableResponse, RetryPolicy, request_with_retries
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
    image_sha256,
)
from .corpus import user_cache_dir

__all__ = ["RateLimiter", "SearchCache", "OnlineSearch", "SerpApiSearch", "SerperSearch", "default_cache_path"]

log = logging.getLogger(__name__)

MAX_THUMBNAIL_BYTES = 8 << 20
_QUOTA_PHRASES = ("run out of searches", "out of searches", "not enough credits", "quota", "credits")


def default_cache_path() -> Path:
    return user_cache_dir() / "search-cache.sqlite"


class RateLimiter:
    """At most ``rate_per_s`` acquisitions per second (evenly spaced), thread-safe."""

    def __init__(
        self,
        rate_per_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self.interval = 1.0 / rate_per_s
        self._clock, self._sleep = clock, sleep
        self._next = float("-inf")
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Block until a request may go; return the seconds waited."""
        with self._lock:
            now = self._clock()
            wait = max(0.0, self._next - now)
            if wait > 0:
                self._sleep(wait)
            self._next = max(now, self._next) + self.interval
            return wait


_LIMITERS: dict[str, RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def _shared_limiter(provider: str, rate_per_s: float) -> RateLimiter:
    """One limiter per provider in this process (all envs and tools share it; the strictest
    rate asked for wins)."""
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(provider)
        if limiter is None:
            limiter = _LIMITERS[provider] = RateLimiter(rate_per_s)
        else:
            limiter.interval = max(limiter.interval, 1.0 / rate_per_s)
        return limiter


class SearchCache:
    """Raw API answers and downloaded thumbnails in one sqlite file (``None`` path: in memory)."""

    def __init__(self, path: str | os.PathLike[str] | None, *, ttl_s: float | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.ttl_s = ttl_s
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(str(self.path) if self.path else ":memory:", timeout=30,
                                    check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            if self.path is not None:
                self._con.execute("PRAGMA journal_mode=WAL")
            self._con.executescript(
                """
                CREATE TABLE IF NOT EXISTS responses(key TEXT PRIMARY KEY, request TEXT, body TEXT, created REAL);
                CREATE TABLE IF NOT EXISTS blobs(key TEXT PRIMARY KEY, data BLOB, created REAL);
                """
            )
            self._con.commit()

    @staticmethod
    def key(request: Mapping[str, Any]) -> str:
        return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _fresh(self, created: float) -> bool:
        return self.ttl_s is None or time.time() - created <= self.ttl_s

    def get_json(self, request: Mapping[str, Any]) -> Any | None:
        with self._lock:
            row = self._con.execute("SELECT body, created FROM responses WHERE key = ?",
                                    (self.key(request),)).fetchone()
        if row is None or not self._fresh(row[1]):
            return None
        return json.loads(row[0])

    def put_json(self, request: Mapping[str, Any], body: Any) -> None:
        with self._lock:
            self._con.execute("INSERT OR REPLACE INTO responses VALUES (?,?,?,?)",
                              (self.key(request), json.dumps(request, ensure_ascii=False),
                               json.dumps(body, ensure_ascii=False), time.time()))
            self._con.commit()

    def get_blob(self, name: str) -> bytes | None:
        with self._lock:
            row = self._con.execute("SELECT data, created FROM blobs WHERE key = ?", (name,)).fetchone()
        return bytes(row[0]) if row is not None and self._fresh(row[1]) else None

    def put_blob(self, name: str, data: bytes) -> None:
        with self._lock:
            self._con.execute("INSERT OR REPLACE INTO blobs VALUES (?,?,?)", (name, data, time.time()))
            self._con.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._con.execute("SELECT count(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._con.close()


class OnlineSearch(TextSearchBackend, ImageSearchBackend):
    """Shared machinery of the online providers: key, HTTP with retries, rate limit, cache.

    Subclasses say how to build a request and parse its answer. ``http_calls`` and
    ``cache_hits`` count what happened (tests and cost reports read them).
    """

    provider = "online"
    env_var = ""
    default_base_url = ""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        cache_path: str | os.PathLike[str] | None | bool = True,
        cache_ttl_s: float | None = None,
        timeout_s: float = 20.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        rate_limit_per_s: float | None = 5.0,
        num_results: int = 10,
        image_url_resolver: Callable[[Image.Image, str], str] | None = None,
        extra_params: Mapping[str, Any] | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(self.env_var, "")
        if not key:
            raise ValueError(
                f"{self.provider} search needs an API key: pass api_key=... or set ${self.env_var}"
            )
        self._api_key = key
        self.base_url = (base_url or self.default_base_url).rstrip("/")
        if cache_path is True:
            cache_path = default_cache_path()
        self.cache = SearchCache(None if cache_path is False else cache_path, ttl_s=cache_ttl_s)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.limiter = _shared_limiter(self.provider, rate_limit_per_s) if rate_limit_per_s else None
        self.num_results = int(num_results)
        self.image_url_resolver = image_url_resolver
        self.extra_params = dict(extra_params or {})
        self._session = session or requests.Session()
        self._own_session = session is None
        self._sleep = sleep
        self.http_calls = 0
        self.cache_hits = 0
        self._count_lock = threading.Lock()
        self.name = self.provider

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    # -- provider specifics
    def _text_request(self, query: str) -> tuple[str, str, dict[str, Any]]:
        """(method, url, request kwargs without the key) for a text query."""
        raise NotImplementedError

    def _image_request(self, image_url: str) -> tuple[str, str, dict[str, Any]]:
        raise NotImplementedError

    def _with_key(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _parse_text(self, body: Any) -> list[TextHit]:
        raise NotImplementedError

    def _parse_image(self, body: Any) -> list[tuple[str, str, str | None]]:
        """(title, page link, thumbnail url) triples."""
        raise NotImplementedError

    def _body_error(self, body: Any) -> str | None:
        """An error message carried in a 200 answer, or None."""
        if isinstance(body, Mapping) and body.get("error"):
            return str(body["error"])
        return None

    # -- searching
    def search(self, query: str, *, top_k: int = DEFAULT_TOP_K) -> TextSearchResult:
        method, url, kwargs = self._text_request(query)
        # keyed by what identifies the answer: not the key, not the host (a proxy gives the same)
        request = {"provider": self.provider, "kind": "text", "method": method,
                   "path": url[len(self.base_url):], **_strip_key(kwargs)}
        body, from_cache = self._cached(request, lambda: self._call(method, url, kwargs))
        hits = self._parse_text(body)[: max(0, top_k)]
        return TextSearchResult(query=query, hits=hits, backend=self.provider, from_cache=from_cache)

    def search_image(self, query: ImageQuery, *, top_k: int = DEFAULT_TOP_K) -> ImageSearchResult:
        digest = image_sha256(query.image)
        request = {"provider": self.provider, "kind": "image", "image_sha256": digest, **self.extra_params}
        body = self.cache.get_json(request)
        from_cache = body is not None
        if body is None:
            image_url = query.image_url
            if image_url is None and self.image_url_resolver is not None:
                try:
                    image_url = self.image_url_resolver(query.image, digest)
                except Exception as exc:  # a user's uploader: report, do not crash
                    raise SearchError("config", f"uploading the image for {self.provider} failed: {exc}") from exc
            if not image_url:
                raise SearchError(
                    "config",
                    f"{self.provider} reverse image search needs a public URL of the image; "
                    "pass image_url_resolver=... or set task.metadata['image_url']",
                )
            method, url, kwargs = self._image_request(image_url)
            body = self._call(method, url, kwargs)
            self.cache.put_json(request, body)
        else:
            with self._count_lock:
                self.cache_hits += 1
        hits = []
        for title, link, thumb_url in self._parse_image(body)[: max(0, top_k)]:
            hits.append(ImageHit(title=title, url=link, image=self._thumbnail(thumb_url) if thumb_url else None,
                                 image_url=thumb_url))
        return ImageSearchResult(hits=hits, backend=self.provider, from_cache=from_cache)

    def _cached(self, request: dict[str, Any], fetch: Callable[[], Any]) -> tuple[Any, bool]:
        body = self.cache.get_json(request)
        if body is not None:
            with self._count_lock:
                self.cache_hits += 1
            return body, True
        body = fetch()
        self.cache.put_json(request, body)
        return body, False

    # -- HTTP
    def _send(self, method: str, url: str, kwargs: dict[str, Any]) -> requests.Response:
        if self.limiter is not None:
            self.limiter.acquire()
        with self._count_lock:
            self.http_calls += 1
        return self._session.request(method, url, timeout=self.timeout_s, **kwargs)

    def _call(self, method: str, url: str, kwargs: dict[str, Any]) -> Any:
        """One API call with retries; returns the parsed JSON or raises SearchError."""
        kwargs = self._with_key(kwargs)
        try:
            return request_with_retries(lambda: self._send(method, url, kwargs), policy=self._policy(),
                                        retry_on=(), handle=self._read, sleep=self._sleep)
        except requests.RequestException as exc:  # neither a time-out nor a dropped connection
            raise SearchError("network", f"{self.provider} request failed ({type(exc).__name__})") from exc
        except HTTPRetryError as err:
            attempts = err.attempts
            if err.response is not None:
                kind = "rate_limited" if err.status == 429 else "server"
                message = f"{self.provider} answered HTTP {err.status}: {err.reason}"
            elif isinstance(err.exception, requests.Timeout):
                kind, message = "timeout", f"{self.provider} did not answer within {self.timeout_s:g} s"
            else:
                kind, message = "network", f"cannot reach {self.provider} ({type(err.exception).__name__})"
        raise SearchError(kind, f"{message} (after {attempts} attempts)")

    def _policy(self, **changes: Any) -> RetryPolicy:
        options = {"honour_retry_after": True, **changes}
        return RetryPolicy(self.max_retries, self.backoff_s, self.max_backoff_s, **options)

    def _read(self, resp: requests.Response) -> Any:
        """The JSON object of one answer; raises SearchError, or RetryableResponse on 429/5xx."""
        status = resp.status_code
        body = _json_or_none(resp)
        message = _message(body, resp)
        if status in (401, 403):
            raise SearchError("auth", f"{self.provider} rejected the API key (HTTP {status}): {message}")
        if _is_quota(status, message):  # before the retry: an exhausted quota is no transient 429
            raise SearchError("quota", f"{self.provider} quota exhausted (HTTP {status}): {message}")
        if status in RETRY_STATUS:
            raise RetryableResponse(message)
        if status >= 400:
            raise SearchError("api", f"{self.provider} refused the request (HTTP {status}): {message}")
        if not isinstance(body, Mapping):
            raise SearchError("bad_response", f"{self.provider} answered with something other than a JSON object")
        err = self._body_error(body)
        if err is not None:
            raise SearchError("api", f"{self.provider} error: {err}")
        return body

    def _thumbnail(self, url: str) -> Image.Image | None:
        """The result's thumbnail (cached); None when it cannot be had — the hit is then skipped."""
        data = self.cache.get_blob(url)
        if data is None:
            try:
                data = self._download(url)
            except Exception as exc:  # a missing thumbnail must not fail the whole search
                log.warning("%s: thumbnail unavailable (%s)", self.provider, exc)
                return None
            self.cache.put_blob(url, data)
        try:
            return checked_image(data)
        except SearchError as exc:
            log.warning("%s: unreadable thumbnail (%s)", self.provider, exc)
            return None

    def _download(self, url: str) -> bytes:
        if url.startswith("data:"):
            try:
                return base64.b64decode(url.split(",", 1)[1])
            except (IndexError, binascii.Error) as exc:
                raise ValueError("malformed data URL") from exc

        def send() -> requests.Response:
            with self._count_lock:
                self.http_calls += 1
            return self._session.get(url, timeout=self.timeout_s, stream=True)

        try:
            resp = request_with_retries(send, policy=self._policy(jitter=None, honour_retry_after=False),
                                        sleep=self._sleep)
        except HTTPRetryError as err:
            if err.response is not None:
                err.response.raise_for_status()  # a 429/5xx the last time
            elif err.exception is not None:
                raise err.exception from None  # the last time-out or dropped connection
            raise ValueError("thumbnail download failed") from None
        with resp:
            resp.raise_for_status()
            buf = io.BytesIO()
            for chunk in resp.iter_content(1 << 16):
                buf.write(chunk)
                if buf.tell() > MAX_THUMBNAIL_BYTES:
                    raise ValueError("thumbnail larger than 8 MiB")
            return buf.getvalue()

    def close(self) -> None:
        if self._own_session:
            self._session.close()
        self.cache.close()


class SerpApiSearch(OnlineSearch):
    """SerpAPI: ``engine=google`` for text, ``engine=google_lens`` for images (GET, key as a parameter)."""

    provider = "serpapi"
    env_var = "SERPAPI_API_KEY"
    default_base_url = "https://serpapi.com"

    def _text_request(self, query: str) -> tuple[str, str, dict[str, Any]]:
        params = {"engine": "google", "q": query, "num": self.num_results, **self.extra_params}
        return "GET", f"{self.base_url}/search.json", {"params": params}

    def _image_request(self, image_url: str) -> tuple[str, str, dict[str, Any]]:
        params = {"engine": "google_lens", "url": image_url, **self.extra_params}
        return "GET", f"{self.base_url}/search.json", {"params": params}

    def _with_key(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**kwargs, "params": {**kwargs.get("params", {}), "api_key": self._api_key}}

    def _body_error(self, body: Any) -> str | None:
        err = super()._body_error(body)
        # SerpAPI reports an empty result page as an "error"; that is an answer, not a failure.
        if err and "hasn't returned any results" in err:
            return None
        return err

    def _parse_text(self, body: Any) -> list[TextHit]:
        return _text_hits(body.get("organic_results"))

    def _parse_image(self, body: Any) -> list[tuple[str, str, str | None]]:
        out = []
        for r in body.get("visual_matches") or []:
            if isinstance(r, Mapping):
                out.append((str(r.get("title") or ""), str(r.get("link") or ""),
                            _opt(r.get("thumbnail") or r.get("image"))))
        return out


class SerperSearch(OnlineSearch):
    """Serper: POST ``/search`` and ``/lens`` with the key in the ``X-API-KEY`` header."""

    provider = "serper"
    env_var = "SERPER_API_KEY"
    default_base_url = "https://google.serper.dev"

    def _text_request(self, query: str) -> tuple[str, str, dict[str, Any]]:
        body = {"q": query, "num": self.num_results, **self.extra_params}
        return "POST", f"{self.base_url}/search", {"json": body}

    def _image_request(self, image_url: str) -> tuple[str, str, dict[str, Any]]:
        return "POST", f"{self.base_url}/lens", {"json": {"url": image_url, **self.extra_params}}

    def _with_key(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**kwargs, "headers": {**kwargs.get("headers", {}), "X-API-KEY": self._api_key}}

    def _body_error(self, body: Any) -> str | None:
        if isinstance(body, Mapping) and body.get("message") and not body.get("organic"):
            return str(body["message"])
        return super()._body_error(body)

    def _parse_text(self, body: Any) -> list[TextHit]:
        return _text_hits(body.get("organic"))

    def _parse_image(self, body: Any) -> list[tuple[str, str, str | None]]:
        out = []
        for r in body.get("organic") or []:
            if isinstance(r, Mapping):
                out.append((str(r.get("title") or ""), str(r.get("link") or ""),
                            _opt(r.get("thumbnailUrl") or r.get("imageUrl"))))
        return out


# --------------------------------------------------------------------------- helpers


def _text_hits(rows: Any) -> list[TextHit]:
    """Organic web results (SerpAPI and Serper share the title/link/snippet/date fields)."""
    return [
        TextHit(title=str(r.get("title") or ""), url=str(r["link"]),
                snippet=str(r.get("snippet") or ""), date=_opt(r.get("date")))
        for r in rows or []
        if isinstance(r, Mapping) and r.get("link")
    ]


def _opt(value: Any) -> str | None:
    return str(value) if value else None


def _strip_key(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Request parts that identify the answer (the key is added later and never cached)."""
    return {k: v for k, v in kwargs.items() if k in ("params", "json")}


def _json_or_none(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def _message(body: Any, resp: requests.Response) -> str:
    if isinstance(body, Mapping):
        for key in ("error", "message"):
            if body.get(key):
                return str(body[key])[:300]
    return (resp.reason or "no details")[:300]


def _is_quota(status: int, message: str) -> bool:
    low = message.lower()
    return status in (400, 402, 429) and any(p in low for p in _QUOTA_PHRASES)

