"""DeepEyesV2 RL parquet and cold-start SFT JSON loaders, on files in the release's exact layouts
(verl RLHFDataset parquet columns; LLaMA-Factory sharegpt role/content messages + image paths)."""

from __future__ import annotations

import io
import json
import sys

import pytest
from PIL import Image

from deepeyes_gym.envs.suites.loaders import (
    DataLoadError,
    DataLoadWarning,
    MissingColumnsError,
    MissingDependencyError,
    SFTTrajectory,
    detect_format,
    load_deepeyesv2_rl,
    load_deepeyesv2_sft,
    load_sft_trajectories,
    load_tasks,
)

SYSTEM_V2 = ("You are an agent - please keep going until the user's query is completely resolved...\n"
             "Your python code should be enclosed within <code> </code> tag.")
AGENT_SUFFIX = ("\n\nYou must put your answer inside <answer> </answer> tags, i.e., <answer> answer here </answer>. "
                "Please reason step by step. Use Python code to process the image if necessary. Format strictly as "
                "<think> </think> <code> </code> (if code is needed) or <think> <think> <answer> </answer>.")
V1_SUFFIX = ("\nThink first, call **image_zoom_in_tool** if needed, then answer. Format strictly as:  "
             "<think>...</think>  <tool_call>...</tool_call> (if tools needed)  <answer>...</answer> ")


def img_bytes(w: int, h: int, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 120, 200)).save(buf, fmt)
    return buf.getvalue()


def rl_row(data_source, question, answer, *, images=(), user=None, index=0, extra_question=True, env="deepeyesv2"):
    user = user if user is not None else "<image>\n" * len(images) + question + AGENT_SUFFIX
    extra = {"answer": answer, "index": index, "split": "train", "question": question if extra_question else None}
    return {
        "data_source": data_source,
        "prompt": [{"role": "system", "content": SYSTEM_V2}, {"role": "user", "content": user}],
        "images": [{"bytes": b, "path": p} for b, p in images],
        "ability": "vl",
        "env_name": env,
        "reward_model": {"ground_truth": answer, "style": "model"},
        "extra_info": extra,
    }


def write_rl_parquet(path, rows):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    schema = pa.schema([
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        ("ability", pa.string()),
        ("env_name", pa.string()),
        ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
        ("extra_info", pa.struct([("answer", pa.string()), ("index", pa.int64()), ("split", pa.string()),
                                  ("question", pa.string())])),
    ])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def rl_rows():
    return [
        rl_row("perception", "What is the number on the small sign?", "42",
               images=[(img_bytes(800, 600), "vstar/sa_1.jpg")], index=0),
        rl_row("reason", "Find the value of x in the triangle.", "\\frac{1}{2}",
               images=[(img_bytes(300, 200, "PNG"), "geo/1.png")], index=1),
        # no extra_info.question: the question comes from the user turn minus placeholders/instructions
        rl_row("search", "Who designed the building shown in the photo?", "Frank Gehry",
               images=[(img_bytes(256, 256), None)], index=2, extra_question=False),
        rl_row("vstar-test", "What is the colour of the umbrella?\n(A) red\n(B) blue\n(C) green", "B",
               images=[(img_bytes(500, 500), None)], index=3, env="visual_toolbox_v2",
               user="<image>\n\nQuestion:\nWhat is the colour of the umbrella?\n(A) red\n(B) blue\n(C) green" + V1_SUFFIX,
               extra_question=False),
    ]


def test_rl_parquet_maps_every_column(tmp_path):
    path = write_rl_parquet(tmp_path / "search.parquet", rl_rows())
    assert detect_format(path) == "deepeyesv2_rl"
    tasks = load_tasks(path)
    assert len(tasks) == 4 and tasks.n_skipped == 0
    per, rea, sea, vst = tasks
    assert per.id == "perception-0" and per.source == "deepeyesv2-rl"
    assert per.question == "What is the number on the small sign?"
    assert (per.answer, per.answer_kind) == ("42", "numeric")
    assert per.capabilities == frozenset({"perception"}) and per.domain == "perception"
    assert per.load_images()[0].size == (800, 600)
    assert per.metadata["system_prompt"] == SYSTEM_V2
    assert per.metadata["env_name"] == "deepeyesv2" and per.metadata["reward_style"] == "model"
    assert per.metadata["extra_info"]["split"] == "train" and per.metadata["ability"] == "vl"
    assert "<image>" in per.metadata["prompt"][0]["content"]
    assert (rea.answer, rea.answer_kind, rea.capabilities) == ("\\frac{1}{2}", "math", frozenset({"reasoning"}))
    assert sea.question == "Who designed the building shown in the photo?"
    assert (sea.answer_kind, sea.capabilities) == ("text", frozenset({"search"}))
    assert vst.question == "What is the colour of the umbrella?"
    assert vst.options == {"A": "red", "B": "blue", "C": "green"} and vst.answer == "B"
    assert vst.answer_kind == "choice" and vst.capabilities == frozenset({"perception"})


