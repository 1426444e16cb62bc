"""The per-episode JSONL record: building it from a finished episode, writing and reading it.

One line per episode. Reading is tolerant: a truncated last line (a run killed mid-write) or any
line that is not a complete JSON object is skipped, so a crashed run can always be resumed.
Images are never inlined here; they are saved as files next to the JSONL (see ``save_images``).
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..envs.turns import clip_middle

__all__ = [
    "SCHEMA_VERSION",
    "episode_key",
    "jsonable",
    "clip_text",
    "read_records",
    "compact_records",
    "append_record",
    "dedupe_records",
    "save_images",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_TEXT_CHARS = 20_000  # per action/observation in the JSONL; the head and tail are kept


def episode_key(task_index: int, sample: int) -> str:
    return f"{int(task_index)}:{int(sample)}"


def clip_text(text: Any, limit: int = MAX_TEXT_CHARS) -> Any:
    """Records keep the head and tail of long texts (the lossless copy is the episode store)."""
    if not isinstance(text, str):
        return text
    return clip_middle(text, limit, what="characters not recorded")[0]


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return f"<array shape={list(obj.shape)} dtype={obj.dtype}>"
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(obj))} bytes>"
    if isinstance(obj, (set, frozenset, tuple)):
        return sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else list(obj)
    if hasattr(obj, "to_dict"):
        try:
            return obj.to_dict()
        except Exception:
            pass
    if hasattr(obj, "size") and hasattr(obj, "mode"):  # a PIL image
        return f"<image {obj.size[0]}x{obj.size[1]}>"
    return repr(obj)


def jsonable(obj: Any) -> Any:
    """A JSON-safe deep copy: numpy scalars unwrapped, images/bytes summarised, the rest repr'd."""
    return json.loads(json.dumps(obj, default=_default, ensure_ascii=False, allow_nan=True))


def append_record(fh: io.TextIOBase, record: Mapping[str, Any]) -> None:
    """Append one record as one line, in one write, flushed (a kill leaves whole lines or a
    truncated last line, never interleaved ones)."""
    line = json.dumps(record, default=_default, ensure_ascii=False) + "\n"
    fh.write(line)
    fh.flush()


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every complete record of a JSONL file, in file order. Missing file → []."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            last = i == len(lines) - 1
            log.warning("%s line %d is %s; skipped", path, i + 1, "truncated" if last else "not valid JSON")
            continue
        if isinstance(rec, dict) and "key" in rec:
            out.append(rec)
    return out


def dedupe_records(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One record per episode key — a finished one over an errored one, else the latest —
    sorted by (task index, sample). Guards every summary against double counting."""
    best: dict[str, dict[str, Any]] = {}
    for rec in records:
        key = rec["key"]
        old = best.get(key)
        if old is None or not (old.get("status") == "ok" and rec.get("status") != "ok"):
            best[key] = dict(rec)
    return sorted(best.values(), key=lambda r: (int(r.get("task_index", 0)), int(r.get("sample", 0)), r["key"]))


def compact_records(path: str | os.PathLike[str], *, drop_errors: bool = True) -> list[dict[str, Any]]:
    """Rewrite the JSONL with one valid record per key (errored ones dropped so that they are
    retried) and return those records. Atomic: a crash here leaves the old file intact."""
    path = Path(path)
    records = dedupe_records(read_records(path))
    if drop_errors:
        records = [r for r in records if r.get("status") == "ok"]
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, default=_default) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return records


def save_images(
    messages: Sequence[Mapping[str, Any]],
    root: Path,
    rel_dir: str,
    *,
    max_side: int = 1280,
    png_max_pixels: int = 512 * 512,
) -> list[dict[str, Any]]:
    """Save every image of a conversation (``env.messages("array")``) under ``root/rel_dir``.

    Small images (tool crops) are saved as PNG, large ones as JPEG shrunk to ``max_side``: the
    viewer needs to show them, not to reproduce the pixels. Returns ``[{"message", "index",
    "file", "width", "height"}]`` with paths relative to ``root``.
    """
    from PIL import Image

    out: list[dict[str, Any]] = []
    target = root / rel_dir
    made = False
    for m_idx, msg in enumerate(messages):
        content = msg.get("content")
        if isinstance(content, str) or not content:
            continue
        k = 0
        for part in content:
            if part.get("type") != "image":
                continue
            k += 1
            arr = part["image"]
            pil = Image.fromarray(np.asarray(arr)) if not isinstance(arr, Image.Image) else arr
            w, h = pil.size
            if not made:
                target.mkdir(parents=True, exist_ok=True)
                made = True
            if w * h <= png_max_pixels:
                name = f"m{m_idx:02d}-{k}.png"
                pil.save(target / name, format="PNG", optimize=False, compress_level=1)
            else:
                name = f"m{m_idx:02d}-{k}.jpg"
                if max(w, h) > max_side:
                    s = max_side / max(w, h)
                    pil = pil.resize((max(1, int(w * s)), max(1, int(h * s))), Image.BILINEAR)
                pil.save(target / name, format="JPEG", quality=85)
            out.append({"message": m_idx, "index": k, "file": f"{rel_dir}/{name}", "width": w, "height": h})
    return out
