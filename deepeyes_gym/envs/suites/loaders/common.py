"""Pieces every loader shares: options, the result list, row-error handling, image references,
question clean-up, option parsing, answer-kind and capability inference."""

from __future__ import annotations

import ast
import base64
import binascii
import io
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, fields as dc_fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from ...task import MAX_IMAGE_PIXELS, Task, TaskImageError
from .errors import DataLoadError, DataLoadWarning, MissingDependencyError

__all__ = [
    "LoadOptions",
    "LoadResult",
    "SkippedRow",
    "RowSink",
    "RowError",
    "require_pyarrow",
    "resolve_image_ref",
    "strip_placeholders",
    "clean_question",
    "split_options",
    "normalize_options",
    "match_option",
    "infer_answer_kind",
    "capabilities_for",
    "parse_listish",
    "answer_to_str",
    "dedupe_ids",
    "jsonable",
]

DATA_EXTRA_HINT = "pip install deepeyes-gym[data]"


# --------------------------------------------------------------------------------------- options
@dataclass
class LoadOptions:
    """Options every loader understands (pass them as keyword arguments to any ``load_*``).

    strict: raise :class:`DataLoadError` on the first bad row instead of skipping it with a warning.
    validate_images: open each image's header while loading so broken images are caught per row
        (cheap: pixels are decoded later by ``Task.load_images``).
    image_root: extra directory in which relative image paths are looked up (before the data
        file's own directory).
    limit: stop after this many tasks.
    split: which split of a multi-split Hugging Face dataset to load.
    source: the ``Task.source`` to stamp (default: the preset name or ``format:file-stem``).
    capabilities: capabilities to use for rows that carry none (default: inferred).
    math: treat free-form, non-numeric answers as ``math`` (MathVista / MathVerse style).
    answer_kind: force this answer kind on every task.
    domain: domain for rows that carry none.
    fields: generic layouts only: map Task field -> column name, e.g. ``{"question": "query"}``.
    use_datasets: Hugging Face dirs: use the ``datasets`` library (None = when installed).
    """

    strict: bool = False
    validate_images: bool = True
    image_root: str | os.PathLike | None = None
    limit: int | None = None
    split: str | None = None
    source: str | None = None
    capabilities: Iterable[str] | None = None
    math: bool = False
    answer_kind: str | None = None
    domain: str | None = None
    fields: Mapping[str, str] | None = None
    use_datasets: bool | None = None

    @classmethod
    def from_kwargs(cls, kw: Mapping[str, Any]) -> "LoadOptions":
        names = {f.name for f in dc_fields(cls)}
        unknown = sorted(set(kw) - names)
        if unknown:
            raise TypeError(f"unknown loader option(s) {unknown}; valid: {sorted(names)}")
        opts = cls(**kw)
        if opts.limit is not None and opts.limit < 0:
            raise ValueError("limit must be >= 0")
        if opts.capabilities is not None:
            opts.capabilities = frozenset(opts.capabilities)
        return opts

    def base_dirs(self, data_file: str | os.PathLike) -> list[Path]:
        dirs = [Path(self.image_root)] if self.image_root is not None else []
        parent = Path(data_file).parent
        return dirs + [parent]


# ---------------------------------------------------------------------------------------- result
@dataclass(frozen=True)
class SkippedRow:
    """A row that was not turned into a task, and why."""

    file: str
    row: int  # 0-based position in the file (line number - 1 for JSONL, data row for TSV)
    reason: str


class LoadResult(list):
    """A list of loaded items (tasks, or trajectories) that also records what was skipped.

    It is a plain ``list`` for every other purpose: ``len``, indexing, iteration.
    """

    def __init__(self, items: Iterable[Any] = (), *, skipped: Iterable[SkippedRow] = (),
                 source_path: str = "", format: str = "") -> None:
        super().__init__(items)
        self.skipped: list[SkippedRow] = list(skipped)
        self.source_path = source_path
        self.format = format

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


class RowError(Exception):
    """Raised inside a row converter: the row is skipped (or, when strict, the load fails)."""


