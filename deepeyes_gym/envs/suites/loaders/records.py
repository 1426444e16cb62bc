"""Generic record -> Task mapping, shared by the JSONL and Hugging Face loaders.

A record is a flat mapping (one JSONL line, one dataset row). Each Task field is read from the
first column present among its aliases (or the column named in ``LoadOptions.fields``).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Mapping, Sequence

from ...task import CAPABILITIES, Task, TaskImageError
from .common import (
    LoadOptions,
    RowError,
    _missing,
    answer_to_str,
    capabilities_for,
    clean_question,
    infer_answer_kind,
    jsonable,
    match_option,
    normalize_options,
    parse_listish,
    resolve_image_ref,
    split_options,
)
from .errors import MissingColumnsError

__all__ = ["ALIASES", "check_record_columns", "record_to_task", "pick_column"]

# Task field -> columns tried in order. Covers RealX-style JSONL, MMSearch (query / gt_answer /
# query_image / area), MathVista/MathVerse HF rows (pid / query / decoded_image), and common VQA dumps.
ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("id", "index", "sample_id", "question_id", "qid", "pid", "uid", "idx"),
    "question": ("question", "query", "problem", "instruction", "prompt", "text"),
    "answer": ("answer", "gt_answer", "ground_truth", "final_answer", "label", "answers"),
    "images": ("images", "image", "image_path", "image_paths", "query_image", "decoded_image", "img",
               "image_file", "file_name", "image_url"),
    "options": ("options", "choices", "candidates", "multi-choice options"),
    "domain": ("domain", "category", "area", "subject", "task", "l2-category"),
    "capabilities": ("capabilities", "capability", "abilities", "skills_needed"),
    "answer_kind": ("answer_kind",),
    "alternatives": ("alternative_answers", "alternative_gt_answers", "acceptable_answers", "aliases"),
    "hint": ("hint",),
}
_REQUIRED = ("question", "answer")


def pick_column(keys: Sequence[str] | Mapping[str, Any], field: str, opts: LoadOptions,
                extra: Sequence[str] = ()) -> str | None:
    if opts.fields and field in opts.fields:
        col = opts.fields[field]
        return col if col in keys else None
    for col in (*ALIASES.get(field, ()), *extra):
        if col in keys:
            return col
    return None


def check_record_columns(path: str, keys: Sequence[str], opts: LoadOptions) -> None:
    """Raise :class:`MissingColumnsError` when question or answer has no column."""
    missing = []
    for f in _REQUIRED:
        if pick_column(keys, f, opts) is None:
            want = opts.fields[f] if opts.fields and f in opts.fields else " / ".join(ALIASES[f])
            missing.append(f"{f} ({want})")
    if missing:
        raise MissingColumnsError(path, missing, keys, hint="map yours with fields={'question': 'my_col', ...}")


def _as_list(v: Any) -> list[Any]:
    if v is None:
        return []
    if isinstance(v, str):
        parsed = parse_listish(v)
        if isinstance(parsed, list):
            return parsed
        return [] if not v.strip() else [v]
    if isinstance(v, (list, tuple)):
        return list(v)
    if hasattr(v, "tolist") and not isinstance(v, (bytes, bytearray)):
        out = v.tolist()
        return out if isinstance(out, list) else [out]
    return [v]


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "y", "t")
    return bool(v) and not _missing(v)


def _capabilities(rec: Mapping[str, Any], opts: LoadOptions) -> frozenset[str] | None:
    """Capabilities written in the row: a list / comma string / dict of flags, or boolean columns."""
    col = pick_column(rec, "capabilities", opts)
    caps: set[str] = set()
    if col is not None and not _missing(rec[col]):
        v = rec[col]
        if isinstance(v, Mapping):
            items = [k for k, flag in v.items() if _truthy(flag)]
        elif isinstance(v, str) and not v.strip().startswith("["):
            items = [p for p in v.replace(";", ",").replace("|", ",").split(",")]
        else:
            items = _as_list(v)
        for it in items:
            name = str(it).strip().lower()
            name = {"reason": "reasoning", "perceive": "perception", "searching": "search"}.get(name, name)
            if name:
                caps.add(name)
    for cap in CAPABILITIES:  # RealX-style per-question flags: {"perception": 1, "search": 0, ...}
        if cap in rec and _truthy(rec[cap]):
            caps.add(cap)
    unknown = caps - set(CAPABILITIES)
    if unknown:
        raise RowError(f"unknown capabilities {sorted(unknown)} (use {list(CAPABILITIES)})")
    return frozenset(caps) if (col is not None or any(c in rec for c in CAPABILITIES)) else None


def record_to_task(rec: Mapping[str, Any], row: int, *, opts: LoadOptions, base_dirs: Sequence[Path],
                   source: str, image_columns: Sequence[str] = (), default_caps: frozenset[str] = frozenset()
                   ) -> Task:
    """One generic record as a Task (raises :class:`RowError` for a bad row)."""
    used: set[str] = set()

    qcol = pick_column(rec, "question", opts)
    acol = pick_column(rec, "answer", opts)
    if qcol is None or _missing(rec.get(qcol)):
        raise RowError("empty question")
    if acol is None or _missing(rec.get(acol)):
        raise RowError("empty answer")
    used |= {qcol, acol}
    raw_question = str(rec[qcol])
    answer_value = rec[acol]
    alternatives: list[str] = []
    if isinstance(answer_value, str):
        parsed = parse_listish(answer_value)
        if isinstance(parsed, list) and parsed and acol in ("answers",):
            answer_value = parsed
    if isinstance(answer_value, (list, tuple)) or (hasattr(answer_value, "tolist") and not isinstance(answer_value, (str, bytes))):
        vals = [answer_to_str(v) for v in _as_list(answer_value) if not _missing(v)]
        if not vals:
            raise RowError("empty answer")
        answer, alternatives = vals[0], vals[1:]
    else:
        answer = answer_to_str(answer_value)
    altcol = pick_column(rec, "alternatives", opts)
    if altcol is not None:
        used.add(altcol)
        alternatives += [answer_to_str(v) for v in _as_list(rec[altcol]) if not _missing(v)]

    # Images: aliases first, then columns the schema marks as images.
    icol = pick_column(rec, "images", opts, extra=image_columns)
    images: list[Any] = []
    if icol is not None:
        used.add(icol)
        for i, ref in enumerate(_as_list(rec[icol])):
            if _missing(ref):
                continue
            try:
                images.append(resolve_image_ref(ref, base_dirs, validate=opts.validate_images))
            except TaskImageError as exc:
                raise RowError(f"image {i} in column {icol!r}: {exc}") from exc

    # Options: an options column, or letter columns A, B, C ...
    options = None
    ocol = pick_column(rec, "options", opts)
    if ocol is not None:
        used.add(ocol)
        options = normalize_options(rec[ocol])
    if options is None:
        letters = {k: rec[k] for k in string.ascii_uppercase if k in rec and not _missing(rec[k])}
        if len(letters) >= 2:
            options = {k: answer_to_str(v) for k, v in letters.items()}
            used |= set(letters)

    hcol = pick_column(rec, "hint", opts)
    question = clean_question(raw_question)
    if hcol is not None and not _missing(rec[hcol]):
        used.add(hcol)
        question = f"Hint: {str(rec[hcol]).strip()}\n{question}"
    if options is None:
        head, parsed_opts = split_options(question)
        if parsed_opts and match_option(answer, parsed_opts):
            question, options = head, parsed_opts
    elif options:
        head, parsed_opts = split_options(question)
        if parsed_opts and set(parsed_opts) == set(options):
            question = head  # the options are in Task.options; prompt_text appends them once
    if options:
        key = match_option(answer, options)
        if key is not None:
            if key != answer:
                alternatives.insert(0, answer)
            answer = key

    kcol = pick_column(rec, "answer_kind", opts)
    if opts.answer_kind:
        kind = opts.answer_kind
    elif kcol is not None and not _missing(rec[kcol]):
        used.add(kcol)
        kind = str(rec[kcol]).strip()
    else:
        kind = infer_answer_kind(answer, options if options and match_option(answer, options) else None,
                                 math_kind=opts.math)

    dcol = pick_column(rec, "domain", opts)
    domain = opts.domain or "general"
    if dcol is not None and not _missing(rec[dcol]):
        used.add(dcol)
        domain = str(rec[dcol]).strip()

    caps = _capabilities(rec, opts)
    used |= {c for c in ("capabilities", "capability", "abilities", "skills_needed", *CAPABILITIES) if c in rec}
    if not caps:
        caps = frozenset(opts.capabilities) if opts.capabilities is not None else (default_caps or capabilities_for(source))

    idcol = pick_column(rec, "id", opts)
    rid = rec.get(idcol) if idcol is not None else None
    if idcol is not None:
        used.add(idcol)
    task_id = f"{source}-{answer_to_str(rid)}" if not _missing(rid) else f"{source}-{row}"

    metadata: dict[str, Any] = {"row": row}
    if raw_question.strip() != question:
        metadata["raw_question"] = raw_question
    if alternatives:
        metadata["alternative_answers"] = alternatives
    for k, v in rec.items():
        if k in used or k in image_columns:
            continue
        metadata[k] = jsonable(v)

    try:
        return Task(id=task_id, question=question, answer=answer, images=images, answer_kind=kind,
                    options=options, domain=domain, capabilities=caps, source=source, metadata=metadata)
    except ValueError as exc:
        raise RowError(str(exc)) from exc
