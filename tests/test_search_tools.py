"""The `search` and `image_search` tools through the Tool API (and one episode through the env)."""

from __future__ import annotations

import io
import json
import random
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from deepeyes_gym.envs.search.base import (
    ImageHit,
    ImageQuery,
    ImageSearchBackend,
    ImageSearchResult,
    TextHit,
    TextSearchBackend,
    TextSearchResult,
    render_image_results,
    render_text_results,
)
from deepeyes_gym.envs.search.synthetic import distort_image, make_synthetic_corpus
from deepeyes_gym.envs.task import Task
from deepeyes_gym.envs.tools import ToolContext, ToolError, make_tool
from deepeyes_gym.envs.tools.search import ImageSearchTool, TextSearchTool

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tool-corpus")
    return make_synthetic_corpus(root, n_docs=200, n_images=30, seed=5, image_size=(160, 120))


@pytest.fixture(scope="module")
def text_tool(corpus):
    return TextSearchTool(corpus=corpus.root)


@pytest.fixture(scope="module")
def image_tool(corpus):
    return ImageSearchTool(corpus=corpus.root)


def ctx(images=()):
    return ToolContext(task_id="t1", images=list(images))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose pixel data is a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- exact rendering

def test_text_rendering_is_the_release_format():
    hits = [
        TextHit(title="Alpha", url="https://a.example/1", snippet="First snippet.", date="3 May 2020"),
        TextHit(title="Beta", url="https://b.example/2", snippet=""),
        TextHit(title="Gamma", url="https://c.example/3", snippet="Your browser can't play this video. Gamma text."),
    ]
    expected = (
        "<tool_response>\n"
        "A Google search for 'alpha beta' found 3 results:\n\n## Web Results\n"
        "1. [Alpha](https://a.example/1)\nDate published: 3 May 2020\n\nFirst snippet.\n\n"
        "2. [Beta](https://b.example/2)\n\n\n"
        "3. [Gamma](https://c.example/3)\n\n Gamma text.\n"
        "</tool_response>"
    )
    assert render_text_results("alpha beta", hits) == expected


def test_image_rendering_is_the_release_format():
    img = Image.new("RGB", (4, 4))
    hits = [ImageHit(title="One", image=img), ImageHit(title="Missing", image=None), ImageHit(title="Two", image=img)]
    expected = (
        "<tool_response>\n"
        "A Google image search for the image found 2 results:\n\n## Web Results\n"
        "1. <image>\n[One] \n\n\n2. <image>\n[Two] \n\n"
        "</tool_response>"
    )
    assert render_image_results(hits) == expected


def test_zero_results_rendering():
    assert render_text_results("q", []) == (
        "<tool_response>\nA Google search for 'q' found 0 results:\n\n## Web Results\n\n</tool_response>"
    )


# --------------------------------------------------------------------------- text tool

def test_registry_builds_the_search_tools(corpus):
    tool = make_tool("search", corpus=corpus.root)
    assert isinstance(tool, TextSearchTool) and tool.name == "search"
    assert tool.schema()["function"]["parameters"]["required"] == ["query"]
    image = make_tool("image_search", corpus=corpus.root)
    assert isinstance(image, ImageSearchTool) and image.parameters["properties"] == {}


def test_text_tool_answers_with_the_gold_doc(corpus, text_tool):
    query, gold = corpus.text_queries[0]
    res = text_tool.execute(text_tool.parse({"query": query}), ctx())
    assert res.error is None
    assert res.text.startswith(f"<tool_response>\nA Google search for '{query}' found 5 results:\n\n## Web Results\n1. [")
    assert res.text.endswith("</tool_response>")
    assert gold in res.metadata["doc_ids"]
    assert len(re.findall(r"^\d+\. \[", res.text, flags=re.M)) == 5
    assert res.images == []


@pytest.mark.parametrize(
    "query",
    ['AND OR NOT NEAR * ^ " ( ) : -', '"bridge', "NEAR(a b)", "museum:", "-bridge", "x" * 2000,
     "bad \ud800 surrogate", "\udcff", b"caf\xe9 \xff\xfe bytes"],
)
def test_text_tool_bad_queries_give_results_not_exceptions(text_tool, query):
    res = text_tool.execute(text_tool.parse({"query": query}), ctx())
    assert res.error is None
    assert res.text.startswith("<tool_response>\nA Google search for '")
    assert "\ud800" not in res.text and "\udcff" not in res.text
    res.text.encode("utf-8")  # always encodable


@pytest.mark.parametrize(
    "query, kind",
    [("", "bad_query"), ("   \n\t ", "bad_query"), ("q" * 10_240, "bad_query"), ("\x00\x01", "bad_query")],
)
def test_text_tool_rejects_empty_and_huge_queries_clearly(text_tool, query, kind):
    res = text_tool.execute(text_tool.parse({"query": query}), ctx())
    assert res.error is not None and res.error.startswith(kind)
    assert res.text.startswith(f"<tool_response>\nSearch error ({kind}): ")
    assert len(res.text) < 400  # the 10 kB query is not echoed back


