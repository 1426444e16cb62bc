"""Replaying DeepEyesV2 / MMSearch-R1 style search caches."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from deepeyes_gym.envs.search import make_backend
from deepeyes_gym.envs.search.base import ImageQuery, TextHit, TextSearchBackend, TextSearchResult
from deepeyes_gym.envs.search.replay import ReplaySearch
from deepeyes_gym.envs.task import Task
from deepeyes_gym.envs.tools import ToolContext
from deepeyes_gym.envs.tools.search import ImageSearchTool, TextSearchTool

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def cache_dir(tmp_path):
    (tmp_path / "imgs").mkdir()
    for name, colour in (("a.png", (255, 0, 0)), ("c.png", (0, 0, 255))):
        Image.new("RGB", (40, 30), colour).save(tmp_path / "imgs" / name)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"garbage")
    image_cache = {
        "fvqa_train_12": {
            "tool_returned_web_title": ["Red page", "No image", "Gone page", "Broken page", "Blue page"],
            "cached_images_path": ["imgs/a.png", None, "imgs/missing.jpg", "imgs/broken.jpg", "imgs/c.png"],
        }
    }
    text_cache = {
        "who designed the red bridge": {"elapsed_time": 0.4, "data": [
            {"title": "Red Bridge", "link": "https://r.example", "snippet": "Designed by A. Person.", "date": "2001"},
            {"title": "Bridges", "link": "https://b.example", "snippet": None},
        ]},
        "plain list": [{"title": "P", "url": "https://p.example", "snippet": "s"}],
        "serper shape": {"organic": [{"title": "S", "link": "https://s.example", "snippet": "x"}]},
        "serpapi shape": {"organic_results": [{"title": "G", "link": "https://g.example", "snippet": "y"}]},
    }
    (tmp_path / "image_cache.json").write_text(json.dumps(image_cache))
    (tmp_path / "text_cache.json").write_text(json.dumps(text_cache))
    return tmp_path


def ctx(task=None, images=None):
    return ToolContext(task_id=task.id if task else "x", images=images or [Image.new("RGB", (20, 20))], task=task)


def test_image_replay_by_sample_index_skips_missing_files(cache_dir):
    backend = ReplaySearch(cache_dir / "image_cache.json")
    tool = ImageSearchTool(backend=backend)
    task = Task(id="row-3", question="q", answer="a", metadata={"index": "fvqa_train_12"})
    res = tool.execute({}, ctx(task))
    assert res.error is None
    assert res.text == (
        "<tool_response>\nA Google image search for the image found 2 results:\n\n## Web Results\n"
        "1. <image>\n[Red page] \n\n\n2. <image>\n[Blue page] \n\n</tool_response>"
    )
    assert [im.getpixel((0, 0)) for im in res.images] == [(255, 0, 0), (0, 0, 255)]
    assert res.metadata["from_cache"] is True


def test_image_replay_keyed_by_task_id_and_custom_keys(cache_dir):
    backend = ReplaySearch(cache_dir / "image_cache.json")
    by_id = ImageSearchTool(backend=backend).execute({}, ctx(Task(id="fvqa_train_12", question="q", answer="a")))
    assert by_id.error is None and len(by_id.images) == 2
    custom = ReplaySearch(cache_dir / "image_cache.json", key_fn=lambda q: ["fvqa_train_" + q.task_id.split("-")[1]])
    res = ImageSearchTool(backend=custom).execute({}, ctx(Task(id="row-12", question="q", answer="a")))
    assert res.error is None and len(res.images) == 2


def test_unknown_sample_is_a_clear_error(cache_dir):
    tool = ImageSearchTool(backend=ReplaySearch(cache_dir / "image_cache.json"))
    res = tool.execute({}, ctx(Task(id="other", question="q", answer="a")))
    assert res.error.startswith("not_found") and "no cached image search results" in res.text


@pytest.mark.parametrize(
    "query, first_title, date",
    [
        ("who designed the red bridge", "Red Bridge", "2001"),
        ("  Who designed   the RED bridge ", "Red Bridge", "2001"),  # normalised look-up
        ("plain list", "P", None),
        ("serper shape", "S", None),
        ("serpapi shape", "G", None),
    ],
)
def test_text_replay_shapes(cache_dir, query, first_title, date):
    backend = ReplaySearch([cache_dir / "text_cache.json", cache_dir / "image_cache.json"])
    res = backend.search(query)
    assert res.hits[0].title == first_title and res.hits[0].date == date and res.from_cache


def test_text_replay_renders_the_release_format(cache_dir):
    tool = TextSearchTool(backend="replay", cache=cache_dir / "text_cache.json")
    res = tool.execute({"query": "who designed the red bridge"}, ctx())
    assert res.text == (
        "<tool_response>\nA Google search for 'who designed the red bridge' found 2 results:\n\n## Web Results\n"
        "1. [Red Bridge](https://r.example)\nDate published: 2001\n\nDesigned by A. Person.\n\n"
        "2. [Bridges](https://b.example)\n\n</tool_response>"
    )


class _Fallback(TextSearchBackend):
    def search(self, query, *, top_k=5):
        return TextSearchResult(query=query, hits=[TextHit(title="live", url="https://live")], backend="live")


def test_text_miss_goes_to_fallback_or_errors(cache_dir):
    plain = TextSearchTool(backend=ReplaySearch(cache_dir / "text_cache.json"))
    miss = plain.execute({"query": "never recorded"}, ctx())
    assert miss.error.startswith("not_found") and "not in the replayed search cache" in miss.text
    with_fallback = TextSearchTool(backend=ReplaySearch(cache_dir / "text_cache.json", fallback=_Fallback()))
    res = with_fallback.execute({"query": "never recorded"}, ctx())
    assert res.error is None and "[live](https://live)" in res.text


def test_records_lists_jsonl_and_dicts(tmp_path):
    records = [
        {"query": "q1", "results": [{"title": "One", "link": "https://1"}]},
        {"data_idx": "s9", "tool_returned_web_title_list": ["T"], "cached_images_path": ["/nonexistent.png"]},
        {"no key": True},
        "not a record",
    ]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    from_file = ReplaySearch(tmp_path / "c.jsonl")
    from_list = ReplaySearch(records)
    for backend in (from_file, from_list):
        assert backend.search("q1").hits[0].title == "One"
        assert "s9" in backend.images
        assert backend.search_image(ImageQuery(image=Image.new("RGB", (4, 4)), key_candidates=("s9",))).hits == []
    in_memory = ReplaySearch({"q2": [{"title": "Two", "link": "https://2"}]})
    assert in_memory.search("q2").hits[0].url == "https://2"


def test_bad_cache_sources(tmp_path):
    with pytest.raises(FileNotFoundError):
        ReplaySearch(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('"just a string"')
    with pytest.raises(ValueError, match="JSON object or a list"):
        ReplaySearch(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="needs cache"):
        make_backend("replay")


def test_image_root_overrides_the_cache_folder(cache_dir, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "cache.json").write_text((cache_dir / "image_cache.json").read_text())
    backend = ReplaySearch(elsewhere / "cache.json", image_root=cache_dir)
    res = backend.search_image(ImageQuery(image=Image.new("RGB", (4, 4)), key_candidates=("fvqa_train_12",)))
    assert [h.title for h in res.hits] == ["Red page", "Blue page"]
