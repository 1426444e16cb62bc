"""The corpus directory format, its fingerprints, and where its index is cached.

A corpus directory holds::

    docs.jsonl    {"id", "title", "url", "text", "date"?} per line
    images.jsonl  {"id", "path" (relative to the corpus), "title", "url", "doc_id"?} per line
    images/...    the image files

The index lives in ``<corpus>/.index/`` when that is writable, else in a per-corpus folder of
the user cache (``$DEEPEYES_GYM_CACHE`` or ``~/.cache/deepeyes_gym``); it is rebuilt when the
fingerprint of the corpus files changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

__all__ = [
    "CorpusError",
    "DocRecord",
    "ImageRecord",
    "iter_docs",
    "iter_image_records",
    "docs_fingerprint",
    "images_fingerprint",
    "resolve_index_dir",
    "user_cache_dir",
]

log = logging.getLogger(__name__)

DOCS_FILE = "docs.jsonl"
IMAGES_FILE = "images.jsonl"


class CorpusError(ValueError):
    """The corpus directory is missing or malformed."""


@dataclass(frozen=True)
class DocRecord:
    id: str
    title: str
    url: str
    text: str
    date: str | None = None


@dataclass(frozen=True)
class ImageRecord:
    id: str
    path: Path  # absolute
    title: str
    url: str
    doc_id: str | None = None


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path.name} line {lineno}: invalid JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise CorpusError(f"{path.name} line {lineno}: expected a JSON object")
            yield lineno, obj


def _str(obj: dict, key: str, where: str, *, required: bool = True) -> str:
    val = obj.get(key)
    if val is None:
        if required:
            raise CorpusError(f"{where}: missing field {key!r}")
        return ""
    return str(val)


def iter_docs(corpus: Path) -> Iterator[DocRecord]:
    """Documents of ``corpus/docs.jsonl`` (nothing when the file does not exist)."""
    path = corpus / DOCS_FILE
    if not path.exists():
        return
    for lineno, obj in _iter_jsonl(path):
        where = f"{DOCS_FILE} line {lineno}"
        date = obj.get("date")
        yield DocRecord(
            id=_str(obj, "id", where),
            title=_str(obj, "title", where, required=False),
            url=_str(obj, "url", where, required=False),
            text=_str(obj, "text", where, required=False),
            date=str(date) if date else None,
        )


def iter_image_records(corpus: Path) -> Iterator[ImageRecord]:
    """Image records of ``corpus/images.jsonl`` (nothing when the file does not exist)."""
    path = corpus / IMAGES_FILE
    if not path.exists():
        return
    root = corpus.resolve()
    for lineno, obj in _iter_jsonl(path):
        where = f"{IMAGES_FILE} line {lineno}"
        rel = _str(obj, "path", where)
        full = (root / rel).resolve()
        if root not in full.parents:
            raise CorpusError(f"{where}: image path {rel!r} leaves the corpus directory")
        doc_id = obj.get("doc_id")
        yield ImageRecord(
            id=_str(obj, "id", where),
            path=full,
            title=_str(obj, "title", where, required=False),
            url=_str(obj, "url", where, required=False),
            doc_id=str(doc_id) if doc_id else None,
        )


def _file_digest(path: Path) -> str:
    if not path.exists():
        return "absent"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def docs_fingerprint(corpus: Path) -> str:
    """Content hash of docs.jsonl."""
    return _file_digest(corpus / DOCS_FILE)


def images_fingerprint(corpus: Path) -> str:
    """Content hash of images.jsonl plus size and mtime of every image file it names."""
    h = hashlib.sha256(_file_digest(corpus / IMAGES_FILE).encode())
    try:
        for rec in iter_image_records(corpus):
            try:
                st = rec.path.stat()
                h.update(f"{rec.path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{rec.path}:missing\n".encode())
    except CorpusError:
        h.update(b"malformed")  # the build reports the error itself
    return h.hexdigest()


def user_cache_dir() -> Path:
    base = os.environ.get("DEEPEYES_GYM_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "deepeyes_gym" if xdg else Path.home() / ".cache" / "deepeyes_gym"


def _writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (tried, since root ignores permission bits)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
        return True
    except OSError:
        return False


def resolve_index_dir(corpus: Path, index_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the index of ``corpus`` is kept (created if needed)."""
    if index_dir is not None:
        out = Path(index_dir)
        out.mkdir(parents=True, exist_ok=True)
        return out
    beside = corpus / ".index"
    if _writable(beside):
        return beside
    key = hashlib.sha256(str(corpus.resolve()).encode()).hexdigest()[:16]
    out = user_cache_dir() / "search-index" / key
    out.mkdir(parents=True, exist_ok=True)
    log.info("corpus %s is read-only; caching its index in %s", corpus, out)
    return out
