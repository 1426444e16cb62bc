"""Loaders turning real data on disk into :class:`~deepeyes_gym.envs.task.Task` lists.

Formats (``format=``):

- ``deepeyesv2_rl``: the DeepEyesV2 / verl RL parquet (file or directory of files);
- ``deepeyesv2_sft``: the DeepEyesV2 cold-start SFT JSON (sharegpt messages + image paths); the
  full trajectories come from :func:`load_sft_trajectories`;
- ``vlmevalkit``: VLMEvalKit benchmark TSVs (base64 images, option columns A-D...);
- ``jsonl``: RealX-Bench / generic JSONL (or JSON array) with image paths;
- ``hf``: Hugging Face ``datasets`` saved on disk (``save_to_disk`` arrow, or parquet shards).

Nothing is downloaded. Parquet and arrow need ``pyarrow`` (``pip install deepeyes-gym[data]``);
TSV, JSON and JSONL need nothing beyond the core dependencies. Bad rows (broken images, malformed
records) are skipped with a :class:`DataLoadWarning` and listed in ``result.skipped``, or raise
:class:`DataLoadError` with ``strict=True``; missing files, missing columns and unreadable files
always raise :class:`DataLoadError` (a ``ValueError``).

Example::

    from deepeyes_gym.envs.suites.loaders import load_tasks, load_benchmark
    tasks = load_tasks("data/rl/search.parquet")              # format detected
    vstar = load_benchmark("V*", "data/LMUData")                # finds VStarBench.tsv
    print(len(vstar), vstar.n_skipped, vstar[0].prompt_text())
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

from .common import LoadOptions, LoadResult, SkippedRow, require_pyarrow
from .deepeyesv2 import (
    SFTTrajectory,
    is_rl_schema,
    load_deepeyesv2_rl,
    load_deepeyesv2_sft,
    load_sft_trajectories,
)
from .errors import DataLoadError, DataLoadWarning, MissingColumnsError, MissingDependencyError
from .hf import is_hf_dir, load_hf
from .jsonl import load_jsonl
from .presets import PRESETS, BenchmarkPreset, available_presets, get_preset, preset_for_file
from .vlmevalkit import load_vlmevalkit_tsv

__all__ = [
    "load_tasks",
    "load_benchmark",
    "find_benchmark_file",
    "detect_format",
    "FORMATS",
    "load_deepeyesv2_rl",
    "load_deepeyesv2_sft",
    "load_sft_trajectories",
    "SFTTrajectory",
    "load_vlmevalkit_tsv",
    "load_jsonl",
    "load_hf",
    "LoadOptions",
    "LoadResult",
    "SkippedRow",
    "DataLoadError",
    "MissingColumnsError",
    "MissingDependencyError",
    "DataLoadWarning",
    "BenchmarkPreset",
    "PRESETS",
    "get_preset",
    "available_presets",
]

FORMATS: dict[str, Callable[..., LoadResult]] = {
    "deepeyesv2_rl": load_deepeyesv2_rl,
    "deepeyesv2_sft": load_deepeyesv2_sft,
    "vlmevalkit": load_vlmevalkit_tsv,
    "jsonl": load_jsonl,
    "hf": load_hf,
}
_FORMAT_ALIASES = {
    "rl": "deepeyesv2_rl", "deepeyesv2-rl": "deepeyesv2_rl", "sft": "deepeyesv2_sft", "deepeyesv2-sft": "deepeyesv2_sft",
    "coldstart": "deepeyesv2_sft", "tsv": "vlmevalkit", "json": "jsonl", "realx": "jsonl", "datasets": "hf",
    "huggingface": "hf", "arrow": "hf",
}
_SFT_KEY_RE = re.compile(r'"(?:messages|conversations)"\s*:\s*\[')


def _normalize_format(fmt: str) -> str:
    key = fmt.strip().lower()
    key = _FORMAT_ALIASES.get(key, key)
    if key != "auto" and key not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use 'auto' or one of {sorted(FORMATS)}")
    return key


def _parquet_is_rl(path: Path) -> bool:
    require_pyarrow("parquet files")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as exc:
        raise DataLoadError(f"{path}: not a readable parquet file: {exc}") from exc
    return is_rl_schema(names)


def _json_is_sft(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            head = f.read(1 << 16)
    except OSError as exc:
        raise DataLoadError(f"{path}: cannot read: {exc}") from exc
    return bool(_SFT_KEY_RE.search(head))


def detect_format(path: str | os.PathLike) -> str:
    """Guess the format of a file or directory from its extension and a peek at its content."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataLoadError(f"data path not found: {p}")
    if p.is_dir():
        if is_hf_dir(p):
            return "hf"
        parquet = sorted(p.glob("*.parquet"))
        if parquet:
            return "deepeyesv2_rl" if _parquet_is_rl(parquet[0]) else "hf"
        jsons = sorted([*p.glob("*.json"), *p.glob("*.jsonl")])
        if jsons and _json_is_sft(jsons[0]):
            return "deepeyesv2_sft"
        if any(p.rglob("*.parquet")):
            return "hf"
        raise DataLoadError(f"{p}: cannot tell the data format of this directory; pass format= "
                            f"(one of {sorted(FORMATS)}) or point at a file")
    suffix = p.suffix.lower()
    if suffix == ".tsv":
        return "vlmevalkit"
    if suffix == ".parquet":
        return "deepeyesv2_rl" if _parquet_is_rl(p) else "hf"
    if suffix == ".arrow":
        return "hf"
    if suffix in (".json", ".jsonl"):
        return "deepeyesv2_sft" if _json_is_sft(p) else "jsonl"
    raise DataLoadError(f"{p}: unknown data file type {suffix or '(no extension)'!r}; pass format= "
                        f"(one of {sorted(FORMATS)})")