def test_rl_directory_loads_all_files_with_unique_ids(tmp_path):
    d = tmp_path / "rl"
    d.mkdir()
    write_rl_parquet(d / "perception_all_1.parquet", rl_rows()[:1])
    write_rl_parquet(d / "perception_all_2.parquet", rl_rows()[:1])  # same data_source/index
    tasks = load_tasks(d)
    assert tasks.format == "deepeyesv2_rl"
    assert [t.id for t in tasks] == ["perception-0", "perception-0#2"]
    assert [t.metadata["file"] for t in tasks] == ["perception_all_1", "perception_all_2"]


def test_mmsearch_preset_on_rl_style_parquet(tmp_path):
    from deepeyes_gym.envs.suites.loaders import load_benchmark

    row = rl_row("mmsearch-test", "Which team won the final shown here?", "Argentina",
                 images=[(img_bytes(64, 64), None)], index=4)
    write_rl_parquet(tmp_path / "mmsearch-test.parquet", [row])
    (t,) = load_benchmark("MMSearch", tmp_path)
    assert (t.source, t.id, t.capabilities, t.answer_kind) == ("MMSearch", "mmsearch-test-4", frozenset({"search"}), "text")


def test_rl_image_given_by_path_only(tmp_path):
    Image.new("RGB", (77, 55)).save(tmp_path / "local.png")
    row = rl_row("perception", "How many cars?", "3", images=[(None, "local.png")])
    (t,) = load_deepeyesv2_rl(write_rl_parquet(tmp_path / "p.parquet", [row]))
    assert t.images == (str((tmp_path / "local.png").resolve()),)
    assert t.load_images()[0].size == (77, 55)


def test_rl_broken_rows_skip_or_raise(tmp_path):
    rows = rl_rows()[:2]
    rows.append(rl_row("perception", "Broken?", "no", images=[(b"\x89PNG but truncated", None)], index=9))
    rows.append(rl_row("perception", "Two placeholders, one image", "1", images=[(img_bytes(10, 10), None)],
                       user="<image><image>Two placeholders, one image", index=10))
    empty = rl_row("perception", "No answer", "", images=[(img_bytes(10, 10), None)], index=11)
    rows.append(empty)
    path = write_rl_parquet(tmp_path / "p.parquet", rows)
    with pytest.warns(DataLoadWarning, match="skipped 3 row"):
        tasks = load_deepeyesv2_rl(path)
    assert len(tasks) == 2
    reasons = {s.row: s.reason for s in tasks.skipped}
    assert "not a readable image" in reasons[2]
    assert "2 <image> placeholders but the row has 1" in reasons[3]
    assert "ground_truth is empty" in reasons[4]
    with pytest.raises(DataLoadError, match=r"p\.parquet: row 2: image 0"):
        load_deepeyesv2_rl(path, strict=True)