def test_text_tool_argument_errors():
    tool = TextSearchTool(backend=_FixedText())
    with pytest.raises(ToolError, match="missing required"):
        tool.parse({})
    with pytest.raises(ToolError, match="must be of type string"):
        tool.parse({"query": ["a", "b"]})
    with pytest.raises(ToolError, match="unexpected argument"):
        tool.parse({"query": "a", "top": 3})
    # execute is robust even when parse was skipped
    assert tool.execute({}, ctx()).error.startswith("bad_query")
    assert tool.execute({"query": 42}, ctx()).error.startswith("bad_query")
    assert tool.execute(None, ctx()).error.startswith("bad_query")


class _FixedText(TextSearchBackend):
    name = "fixed"

    def search(self, query, *, top_k=5):
        hits = [TextHit(title=f"T{i}", url=f"https://x/{i}", snippet="s") for i in range(8)]
        return TextSearchResult(query=query, hits=hits, backend=self.name)


class _Exploding(TextSearchBackend, ImageSearchBackend):
    def search(self, query, *, top_k=5):
        raise RuntimeError("backend bug")

    def search_image(self, query, *, top_k=5):
        raise KeyError("backend bug")


def test_backend_objects_and_top_k_cap():
    tool = TextSearchTool(backend=_FixedText(), top_k=3)
    res = tool.execute({"query": "x"}, ctx())
    assert "found 3 results" in res.text and res.metadata["backend"] == "fixed"
    with pytest.raises(TypeError, match="search_image\\(\\) method"):
        ImageSearchTool(backend=_FixedText())
    with pytest.raises(ValueError, match="cannot be combined"):
        TextSearchTool(backend=_FixedText(), top_k=3, corpus="x")


def test_backend_exceptions_become_error_observations():
    res = TextSearchTool(backend=_Exploding()).execute({"query": "x"}, ctx())
    assert res.error.startswith("internal") and "backend bug" in res.text
    res = ImageSearchTool(backend=_Exploding()).execute({}, ctx([Image.new("RGB", (40, 40))]))
    assert res.error.startswith("internal")


def test_missing_default_corpus_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPEYES_GYM_SEARCH_CORPUS", str(tmp_path / "missing"))
    res = TextSearchTool().execute({"query": "x"}, ctx())
    assert res.error.startswith("config") and "not found" in res.text


def test_env_var_names_the_default_corpus(monkeypatch, corpus):
    monkeypatch.setenv("DEEPEYES_GYM_SEARCH_CORPUS", str(corpus.root))
    res = TextSearchTool().execute({"query": corpus.text_queries[1][0]}, ctx())
    assert res.error is None and corpus.text_queries[1][1] in res.metadata["doc_ids"]


# --------------------------------------------------------------------------- image tool

def test_image_tool_finds_the_original_of_a_distorted_photo(corpus, image_tool):
    rng = random.Random(2)
    found = 0
    for img_id in corpus.image_ids:
        with Image.open(corpus.root / "images" / f"{img_id}.jpg") as raw:
            query = distort_image(raw.convert("RGB"), rng)
        res = image_tool.execute(image_tool.parse({}), ctx([query, Image.new("RGB", (50, 50))]))
        assert res.error is None
        assert res.text.count("<image>") == len(res.images) == 5
        found += img_id in res.metadata["image_ids"]
    assert found / len(corpus.image_ids) >= 0.9


def test_image_tool_searches_only_the_first_image(corpus, image_tool):
    with Image.open(corpus.root / "images" / f"{corpus.image_ids[3]}.jpg") as raw:
        first = raw.convert("RGB")
    with Image.open(corpus.root / "images" / f"{corpus.image_ids[4]}.jpg") as raw:
        second = raw.convert("RGB")
    res = image_tool.execute({}, ctx([first, second]))
    assert res.metadata["image_ids"][0] == corpus.image_ids[3]
    assert res.text.startswith("<tool_response>\nA Google image search for the image found 5 results:")
    assert all(isinstance(im, Image.Image) for im in res.images)


def test_image_tool_parse_accepts_no_arguments_only(image_tool):
    assert image_tool.parse(None) == {} and image_tool.parse({}) == {}
    with pytest.raises(ToolError, match="unexpected argument"):
        image_tool.parse({"query": "cat"})
    with pytest.raises(ToolError, match="takes no arguments"):
        image_tool.parse("cat")


@pytest.mark.parametrize(
    "make_image, fragment",
    [
        (lambda: b"this is not an image", "cannot be read"),
        (lambda: Image.open(io.BytesIO(_truncated_jpeg())), "cannot be read"),
        (lambda: png_header_only(20000, 20000), "pixel limit"),
        (lambda: np.zeros((0, 5, 3), np.uint8), "shape"),
        (lambda: 12345, "unsupported image"),
    ],
)
def test_image_tool_bad_images_give_clear_errors(image_tool, make_image, fragment):
    res = image_tool.execute({}, ctx([make_image()]))
    assert res.error is not None and res.error.startswith("bad_image")
    assert fragment in res.text
    assert res.images == []


