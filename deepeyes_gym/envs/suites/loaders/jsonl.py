"""RealX-Bench / generic JSONL-with-images layout.

One JSON object per line (a ``.json`` file holding a list of objects works too)::

    {"id": "realx-001", "question": "...", "answer": "...", "images": ["images/001.jpg"],
     "domain": "travel", "capabilities": ["perception", "search"], "options": null}

Images are paths relative to the file (or ``image_root``), base64 / data URLs, or
``{"bytes": ..., "path": ...}`` structs; see ``records.ALIASES`` for the accepted field names and
``fields=`` to map others.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from .common import LoadOptions, LoadResult, RowSink, dedupe_ids
from .errors import DataLoadError
from .presets import BenchmarkPreset
from .records import check_record_columns, record_to_task

__all__ = ["load_jsonl", "iter_json_records"]


def iter_json_records(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """Yield ``(row, record, error)``: JSONL line by line, or the items of a JSON array."""
    try:
        if path.suffix.lower() == ".json":
            with open(path, encoding="utf-8-sig") as f:
                data = json.load(f)
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if not isinstance(data, list):
                raise DataLoadError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
            for i, rec in enumerate(data):
                yield i, rec, None
            return
        with open(path, encoding="utf-8-sig") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    yield i, json.loads(line), None
                except json.JSONDecodeError as exc:
                    yield i, None, f"invalid JSON on line {i + 1}: {exc.msg} (col {exc.colno})"
    except UnicodeDecodeError as exc:
        raise DataLoadError(f"{path}: not UTF-8 text ({exc}); is this really a JSON/JSONL file?") from exc
    except json.JSONDecodeError as exc:
        raise DataLoadError(f"{path}: invalid JSON: {exc}") from exc
    except OSError as exc:
        raise DataLoadError(f"{path}: cannot read: {exc}") from exc


def load_jsonl(path: str | os.PathLike, *, preset: BenchmarkPreset | None = None, **kw: Any) -> LoadResult:
    """Load a JSONL (or JSON-array) file of question/answer/images records into Tasks."""
    opts = LoadOptions.from_kwargs(kw)
    p = Path(path)
    if not p.is_file():
        raise DataLoadError(f"data file not found: {p}")
    source = opts.source or (preset.name if preset else f"jsonl:{p.stem}")
    if preset is not None and preset.math:
        opts.math = True
    default_caps = preset.capabilities if preset is not None else frozenset()
    sink = RowSink(p, opts.strict, opts.limit)
    base_dirs = opts.base_dirs(p)
    tasks = []
    checked = False
    for row, rec, err in iter_json_records(p):
        if err is not None:
            sink.skip(row, err)
            continue
        if not isinstance(rec, dict):
            sink.skip(row, f"expected a JSON object, got {type(rec).__name__}")
            continue
        if not checked:
            check_record_columns(str(p), list(rec), opts)
            checked = True
        if sink.add(tasks, row, lambda: record_to_task(rec, row, opts=opts, base_dirs=base_dirs, source=source,
                                                        default_caps=default_caps)):
            break
    if not checked and not sink.skipped:
        raise DataLoadError(f"{p}: no records found (empty file)")
    dedupe_ids(tasks)
    return sink.finish(tasks, "jsonl")
