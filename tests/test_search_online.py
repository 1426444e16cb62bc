"""Online backends (SerpAPI, Serper) against a local HTTP server replaying recorded-format JSON."""

from __future__ import annotations

import io
import time
from collections import defaultdict, deque
from urllib.parse import parse_qs, urlparse

import pytest
from PIL import Image

from deepeyes_gym.envs.search.base import ImageQuery
from deepeyes_gym.envs.search.online import RateLimiter, SearchCache, SerpApiSearch, SerperSearch
from deepeyes_gym.envs.task import Task
from deepeyes_gym.envs.tools import ToolContext
from deepeyes_gym.envs.tools.search import ImageSearchTool, TextSearchTool
from httpserver import LocalServer, QuietHandler

pytestmark = pytest.mark.timeout(60)

KEY = "test-key-123"


def serpapi_google(query: str) -> dict:
    """The shape SerpAPI's engine=google answers with (trimmed)."""
    return {
        "search_metadata": {"id": "abc", "status": "Success", "total_time_taken": 0.9},
        "search_parameters": {"engine": "google", "q": query, "google_domain": "google.com"},
        "search_information": {"total_results": 123000, "time_taken_displayed": 0.31},
        "organic_results": [
            {"position": i + 1, "title": f"{query} result {i + 1}", "link": f"https://site{i}.example/{i}",
             "displayed_link": f"https://site{i}.example", "snippet": f"Snippet {i + 1} about {query}.",
             **({"date": "Jan 5, 2024"} if i == 0 else {})}
            for i in range(7)
        ],
    }


def serpapi_lens(base: str) -> dict:
    return {
        "search_metadata": {"status": "Success"},
        "visual_matches": [
            {"position": i + 1, "title": f"Lens match {i + 1}", "link": f"https://page{i}.example",
             "source": "example", "thumbnail": f"{base}/thumb/{i}.png", "image": f"{base}/full/{i}.png"}
            for i in range(6)
        ],
    }


def serper_search(query: str) -> dict:
    return {
        "searchParameters": {"q": query, "type": "search", "engine": "google"},
        "organic": [
            {"title": f"{query} page {i + 1}", "link": f"https://serper{i}.example", "snippet": f"About {query} {i}.",
             "position": i + 1, **({"date": "2 days ago"} if i == 1 else {})}
            for i in range(6)
        ],
        "credits": 1,
    }


def serper_lens(base: str) -> dict:
    return {
        "searchParameters": {"type": "lens"},
        "organic": [
            {"title": f"Serper lens {i + 1}", "source": "x", "link": f"https://l{i}.example",
             "imageUrl": f"{base}/full/{i}.png", "thumbnailUrl": f"{base}/thumb/{i}.png"}
            for i in range(5)
        ],
    }


def thumbnail_png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24 + i, 20), (40 * i % 255, 90, 200)).save(buf, "PNG")
    return buf.getvalue()


class FakeAPI(LocalServer):
    """Counts every request; scripted responses per query, else recorded-format answers."""

    def __init__(self) -> None:
        self.script: dict[str, deque] = defaultdict(deque)
        api = self

        class Handler(QuietHandler):
            def do_GET(self):
                url = urlparse(self.path)
                params = {k: v[0] for k, v in parse_qs(url.query).items()}
                api.handle(self, "GET", url.path, params)

            def do_POST(self):
                api.handle(self, "POST", urlparse(self.path).path, self.json_body())

        super().__init__(Handler)

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def handle(self, h: QuietHandler, method: str, path: str, data: dict) -> None:
        key = h.headers.get("X-API-KEY") or data.get("api_key")
        with self.lock:
            self.requests.append({"method": method, "path": path, "data": data, "key": key})
        if path.startswith("/thumb/"):
            return h.reply(200, thumbnail_png(int(path.rsplit("/", 1)[1].split(".")[0])), "image/png")
        if key != KEY:
            return h.reply(401, {"error": "Invalid API key. Your API key should be here: https://serpapi.com/manage-api-key"})
        q = data.get("q") or data.get("url") or ""
        with self.lock:
            scripted = self.script[q].popleft() if self.script[q] else None
        if scripted is not None:
            status, body, headers, delay = scripted
            if delay:
                time.sleep(delay)
            return h.reply(status, body, headers=headers)
        if path == "/search.json" and data.get("engine") == "google":
            return h.reply(200, serpapi_google(q))
        if path == "/search.json" and data.get("engine") == "google_lens":
            return h.reply(200, serpapi_lens(self.base))
        if path == "/search":
            return h.reply(200, serper_search(q))
        if path == "/lens":
            return h.reply(200, serper_lens(self.base))
        return h.reply(404, {"error": "no such endpoint"})


