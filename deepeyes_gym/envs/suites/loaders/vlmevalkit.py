"""VLMEvalKit benchmark TSVs (V*, HRBench, MME-RealWorld, MathVista, MathVerse, ...).

The layout VLMEvalKit reads (``vlmeval/dataset/image_base.py``, ``image_mcq.py``, ``image_vqa.py``):

- ``index``: row id; ``question``; ``answer`` (a letter for multiple choice);
- ``image``: base64 of the image, a list of base64 strings written as ``"['...', '...']"`` for
  multi-image rows, or (to save space) the ``index`` of another row holding the same image
  (any value of at most 64 characters);
- or ``image_path``: a path / list of paths instead of ``image``;
- options in letter columns ``A``, ``B``, ``C``, ``D`` (``E`` ...), empty when absent;
- optional ``hint`` (prepended as ``Hint: ...``), ``category``, ``l2-category``, ``split``;
- benchmark extras kept in metadata: HRBench ``cycle_category``; MME-RealWorld
  ``multi-choice options``; MathVista ``choices``, ``question_type``, ``answer_type``,
  ``answer_option``, ``precision``, ``unit``, ``task``, ``skills``; MathVerse ``question_type``,
  ``problem_version``, ``question_for_eval``, ``query_wo``, ``query_cot``.

Rows without an image are skipped, as VLMEvalKit does. The file is parsed with the standard
``csv`` module (pandas is not needed); only an empty cell counts as missing.
"""

from __future__ import annotations

import csv
import os
import string
import sys
from pathlib import Path
from typing import Any

from ...task import Task, TaskImageError
from .common import (
    LoadOptions,
    LoadResult,
    RowError,
    RowSink,
    capabilities_for,
    clean_question,
    dedupe_ids,
    infer_answer_kind,
    match_option,
    normalize_options,
    parse_listish,
    resolve_image_ref,
    split_options,
)
from .errors import DataLoadError, MissingColumnsError
from .presets import BenchmarkPreset, preset_for_file

__all__ = ["load_vlmevalkit_tsv"]

_REF_MAX_LEN = 64  # VLMEvalKit: an image cell this short names another row's index
# Columns consumed into Task fields; every other non-empty column goes to metadata.
_CONSUMED = {"index", "question", "answer", "image", "image_path", "hint", "category"}


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # base64 images are large cells
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t")
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except UnicodeDecodeError as exc:
        raise DataLoadError(f"{path}: not UTF-8 text ({exc}); is this really a VLMEvalKit TSV?") from exc
    except csv.Error as exc:
        raise DataLoadError(f"{path}: cannot parse as TSV: {exc}") from exc
    except OSError as exc:
        raise DataLoadError(f"{path}: cannot read: {exc}") from exc
    if not header:
        raise DataLoadError(f"{path}: empty file (no header line)")
    return header, rows


def _cell(row: dict[str, Any], key: str) -> str | None:
    v = row.get(key)
    if v is None:
        return None
    v = str(v)
    return v if v.strip() else None


def load_vlmevalkit_tsv(path: str | os.PathLike, *, preset: BenchmarkPreset | None = None, **kw: Any) -> LoadResult:
    """Load a VLMEvalKit benchmark TSV into Tasks (images stay lazy as bytes / paths)."""
    opts = LoadOptions.from_kwargs(kw)
    p = Path(path)
    if not p.is_file():
        raise DataLoadError(f"data file not found: {p}")
    preset = preset or preset_for_file(p)
    header, rows = _read_rows(p)
    missing = [c for c in ("question", "answer") if c not in header]
    if "image" not in header and "image_path" not in header:
        missing.append("image (or image_path)")
    if missing:
        raise MissingColumnsError(str(p), missing, header, hint="VLMEvalKit TSVs need question, answer and image")

    source = opts.source or (preset.name if preset else f"vlmevalkit:{p.stem}")
    math_kind = opts.math or bool(preset and preset.math) or any(k in p.stem.lower() for k in ("mathvista", "mathverse"))
    if opts.capabilities is not None:
        default_caps = frozenset(opts.capabilities)
    elif preset is not None and preset.capabilities:
        default_caps = preset.capabilities
    else:
        default_caps = capabilities_for(p.stem)
    letters = [c for c in string.ascii_uppercase if c in header]
    base_dirs = opts.base_dirs(p)
    sink = RowSink(p, opts.strict, opts.limit)

    # Image cells may point at another row's index (VLMEvalKit's space saving).
    image_by_index: dict[str, str] = {}
    if "image" in header:
        for r in rows:
            img = _cell(r, "image")
            if img is not None and len(img) > _REF_MAX_LEN and r.get("index") is not None:
                image_by_index[str(r["index"]).strip()] = img

    tasks: list[Task] = []
    for i, r in enumerate(rows):
        if None in r:  # DictReader puts surplus cells under the key None
            sink.skip(i, f"{len(r[None])} more cell(s) than the {len(header)} header columns")
            continue
        if sink.add(tasks, i, lambda: _row_to_task(r, i, header, letters, image_by_index, base_dirs, opts,
                                                    source, math_kind, default_caps)):
            break
    dedupe_ids(tasks)
    return sink.finish(tasks, "vlmevalkit")