def load_tasks(path: str | os.PathLike, format: str = "auto", *, preset: str | BenchmarkPreset | None = None,
               **kw: Any) -> LoadResult:
    """Load tasks from ``path``, detecting the format unless ``format`` names one.

    ``preset`` (a benchmark name such as ``"V*"`` or ``"MathVerse"``) sets the source name,
    capabilities and answer-kind rules; a file whose name is a preset's default file name (e.g.
    ``hr_bench_4k.tsv``) gets that preset automatically. Other keyword options: see
    :class:`LoadOptions` (``strict``, ``validate_images``, ``image_root``, ``limit``, ``split``,
    ``source``, ``capabilities``, ``math``, ``answer_kind``, ``domain``, ``fields``, ``use_datasets``).
    Returns a :class:`LoadResult` (a list of Tasks with ``.skipped``).
    """
    p = Path(path).expanduser()
    preset_obj = get_preset(preset) if preset is not None else preset_for_file(p)
    fmt = _normalize_format(format)
    if fmt == "auto":
        if preset is not None and preset_obj is not None and preset_obj.format != "auto":
            fmt = preset_obj.format
        else:
            fmt = detect_format(p)
    return FORMATS[fmt](p, preset=preset_obj, **kw)


def find_benchmark_file(name: str | BenchmarkPreset, data_path: str | os.PathLike) -> Path:
    """The file (or directory) a benchmark loads from: ``data_path`` itself when it is a file,
    else the first of the preset's default file names inside it, else the directory itself when
    it is a loadable dataset directory."""
    preset = get_preset(name)
    p = Path(data_path).expanduser()
    if not p.exists():
        raise DataLoadError(f"data path not found: {p}")
    if p.is_file():
        return p
    for fname in preset.files:
        cand = p / fname
        if cand.exists():
            return cand
    lower = {c.name.lower(): c for c in p.iterdir()}
    for fname in preset.files:
        if fname.lower() in lower:
            return lower[fname.lower()]
    if preset.format in ("deepeyesv2_rl", "deepeyesv2_sft", "hf") or is_hf_dir(p):
        return p  # these load whole directories
    if preset.format == "auto":
        try:
            detect_format(p)
            return p
        except DataLoadError:
            pass
    raise DataLoadError(f"{p}: no {preset.name} data here; looked for {', '.join(preset.files)}. "
                        "Pass the file path itself.")


def load_benchmark(name: str | BenchmarkPreset, data_path: str | os.PathLike, **kw: Any) -> LoadResult:
    """Load a named benchmark (see :func:`available_presets`) from a file or a data directory."""
    preset = get_preset(name)
    target = find_benchmark_file(preset, data_path)
    fmt = kw.pop("format", preset.format)
    return load_tasks(target, format=fmt, preset=preset, **kw)