@pytest.fixture
def api():
    with FakeAPI() as server:
        yield server


def make(cls, api, tmp_path, **kw):
    opts = dict(api_key=KEY, base_url=api.base, cache_path=tmp_path / "cache.sqlite", backoff_s=0.01,
                rate_limit_per_s=None, timeout_s=2.0, max_retries=3)
    opts.update(kw)
    return cls(**opts)


def ctx(images=(), task=None):
    return ToolContext(task_id=task.id if task else "t", images=list(images), task=task)


@pytest.mark.parametrize("cls", [SerpApiSearch, SerperSearch])
def test_text_search_then_cache_hit_with_zero_http_calls(api, tmp_path, cls):
    tool = TextSearchTool(backend=make(cls, api, tmp_path))
    first = tool.execute(tool.parse({"query": "eiffel tower height"}), ctx())
    assert first.error is None and api.count == 1
    assert first.text.startswith("<tool_response>\nA Google search for 'eiffel tower height' found 5 results:")
    assert "Snippet 1 about eiffel" in first.text or "About eiffel tower height 0." in first.text
    assert first.metadata["from_cache"] is False

    second = tool.execute(tool.parse({"query": "eiffel tower height"}), ctx())
    assert api.count == 1  # served from the cache: zero HTTP calls
    assert second.text == first.text and second.metadata["from_cache"] is True

    # the cache persists: a new backend on the same file makes no call either
    again = TextSearchTool(backend=make(cls, api, tmp_path)).execute({"query": "eiffel tower height"}, ctx())
    assert again.text == first.text and api.count == 1


def test_serpapi_request_shape_and_date(api, tmp_path):
    backend = make(SerpApiSearch, api, tmp_path, num_results=10, extra_params={"hl": "en"})
    res = backend.search("mount fuji", top_k=5)
    req = api.requests[0]
    assert req["method"] == "GET" and req["path"] == "/search.json"
    assert req["data"] == {"engine": "google", "q": "mount fuji", "num": "10", "hl": "en", "api_key": KEY}
    assert res.hits[0].date == "Jan 5, 2024" and res.hits[0].url == "https://site0.example/0"
    assert len(res.hits) == 5


def test_serper_request_shape(api, tmp_path):
    make(SerperSearch, api, tmp_path).search("mount fuji")
    req = api.requests[0]
    assert req["method"] == "POST" and req["path"] == "/search"
    assert req["data"] == {"q": "mount fuji", "num": 10} and req["key"] == KEY


@pytest.mark.parametrize("cls", [SerpApiSearch, SerperSearch])
def test_lens_image_search_with_thumbnails_then_cache(api, tmp_path, cls):
    tool = ImageSearchTool(backend=make(cls, api, tmp_path))
    task = Task(id="s1", question="q", answer="a", metadata={"image_url": "https://img.example/q.jpg"})
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    res = tool.execute({}, ctx([image], task))
    assert res.error is None
    assert res.text.count("<image>") == len(res.images) == 5
    assert res.text.startswith("<tool_response>\nA Google image search for the image found 5 results:")
    lens_calls = [r for r in api.requests if not r["path"].startswith("/thumb/")]
    assert len(lens_calls) == 1 and lens_calls[0]["data"].get("url") == "https://img.example/q.jpg"
    n = api.count
    assert n == 6  # one lens call + five thumbnails

    # same pixels (even with no URL now, and another task): served from cache with zero calls
    again = tool.execute({}, ctx([image.copy()]))
    assert again.error is None and again.text == res.text and api.count == n


def test_lens_needs_a_public_url_unless_cached(api, tmp_path):
    tool = ImageSearchTool(backend=make(SerpApiSearch, api, tmp_path))
    res = tool.execute({}, ctx([Image.new("RGB", (30, 30))]))
    assert res.error.startswith("config") and "public URL" in res.text and api.count == 0

    uploaded = []
    backend = make(SerpApiSearch, api, tmp_path, image_url_resolver=lambda img, sha: uploaded.append(sha) or "https://u/1.png")
    res = ImageSearchTool(backend=backend).execute({}, ctx([Image.new("RGB", (30, 30))]))
    assert res.error is None and len(uploaded) == 1 and len(uploaded[0]) == 64