def _row_images(r: dict[str, Any], image_by_index: dict[str, str], base_dirs: list[Path], validate: bool) -> list[Any]:
    img = _cell(r, "image")
    if img is not None:
        if len(img) <= _REF_MAX_LEN:
            target = image_by_index.get(img.strip())
            if target is None:
                raise RowError(f"image cell {img.strip()!r} names no row with an image")
            img = target
        parsed = parse_listish(img)
        refs = parsed if isinstance(parsed, list) else [img]
        where = "image"
    else:
        path_cell = _cell(r, "image_path")
        if path_cell is None:
            raise RowError("no image (empty image / image_path cell)")
        parsed = parse_listish(path_cell)
        refs = parsed if isinstance(parsed, list) else [path_cell]
        where = "image_path"
    out = []
    for j, ref in enumerate(refs):
        try:
            out.append(resolve_image_ref(str(ref), base_dirs, validate=validate))
        except TaskImageError as exc:
            raise RowError(f"{where} #{j}: {exc}") from exc
    if not out:
        raise RowError("no image (empty image list)")
    return out


def _row_to_task(r: dict[str, Any], i: int, header: list[str], letters: list[str], image_by_index: dict[str, str],
                 base_dirs: list[Path], opts: LoadOptions, source: str, math_kind: bool,
                 default_caps: frozenset[str]) -> Task:
    raw_q = _cell(r, "question")
    if raw_q is None:
        raise RowError("empty question")
    answer = _cell(r, "answer")
    if answer is None:
        raise RowError("empty answer")
    answer = answer.strip()
    images = _row_images(r, image_by_index, base_dirs, opts.validate_images)

    # Options: letter columns first; else MathVista's ``choices`` list, MME-RealWorld's option list.
    options = {c: _cell(r, c).strip() for c in letters if _cell(r, c) is not None} or None  # type: ignore[union-attr]
    if options is not None and len(options) < 2:
        options = None
    used = set(_CONSUMED) | set(letters)
    qtype = (_cell(r, "question_type") or "").strip().lower()
    if options is None and _cell(r, "choices") and qtype not in ("free_form", "free-form"):
        options = normalize_options(_cell(r, "choices"))
        used.add("choices")
    if options is None and _cell(r, "multi-choice options"):
        options = normalize_options(_cell(r, "multi-choice options"))
        used.add("multi-choice options")
    question = clean_question(raw_q)
    head, text_opts = split_options(question)
    if options is None and text_opts and qtype not in ("free_form", "free-form"):
        if match_option(answer, text_opts) or (_cell(r, "answer_option") and match_option(_cell(r, "answer_option"), text_opts)):
            options = text_opts
    if options and text_opts and set(text_opts) == set(options):
        question = head  # shown once, by Task.prompt_text

    alternatives: list[str] = []
    if options:
        key = None
        if _cell(r, "answer_option"):  # MathVista: answer is the option text, answer_option its letter
            key = match_option(_cell(r, "answer_option"), options)  # type: ignore[arg-type]
        key = key or match_option(answer, options)
        if key is None:
            raise RowError(f"answer {answer!r} is none of the options {list(options)}")
        if key != answer:
            alternatives.append(answer)
        answer = key
    hint = _cell(r, "hint")
    if hint is not None:
        question = f"Hint: {hint.strip()}\n{question}"

    kind = opts.answer_kind or infer_answer_kind(answer, options, math_kind=math_kind)
    index = (_cell(r, "index") or str(i)).strip()
    domain = (_cell(r, "category") or opts.domain or "general").strip()
    metadata: dict[str, Any] = {"row": i, "index": index}
    if raw_q.strip() != question:
        metadata["raw_question"] = raw_q
    if alternatives:
        metadata["answer_text"] = alternatives[0]
    for col in header:
        if col in used:
            continue
        v = _cell(r, col)
        if v is not None:
            metadata[col] = v
    return Task(
        id=f"{source}-{index}", question=question, answer=answer, images=images, answer_kind=kind,
        options=options, domain=domain, capabilities=default_caps, source=source, metadata=metadata,
    )
