"""The loaders' shared pieces: format detection, presets, options, question clean-up, option
parsing, answer kinds, capability inference, image references."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from deepeyes_gym.envs.suites.loaders import (
    PRESETS,
    DataLoadError,
    LoadOptions,
    available_presets,
    detect_format,
    find_benchmark_file,
    get_preset,
    load_tasks,
)
from deepeyes_gym.envs.suites.loaders.common import (
    capabilities_for,
    clean_question,
    infer_answer_kind,
    match_option,
    normalize_options,
    resolve_image_ref,
    split_options,
)
from deepeyes_gym.envs.task import TaskImageError


def jpeg(w=20, h=10) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("name, expected", [
    ("V*", "V*"), ("vstar", "V*"), ("VStarBench", "V*"), ("hrbench-4k", "HRBench-4K"), ("HR_Bench_8K", "HRBench-8K"),
    ("MME-RealWorld", "MME-RealWorld"), ("mathvista", "MathVista"), ("MathVerse_MINI_Vision_Only", "MathVerse"),
    ("mmsearch", "MMSearch"), ("RealX", "RealX-Bench"), ("deepeyesv2_rl", "DeepEyesV2-RL"),
])
def test_preset_lookup(name, expected):
    assert get_preset(name).name == expected


def test_preset_registry_contents():
    assert available_presets()[:8] == ["V*", "HRBench-4K", "HRBench-8K", "MME-RealWorld", "MathVista", "MathVerse",
                                       "MMSearch", "RealX-Bench"]
    assert PRESETS["V*"].capabilities == {"perception"} and PRESETS["MathVerse"].math
    assert PRESETS["MMSearch"].capabilities == {"search"}
    assert PRESETS["HRBench-8K"].reference_scores["DeepEyesV2-7B"] == 73.8
    assert PRESETS["V*"].answer_kinds == ("choice",) and "math" in PRESETS["MathVista"].answer_kinds
    with pytest.raises(KeyError, match="unknown benchmark 'nope'; presets: V\\*, HRBench-4K"):
        get_preset("nope")


def test_find_benchmark_file(tmp_path):
    (tmp_path / "hr_bench_8k.tsv").write_text("x")
    assert find_benchmark_file("HRBench-8K", tmp_path) == tmp_path / "hr_bench_8k.tsv"
    with pytest.raises(DataLoadError, match="no V\\* data here; looked for VStarBench.tsv"):
        find_benchmark_file("V*", tmp_path)
    with pytest.raises(DataLoadError, match="not found"):
        find_benchmark_file("V*", tmp_path / "absent")


def test_detect_format_errors(tmp_path):
    with pytest.raises(DataLoadError, match="not found"):
        detect_format(tmp_path / "nothing.tsv")
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(DataLoadError, match="unknown data file type '.xlsx'"):
        detect_format(odd)
    with pytest.raises(DataLoadError, match="cannot tell the data format of this directory"):
        detect_format(tmp_path)
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        load_tasks(odd, format="xml")


def test_unknown_option_is_a_clear_type_error(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(TypeError, match="unknown loader option\\(s\\) \\['strcit'\\]"):
        load_tasks(p, strcit=True)
    with pytest.raises(ValueError, match="limit"):
        LoadOptions.from_kwargs({"limit": -1})


@pytest.mark.parametrize("raw, expected", [
    ("<image>\nWhat is it?\n\nYou must put your answer inside <answer> </answer> tags, i.e., ...", "What is it?"),
    ("<image>\n\nQuestion:\nHow many?\nThink first, call **image_zoom_in_tool** if needed, then answer.", "How many?"),
    ("Answer the following question: Why?\nPlease reason step by step. The reasoning process and answer are "
     "enclosed within <think></think>", "Why?"),
    ("<|vision_start|><|image_pad|><|vision_end|>Count the cars.\nOutput the final answer in <answer></answer>.",
     "Count the cars."),
    ("Plain question with no boilerplate?", "Plain question with no boilerplate?"),
])
def test_clean_question(raw, expected):
    assert clean_question(raw) == expected


def test_split_options_forms():
    assert split_options("Q?\nOptions:\nA. red\nB. blue") == ("Q?", {"A": "red", "B": "blue"})
    assert split_options("Q?\n(A) 1\n(B) 2\n(C) 3")[1] == {"A": "1", "B": "2", "C": "3"}
    assert split_options("Q?\nChoices:\nA:2\nB:3")[1] == {"A": "2", "B": "3"}
    assert split_options("What fraction?\nChoices: (A) 3/11 (B) 8/11 (C) 6/11") == (
        "What fraction?", {"A": "3/11", "B": "8/11", "C": "6/11"})
    assert split_options("The choices are listed below:\nA. x\nB. y") == (
        "The choices are listed below:\nA. x\nB. y", None)  # nothing left as a question
    assert split_options("Q?\nA. only one")[1] is None
    assert split_options("Q?\nA. x\nC. y")[1] is None  # letters must run A, B, C ...


def test_options_and_matching():
    assert normalize_options("['(A) red', '(B) blue']") == {"A": "red", "B": "blue"}
    assert normalize_options(["3/11", "8/11"]) == {"A": "3/11", "B": "8/11"}
    assert normalize_options({"A": "x", "B": None}) == {"A": "x"}
    assert normalize_options("") is None and normalize_options("not a list") is None
    opts = {"A": "red", "B": "Blue"}
    assert [match_option(a, opts) for a in ("B", "(b)", "A.", "blue", "B. Blue", "green")] == ["B", "B", "A", "B", "B", None]


@pytest.mark.parametrize("answer, options, math_kind, kind", [
    ("42", None, False, "numeric"), ("-3.5", None, True, "numeric"), ("1,234", None, False, "numeric"),
    ("1e3", None, False, "numeric"), ("B", {"A": "x", "B": "y"}, False, "choice"), ("Yes", None, False, "yesno"),
    ("\\frac{1}{2}", None, True, "math"), ("\\frac{1}{2}", None, False, "text"), ("Paris", None, False, "text"),
    ("1.2.3", None, False, "text"), ("nan", None, False, "text"), ("12,34", None, False, "text"),
])
def test_infer_answer_kind(answer, options, math_kind, kind):
    assert infer_answer_kind(answer, options, math_kind=math_kind) == kind


@pytest.mark.parametrize("names, caps", [
    (("perception",), {"perception"}), (("reason",), {"reasoning"}), (("search",), {"search"}),
    (("vstar-test",), {"perception"}), (("mmsearch-test",), {"search"}), (("hiyouga/geometry3k",), {"reasoning"}),
    (("visual_toolbox_v2",), {"perception"}), (("MathVerse_MINI",), {"reasoning"}), (("unrelated",), set()),
    ((None, "", "hr_bench_4k"), {"perception"}),
])
def test_capabilities_for(names, caps):
    assert capabilities_for(*names) == frozenset(caps)


def test_resolve_image_ref_forms(tmp_path):
    data = jpeg()
    b64 = base64.b64encode(data).decode()
    assert b64.startswith("/9j/")  # JPEG base64: must not be mistaken for a path
    assert resolve_image_ref(b64, [tmp_path]) == data
    assert resolve_image_ref("data:image/jpeg;base64," + b64, [tmp_path]) == data
    assert resolve_image_ref({"bytes": data, "path": "ignored.jpg"}, [tmp_path]) == data
    (tmp_path / "a.jpg").write_bytes(data)
    assert resolve_image_ref({"bytes": None, "path": "a.jpg"}, [tmp_path]) == str((tmp_path / "a.jpg").resolve())
    for bad, msg in [(b"", "empty"), ("https://example.org/x.png", "not fetched"), ("missing.png", "not found"),
                     ({"bytes": None, "path": None}, "neither bytes nor path"), (3.5, "unsupported"),
                     (b"garbage bytes", "not a readable image")]:
        with pytest.raises(TaskImageError, match=msg):
            resolve_image_ref(bad, [tmp_path])
    # validate=False keeps references without opening them
    assert resolve_image_ref(b"garbage bytes", [tmp_path], validate=False) == b"garbage bytes"


def test_pixel_limit_is_checked_from_the_header(tmp_path):
    buf = io.BytesIO()
    Image.new("1", (9000, 8000)).save(buf, "PNG")  # 72 MP > the Task limit, tiny file
    with pytest.raises(TaskImageError, match="pixel limit"):
        resolve_image_ref(buf.getvalue(), [tmp_path])