def test_failed_uploader_is_a_clear_error(api, tmp_path):
    def boom(img, sha):
        raise RuntimeError("bucket unavailable")

    backend = make(SerpApiSearch, api, tmp_path, image_url_resolver=boom)
    res = ImageSearchTool(backend=backend).execute({}, ctx([Image.new("RGB", (30, 30))]))
    assert res.error.startswith("config") and "bucket unavailable" in res.text


@pytest.mark.parametrize("statuses", [[429, 200], [503, 502, 200], [500, 429, 504, 200]])
def test_429_and_5xx_are_retried(api, tmp_path, statuses):
    q = "retry me"
    for status in statuses[:-1]:
        api.script[q].append((status, {"error": "try later"}, {"Retry-After": "0"}, 0))
    tool = TextSearchTool(backend=make(SerpApiSearch, api, tmp_path))
    res = tool.execute({"query": q}, ctx())
    assert res.error is None and "found 5 results" in res.text
    assert api.count == len(statuses)


def test_retries_give_up_with_a_clear_error(api, tmp_path):
    q = "always busy"
    for _ in range(3):
        api.script[q].append((429, {"error": "Too many requests"}, {}, 0))
    backend = make(SerperSearch, api, tmp_path, max_retries=2)
    res = TextSearchTool(backend=backend).execute({"query": q}, ctx())
    assert res.error.startswith("rate_limited")
    assert "HTTP 429" in res.text and "after 3 attempts" in res.text and api.count == 3
    # failures are not cached: the next call asks again and succeeds
    assert TextSearchTool(backend=backend).execute({"query": q}, ctx()).error is None and api.count == 4


def test_server_errors_give_up_with_a_clear_error(api, tmp_path):
    for _ in range(2):
        api.script["down"].append((502, b"<html>bad gateway</html>", {}, 0))
    res = TextSearchTool(backend=make(SerpApiSearch, api, tmp_path, max_retries=1)).execute({"query": "down"}, ctx())
    assert res.error.startswith("server") and "HTTP 502" in res.text and api.count == 2


@pytest.mark.parametrize("cls", [SerpApiSearch, SerperSearch])
def test_auth_failure_is_a_clear_error_without_retry(api, tmp_path, cls):
    tool = TextSearchTool(backend=make(cls, api, tmp_path, api_key="wrong-key"))
    res = tool.execute({"query": "anything"}, ctx())
    assert res.error.startswith("auth")
    assert "rejected the API key (HTTP 401)" in res.text and "wrong-key" not in res.text
    assert api.count == 1


def test_forbidden_is_an_auth_error(api, tmp_path):
    api.script["secret"].append((403, {"message": "Forbidden"}, {}, 0))
    res = TextSearchTool(backend=make(SerperSearch, api, tmp_path)).execute({"query": "secret"}, ctx())
    assert res.error.startswith("auth") and "HTTP 403" in res.text and api.count == 1


@pytest.mark.parametrize(
    "status, body",
    [(429, {"error": "Your account has run out of searches."}), (400, {"message": "Not enough credits", "statusCode": 400})],
)
def test_quota_is_a_clear_error_without_retry(api, tmp_path, status, body):
    api.script["q"].append((status, body, {}, 0))
    res = TextSearchTool(backend=make(SerpApiSearch, api, tmp_path)).execute({"query": "q"}, ctx())
    assert res.error.startswith("quota") and "quota exhausted" in res.text and api.count == 1


def test_time_out_is_a_clear_error(api, tmp_path):
    for _ in range(2):
        api.script["slow"].append((200, serpapi_google("slow"), {}, 1.0))
    backend = make(SerpApiSearch, api, tmp_path, timeout_s=0.2, max_retries=1)
    res = TextSearchTool(backend=backend).execute({"query": "slow"}, ctx())
    assert res.error.startswith("timeout")
    assert "did not answer within 0.2 s" in res.text and "after 2 attempts" in res.text
    assert api.count == 2


def test_unreachable_server_is_a_network_error(tmp_path):
    server = FakeAPI()
    base = server.base
    server.close()  # nothing listens on that port any more
    backend = SerpApiSearch(api_key=KEY, base_url=base, cache_path=tmp_path / "c.sqlite", backoff_s=0.0,
                            max_retries=1, rate_limit_per_s=None, timeout_s=1.0)
    res = TextSearchTool(backend=backend).execute({"query": "x"}, ctx())
    assert res.error.startswith("network") and "cannot reach serpapi" in res.text


