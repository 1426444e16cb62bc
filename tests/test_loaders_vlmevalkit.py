"""VLMEvalKit TSV loader, on files written in VLMEvalKit's exact layout (pandas ``to_csv(sep='\\t')``
quoting, base64 images, index references, list-valued image cells, option columns)."""

from __future__ import annotations

import base64
import csv
import io
import warnings

import pytest
from PIL import Image

from deepeyes_gym.envs.suites.loaders import (
    PRESETS,
    DataLoadError,
    DataLoadWarning,
    MissingColumnsError,
    load_benchmark,
    load_tasks,
    load_vlmevalkit_tsv,
)


def img_bytes(w: int, h: int, color=(200, 30, 30), fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_tsv(path, header, rows):
    """What ``DataFrame.to_csv(path, sep='\\t', index=False)`` writes: minimal quoting, NaN -> ''."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        w.writerow(header)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r[c] for c in header])
    return path


VSTAR_HEADER = ["index", "image", "question", "A", "B", "C", "D", "answer", "category"]


def vstar_file(tmp_path, name="VStarBench.tsv"):
    big = b64(img_bytes(640, 480))  # JPEG base64 starts with "/9j/"
    rows = [
        {"index": 0, "image": big, "question": "What is the color of the woman's bag?",
         "A": "red", "B": "black", "C": "white", "D": "blue", "answer": "A", "category": "direct_attributes"},
        {"index": 1, "image": b64(img_bytes(320, 200, fmt="PNG")),
         "question": "Is the dog on the left or right side of the car?",
         "A": "left", "B": "right", "answer": "B", "category": "relative_position"},
    ]
    return write_tsv(tmp_path / name, VSTAR_HEADER, rows)


def test_vstar_tsv_maps_to_choice_tasks(tmp_path):
    tasks = load_tasks(vstar_file(tmp_path))
    assert len(tasks) == 2 and tasks.n_skipped == 0 and tasks.format == "vlmevalkit"
    t0, t1 = tasks
    assert t0.id == "V*-0" and t0.source == "V*"
    assert t0.question == "What is the color of the woman's bag?"
    assert t0.options == {"A": "red", "B": "black", "C": "white", "D": "blue"}
    assert (t0.answer, t0.answer_kind) == ("A", "choice")
    assert t0.capabilities == frozenset({"perception"})
    assert t0.domain == "direct_attributes"
    assert t1.options == {"A": "left", "B": "right"}  # empty C/D cells are not options
    assert isinstance(t0.images[0], bytes)  # lazy: decoded by Task.load_images
    assert [im.size for im in t0.load_images()] == [(640, 480)]
    assert t1.load_images()[0].size == (320, 200)
    assert "Options:\nA. red" in t0.prompt_text()


def test_hrbench_image_cells_referencing_other_rows(tmp_path):
    header = ["index", "question", "answer", "category", "image", "A", "B", "C", "D", "cycle_category"]
    img = b64(img_bytes(1024, 768))
    rows = [
        {"index": 100, "question": "What is written on the sign?", "answer": "C", "category": "single",
         "image": img, "A": "STOP", "B": "EXIT", "C": "OPEN", "D": "SALE", "cycle_category": "cycle1"},
        # Same question, options rotated; the image cell names row 100 (VLMEvalKit's dedup).
        {"index": 101, "question": "What is written on the sign?", "answer": "B", "category": "single",
         "image": "100", "A": "EXIT", "B": "OPEN", "C": "SALE", "D": "STOP", "cycle_category": "cycle2"},
    ]
    tasks = load_tasks(write_tsv(tmp_path / "hr_bench_4k.tsv", header, rows))
    assert [t.source for t in tasks] == ["HRBench-4K", "HRBench-4K"]
    assert tasks[1].images == tasks[0].images
    assert tasks[1].answer == "B" and tasks[1].metadata["cycle_category"] == "cycle2"
    assert tasks[0].capabilities == frozenset({"perception"})


def test_multi_image_cell_and_image_path_list(tmp_path):
    header = ["index", "image", "image_path", "question", "A", "B", "answer"]
    imgs = [b64(img_bytes(50, 40)), b64(img_bytes(60, 30, fmt="PNG"))]
    rows = [{"index": 7, "image": str(imgs), "image_path": str(["7_0.jpg", "7_1.png"]),
             "question": "Which image is wider?", "A": "first", "B": "second", "answer": "B"}]
    (t,) = load_vlmevalkit_tsv(write_tsv(tmp_path / "multi.tsv", header, rows))
    assert [im.size for im in t.load_images()] == [(50, 40), (60, 30)]


def test_image_path_only_variant_resolves_relative_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (33, 22)).save(tmp_path / "imgs" / "a.png")
    other = tmp_path / "elsewhere"
    other.mkdir()
    Image.new("RGB", (11, 12)).save(other / "b.png")
    header = ["index", "image_path", "question", "answer"]
    rows = [{"index": 1, "image_path": "imgs/a.png", "question": "How many?", "answer": "3"},
            {"index": 2, "image_path": "b.png", "question": "How many?", "answer": "4"}]
    tsv = write_tsv(tmp_path / "paths.tsv", header, rows)
    tasks = load_vlmevalkit_tsv(tsv, image_root=other)
    assert tasks[0].images == (str((tmp_path / "imgs" / "a.png").resolve()),)
    assert tasks[1].load_images()[0].size == (11, 12)
    assert tasks[0].answer_kind == "numeric" and tasks[0].options is None


def test_mme_realworld_five_options(tmp_path):
    header = ["index", "image", "question", "multi-choice options", "A", "B", "C", "D", "E", "answer",
              "category", "l2-category"]
    opts = ["(A) 1", "(B) 2", "(C) 3", "(D) 4", "(E) The image does not feature the object"]
    rows = [{"index": "rs_1", "image": b64(img_bytes(300, 300)), "question": "How many planes are parked?",
             "multi-choice options": "The choices are listed below:\n" + "\n".join(opts),
             "A": "1", "B": "2", "C": "3", "D": "4", "E": "The image does not feature the object",
             "answer": "D", "category": "Perception", "l2-category": "remote_sensing/count"}]
    (t,) = load_benchmark("MME-RealWorld", write_tsv(tmp_path / "MME-RealWorld.tsv", header, rows))
    assert t.question == "How many planes are parked?"
    assert list(t.options) == ["A", "B", "C", "D", "E"] and t.answer == "D"
    assert t.metadata["l2-category"] == "remote_sensing/count" and t.domain == "Perception"


def test_mme_realworld_lite_option_list_column(tmp_path):
    header = ["index", "image", "question", "multi-choice options", "answer", "category"]
    rows = [{"index": 3, "image": b64(img_bytes(64, 64)), "question": "What colour is the roof?",
             "multi-choice options": str(["(A) red", "(B) green", "(C) blue", "(D) grey", "(E) none"]),
             "answer": "C", "category": "color"}]
    (t,) = load_vlmevalkit_tsv(write_tsv(tmp_path / "mme_realworld_lite.tsv", header, rows))
    assert t.options == {"A": "red", "B": "green", "C": "blue", "D": "grey", "E": "none"}
    assert t.answer == "C" and t.answer_kind == "choice"


MATHVISTA_HEADER = ["index", "image", "question", "answer", "answer_option", "choices", "question_type",
                    "answer_type", "precision", "unit", "task", "skills"]


def test_mathvista_multi_choice_and_free_form(tmp_path):
    img = b64(img_bytes(200, 100))
    mc_q = ("Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n"
            "Question: What fraction of the shape is blue?\nChoices:\n(A) 3/11\n(B) 8/11\n(C) 6/11\n(D) 3/5")
    rows = [
        {"index": 1, "image": img, "question": mc_q, "answer": "8/11", "answer_option": "B",
         "choices": str(["3/11", "8/11", "6/11", "3/5"]), "question_type": "multi_choice", "answer_type": "text",
         "task": "math word problem", "skills": str(["arithmetic reasoning"])},
        {"index": 2, "image": img, "question": "Hint: Please answer the question requiring an integer answer.\n"
         "Question: Which number is missing?", "answer": "14", "question_type": "free_form",
         "answer_type": "integer", "precision": "", "task": "IQ test"},
        {"index": 3, "image": img, "question": "Hint: Please answer the question requiring a Python list.\n"
         "Question: Between which two years does the line peak?", "answer": "[2007, 2008]",
         "question_type": "free_form", "answer_type": "list", "task": "figure question answering"},
    ]
    tasks = load_tasks(write_tsv(tmp_path / "MathVista_MINI.tsv", MATHVISTA_HEADER, rows))
    mc, integer, lst = tasks
    assert mc.source == "MathVista" and mc.capabilities == frozenset({"reasoning"})
    assert mc.options == {"A": "3/11", "B": "8/11", "C": "6/11", "D": "3/5"}
    assert (mc.answer, mc.answer_kind, mc.metadata["answer_text"]) == ("B", "choice", "8/11")
    assert mc.question.startswith("Hint: Please answer") and "Choices" not in mc.question
    assert mc.prompt_text().count("8/11") == 1  # options shown once
    assert mc.metadata["task"] == "math word problem"
    assert (integer.answer, integer.answer_kind, integer.options) == ("14", "numeric", None)
    assert (lst.answer, lst.answer_kind) == ("[2007, 2008]", "math")
    assert {t.answer_kind for t in tasks} == set(PRESETS["MathVista"].answer_kinds)


def test_mathverse_text_options_and_free_form(tmp_path):
    header = ["index", "image", "question", "answer", "question_type", "problem_version", "question_for_eval"]
    img = b64(img_bytes(120, 120, fmt="PNG"))
    q = ("As shown in the figure, circle O has a radius 1.0, if angle BAC = 60.0, then the length of BC is ()\n"
         "Choices:\nA:2\nB:2\u221a{3}\nC:\u221a{3}\nD:2\u221a{2}")
    rows = [
        {"index": 11, "image": img, "question": q, "answer": "C", "question_type": "multi-choice",
         "problem_version": "Text Lite", "question_for_eval": q},
        {"index": 12, "image": img, "question": "Write the set of numbers represented on the number line in "
         "interval notation.", "answer": "(-2,1]", "question_type": "free-form", "problem_version": "Vision Only"},
    ]
    mc, free = load_benchmark("MathVerse", write_tsv(tmp_path / "MathVerse_MINI.tsv", header, rows))
    assert mc.options == {"A": "2", "B": "2\u221a{3}", "C": "\u221a{3}", "D": "2\u221a{2}"}
    assert mc.answer == "C" and mc.answer_kind == "choice"
    assert mc.question.endswith("then the length of BC is ()")
    assert mc.metadata["problem_version"] == "Text Lite"
    assert (free.answer_kind, free.options) == ("math", None)


def test_hint_column_is_prepended(tmp_path):
    header = ["index", "image", "question", "hint", "A", "B", "answer", "category", "l2-category", "split"]
    rows = [{"index": 5, "image": b64(img_bytes(40, 40)), "question": "Which animal is shown?",
             "hint": "The photo was taken at a farm.", "A": "cow", "B": "lion", "answer": "A",
             "category": "object_localization", "l2-category": "finegrained", "split": "dev"}]
    (t,) = load_vlmevalkit_tsv(write_tsv(tmp_path / "MMBench_DEV_EN.tsv", header, rows))
    assert t.question == "Hint: The photo was taken at a farm.\nWhich animal is shown?"
    assert t.metadata["split"] == "dev" and t.metadata["l2-category"] == "finegrained"


def test_pandas_written_tsv_with_nan_options(tmp_path):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({
        "index": [0, 1], "image": [b64(img_bytes(30, 30)), b64(img_bytes(31, 31))],
        "question": ['He said "look\tthere"\nwhat is it?', "Second?"],
        "A": ["x", "p"], "B": ["y", "q"], "C": ["z", float("nan")], "D": [float("nan"), float("nan")],
        "answer": ["C", "A"], "category": ["c1", "c2"],
    })
    path = tmp_path / "VStarBench.tsv"
    df.to_csv(path, sep="\t", index=False)
    t0, t1 = load_tasks(path)
    assert t0.question == 'He said "look\tthere"\nwhat is it?'
    assert t0.options == {"A": "x", "B": "y", "C": "z"} and t1.options == {"A": "p", "B": "q"}


def test_broken_image_rows_are_skipped_with_warning_or_raise_when_strict(tmp_path):
    rows = [
        {"index": 0, "image": b64(img_bytes(20, 20)), "question": "q0", "A": "a", "B": "b", "answer": "A"},
        {"index": 1, "image": b64(b"this is not an image at all" * 10), "question": "q1", "A": "a", "B": "b",
         "answer": "B"},
        {"index": 2, "image": "", "question": "q2", "A": "a", "B": "b", "answer": "A"},  # no image: skipped
        {"index": 3, "image": b64(img_bytes(20, 20)), "question": "q3", "A": "a", "B": "b", "answer": "Z"},
    ]
    path = write_tsv(tmp_path / "bench.tsv", VSTAR_HEADER, rows)
    with pytest.warns(DataLoadWarning, match="skipped 3 row"):
        tasks = load_tasks(path)
    assert [t.id for t in tasks] == ["vlmevalkit:bench-0"]
    assert [s.row for s in tasks.skipped] == [1, 2, 3]
    assert "not a readable image" in tasks.skipped[0].reason
    assert "no image" in tasks.skipped[1].reason
    assert "none of the options" in tasks.skipped[2].reason
    with pytest.raises(DataLoadError, match="row 1: image #0: not a readable image"):
        load_tasks(path, strict=True)


def test_missing_columns_are_named_with_what_was_found(tmp_path):
    path = write_tsv(tmp_path / "x.tsv", ["index", "question", "A"], [{"index": 0, "question": "q", "A": "a"}])
    with pytest.raises(MissingColumnsError) as err:
        load_vlmevalkit_tsv(path)
    msg = str(err.value)
    assert "'answer'" in msg and "image (or image_path)" in msg and "found 'index', 'question', 'A'" in msg
    assert isinstance(err.value, ValueError)


def test_missing_unreadable_and_ragged_files(tmp_path):
    with pytest.raises(DataLoadError, match="not found"):
        load_vlmevalkit_tsv(tmp_path / "nope.tsv")
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"\xff\xfe\x00\x81garbage\x00\x00")
    with pytest.raises(DataLoadError, match="not UTF-8"):
        load_vlmevalkit_tsv(bad)
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(DataLoadError, match="empty file"):
        load_vlmevalkit_tsv(empty)
    ragged = tmp_path / "ragged.tsv"
    ragged.write_text("index\timage\tquestion\tanswer\n0\t" + b64(img_bytes(9, 9)) + "\tq\tA\textra\n")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        res = load_vlmevalkit_tsv(ragged)
    assert len(res) == 0 and "more cell" in res.skipped[0].reason


def test_limit_and_explicit_options(tmp_path):
    path = vstar_file(tmp_path, name="custom_bench.tsv")
    tasks = load_tasks(path, limit=1, source="mine", capabilities=["perception", "search"], domain="x")
    assert len(tasks) == 1 and tasks[0].id == "mine-0"
    assert tasks[0].capabilities == frozenset({"perception", "search"})
    assert tasks[0].domain == "direct_attributes"  # the row's category wins over the default
