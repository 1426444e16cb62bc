"""Offline search: FTS5 text index and perceptual-hash image index over a corpus directory."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from deepeyes_gym.envs.search import CorpusError, SearchError, make_backend
from deepeyes_gym.envs.search.base import ImageQuery
from deepeyes_gym.envs.search.offline import OfflineImageIndex, OfflineSearch, OfflineTextIndex, query_terms
from deepeyes_gym.envs.search.perceptual import crop_boxes, phash_boxes, query_hash
from deepeyes_gym.envs.search.synthetic import distort_image, make_scene, make_synthetic_corpus

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return make_synthetic_corpus(root, n_docs=300, n_images=60, seed=7, image_size=(160, 120))


@pytest.fixture(scope="module")
def backend(corpus):
    return OfflineSearch(corpus.root).build()


def test_text_recall_on_natural_queries(corpus, backend):
    found = sum(gold in [h.doc_id for h in backend.search(q).hits] for q, gold in corpus.text_queries[:150])
    assert found / 150 >= 0.9


def test_text_hits_are_typed_and_bounded(backend):
    res = backend.search("architect bridge museum", top_k=5)
    assert 0 < len(res.hits) <= 5
    for hit in res.hits:
        assert hit.title and hit.url.startswith("https://") and hit.doc_id
        assert 0 < len(hit.snippet) <= 400
    scores = [h.score for h in res.hits]
    assert scores == sorted(scores, reverse=True)
    assert len(backend.search("architect bridge museum", top_k=2).hits) == 2


def test_gold_doc_ranks_first_for_its_exact_title(corpus, backend):
    docs = [json.loads(line) for line in (corpus.root / "docs.jsonl").read_text().splitlines()]
    for doc in docs[:20]:
        assert backend.search(doc["title"]).hits[0].doc_id == doc["id"]


def test_snippet_shows_matching_text(backend, corpus):
    doc = json.loads((corpus.root / "docs.jsonl").read_text().splitlines()[3])
    name = doc["title"].split(" - ")[0]
    hit = backend.search(f"{name} completed").hits[0]
    assert hit.doc_id == doc["id"]
    assert name.split()[0] in hit.snippet


def test_common_terms_still_rank_when_every_term_is_common(backend):
    # every query word is in many docs: the cheap candidate path must still answer 5 hits
    res = backend.search("the site was restored after a storm")
    assert len(res.hits) == 5
    assert len({h.doc_id for h in res.hits}) == 5


def test_rare_and_common_terms_combine(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    # "bridge" is in 1200 docs: over the BM25 row budget ("common") but still informative
    docs = [{"id": f"n{i}", "title": f"Noise {i}", "url": "u", "text": ("bridge " if i < 1200 else "") + "river town"}
            for i in range(3000)]
    docs += [
        {"id": "gold", "title": "Zorblat Bridge", "url": "u", "text": "Zorblat Bridge crosses the river."},
        {"id": "other", "title": "Zorblat Museum", "url": "u", "text": "Zorblat Museum shows paintings."},
    ]
    (root / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in docs))
    idx = OfflineTextIndex(root)
    hits = idx.search("Zorblat bridge").hits
    assert [h.doc_id for h in hits[:2]] == ["gold", "other"]  # "bridge" (common) breaks the tie
    assert len(hits) == 5  # filled with docs having the common term


@pytest.mark.parametrize(
    "query",
    [
        'AND OR NOT NEAR * ^ " ( ) : -',
        '"unbalanced quote',
        "NEAR(bridge museum, 2)",
        "title: museum",
        "bridge*",
        "^bridge -museum",
        "bridge AND",
        "OR",
        "(((",
        "'; DROP TABLE docs; --",
        "col:umn {title text}: x",
        "emoji 🌉 and CJK 桥梁 博物馆",
        "a" * 3000,
        "x\x00y",
    ],
)
def test_fts5_syntax_is_never_interpreted(backend, query):
    res = backend.search(query)
    assert isinstance(res.hits, list)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.sampled_from(list('abc AND OR NOT NEAR*^"():-{}+.,\'\\/é桥') + ["\ud800", "\x00"]),
               min_size=1, max_size=60))
def test_fts5_fuzz_never_raises(backend, query):
    backend.search(query)


def test_query_terms_drop_stopwords_and_operators():
    assert query_terms('who was the "architect" of (Dollo* Bridge)?') == ["architect", "dollo", "bridge"]
    assert query_terms("the of") == ["the", "of"]  # nothing else left: keep them
    assert query_terms("!!! ???") == []
    assert len(query_terms(" ".join(f"w{i}" for i in range(100)))) == 32


def test_punctuation_only_query_returns_no_hits(backend):
    assert backend.search("!!! ???").hits == []


def test_image_recall_under_distortions(corpus, backend):
    rng = random.Random(3)
    found = 0
    for img_id in corpus.image_ids:
        with Image.open(corpus.root / "images" / f"{img_id}.jpg") as raw:
            query = distort_image(raw.convert("RGB"), rng)
        hits = backend.search_image(ImageQuery(image=query)).hits
        found += img_id in [h.image_id for h in hits]
    assert found / len(corpus.image_ids) >= 0.9


def test_crop_grid_beats_a_single_hash(corpus, backend):
    """The crop grid is what makes cropped queries work: compare with the full-frame hash only."""
    rng = random.Random(11)
    idx = backend.images
    full = idx._data["hashes"][:, 0]
    ids = list(idx._data["ids"])
    grid_hits = single_hits = 0
    for img_id in corpus.image_ids:
        with Image.open(corpus.root / "images" / f"{img_id}.jpg") as raw:
            q = distort_image(raw.convert("RGB"), rng, strength=1.4)
        grid_hits += img_id in [ids[r] for r, _ in idx.rank(q, 1)]
        d = np.bitwise_count(np.bitwise_xor(full, query_hash(q)))
        single_hits += ids[int(np.argmin(d))] == img_id
    assert grid_hits > single_hits


def test_image_hits_carry_images_titles_and_distances(corpus, backend):
    with Image.open(corpus.root / "images" / f"{corpus.image_ids[5]}.jpg") as raw:
        img = raw.convert("RGB")
    res = backend.search_image(ImageQuery(image=img), top_k=5)
    assert len(res.hits) == 5
    assert res.hits[0].image_id == corpus.image_ids[5] and res.hits[0].score == 0.0
    assert all(isinstance(h.image, Image.Image) and h.image.mode == "RGB" for h in res.hits)
    assert all(h.title.startswith("Scene") for h in res.hits)
    assert [h.score for h in res.hits] == sorted(h.score for h in res.hits)


def test_phash_is_stable_under_brightness_resize_and_jpeg():
    img = make_scene(np.random.default_rng(0), (200, 150))
    h = query_hash(img)
    for variant in (img.resize((120, 90)), img.point(lambda v: min(255, int(v * 1.25)))):
        assert int(np.bitwise_count(np.bitwise_xor(h, query_hash(variant)))) <= 6
    other = query_hash(make_scene(np.random.default_rng(1), (200, 150)))
    assert int(np.bitwise_count(np.bitwise_xor(h, other))) > 12


def test_crop_boxes_cover_full_frame_first():
    boxes = crop_boxes(100, 50)
    assert boxes[0] == (0.0, 0.0, 100.0, 50.0)
    assert len(boxes) == 100  # (1 + 3 scales x 3 positions) per axis, squared
    assert all(0 <= x0 < x1 <= 100 and 0 <= y0 < y1 <= 50 for x0, y0, x1, y1 in boxes)
    assert phash_boxes(Image.new("RGB", (1, 1))).shape == (100,)


def test_index_is_cached_and_rebuilt_when_the_corpus_changes(tmp_path):
    root = tmp_path / "c"
    make_synthetic_corpus(root, n_docs=20, n_images=4, seed=1, image_size=(64, 48))
    first = OfflineSearch(root).build()
    assert first.text.build_seconds is not None and first.images.build_seconds is not None
    assert (root / ".index" / "text.sqlite").exists() and (root / ".index" / "images.npz").exists()
    second = OfflineSearch(root).build()
    assert second.text.build_seconds is None and second.images.build_seconds is None  # reused

    with open(root / "docs.jsonl", "a") as f:
        f.write(json.dumps({"id": "new", "title": "Quuxly Tower", "url": "u", "text": "A tower."}) + "\n")
    make_scene(np.random.default_rng(9), (64, 48)).save(root / "images" / "extra.jpg")
    with open(root / "images.jsonl", "a") as f:
        f.write(json.dumps({"id": "extra", "path": "images/extra.jpg", "title": "Extra", "url": "u"}) + "\n")
    third = OfflineSearch(root).build()
    assert third.text.build_seconds is not None and third.images.build_seconds is not None
    assert third.search("Quuxly").hits[0].doc_id == "new"
    assert third.images.n_images == 5


def test_index_falls_back_to_the_cache_dir_when_the_corpus_is_read_only(tmp_path, monkeypatch):
    import deepeyes_gym.envs.search.corpus as corpus_mod

    root = tmp_path / "ro"
    make_synthetic_corpus(root, n_docs=10, n_images=2, seed=2, image_size=(64, 48))
    monkeypatch.setenv("DEEPEYES_GYM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(corpus_mod, "_writable", lambda folder: False)
    idx = OfflineTextIndex(root).open()
    assert str(idx.path).startswith(str(tmp_path / "cache"))
    assert not (root / ".index").exists()
    assert idx.search("Scene OR bridge").hits is not None


def test_explicit_index_dir(tmp_path, corpus):
    idx = OfflineTextIndex(corpus.root, index_dir=tmp_path / "idx").open()
    assert idx.path.parent == tmp_path / "idx"


def test_unreadable_corpus_images_are_skipped(tmp_path):
    root = tmp_path / "c"
    make_synthetic_corpus(root, n_docs=5, n_images=3, seed=4, image_size=(64, 48))
    (root / "images" / "bad.jpg").write_bytes(b"not an image")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(root / "images" / "dot.png")
    with open(root / "images.jsonl", "a") as f:
        f.write(json.dumps({"id": "bad", "path": "images/bad.jpg", "title": "Bad", "url": "u"}) + "\n")
        f.write(json.dumps({"id": "gone", "path": "images/gone.jpg", "title": "Gone", "url": "u"}) + "\n")
        f.write(json.dumps({"id": "dot", "path": "images/dot.png", "title": "Dot", "url": "u"}) + "\n")
    idx = OfflineImageIndex(root).open()
    assert sorted(idx.skipped) == ["bad", "gone"]
    assert idx.n_images == 4
    hits = idx.search_image(ImageQuery(image=Image.new("RGB", (1, 1), (200, 10, 10)))).hits
    assert "dot" in [h.image_id for h in hits]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"id": "a", "title": "t", "url": "u", "text": "x"}\n{"id": "a", "title": "t", "url": "u", "text": "y"}',
         "duplicate id"),
        ("{not json", "invalid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"title": "no id"}', "missing field 'id'"),
    ],
)
def test_malformed_docs_raise_corpus_errors(tmp_path, content, message):
    (tmp_path / "docs.jsonl").write_text(content)
    with pytest.raises(CorpusError, match=message):
        OfflineTextIndex(tmp_path).open()


def test_image_path_may_not_leave_the_corpus(tmp_path):
    (tmp_path / "images.jsonl").write_text(json.dumps({"id": "x", "path": "../secret.png", "title": "t", "url": "u"}))
    with pytest.raises(CorpusError, match="leaves the corpus"):
        OfflineImageIndex(tmp_path).open()


def test_missing_corpus_directory(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        OfflineTextIndex(tmp_path / "nope")


def test_lone_surrogates_in_corpus_are_stored(tmp_path):
    (tmp_path / "docs.jsonl").write_text(json.dumps({"id": "s", "title": "Bad \ud800 title", "url": "u", "text": "surrogate text"}))
    hit = OfflineTextIndex(tmp_path).search("surrogate").hits[0]
    assert hit.doc_id == "s" and "\ud800" not in hit.title


def test_empty_corpus_answers_with_no_hits(tmp_path):
    search = OfflineSearch(tmp_path)
    assert search.search("anything").hits == []
    assert search.search_image(ImageQuery(image=Image.new("RGB", (8, 8)))).hits == []


def test_make_backend_shares_one_offline_instance(corpus):
    a = make_backend("offline", corpus=corpus.root)
    b = make_backend("offline", corpus=str(corpus.root))
    assert a is b
    with pytest.raises(ValueError, match="needs corpus"):
        make_backend("offline")
    with pytest.raises(ValueError, match="unknown search backend"):
        make_backend("bing")


def test_search_error_carries_kind():
    err = SearchError("timeout", "slow")
    assert err.kind == "timeout" and str(err) == "slow"