def test_bomb_is_refused_from_the_header_before_decoding(image_tool, monkeypatch):
    # With PIL's own guard off, the lazily opened 20000x20000 image must be refused by size:
    # decoding it would fail differently (its pixel data is truncated).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    lazy = Image.open(io.BytesIO(png_header_only(20000, 20000)))
    res = image_tool.execute({}, ctx([lazy]))
    assert res.error.startswith("bad_image")
    assert "20000x20000 pixels, above the" in res.text and "not decoded" in res.text


def test_image_tool_handles_tiny_odd_mode_and_array_images(image_tool):
    for img in (Image.new("RGB", (1, 1), (9, 9, 9)), Image.new("L", (3, 200)), Image.new("RGBA", (40, 30)),
                Image.new("P", (30, 30)), Image.new("CMYK", (30, 30)), np.zeros((20, 20), np.uint8),
                np.full((20, 30, 3), 1.5, np.float32)):
        res = image_tool.execute({}, ctx([img]))
        assert res.error is None, res.text
        assert res.text.count("<image>") == len(res.images) == 5


def test_image_tool_without_input_images(image_tool):
    res = image_tool.execute({}, ctx([]))
    assert res.error.startswith("bad_image") and "no input image" in res.text


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    return data[: len(data) // 2]  # the header parses, the scan data is cut


class _CountingImages(ImageSearchBackend):
    def __init__(self, n: int) -> None:
        self.n = n
        self.queries: list[ImageQuery] = []

    def search_image(self, query, *, top_k=5):
        self.queries.append(query)
        hits = [ImageHit(title=f"r{i}", image=Image.new("RGB", (8, 8)) if i % 2 == 0 else None) for i in range(self.n)]
        return ImageSearchResult(hits=hits, backend="counting")


def test_hits_without_images_are_skipped_and_at_most_ten_images_return():
    backend = _CountingImages(30)
    tool = ImageSearchTool(backend=backend, top_k=20)
    task = Task(id="s1", question="q", answer="a", metadata={"index": "fvqa_train_7", "image_url": "https://i/1.png"})
    res = tool.execute({}, ToolContext(task_id="s1", images=[Image.new("RGB", (40, 40))], task=task))
    assert len(res.images) == 10 and res.text.count("<image>") == 10
    assert "[r0]" in res.text and "[r1]" not in res.text
    q = backend.queries[0]
    assert q.key_candidates == ("fvqa_train_7",) and q.task_id == "s1" and q.image_url == "https://i/1.png"


# --------------------------------------------------------------------------- through the env

def test_one_episode_through_the_env(corpus):
    core = pytest.importorskip("deepeyes_gym.envs.core")
    query, gold = corpus.text_queries[2]
    gold_title = next(json.loads(line)["title"] for line in (corpus.root / "docs.jsonl").read_text().splitlines()
                      if json.loads(line)["id"] == gold)
    img_path = corpus.root / "images" / f"{corpus.image_ids[0]}.jpg"
    task = Task(id="env-1", question="Which scene is this?", answer="x", images=[str(img_path)],
                capabilities={"search"})
    env = core.DeepEyesEnv([task], tools=("search", "image_search"),
                           tool_kwargs={"search": {"corpus": corpus.root}, "image_search": {"corpus": corpus.root}},
                           reward=lambda ep: 0.0)
    obs, _ = env.reset(seed=0)
    call = json.dumps({"name": "search", "arguments": {"query": query}})
    obs, _, done, _, info = env.step(f"<think>look it up</think><tool_call>{call}</tool_call>")
    assert not done and info["error"] is None
    assert obs["text"].startswith(f"<tool_response>\nA Google search for '{query}'")
    assert gold_title in obs["text"]
    obs, _, done, _, info = env.step('<think>and the image</think><tool_call>{"name": "image_search"}</tool_call>')
    assert not done and info["error"] is None
    assert obs["text"].count("<image>") == len(obs["images"]) == 5
    assert all(a.dtype == np.uint8 and a.ndim == 3 for a in obs["images"])
    assert env.episode.turns[-1].metadata["image_ids"][0] == corpus.image_ids[0]
    obs, _, done, _, _ = env.step("<think>done</think><answer>x</answer>")
    assert done
    env.close()


def test_bundled_suite_is_the_last_default(monkeypatch, corpus):
    import types

    import deepeyes_gym.envs.suites.realx as realx

    monkeypatch.delenv("DEEPEYES_GYM_SEARCH_CORPUS", raising=False)
    calls = []
    monkeypatch.setattr(realx, "load_suite", lambda split="eval": calls.append(split)
                        or types.SimpleNamespace(corpus_dir=str(corpus.root)))
    tool = TextSearchTool()
    assert calls == []  # resolved lazily, on first use
    res = tool.execute({"query": corpus.text_queries[4][0]}, ctx())
    assert res.error is None and calls == ["eval"] and corpus.text_queries[4][1] in res.metadata["doc_ids"]


def test_lazy_backend_exports():
    import deepeyes_gym.envs.search as search

    assert search.OfflineSearch.__name__ == "OfflineSearch" and search.ReplaySearch.__name__ == "ReplaySearch"
    with pytest.raises(AttributeError):
        search.NoSuchThing  # noqa: B018
