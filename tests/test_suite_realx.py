"""The bundled RealX-style suite: the eval mix, the corpus, determinism, the cache, the train stream."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

import deepeyes_gym.envs.suites.realx as realx
from deepeyes_gym.envs.suites.realx import FAMILIES, load_suite, train_stream
from deepeyes_gym.envs.suites.realx.templates import parse_any
from deepeyes_gym.envs.suites.realx.world import DOMAINS, build_world

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    # One build per test session, shared with test_suite_realx_solvers.py through the base temp dir.
    return load_suite("eval", cache_dir=tmp_path_factory.getbasetemp() / "realx-cache")


def test_eval_split_mirrors_realx_bench_mix(suite):
    tasks = suite.tasks
    assert len(tasks) == 300
    caps = Counter(c for t in tasks for c in t.capabilities)
    assert caps == {"perception": 164, "reasoning": 178, "search": 211}
    assert sum(len(t.capabilities) == 3 for t in tasks) == 72
    assert Counter(t.domain for t in tasks) == {d: 60 for d in DOMAINS}
    assert Counter(t.metadata["family"] for t in tasks) == {f: i.eval_count for f, i in FAMILIES.items()}
    assert len({t.id for t in tasks}) == 300
    for t in tasks:
        assert t.source == "realx-synthetic"
        assert t.answer_kind in ("numeric", "text", "choice")
        assert t.capabilities == FAMILIES[t.metadata["family"]].capabilities
        assert t.reference_solution and "<answer>" in t.reference_solution[-1]
        assert "answer" not in t.public_info()
        if t.answer_kind == "choice":
            assert t.answer in t.options and len(t.options) == 4
        if t.answer_kind == "numeric":
            int(t.answer)


def test_every_question_parses_back_to_its_family(suite):
    for t in suite.tasks:
        found = parse_any(t.question)  # without hints (some wording is shared across domains)
        assert found is not None and found[0] == t.metadata["family"], t.question
        hinted = parse_any(t.question, t.metadata["family"], t.domain)
        assert hinted[:3] == (t.metadata["family"], t.metadata["variant"], t.domain)


def test_perception_images_are_large_and_search_images_are_photos(suite):
    for t in suite.tasks[:120]:
        with Image.open(t.images[0]) as im:
            w, h = im.size
        fam = t.metadata["family"]
        if "perception" in t.capabilities:
            assert w >= 2000 and h >= 1400, (fam, w, h)  # a 1024-px view loses the detail
        if fam.startswith("emblem"):
            assert im.format == "JPEG" and max(w, h) <= 600


def test_corpus_format_and_gold_ids(suite):
    corpus = Path(suite.corpus_dir)
    docs = [json.loads(x) for x in (corpus / "docs.jsonl").read_text(encoding="utf-8").splitlines()]
    images = [json.loads(x) for x in (corpus / "images.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all({"id", "title", "url", "text"} <= d.keys() for d in docs)
    by_id = {d["id"]: d for d in docs}
    assert len(by_id) == len(docs) > 2000
    img_ids = {r["id"] for r in images}
    assert len(img_ids) == len(images) == len(build_world(0).entities)
    for r in images[:50]:
        assert (corpus / r["path"]).is_file() and r["doc_id"] in by_id
    for t in suite.tasks:
        md = t.metadata
        if "search" in t.capabilities:
            assert md["search_query"] == md["search_queries"][0]
            assert [q for q, _ in md["search_gold"]] == md["search_queries"]
            assert {d for _, d in md["search_gold"]} == set(md["gold_doc_ids"])
            assert md["gold_doc_ids"] and all(g in by_id for g in md["gold_doc_ids"])
        if md["family"].startswith("emblem"):
            assert md["gold_image_id"] in img_ids
        if md["family"] == "search_fact":  # the gold page states the answer
            assert t.answer in by_id[md["gold_doc_ids"][0]]["text"].replace(",", "")


def test_search_has_lookalike_distractors(suite):
    world = build_world(0)
    firsts = Counter((e.domain, e.name.split()[0]) for e in world.entities)
    assert sum(n >= 2 for n in firsts.values()) >= 100  # many entities share a first word
    towns = Counter(e.town for e in world.entities)
    assert max(towns.values()) >= 10  # a town query alone cannot single out an entity


def test_same_seed_same_bytes_in_a_fresh_process(suite):
    # Regenerate a sample of tasks in another interpreter (different hash seed) and compare bytes.
    picks = sorted({next(i for i, t in enumerate(suite.tasks) if t.metadata["family"] == f) for f in FAMILIES})
    code = textwrap.dedent(f"""
        import hashlib, io, json
        from deepeyes_gym.envs.suites.realx.generator import eval_plan, make_draft
        from deepeyes_gym.envs.suites.realx.world import build_world, rng_for
        world, plan, out = build_world(0), eval_plan(0), {{}}
        for i in {picks}:
            d = make_draft(world, *plan[i], "eval", rng_for(0, "eval", i))
            if d.jpeg is not None:
                data = d.jpeg
            else:
                buf = io.BytesIO(); d.image.save(buf, "PNG", compress_level=1); data = buf.getvalue()
            out[i] = [d.question, d.answer, hashlib.sha256(data).hexdigest()]
        print(json.dumps(out))
    """)
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    other = json.loads(res.stdout)
    import hashlib

    for i in picks:
        t = suite.tasks[i]
        assert other[str(i)][:2] == [t.question, t.answer]
        assert other[str(i)][2] == hashlib.sha256(Path(t.images[0]).read_bytes()).hexdigest()


def test_other_seed_gives_other_world():
    a, b = build_world(0), build_world(1)
    assert [e.name for e in a.entities] != [e.name for e in b.entities]
    assert [e.name for e in a.entities] == [e.name for e in build_world(0).entities]


def test_cache_is_reused_and_rebuilt_when_corrupt(suite, tmp_path, monkeypatch):
    again = load_suite("eval", cache_dir=Path(suite.root).parent)
    assert again.build_seconds is None and again.tasks[7].question == suite.tasks[7].question
    # A copy with one truncated image and a copy from another generator version are both invalid.
    copy = tmp_path / Path(suite.root).name
    shutil.copytree(suite.root, copy)
    assert realx._valid(copy, 0) and realx._valid(copy, 0, deep=True)
    victim = Path(str(suite.tasks[0].images[0]).replace(suite.root, str(copy)))
    data = bytearray(victim.read_bytes())
    data[-20] ^= 0xFF  # same size, one byte changed: only the deep check sees it
    victim.write_bytes(bytes(data))
    assert realx._valid(copy, 0) and not realx._valid(copy, 0, deep=True)
    victim.write_bytes(bytes(data[:100]))
    assert not realx._valid(copy, 0)
    calls = []

    def fake_build(out_dir, seed=0):  # a rebuild is a copy of the good build (saves the 10 s)
        calls.append(seed)
        shutil.rmtree(out_dir)
        shutil.copytree(suite.root, out_dir)

    monkeypatch.setattr(realx, "build_suite_dir", fake_build)
    rebuilt = load_suite("eval", cache_dir=tmp_path)
    assert calls == [0] and rebuilt.build_seconds is not None and realx._valid(copy, 0)
    assert Path(rebuilt.tasks[0].images[0]).read_bytes() == Path(suite.tasks[0].images[0]).read_bytes()
    man = json.loads((copy / "manifest.json").read_text())
    man["generator"] = "v0-stale"
    (copy / "manifest.json").write_text(json.dumps(man))
    assert not realx._valid(copy, 0)
    assert not list(tmp_path.glob(".realx-*"))  # no temp build left behind


def test_env_var_sets_the_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPEYES_GYM_CACHE", str(tmp_path / "c"))
    assert realx.cache_root() == tmp_path / "c"
    monkeypatch.delenv("DEEPEYES_GYM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert realx.cache_root() == tmp_path / "x" / "deepeyes_gym"


def test_bad_split_is_a_clear_error(suite):
    with pytest.raises(ValueError, match="unknown split"):
        load_suite("test", cache_dir=Path(suite.root).parent)


def test_train_stream_is_seeded_unbounded_and_disjoint_from_eval(suite):
    stream = train_stream(seed=3, cache_dir=Path(suite.root).parent)
    assert stream.corpus_dir == suite.corpus_dir
    a, b = stream[17], stream[17]
    assert (a.id, a.question, a.answer) == (b.id, b.question, b.answer)
    assert a.load_images()[0].tobytes() == b.load_images()[0].tobytes()
    assert stream[10**9].id.endswith("1000000000")
    assert train_stream(seed=4, cache_dir=Path(suite.root).parent)[17].question != a.question
    tasks = [stream[i] for i in range(40)]
    assert len({t.metadata["family"] for t in tasks}) >= 8
    world = build_world(0)
    eval_ids = {e.id for e in world.entities if e.split == "eval"}
    for t in tasks:
        used = set(t.metadata.get("entity_ids", [])) | set(t.metadata.get("chart_entities", []))
        assert not used & eval_ids
        assert t.reference_solution and t.load_images()[0].size[0] > 100
    with pytest.raises(IndexError):
        stream[-1]