class RowSink:
    """Collects converted rows up to ``limit`` and the skipped ones; raises at once when strict."""

    def __init__(self, path: str | os.PathLike, strict: bool, limit: int | None = None) -> None:
        self.path = str(path)
        self.strict = strict
        self.limit = limit
        self.skipped: list[SkippedRow] = []

    def add(self, out: list[Any], row: int, make: Callable[[], Any], *, file: str | None = None) -> bool:
        """Append ``make()`` to ``out``, or record the row as skipped when it raises RowError.
        Returns True once ``out`` is full (the loader stops reading)."""
        try:
            out.append(make())
        except RowError as exc:
            self.skip(row, str(exc), exc, file=file)
        return self.full(out)

    def full(self, out: list[Any]) -> bool:
        return self.limit is not None and len(out) >= self.limit

    def skip(self, row: int, reason: str, exc: BaseException | None = None, *, file: str | None = None) -> None:
        where = file or self.path
        if self.strict:
            raise DataLoadError(f"{where}: row {row}: {reason}") from exc
        self.skipped.append(SkippedRow(where, row, reason))

    def finish(self, items: Iterable[Any], fmt: str) -> LoadResult:
        result = LoadResult(items, skipped=self.skipped, source_path=self.path, format=fmt)
        if self.skipped:
            shown = "; ".join(f"row {s.row}: {s.reason}" for s in self.skipped[:5])
            more = f" (+{len(self.skipped) - 5} more)" if len(self.skipped) > 5 else ""
            warnings.warn(
                f"{self.path}: skipped {len(self.skipped)} row(s), loaded {len(result)}: {shown}{more}. "
                "See LoadResult.skipped, or pass strict=True to fail instead.",
                DataLoadWarning,
                stacklevel=3,
            )
        return result


