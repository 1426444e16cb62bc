"""Hugging Face ``datasets`` data on disk, read with pyarrow (``datasets`` itself is optional).

Layouts:

- ``Dataset.save_to_disk(dir)``: ``dir/state.json`` (``_data_files`` lists the shards),
  ``dir/dataset_info.json`` (``features``; ``{"_type": "Image"}`` marks image columns) and
  ``data-0000x-of-0000n.arrow`` shards in Arrow IPC *stream* format;
- ``DatasetDict.save_to_disk(dir)``: ``dir/dataset_dict.json`` (``{"splits": [...]}``) and one
  such directory per split;
- a hub snapshot / ``to_parquet`` output: ``*.parquet`` shards, split taken from the file name
  (``test-00000-of-00001.parquet``) or the folder; features from the schema's ``huggingface``
  metadata;
- a single ``.arrow`` or ``.parquet`` file.

Image columns hold ``{"bytes": ..., "path": ...}`` structs and stay lazy. Rows in the DeepEyesV2 RL
layout (``prompt`` + ``reward_model``) go through the RL mapping, any other row through the
generic one (``records.ALIASES``). When ``datasets`` is installed, ``save_to_disk`` directories
are opened with ``datasets.load_from_disk`` (pass ``use_datasets=False`` to skip it).
"""

from __future__ import annotations

import json
import os
import re
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Mapping

from ...task import Task
from .common import LoadOptions, LoadResult, RowSink, capabilities_for, dedupe_ids, require_pyarrow
from .deepeyesv2 import is_rl_schema, iter_parquet_records, rl_record_to_task
from .errors import DataLoadError
from .presets import BenchmarkPreset
from .records import check_record_columns, record_to_task

__all__ = ["load_hf", "is_hf_dir", "image_columns_from_features"]

_SHARD_RE = re.compile(r"^(?P<split>.+?)[-_]\d{5}[-_]of[-_]\d{5}$")


def is_hf_dir(p: Path) -> bool:
    return p.is_dir() and any((p / n).is_file() for n in ("dataset_dict.json", "state.json"))


def image_columns_from_features(features: Mapping[str, Any] | None) -> list[str]:
    """Columns whose ``datasets`` feature is an Image, or a list/sequence of Images."""

    def is_image(f: Any) -> bool:
        if isinstance(f, list):
            return len(f) == 1 and is_image(f[0])
        if not isinstance(f, Mapping):
            return False
        t = f.get("_type")
        if t == "Image":
            return True
        return t in ("Sequence", "List", "LargeList") and is_image(f.get("feature"))

    return [k for k, f in (features or {}).items() if is_image(f)]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataLoadError(f"{path}: unreadable dataset metadata: {exc}") from exc


