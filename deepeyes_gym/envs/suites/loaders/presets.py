"""Named benchmark presets: where a benchmark's file usually lives and how to read its tasks.

File names are the ones VLMEvalKit stores under its data root (the last part of its download
URL) and the ones the DeepEyesV2 release uses; a preset only says where to look and what the
rows mean, nothing is downloaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

__all__ = ["BenchmarkPreset", "PRESETS", "get_preset", "available_presets", "preset_for_file", "preset_key"]


@dataclass(frozen=True)
class BenchmarkPreset:
    """How to load one benchmark.

    files: names looked for inside a data directory, first match wins.
    format: loader format name (see ``loaders.FORMATS``).
    capabilities: what every task of the benchmark needs (rows may add their own).
    math: free-form non-numeric answers are ``math`` (else ``text``).
    answer_kinds: the answer kinds its rows map to (each row's kind is inferred: choice when it
        has options, numeric when the answer is a number, else math / text).
    reference_scores: the DeepEyesV2 paper's headline accuracy (%), for reports.
    """

    name: str
    format: str
    files: tuple[str, ...]
    capabilities: frozenset[str] = frozenset()
    math: bool = False
    answer_kinds: tuple[str, ...] = ("text",)
    answer_kind: str | None = None
    domain: str | None = None
    aliases: tuple[str, ...] = ()
    description: str = ""
    reference_scores: Mapping[str, float] = field(default_factory=dict)


def preset_key(name: str) -> str:
    """Normalise a benchmark name: ``"V*"`` -> ``"vstar"``, ``"HRBench-4K"`` -> ``"hrbench4k"``."""
    return re.sub(r"[^a-z0-9]", "", name.lower().replace("*", "star"))


_P = frozenset({"perception"})
_R = frozenset({"reasoning"})
_S = frozenset({"search"})

_ALL = (
    BenchmarkPreset(
        "V*", "vlmevalkit", ("VStarBench.tsv", "vstar_bench.tsv", "vstar.tsv"), _P,
        answer_kinds=("choice",),
        aliases=("vstar", "VStarBench", "V-Star", "vstar-bench"),
        description="V* Bench: small objects in high-resolution images (multiple choice).",
        reference_scores={"DeepEyesV2-7B": 81.8, "Qwen2.5-VL-7B": 78.5},
    ),
    BenchmarkPreset(
        "HRBench-4K", "vlmevalkit", ("hr_bench_4k.tsv", "HRBench4K.tsv", "hr_bench_4k_single.tsv"), _P,
        answer_kinds=("choice",),
        aliases=("HRBench4K", "HR-Bench-4K", "hr_bench_4k"),
        description="HR-Bench 4K: single/cross-instance perception on 4K images (multiple choice).",
        reference_scores={"DeepEyesV2-7B": 77.9, "Qwen2.5-VL-7B": 71.6},
    ),
    BenchmarkPreset(
        "HRBench-8K", "vlmevalkit", ("hr_bench_8k.tsv", "HRBench8K.tsv", "hr_bench_8k_single.tsv"), _P,
        answer_kinds=("choice",),
        aliases=("HRBench8K", "HR-Bench-8K", "hr_bench_8k"),
        description="HR-Bench 8K: single/cross-instance perception on 8K images (multiple choice).",
        reference_scores={"DeepEyesV2-7B": 73.8, "Qwen2.5-VL-7B": 67.9},
    ),
    BenchmarkPreset(
        "MME-RealWorld", "vlmevalkit",
        ("MME-RealWorld.tsv", "MME-RealWorld_local.tsv", "mme_realworld.tsv", "mme_realworld_lite.tsv",
         "MME-RealWorld-Lite.tsv"), _P,
        answer_kinds=("choice",),
        aliases=("MMERealWorld", "MME-RealWorld-Lite", "mme_realworld"),
        description="MME-RealWorld: high-resolution real-world perception (five options A-E).",
        reference_scores={"DeepEyesV2-7B": 64.9, "Qwen2.5-VL-7B": 57.3},
    ),
    BenchmarkPreset(
        "MathVista", "vlmevalkit", ("MathVista_MINI.tsv", "MathVista.tsv", "mathvista_testmini.tsv"), _R,
        math=True, answer_kinds=("choice", "numeric", "math"),
        aliases=("MathVista_MINI", "mathvista-mini"),
        description="MathVista testmini: visual math (multi_choice and free_form).",
        reference_scores={"DeepEyesV2-7B": 71.9, "Qwen2.5-VL-7B": 68.3},
    ),
    BenchmarkPreset(
        "MathVerse", "vlmevalkit",
        ("MathVerse_MINI.tsv", "MathVerse_MINIV.tsv", "testmini.tsv", "MathVerse_MINI_Vision_Only.tsv",
         "MathVerse_MINIVOnly.tsv", "testmini_Vision_Only.tsv"), _R,
        math=True, answer_kinds=("choice", "numeric", "math"),
        aliases=("MathVerse_MINI", "MathVerse_MINI_Vision_Only", "mathverse-mini"),
        description="MathVerse testmini: diagram math (multi-choice and free-form).",
        reference_scores={"DeepEyesV2-7B": 52.7, "Qwen2.5-VL-7B": 45.6},
    ),
    BenchmarkPreset(
        "MMSearch", "auto",
        ("mmsearch-test.parquet", "mmsearch_test.parquet", "mmsearch.parquet", "MMSearch.tsv", "mmsearch.jsonl",
         "end2end"), _S,
        answer_kinds=("text", "numeric"),
        aliases=("mmsearch-test", "mmsearch_end2end"),
        description="MMSearch end-to-end: news/knowledge questions that need web search "
                    "(fields sample_id, query, query_image, gt_answer, alternative_gt_answers, area, subfield; "
                    "or the DeepEyesV2 RL-style parquet with data_source 'mmsearch-test').",
        reference_scores={"DeepEyesV2-7B": 63.7, "Qwen2.5-VL-7B (with search)": 52.2},
    ),
    BenchmarkPreset(
        "RealX-Bench", "jsonl",
        ("RealX-Bench.jsonl", "realx_bench.jsonl", "realx-bench.jsonl", "realxbench.jsonl", "RealX-Bench.json",
         "test.jsonl"), frozenset(),
        answer_kinds=("text", "numeric", "choice", "yesno"),
        aliases=("RealX", "realx_bench", "RealXBench"),
        description="RealX-Bench: 300 real-world questions over 5 domains; per-row capabilities "
                    "(perception / reasoning / search).",
        reference_scores={"DeepEyesV2-7B": 28.3, "best model": 46.0, "humans": 70.0},
    ),
    BenchmarkPreset(
        "DeepEyesV2-RL", "deepeyesv2_rl",
        ("rl", "perception_all_1.parquet", "reason.parquet", "search.parquet"), frozenset(),
        answer_kinds=("text", "numeric", "choice", "math", "yesno"),
        aliases=("deepeyesv2_rl", "deepeyesv2-rl-data"),
        description="DeepEyesV2 RL data (verl parquet); capabilities from data_source. "
                    "A directory loads every parquet file in it.",
    ),
    BenchmarkPreset(
        "DeepEyesV2-SFT", "deepeyesv2_sft", ("json", "sft_part_0.json"), frozenset(),
        answer_kinds=("text", "numeric", "choice", "yesno"),
        aliases=("deepeyesv2_sft", "deepeyesv2-coldstart", "cold-start"),
        description="DeepEyesV2 cold-start SFT trajectories (sharegpt messages + image paths). "
                    "A directory loads every .json file in it.",
    ),
)

PRESETS: dict[str, BenchmarkPreset] = {p.name: p for p in _ALL}
_BY_KEY: dict[str, BenchmarkPreset] = {}
for _p in _ALL:
    for _n in (_p.name, *_p.aliases):
        _BY_KEY[preset_key(_n)] = _p


def available_presets() -> list[str]:
    return [p.name for p in _ALL]


def get_preset(name: str | BenchmarkPreset) -> BenchmarkPreset:
    """Look a preset up by name or alias (case, dashes and underscores ignored)."""
    if isinstance(name, BenchmarkPreset):
        return name
    try:
        return _BY_KEY[preset_key(name)]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; presets: {', '.join(available_presets())}") from None


def preset_for_file(path: str | Path) -> BenchmarkPreset | None:
    """The preset whose default file name (case-insensitive) matches ``path``'s name, if any."""
    name = Path(path).name.lower()
    if name in ("test.jsonl", "rl", "json", "end2end"):  # too generic to identify a benchmark
        return None
    for p in _ALL:
        if any(f.lower() == name for f in p.files):
            return p
    return None