# ---------------------------------------------------------------------------------- dependencies
def require_pyarrow(what: str):
    """Import pyarrow lazily, with an install hint naming the extra."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
        import pyarrow.ipc  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised by monkeypatching in tests
        raise MissingDependencyError(
            f"reading {what} needs pyarrow, which is not installed: {DATA_EXTRA_HINT}"
        ) from exc
    return pyarrow


# -------------------------------------------------------------------------------- image references
_B64_RE = re.compile(r"^[A-Za-z0-9+/\s]+={0,2}\s*$")


def _short(s: str, n: int = 80) -> str:
    return s if len(s) <= n else s[:n] + f"... ({len(s)} chars)"


def _decode_b64(s: str) -> bytes:
    try:
        return base64.b64decode(s, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise TaskImageError(f"invalid base64 image data: {exc}") from exc


def _check_image(src: bytes | Path) -> None:
    """Read only the header (size, format): cheap, and catches non-image / truncated-header data."""
    what = f"{len(src)} bytes" if isinstance(src, bytes) else str(src)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as img:
                w, h = img.size
    except Image.DecompressionBombError as exc:
        raise TaskImageError(f"image too large: {exc}") from exc
    except OSError as exc:
        raise TaskImageError(f"not a readable image ({what}): {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # PIL raises many types for corrupt data
        raise TaskImageError(f"not a readable image ({what}): {type(exc).__name__}: {exc}") from exc
    if w * h > MAX_IMAGE_PIXELS:
        raise TaskImageError(f"image of {w}x{h} exceeds the {MAX_IMAGE_PIXELS} pixel limit")


def _is_file(p: Path) -> bool:
    try:
        return p.is_file()
    except (OSError, ValueError):  # name too long, embedded NUL ...: not a path
        return False


def _find_path(s: str, base_dirs: Sequence[Path]) -> Path | None:
    p = Path(s).expanduser()
    if p.is_absolute():
        return p if _is_file(p) else None
    for base in base_dirs:
        cand = base / p
        if _is_file(cand):
            return cand.resolve()
    return None


def resolve_image_ref(ref: Any, base_dirs: Sequence[Path], *, validate: bool = True) -> Any:
    """Normalise one image reference, keeping it lazy: returns ``bytes`` or an absolute path.

    Accepts bytes, a ``{"bytes", "path"}`` struct (parquet / ``datasets``), a data URL, bare
    base64, a path (absolute, or relative to ``base_dirs``), a PIL image or an array. Raises
    :class:`TaskImageError` when it cannot be found or (``validate``) its header is unreadable.
    Remote URLs are refused: nothing is downloaded at run time.
    """
    if isinstance(ref, Image.Image) or isinstance(ref, np.ndarray):
        return ref
    if isinstance(ref, (bytes, bytearray, memoryview)):
        data = bytes(ref)
        if not data:
            raise TaskImageError("empty image bytes")
        if validate:
            _check_image(data)
        return data
    if isinstance(ref, Mapping):
        if ref.get("bytes"):
            return resolve_image_ref(ref["bytes"], base_dirs, validate=validate)
        if ref.get("path"):
            return resolve_image_ref(str(ref["path"]), base_dirs, validate=validate)
        raise TaskImageError("image struct has neither bytes nor path")
    if isinstance(ref, os.PathLike):
        ref = os.fspath(ref)
    if isinstance(ref, str):
        s = ref.strip()
        if not s:
            raise TaskImageError("empty image reference")
        if s.startswith("data:"):
            if "," not in s:
                raise TaskImageError("malformed data URL")
            return resolve_image_ref(_decode_b64(s.split(",", 1)[1]), base_dirs, validate=validate)
        if s.startswith(("http://", "https://")):
            raise TaskImageError(f"remote image {_short(s)!r} is not fetched (nothing downloads at run time); "
                                 "download it and give a local path")
        if len(s) < 4096:
            found = _find_path(s, base_dirs)
            if found is not None:
                if validate:
                    _check_image(found)
                return str(found)
        if len(s) > 128 and _B64_RE.match(s[:4096]):
            return resolve_image_ref(_decode_b64(s), base_dirs, validate=validate)
        looked = ", ".join(str(b) for b in base_dirs) or "the current directory"
        raise TaskImageError(f"image file not found: {_short(s)!r} (looked in {looked})")
    raise TaskImageError(f"unsupported image reference of type {type(ref).__name__}")


# ----------------------------------------------------------------------------------- text helpers
_PLACEHOLDER_RE = re.compile(r"<image>|<\|vision_start\|>(?:<\|image_pad\|>)*<\|vision_end\|>|<\|image_pad\|>")

# Instruction suffixes appended to questions by the DeepEyes / DeepEyesV2 data builders and the
# VLMEvalKit prompt templates: everything from the earliest match on is instructions, not question.
_INSTRUCTION_MARKERS = [
    r"You must put your answer inside <answer>",
    r"Think first, call \*\*image_zoom_in_tool\*\*",
    r"Reason in your mind and then give the final answer",
    r"Think in the mind first, and then decide whether to call",
    r"If the images provided above are sufficient to answer",
    r"If the current images are insufficient to answer",
    r"Please reason step by step\. The reasoning process and answer are enclosed",
    r"Please select the correct answer from the options above\.",
    r"Select the best answer to the above multiple-choice question based on the image\.",
    r"Answer the question using a single word or phrase\.",
]
_INSTRUCTION_RE = re.compile("|".join(f"(?:{m})" for m in _INSTRUCTION_MARKERS))
_TAG_RE = re.compile(r"</?(?:think|answer|tool_call|code)>")
_PREFIX_RE = re.compile(r"^\s*(?:Answer the following question:\s*|Question:\s*\n)")


def strip_placeholders(text: str) -> str:
    """Remove ``<image>`` (and Qwen vision-token) placeholders."""
    return _PLACEHOLDER_RE.sub("", text)


def clean_question(text: str) -> str:
    """The bare question: placeholders, known instruction suffixes and format boilerplate removed."""
    text = strip_placeholders(text)
    m = _INSTRUCTION_RE.search(text)
    if m and text[: m.start()].strip():
        text = text[: m.start()]
    # A question never mentions the protocol tags: cut from the first line that does.
    m = _TAG_RE.search(text)
    if m:
        line_start = text.rfind("\n", 0, m.start()) + 1
        if text[:line_start].strip():
            text = text[:line_start]
    text = _PREFIX_RE.sub("", text, count=1)
    return text.strip()


_OPT_LINE_RE = re.compile(r"^\s*\(?([A-Z])\s*[\.\):：]\s*(.*\S)\s*$")
_OPT_HEADER_RE = re.compile(
    r"^\s*(?:options|choices|the choices are listed below|answer choices|选项(?:如下所示)?)\s*[:：]?\s*$",
    re.IGNORECASE,
)
_INLINE_OPT_RE = re.compile(r"\(([A-Z])\)\s*")


def split_options(text: str) -> tuple[str, dict[str, str] | None]:
    """Split a trailing option block off a question.

    Recognises ``A. x`` / ``(A) x`` / ``A: x`` / ``A) x`` lines (letters in order from A, at least
    two), optionally after a header line (``Options:``, ``Choices:`` ...), and the one-line form
    ``Choices: (A) x (B) y``. Returns ``(question_without_block, options)`` or ``(text, None)``.
    """
    lines = text.rstrip().split("\n")
    i = len(lines)
    found: list[tuple[str, str]] = []
    while i > 0:
        m = _OPT_LINE_RE.match(lines[i - 1])
        if not m:
            break
        found.append((m.group(1), m.group(2)))
        i -= 1
    found.reverse()
    if len(found) >= 2 and [k for k, _ in found] == [chr(65 + j) for j in range(len(found))]:
        if i > 0 and _OPT_HEADER_RE.match(lines[i - 1]):
            i -= 1
        head = "\n".join(lines[:i]).strip()
        if head:
            return head, dict(found)
    # One-line form: "Choices: (A) 3/11 (B) 8/11 (C) 6/11"
    last = lines[-1]
    hm = re.match(r"^\s*(?:options|choices)\s*[:：]\s*(.*)$", last, re.IGNORECASE)
    if hm:
        parts = _INLINE_OPT_RE.split(hm.group(1))
        # parts = ['', 'A', 'x ', 'B', 'y', ...]
        if len(parts) >= 5 and not parts[0].strip():
            keys, vals = parts[1::2], [p.strip() for p in parts[2::2]]
            if keys == [chr(65 + j) for j in range(len(keys))] and all(vals):
                head = "\n".join(lines[:-1]).strip()
                if head:
                    return head, dict(zip(keys, vals))
    return text, None


_OPT_PREFIX_RE = re.compile(r"^\s*\(?([A-Z])\s*[\.\):：]\s*")


def normalize_options(value: Any) -> dict[str, str] | None:
    """Options from a dict, a list (``["red", "blue"]`` or ``["(A) red", ...]``) or its string repr."""
    if value is None:
        return None
    if isinstance(value, str):
        s = value.strip()
        if not s:
            return None
        parsed = parse_listish(s)
        if isinstance(parsed, str):
            return None
        value = parsed
    if isinstance(value, Mapping):
        out = {str(k).strip(): answer_to_str(v) for k, v in value.items() if not _missing(v)}
        return out or None
    if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim == 1):
        items = [answer_to_str(v) for v in value if not _missing(v)]
        if not items:
            return None
        prefixed = [_OPT_PREFIX_RE.match(v) for v in items]
        if all(prefixed) and [m.group(1) for m in prefixed] == [chr(65 + j) for j in range(len(items))]:
            return {m.group(1): v[m.end():].strip() for m, v in zip(prefixed, items)}
        return {chr(65 + j): v for j, v in enumerate(items)}
    return None


def match_option(answer: str, options: Mapping[str, str]) -> str | None:
    """The option key an answer names: the letter itself (``"B"``, ``"(B)"``, ``"B."``) or an option text."""
    a = answer.strip()
    m = re.fullmatch(r"\(?([A-Za-z])\)?[\.:]?", a)
    if m and m.group(1).upper() in options:
        return m.group(1).upper()
    m = re.match(r"^\(?([A-Z])[\.\):]\s*(.+)$", a)
    if m and m.group(1) in options and options[m.group(1)].strip().casefold() == m.group(2).strip().casefold():
        return m.group(1)
    folded = a.casefold()
    hits = [k for k, v in options.items() if v.strip().casefold() == folded]
    return hits[0] if len(hits) == 1 else None


_NUMBER_RE = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][+-]?\d+)?$")


def _is_number(s: str) -> bool:
    s = s.strip()
    if not s or not any(c.isdigit() for c in s) or not _NUMBER_RE.match(s):
        return False
    try:
        return math.isfinite(float(s.replace(",", "")))
    except ValueError:
        return False


def infer_answer_kind(answer: str, options: Mapping[str, str] | None, *, math_kind: bool = False) -> str:
    """choice (options) > numeric (parses as a number) > yesno > math (math benchmarks) > text."""
    if options:
        return "choice"
    if _is_number(answer):
        return "numeric"
    if answer.strip().casefold() in ("yes", "no"):
        return "yesno"
    return "math" if math_kind else "text"


# Exact names seen in the DeepEyes / DeepEyesV2 releases (RL data_source values, env names).
_KNOWN_CAPABILITIES: dict[str, frozenset[str]] = {
    "perception": frozenset({"perception"}),
    "reason": frozenset({"reasoning"}),
    "reasoning": frozenset({"reasoning"}),
    "search": frozenset({"search"}),
    "vstar": frozenset({"perception"}),
    "vstar-test": frozenset({"perception"}),
    "chart": frozenset({"perception", "reasoning"}),
    "thinklite": frozenset({"reasoning"}),
    "mmsearch-test": frozenset({"search"}),
    "simpleqa-openai-test": frozenset({"search"}),
    "chinese_simpleqa-test": frozenset({"search"}),
    "browsecomp-zh-test": frozenset({"search"}),
    "browsecomp-openai-test": frozenset({"search"}),
    "simple-vqa-test": frozenset({"search"}),
    "zero-bench-test": frozenset({"search"}),
    "zero-bench-no-tools": frozenset({"perception", "reasoning"}),
}
_KEYWORDS = (
    ("search", ("search", "simpleqa", "browsecomp", "fvqa", "infoseek", "livevqa", "simplevqa")),
    ("reasoning", ("reason", "math", "geo", "gsm", "thinklite", "logic", "wemath", "dynamath")),
    ("perception", ("perception", "vstar", "v*", "hrbench", "hr_bench", "hr-bench", "mme", "realworld",
                    "chart", "gqa", "ocr", "visual_toolbox", "zoom", "grounding")),
)


def capabilities_for(*names: Any) -> frozenset[str]:
    """Capabilities implied by dataset / data_source / env names (exact names first, then keywords)."""
    caps: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not name:
            continue
        key = name.strip().lower()
        if key in _KNOWN_CAPABILITIES:
            caps |= _KNOWN_CAPABILITIES[key]
            continue
        for cap, words in _KEYWORDS:
            if any(w in key for w in words):
                caps.add(cap)
    return frozenset(caps)


# --------------------------------------------------------------------------------------- values
def _missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and not v.strip()


def parse_listish(s: str) -> Any:
    """``"['a', 'b']"`` / ``'["a"]'`` -> list (VLMEvalKit's ``toliststr``, done safely); else the string."""
    t = s.strip()
    if len(t) >= 2 and ((t[0] == "[" and t[-1] == "]") or (t[0] == "{" and t[-1] == "}")):
        for parse in (json.loads, ast.literal_eval):
            try:
                return parse(t)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
    return s


def answer_to_str(v: Any) -> str:
    """A ground-truth value as text: integral floats lose their ``.0``; containers become JSON."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, (bool, np.bool_)):
        return "Yes" if v else "No"
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return str(int(f)) if f.is_integer() else repr(f)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(jsonable(v), ensure_ascii=False)
    return str(v).strip()


_MAX_META_STR = 20_000


def jsonable(v: Any) -> Any:
    """Metadata-friendly copy: numpy -> Python; bytes and huge strings (inline base64 images) become
    a short placeholder, since images belong in ``Task.images``."""
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if isinstance(v, str) and len(v) > _MAX_META_STR:
        return f"<{len(v)} characters omitted>"
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return f"<{len(v)} bytes>"
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def dedupe_ids(tasks: list[Task]) -> None:
    """Make task ids unique in place (``id``, ``id#2``, ``id#3`` ...)."""
    seen: dict[str, int] = {}
    for t in tasks:
        n = seen.get(t.id, 0) + 1
        seen[t.id] = n
        if n > 1:
            new = f"{t.id}#{n}"
            while new in seen:
                n += 1
                new = f"{t.id}#{n}"
            seen[new] = 1
            t.id = new