def _choose_split(where: Path, splits: list[str], wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in splits:
            raise DataLoadError(f"{where}: no split {wanted!r}; available: {', '.join(splits)}")
        return wanted
    if len(splits) == 1:
        return splits[0]
    raise DataLoadError(f"{where}: several splits ({', '.join(splits)}); choose one with split=...")


def _schema_features(schema: Any) -> dict[str, Any] | None:
    meta = schema.metadata or {}
    raw = meta.get(b"huggingface")
    if not raw:
        return None
    try:
        return json.loads(raw)["info"]["features"]
    except (ValueError, KeyError, TypeError):
        return None


def _iter_arrow(path: Path) -> tuple[list[str], dict[str, Any] | None, Iterator[dict[str, Any]]]:
    pa = require_pyarrow("Hugging Face arrow files")
    import pyarrow.ipc as ipc

    try:
        source = pa.memory_map(str(path), "r")
        try:
            reader: Any = ipc.open_stream(source)
            batches = iter(reader)
        except pa.ArrowInvalid:
            source.seek(0)
            file_reader = ipc.open_file(source)
            reader = file_reader
            batches = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
        schema = reader.schema
    except (pa.ArrowException, OSError) as exc:
        raise DataLoadError(f"{path}: not a readable Arrow file: {exc}") from exc

    def rows() -> Iterator[dict[str, Any]]:
        try:
            for batch in batches:
                yield from batch.to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise DataLoadError(f"{path}: corrupt Arrow data: {exc}") from exc

    return list(schema.names), _schema_features(schema), rows()


def _parquet_features(path: Path) -> dict[str, Any] | None:
    import pyarrow.parquet as pq

    try:
        return _schema_features(pq.read_schema(path))
    except Exception:  # the reader reports unreadable files itself
        return None


def _parquet_shards(root: Path, split: str | None) -> list[Path]:
    files = sorted(f for f in root.rglob("*.parquet") if f.is_file())
    if not files:
        raise DataLoadError(f"{root}: no Hugging Face dataset here (no dataset_dict.json, state.json or *.parquet)")
    groups: dict[str, list[Path]] = {}
    for f in files:
        m = _SHARD_RE.match(f.stem)
        name = m.group("split") if m else (f.parent.name if f.parent != root else f.stem)
        groups.setdefault(name, []).append(f)
    return groups[_choose_split(root, sorted(groups), split)]


def _sources(p: Path, opts: LoadOptions) -> tuple[Path, list[Path], dict[str, Any] | None]:
    """(dataset dir, data files, features) for what ``p`` points at."""
    if p.is_file():
        if p.suffix.lower() not in (".arrow", ".parquet"):
            raise DataLoadError(f"{p}: not a Hugging Face data file (.arrow or .parquet)")
        return p.parent, [p], None
    if not p.is_dir():
        raise DataLoadError(f"data path not found: {p}")
    d = p
    if (p / "dataset_dict.json").is_file():
        splits = _read_json(p / "dataset_dict.json").get("splits") or []
        d = p / _choose_split(p, [str(s) for s in splits], opts.split)
    if (d / "state.json").is_file():
        state = _read_json(d / "state.json")
        names = [f.get("filename") for f in state.get("_data_files") or [] if isinstance(f, Mapping)]
        files = [d / n for n in names if n]
        if not files:
            raise DataLoadError(f"{d}/state.json lists no data files")
        for f in files:
            if not f.is_file():
                raise DataLoadError(f"{d}: shard {f.name} listed in state.json is missing")
        info = _read_json(d / "dataset_info.json") if (d / "dataset_info.json").is_file() else {}
        return d, files, info.get("features")
    return p, _parquet_shards(p, opts.split), None


def _iter_with_datasets(d: Path, opts: LoadOptions) -> tuple[list[str], list[str], Iterator[dict[str, Any]]] | None:
    """Open a save_to_disk dir with ``datasets`` when it is installed (and allowed)."""
    if opts.use_datasets is False:
        return None
    try:
        import datasets
    except ImportError:
        if opts.use_datasets:
            raise
        return None
    try:
        obj = datasets.load_from_disk(str(d))
    except Exception as exc:  # datasets raises many types for a broken dir
        raise DataLoadError(f"{d}: datasets.load_from_disk failed: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, datasets.DatasetDict):
        obj = obj[_choose_split(d, list(obj.keys()), opts.split)]
    ds = obj
    image_cols = [k for k, f in ds.features.items()
                  if isinstance(f, datasets.Image)
                  or isinstance(getattr(f, "feature", None), datasets.Image)
                  or (isinstance(f, list) and len(f) == 1 and isinstance(f[0], datasets.Image))]

    def rows() -> Iterator[dict[str, Any]]:
        for batch in ds.with_format("arrow").iter(batch_size=64):
            yield from batch.to_pylist()

    return list(ds.column_names), image_cols, rows()


def load_hf(path: str | os.PathLike, *, preset: BenchmarkPreset | None = None, **kw: Any) -> LoadResult:
    """Load a Hugging Face dataset saved on disk (or its parquet / arrow shards) into Tasks."""
    opts = LoadOptions.from_kwargs(kw)
    p = Path(path)
    if not p.exists():
        raise DataLoadError(f"data path not found: {p}")
    source = opts.source or (preset.name if preset else f"hf:{p.stem if p.is_file() else p.name}")
    if preset is not None and preset.math:
        opts.math = True
    default_caps = frozenset(opts.capabilities) if opts.capabilities is not None else (
        preset.capabilities if preset is not None and preset.capabilities else capabilities_for(source))
    sink = RowSink(p, opts.strict, opts.limit)
    tasks: list[Task] = []

    streams: list[tuple[Path, list[str], list[str], Iterator[dict[str, Any]]]] = []
    require_pyarrow("Hugging Face datasets on disk")
    root, files, features = _sources(p, opts)
    via_datasets = _iter_with_datasets(root, opts) if p.is_dir() and is_hf_dir(root) else None
    if via_datasets is not None:
        names, image_cols, rows = via_datasets
        streams.append((root, names, image_cols, rows))
    else:
        for f in files:
            if f.suffix.lower() == ".parquet":
                names, rows = iter_parquet_records(f, "Hugging Face parquet shards")
                feats = features or _parquet_features(f)
            else:
                names, feats_arrow, rows = _iter_arrow(f)
                feats = features or feats_arrow
            streams.append((f, names, image_columns_from_features(feats), rows))

    for f, names, image_cols, rows in streams:
        rl = is_rl_schema(names)
        if not rl:
            check_record_columns(str(f), names, opts)
        base_dirs = opts.base_dirs(f if f.is_file() else f / "x")
        for row, rec in enumerate(rows):
            if rl:
                make = partial(rl_record_to_task, rec, row, opts=opts, base_dirs=base_dirs, file_stem=f.stem,
                               default_caps=default_caps, source=opts.source or (preset.name if preset else None))
            else:
                make = partial(record_to_task, rec, row, opts=opts, base_dirs=base_dirs, source=source,
                               image_columns=image_cols, default_caps=default_caps)
            if sink.add(tasks, row, make, file=str(f)):
                break
        if sink.full(tasks):
            break
    dedupe_ids(tasks)
    return sink.finish(tasks, "hf")
