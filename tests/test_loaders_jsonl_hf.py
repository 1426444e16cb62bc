"""RealX-Bench / generic JSONL loader and Hugging Face ``datasets``-on-disk loader (save_to_disk arrow
stream shards + state/dataset_info JSON, DatasetDict splits, parquet shards), with and without the
``datasets`` library."""

from __future__ import annotations

import base64
import io
import json
import sys
import warnings

import pytest
from PIL import Image

from deepeyes_gym.envs.suites.loaders import (
    DataLoadError,
    DataLoadWarning,
    MissingColumnsError,
    detect_format,
    load_benchmark,
    load_hf,
    load_jsonl,
    load_tasks,
)


def png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (250, 200, 0)).save(buf, "PNG")
    return buf.getvalue()


def realx_dir(tmp_path):
    d = tmp_path / "realx"
    (d / "images").mkdir(parents=True)
    Image.new("RGB", (1200, 900)).save(d / "images" / "001.jpg")
    Image.new("RGB", (800, 800)).save(d / "images" / "002.png")
    rows = [
        {"id": "001", "question": "Which company makes the logo shown on the small flag, and when was it founded?",
         "answer": "1998", "images": ["images/001.jpg"], "domain": "daily life",
         "capabilities": ["perception", "search", "reasoning"]},
        {"id": "002", "question": "What is the total of the two highlighted values?", "answer": "12.5",
         "image": "images/002.png", "category": "science", "perception": 1, "reasoning": True, "search": 0},
        {"id": "003", "question": "Which season is shown?", "options": ["spring", "summer", "autumn", "winter"],
         "answer": "autumn", "images": ["data:image/png;base64," + base64.b64encode(png(16, 16)).decode()],
         "domain": "nature", "capabilities": "perception"},
    ]
    path = d / "realx_bench.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return d, path


def test_realx_jsonl_layout(tmp_path):
    d, path = realx_dir(tmp_path)
    assert detect_format(path) == "jsonl"
    tasks = load_benchmark("RealX-Bench", d)
    assert len(tasks) == 3 and tasks.format == "jsonl"
    t1, t2, t3 = tasks
    assert t1.id == "RealX-Bench-001" and t1.source == "RealX-Bench"
    assert t1.capabilities == frozenset({"perception", "search", "reasoning"}) and t1.domain == "daily life"
    assert (t1.answer, t1.answer_kind) == ("1998", "numeric")
    assert t1.images == (str((d / "images" / "001.jpg").resolve()),)
    assert t2.capabilities == frozenset({"perception", "reasoning"}) and t2.domain == "science"
    assert t2.load_images()[0].size == (800, 800)
    assert t3.options == {"A": "spring", "B": "summer", "C": "autumn", "D": "winter"}
    assert (t3.answer, t3.answer_kind) == ("C", "choice") and t3.metadata["alternative_answers"] == ["autumn"]
    assert t3.load_images()[0].size == (16, 16)


def test_jsonl_bad_lines_and_images_skip_or_raise(tmp_path):
    _, path = realx_dir(tmp_path)
    lines = path.read_text().splitlines()
    lines.insert(1, '{"id": "broken", "question": "q"')  # invalid JSON
    lines.append(json.dumps({"id": "remote", "question": "q", "answer": "a", "images": ["https://x.org/a.jpg"]}))
    lines.append(json.dumps({"id": "gone", "question": "q", "answer": "a", "images": ["images/none.jpg"]}))
    lines.append(json.dumps({"id": "badcap", "question": "q", "answer": "a", "capabilities": ["telepathy"]}))
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(DataLoadWarning, match="skipped 4 row"):
        tasks = load_jsonl(path)
    assert len(tasks) == 3
    reasons = [s.reason for s in tasks.skipped]
    assert "invalid JSON on line 2" in reasons[0]
    assert "is not fetched" in reasons[1] and "image file not found" in reasons[2]
    assert "unknown capabilities ['telepathy']" in reasons[3]
    with pytest.raises(DataLoadError, match="row 1: invalid JSON on line 2"):
        load_jsonl(path, strict=True)