def test_rl_missing_columns_and_corrupt_file(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "norm.parquet"
    pq.write_table(pa.table({"data_source": ["x"], "prompt": [[{"role": "user", "content": "q"}]]}), path)
    with pytest.raises(MissingColumnsError) as err:
        load_deepeyesv2_rl(path)
    assert "'reward_model'" in str(err.value) and "found 'data_source', 'prompt'" in str(err.value)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 definitely not parquet PAR1")
    with pytest.raises(DataLoadError, match="not a readable parquet file"):
        load_deepeyesv2_rl(bad)
    with pytest.raises(DataLoadError, match="not found"):
        load_deepeyesv2_rl(tmp_path / "missing.parquet")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(DataLoadError, match="no parquet files"):
        load_deepeyesv2_rl(empty_dir)


def test_missing_pyarrow_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"irrelevant")
    for mod in ("pyarrow", "pyarrow.parquet", "pyarrow.ipc"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(MissingDependencyError, match=r"pip install deepeyes-gym\[data\]"):
        load_deepeyesv2_rl(path)
    with pytest.raises(ImportError):
        load_tasks(path)


# ------------------------------------------------------------------------------------------ SFT
CODE_TURN = ("<think>The sign is tiny; crop it.</think>\n<code>\n```python\n"
             "crop = image_1.crop((100, 100, 300, 200))\nplt.imshow(crop); plt.show()\n```\n</code>")
OBS_TURN = ("Code execution result:\nstdout:\n```\n\n```\n\nstderr:\n```\n\n```\n\nImages:\n<image>")
SEARCH_TURN = '<think>Need facts.</think>\n<tool_call>{"name": "search", "arguments": {"query": "Gehry museum"}}</tool_call>'
SEARCH_OBS = "<tool_response>\nA Google search for 'Gehry museum' found 5 results:\n\n## Web Results\n1. [x](y)\nz\n</tool_response>"


def sft_layout(tmp_path):
    """data/sft/json/sft_part_0.json with images under data/sft/images (relative paths, as released)."""
    root = tmp_path / "sft"
    (root / "json").mkdir(parents=True)
    (root / "images").mkdir()
    Image.new("RGB", (640, 480)).save(root / "images" / "q1.jpg")
    Image.new("RGB", (200, 100)).save(root / "images" / "q1_crop.png")
    Image.new("RGB", (300, 300)).save(root / "images" / "q2.jpg")
    items = [
        {"messages": [
            {"role": "system", "content": SYSTEM_V2},
            {"role": "user", "content": "<image>\nWhat number is on the sign?" + AGENT_SUFFIX},
            {"role": "assistant", "content": CODE_TURN},
            {"role": "user", "content": OBS_TURN},
            {"role": "assistant", "content": "<think>It reads 7.</think>\n<answer>7</answer>"},
        ], "images": ["images/q1.jpg", "images/q1_crop.png"]},
        {"messages": [
            {"role": "user", "content": "<image>Who designed this building?"},
            {"role": "assistant", "content": SEARCH_TURN},
            {"role": "user", "content": SEARCH_OBS},
            {"role": "assistant", "content": "<think>Found it.</think><answer>Frank Gehry</answer>"},
        ], "images": ["images/q2.jpg"]},
    ]
    path = root / "json" / "sft_part_0.json"
    path.write_text(json.dumps(items, indent=4))
    return path


def test_sft_trajectories_expose_turns_and_images(tmp_path):
    path = sft_layout(tmp_path)
    assert detect_format(path) == "deepeyesv2_sft"
    trajs = load_sft_trajectories(path)
    assert len(trajs) == 2 and all(isinstance(t, SFTTrajectory) for t in trajs)
    tr = trajs[0]
    assert [m["kind"] for m in tr.messages] == ["system", "question", "assistant", "observation", "assistant"]
    assert tr.system == SYSTEM_V2
    assert len(tr.images) == 2 and tr.messages[3]["images"] == (tr.images[1],)
    assert tr.assistant_turns() == [CODE_TURN, "<think>It reads 7.</think>\n<answer>7</answer>"]
    chat = tr.chat_messages()
    assert chat[1]["content"][0] == {"type": "image", "image": tr.images[0]}
    assert chat[3]["content"][-1] == {"type": "image", "image": tr.images[1]}
    task = tr.task
    assert task.question == "What number is on the sign?"
    assert (task.answer, task.answer_kind) == ("7", "numeric")
    assert len(task.images) == 1 and task.load_images()[0].size == (640, 480)
    assert task.reference_solution == tuple(tr.assistant_turns())
    assert task.capabilities == frozenset({"perception"})  # code reads image_1
    assert task.metadata["n_tool_turns"] == 1 and task.metadata["answer_found"] is True
    search = trajs[1].task
    assert search.capabilities == frozenset({"search"}) and search.answer == "Frank Gehry"


def test_sft_as_tasks_and_directory_and_absolute_paths(tmp_path):
    path = sft_layout(tmp_path)
    # data_convert.py rewrites image paths to absolute ones; those load too.
    items = json.loads(path.read_text())
    for it in items:
        it["images"] = [str(path.parent.parent / p) for p in it["images"]]
    (path.parent / "sft_part_1.json").write_text(json.dumps(items))
    assert detect_format(path.parent) == "deepeyesv2_sft"
    tasks = load_tasks(path.parent)
    assert tasks.format == "deepeyesv2_sft" and len(tasks) == 4
    assert len({t.id for t in tasks}) == 4
    assert [m["kind"] for m in tasks[0].metadata["messages"]][:2] == ["system", "question"]
    assert load_deepeyesv2_sft(path, limit=1)[0].answer == "7"


def test_sft_bad_items_skip_or_raise(tmp_path):
    path = sft_layout(tmp_path)
    items = json.loads(path.read_text())
    missing_img = json.loads(json.dumps(items[1]))
    missing_img["images"] = ["images/does_not_exist.jpg"]
    mismatch = json.loads(json.dumps(items[1]))
    mismatch["images"] = []
    no_answer = json.loads(json.dumps(items[1]))
    no_answer["messages"][-1]["content"] = "<think>hmm</think>"
    path.write_text(json.dumps([items[0], missing_img, mismatch, no_answer]))
    with pytest.warns(DataLoadWarning, match="skipped 2 row"):
        trajs = load_sft_trajectories(path)
    assert len(trajs) == 2
    assert "image file not found" in trajs.skipped[0].reason
    assert "1 <image> placeholder(s) in the messages but 0 image(s)" in trajs.skipped[1].reason
    assert trajs[1].task.answer == "" and trajs[1].task.metadata["answer_found"] is False
    with pytest.raises(DataLoadError, match="row 1: image 0: image file not found"):
        load_sft_trajectories(path, strict=True)


def test_sft_missing_key_and_invalid_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps([{"conversation": [], "images": []}]))
    with pytest.raises(MissingColumnsError, match="'messages'"):
        load_deepeyesv2_sft(p)
    p.write_text('[{"messages": [')
    with pytest.raises(DataLoadError, match="invalid JSON"):
        load_deepeyesv2_sft(p)


def test_sft_sharegpt_from_value_variant(tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    item = {"conversations": [{"from": "human", "value": "<image>How many dots?"},
                              {"from": "gpt", "value": "<think>count</think><answer>5</answer>"}],
            "images": ["a.png"]}
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(item) + "\n")
    (t,) = load_sft_trajectories(p)
    assert [m["role"] for m in t.messages] == ["user", "assistant"]
    assert t.task.answer == "5" and t.task.capabilities == frozenset()