def test_non_json_and_error_bodies(api, tmp_path):
    api.script["html"].append((200, b"<html>oops</html>", {}, 0))
    api.script["err"].append((200, {"error": "Unsupported `foo` parameter."}, {}, 0))
    api.script["none"].append((200, {"error": "Google hasn't returned any results for this query."}, {}, 0))
    tool = TextSearchTool(backend=make(SerpApiSearch, api, tmp_path))
    assert tool.execute({"query": "html"}, ctx()).error.startswith("bad_response")
    api.script["list"].append((200, [1, 2], {}, 0))
    assert tool.execute({"query": "list"}, ctx()).error.startswith("bad_response")
    assert tool.execute({"query": "err"}, ctx()).error.startswith("api")
    none = tool.execute({"query": "none"}, ctx())
    assert none.error is None and "found 0 results" in none.text


def test_broken_thumbnails_are_skipped(api, tmp_path):
    url = "https://img.example/q.jpg"
    body = serpapi_lens(api.base)
    body["visual_matches"][0]["thumbnail"] = f"{api.base}/missing/0.png"  # 401/404 from the server
    body["visual_matches"][1]["thumbnail"] = "data:image/png;base64,bm90IGFuIGltYWdl"  # not an image
    api.script[url].append((200, body, {}, 0))
    task = Task(id="s", question="q", answer="a", metadata={"image_url": url})
    res = ImageSearchTool(backend=make(SerpApiSearch, api, tmp_path, max_retries=0)).execute(
        {}, ctx([Image.new("RGB", (20, 20))], task))
    assert res.error is None and len(res.images) == res.text.count("<image>") == 3
    assert "[Lens match 1]" not in res.text and "[Lens match 3]" in res.text


def test_key_from_environment_and_never_stored(api, tmp_path, monkeypatch):
    monkeypatch.delenv("SERPAPI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="SERPAPI_API_KEY"):
        SerpApiSearch(base_url=api.base, cache_path=False)
    monkeypatch.setenv("SERPER_API_KEY", KEY)
    backend = SerperSearch(base_url=api.base, cache_path=tmp_path / "k.sqlite", rate_limit_per_s=None)
    assert backend.search("keyed").hits and KEY not in repr(backend)
    serp = make(SerpApiSearch, api, tmp_path, cache_path=tmp_path / "k.sqlite")
    serp.search("keyed too")
    backend.close()
    serp.close()
    for f in tmp_path.glob("k.sqlite*"):
        assert KEY.encode() not in f.read_bytes()


def test_tool_builds_online_backends_by_name(api, tmp_path):
    tool = TextSearchTool(backend="serper", api_key=KEY, base_url=api.base, cache_path=tmp_path / "n.sqlite",
                          rate_limit_per_s=None)
    assert tool.execute({"query": "by name"}, ctx()).error is None
    tool.close()
    with pytest.raises(ValueError, match="corpus= applies"):
        TextSearchTool(backend="serper", corpus="x", api_key=KEY)


def test_in_memory_cache_and_ttl(tmp_path):
    mem = SearchCache(None)
    mem.put_json({"q": 1}, {"a": 1})
    assert mem.get_json({"q": 1}) == {"a": 1} and len(mem) == 1
    stale = SearchCache(tmp_path / "ttl.sqlite", ttl_s=0.0)
    stale.put_json({"q": 1}, {"a": 1})
    time.sleep(0.01)
    assert stale.get_json({"q": 1}) is None


def test_rate_limiter_spaces_requests():
    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    waits = [limiter.acquire() for _ in range(4)]
    assert waits[0] == 0.0 and waits[1:] == pytest.approx([0.25, 0.25, 0.25])
    now[0] += 10  # idle time does not bank a burst beyond one request
    assert limiter.acquire() == 0.0 and limiter.acquire() == pytest.approx(0.25)
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_backends_share_one_limiter_per_provider(api, tmp_path):
    a = make(SerpApiSearch, api, tmp_path, rate_limit_per_s=1000.0)
    b = make(SerpApiSearch, api, tmp_path, rate_limit_per_s=500.0)
    c = make(SerperSearch, api, tmp_path, rate_limit_per_s=1000.0)
    assert a.limiter is b.limiter and a.limiter is not c.limiter
    assert a.limiter.interval == pytest.approx(1 / 500)  # the strictest rate wins
    assert make(SerpApiSearch, api, tmp_path).limiter is None  # rate_limit_per_s=None: no limit


def test_image_query_direct(api, tmp_path):
    backend = make(SerperSearch, api, tmp_path)
    res = backend.search_image(ImageQuery(image=Image.new("RGB", (10, 10)), image_url="https://x/y.png"), top_k=2)
    assert [h.title for h in res.hits] == ["Serper lens 1", "Serper lens 2"]
    assert res.hits[0].url == "https://l0.example" and res.hits[0].image is not None