def test_jsonl_missing_columns_and_field_mapping(tmp_path):
    p = tmp_path / "custom.jsonl"
    p.write_text(json.dumps({"q_text": "How tall?", "gold": "3 m", "pic": None}) + "\n")
    with pytest.raises(MissingColumnsError) as err:
        load_jsonl(p)
    assert "question (question / query" in str(err.value) and "found 'q_text', 'gold', 'pic'" in str(err.value)
    (t,) = load_jsonl(p, fields={"question": "q_text", "answer": "gold", "images": "pic"})
    assert (t.question, t.answer, t.images, t.answer_kind) == ("How tall?", "3 m", (), "text")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataLoadError, match="no records"):
        load_jsonl(empty)
    arr = tmp_path / "array.json"
    arr.write_text(json.dumps([{"question": "Is it raining?", "answer": "yes"}]))
    (t,) = load_tasks(arr)
    assert t.answer_kind == "yesno"


# ---------------------------------------------------------------------------------- Hugging Face
MMSEARCH_FEATURES = {
    "sample_id": {"dtype": "string", "_type": "Value"},
    "query": {"dtype": "string", "_type": "Value"},
    "query_image": {"_type": "Image"},
    "image_search_result": {"_type": "Image"},
    "area": {"dtype": "string", "_type": "Value"},
    "subfield": {"dtype": "string", "_type": "Value"},
    "gt_answer": {"dtype": "string", "_type": "Value"},
    "alternative_gt_answers": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"},
}


def mmsearch_rows():
    return [
        {"sample_id": "news_0", "query": "When will the concert in this poster take place?",
         "query_image": {"bytes": png(64, 48), "path": "poster.png"},
         "image_search_result": {"bytes": png(10, 10), "path": None},
         "area": "news", "subfield": "music", "gt_answer": "June 3", "alternative_gt_answers": ["3 June"]},
        {"sample_id": "knowledge_1", "query": "Which country won the 2019 Rugby World Cup?", "query_image": None,
         "image_search_result": None, "area": "knowledge", "subfield": "sports", "gt_answer": "South Africa",
         "alternative_gt_answers": []},
    ]


def write_save_to_disk(d, rows, features, split=None):
    """The layout ``Dataset.save_to_disk`` writes: an Arrow *stream* shard plus state/info JSON."""
    pa = pytest.importorskip("pyarrow")
    d.mkdir(parents=True)
    img = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = []
    for name, feat in features.items():
        if feat["_type"] == "Image":
            fields.append((name, img))
        elif feat["_type"] == "Sequence":
            fields.append((name, pa.list_(pa.string())))
        else:
            fields.append((name, pa.string()))
    schema = pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": features}})})
    table = pa.Table.from_pylist(rows, schema=schema)
    with pa.OSFile(str(d / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, schema) as writer:
            writer.write_table(table)
    (d / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_fingerprint": "abc123",
        "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
        "_split": split}))
    (d / "dataset_info.json").write_text(json.dumps({"citation": "", "description": "", "features": features}))
    return d


def test_hf_save_to_disk_read_with_pyarrow_only(tmp_path):
    d = write_save_to_disk(tmp_path / "mmsearch", mmsearch_rows(), MMSEARCH_FEATURES)
    assert detect_format(d) == "hf"
    tasks = load_benchmark("MMSearch", d, use_datasets=False)
    assert tasks.format == "hf" and len(tasks) == 2
    t0, t1 = tasks
    assert t0.id == "MMSearch-news_0" and t0.source == "MMSearch"
    assert t0.question == "When will the concert in this poster take place?"
    assert (t0.answer, t0.answer_kind) == ("June 3", "text")
    assert t0.metadata["alternative_answers"] == ["3 June"]
    assert t0.capabilities == frozenset({"search"}) and t0.domain == "news"
    assert t0.metadata["subfield"] == "music" and "image_search_result" not in t0.metadata
    assert t0.load_images()[0].size == (64, 48)
    assert t1.images == () and t1.answer == "South Africa"


def test_hf_dataset_dict_splits(tmp_path):
    root = tmp_path / "dd"
    write_save_to_disk(root / "test", mmsearch_rows()[:1], MMSEARCH_FEATURES, split="test")
    write_save_to_disk(root / "train", mmsearch_rows(), MMSEARCH_FEATURES, split="train")
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["test", "train"]}))
    with pytest.raises(DataLoadError, match=r"several splits \(test, train\); choose one with split="):
        load_hf(root, use_datasets=False)
    assert len(load_hf(root, split="train", use_datasets=False)) == 2
    assert len(load_hf(root, split="test", use_datasets=False)) == 1
    with pytest.raises(DataLoadError, match="no split 'dev'; available: test, train"):
        load_hf(root, split="dev", use_datasets=False)


def test_hf_parquet_shards_by_split(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    data = tmp_path / "hub" / "data"
    data.mkdir(parents=True)
    rows = [{"pid": "1", "question": "Is the line increasing?", "answer": "yes", "image": {"bytes": png(8, 8), "path": "1.png"}}]
    pq.write_table(pa.Table.from_pylist(rows), data / "testmini-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows * 2), data / "test-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows), data / "test-00001-of-00002.parquet")
    assert detect_format(tmp_path / "hub") == "hf"
    tasks = load_tasks(tmp_path / "hub", split="test")
    assert len(tasks) == 3 and [t.id for t in tasks] == ["hf:hub-1", "hf:hub-1#2", "hf:hub-1#3"]
    assert tasks[0].answer_kind == "yesno" and tasks[0].load_images()[0].size == (8, 8)
    (t,) = load_tasks(tmp_path / "hub", split="testmini")


def test_hf_rl_schema_goes_through_rl_mapping(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    d = tmp_path / "DeepEyesV2_RL" / "data"
    d.mkdir(parents=True)
    row = {"data_source": "search", "prompt": [{"role": "user", "content": "<image>Who built it?"}],
           "images": [{"bytes": png(12, 12), "path": None}],
           "reward_model": {"ground_truth": "Gustave Eiffel", "style": "model"},
           "extra_info": {"question": "Who built it?", "index": 5}}
    pq.write_table(pa.Table.from_pylist([row]), d / "train-00000-of-00001.parquet")
    (t,) = load_hf(tmp_path / "DeepEyesV2_RL")
    assert (t.id, t.answer, t.capabilities) == ("search-5", "Gustave Eiffel", frozenset({"search"}))


def test_hf_broken_files_and_rows(tmp_path):
    pytest.importorskip("pyarrow")
    rows = mmsearch_rows()
    rows[1]["query_image"] = {"bytes": b"not an image", "path": None}
    d = write_save_to_disk(tmp_path / "broken_rows", rows, MMSEARCH_FEATURES)
    with pytest.warns(DataLoadWarning, match="skipped 1 row"):
        res = load_hf(d, use_datasets=False)
    assert len(res) == 1 and "image 0 in column 'query_image'" in res.skipped[0].reason
    corrupt = write_save_to_disk(tmp_path / "corrupt", mmsearch_rows(), MMSEARCH_FEATURES)
    (corrupt / "data-00000-of-00001.arrow").write_bytes(b"\x00" * 64)
    with pytest.raises(DataLoadError, match="not a readable Arrow file"):
        load_hf(corrupt, use_datasets=False)
    (corrupt / "data-00000-of-00001.arrow").unlink()
    with pytest.raises(DataLoadError, match="listed in state.json is missing"):
        load_hf(corrupt, use_datasets=False)
    nodata = tmp_path / "nodata"
    nodata.mkdir()
    with pytest.raises(DataLoadError, match="no Hugging Face dataset here"):
        load_hf(nodata)
    wrong = write_save_to_disk(tmp_path / "wrong", [{"foo": "x"}], {"foo": {"dtype": "string", "_type": "Value"}})
    with pytest.raises(MissingColumnsError, match="found 'foo'"):
        load_hf(wrong, use_datasets=False)


def test_hf_real_datasets_save_to_disk_both_paths(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({
        "sample_id": datasets.Value("string"), "query": datasets.Value("string"),
        "query_image": datasets.Image(), "image_search_result": datasets.Image(),
        "area": datasets.Value("string"), "subfield": datasets.Value("string"),
        "gt_answer": datasets.Value("string"), "alternative_gt_answers": datasets.List(datasets.Value("string")),
    })
    ds = datasets.Dataset.from_list(mmsearch_rows(), features=features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datasets.DatasetDict({"end2end": ds}).save_to_disk(str(tmp_path / "mm"), num_proc=None)
    via_lib = load_benchmark("MMSearch", tmp_path / "mm")
    via_arrow = load_benchmark("MMSearch", tmp_path / "mm", use_datasets=False)
    for a, b in zip(via_lib, via_arrow, strict=True):
        assert (a.id, a.question, a.answer, a.images, a.capabilities) == (b.id, b.question, b.answer, b.images,
                                                                          b.capabilities)
    assert via_lib[0].load_images()[0].size == (64, 48)


def test_hf_falls_back_to_pyarrow_without_datasets(tmp_path, monkeypatch):
    d = write_save_to_disk(tmp_path / "mm", mmsearch_rows(), MMSEARCH_FEATURES)
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    tasks = load_hf(d)
    assert [t.id for t in tasks] == ["hf:mm-news_0", "hf:mm-knowledge_1"]
    with pytest.raises(ImportError):
        load_hf(d, use_datasets=True)
