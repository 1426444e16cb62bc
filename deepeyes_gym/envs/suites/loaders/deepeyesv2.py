"""The DeepEyesV2 release's own data: the RL parquet and the cold-start SFT JSON.

RL parquet (verl ``RLHFDataset`` layout, one row per question)::

    data_source   "perception" | "reason" | "search" | "vstar-test" | "mmsearch-test" | ...
    prompt        [{"role": "system", "content": ...}, {"role": "user", "content": "<image>\\n..."}]
    images        [{"bytes": b"...", "path": "..."}, ...]   (one per <image> placeholder)
    reward_model  {"ground_truth": "...", "style": "model" | "rule"}
    extra_info    {"question": "...", "answer": "...", "index": 17, "split": "train", ...}
    env_name      the agent environment name (tool set), e.g. "visual_toolbox_v2"
    ability       (optional) e.g. "vl"

``reward_model.ground_truth`` is the answer; ``extra_info.question`` (the text the release's judge
sees) is the question when present, else the user message minus placeholders and instructions.

Cold-start SFT JSON (LLaMA-Factory ``sharegpt`` with role/content tags; a list of items)::

    {"messages": [{"role": "system", "content": ...}, {"role": "user", "content": "<image>..."},
                  {"role": "assistant", "content": "<think>...</think><code>...</code>"},
                  {"role": "user", "content": "Code execution result: ... <image>"}, ...,
                  {"role": "assistant", "content": "<think>...</think><answer>...</answer>"}],
     "images": ["relative/or/absolute/path.jpg", ...]}

``images`` holds one path per ``<image>`` placeholder across ALL messages, in order: the first
user turn's placeholders are the input images, later ones are images returned by tools.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from ...task import Task, TaskImageError
from .common import (
    LoadOptions,
    LoadResult,
    RowError,
    RowSink,
    _missing,
    answer_to_str,
    capabilities_for,
    clean_question,
    dedupe_ids,
    infer_answer_kind,
    jsonable,
    match_option,
    parse_listish,
    require_pyarrow,
    resolve_image_ref,
    split_options,
)
from .errors import DataLoadError, MissingColumnsError
from .jsonl import iter_json_records
from .presets import BenchmarkPreset

__all__ = [
    "RL_REQUIRED_COLUMNS",
    "is_rl_schema",
    "rl_record_to_task",
    "load_deepeyesv2_rl",
    "SFTTrajectory",
    "load_sft_trajectories",
    "load_deepeyesv2_sft",
]

RL_REQUIRED_COLUMNS = ("prompt", "reward_model")
_MATH_SOURCES = ("reason", "geometry3k", "math", "gsm8k", "thinklite", "numina", "aime")
_PLACEHOLDER = "<image>"


def is_rl_schema(columns: Iterable[str]) -> bool:
    cols = set(columns)
    return set(RL_REQUIRED_COLUMNS) <= cols


# ------------------------------------------------------------------------------------------- RL
def _as_mapping(v: Any, what: str) -> dict[str, Any]:
    if v is None:
        return {}
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError as exc:
            raise RowError(f"{what} is a string that is not JSON: {exc.msg}") from exc
    if not isinstance(v, Mapping):
        raise RowError(f"{what} should be a mapping, got {type(v).__name__}")
    return dict(v)


def _content_text(content: Any) -> str:
    """Message content as text; OpenAI-style part lists become text with <image> placeholders."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if hasattr(content, "tolist"):
        content = content.tolist()
    if isinstance(content, (list, tuple)):
        out = []
        for part in content:
            if isinstance(part, Mapping):
                kind = part.get("type")
                if kind in ("image", "image_url") or (kind is None and "image" in part):
                    out.append(_PLACEHOLDER)
                else:
                    out.append(str(part.get("text") or ""))
            else:
                out.append(str(part))
        return "".join(out)
    return str(content)


def _messages(prompt: Any) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        parsed = parse_listish(prompt)
        prompt = parsed if isinstance(parsed, list) else [{"role": "user", "content": prompt}]
    if hasattr(prompt, "tolist"):
        prompt = prompt.tolist()
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise RowError("prompt should be a non-empty list of chat messages")
    out = []
    for m in prompt:
        if not isinstance(m, Mapping) or "content" not in m:
            raise RowError("prompt messages need 'role' and 'content'")
        out.append({"role": str(m.get("role") or "user"), "content": _content_text(m["content"])})
    return out


def _ground_truth(rm: Mapping[str, Any]) -> tuple[str, list[str]]:
    gt = rm.get("ground_truth")
    if gt is None or _missing(gt):
        raise RowError("reward_model.ground_truth is empty")
    if hasattr(gt, "tolist") and not isinstance(gt, (str, bytes)):
        gt = gt.tolist()
    if isinstance(gt, str):
        parsed = parse_listish(gt)
        if isinstance(parsed, list) and parsed and all(isinstance(x, (str, int, float)) for x in parsed):
            gt = parsed
    if isinstance(gt, (list, tuple)):
        vals = [answer_to_str(v) for v in gt if not _missing(v)]
        if not vals:
            raise RowError("reward_model.ground_truth is empty")
        return vals[0], vals[1:]
    return answer_to_str(gt), []


def rl_record_to_task(rec: Mapping[str, Any], row: int, *, opts: LoadOptions, base_dirs: Sequence[Path],
                      file_stem: str, default_caps: frozenset[str] = frozenset(), source: str | None = None) -> Task:
    """One DeepEyesV2 / verl RL row as a Task (raises :class:`RowError` for a bad row)."""
    messages = _messages(rec.get("prompt"))
    users = [m for m in messages if m["role"] == "user"]
    if not users:
        raise RowError("prompt has no user message")
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    rm = _as_mapping(rec.get("reward_model"), "reward_model")
    answer, alternatives = _ground_truth(rm)
    extra = _as_mapping(rec.get("extra_info"), "extra_info")
    data_source = str(rec.get("data_source") or "").strip()
    env_name = str(rec.get("env_name") or "").strip()

    raw_q = extra.get("question")
    raw_q = raw_q if isinstance(raw_q, str) and raw_q.strip() else users[0]["content"]
    question = clean_question(raw_q)
    if not question:
        raise RowError("empty question")
    options = None
    head, parsed = split_options(question)
    if parsed:
        key = match_option(answer, parsed)
        if key is not None:
            question, options = head, parsed
            if key != answer:
                alternatives.insert(0, answer)
            answer = key

    images = []
    raw_images = rec.get("images")
    if hasattr(raw_images, "tolist") and not isinstance(raw_images, (bytes, str)):
        raw_images = raw_images.tolist()
    if raw_images is not None and not isinstance(raw_images, (list, tuple)):
        raw_images = [raw_images]
    for i, ref in enumerate(raw_images or ()):
        try:
            images.append(resolve_image_ref(ref, base_dirs, validate=opts.validate_images))
        except TaskImageError as exc:
            raise RowError(f"image {i}: {exc}") from exc
    n_placeholders = users[0]["content"].count(_PLACEHOLDER)
    if n_placeholders > len(images):
        raise RowError(f"the user message has {n_placeholders} <image> placeholders but the row has "
                       f"{len(images)} image(s)")

    if opts.capabilities is not None:
        caps = frozenset(opts.capabilities)
    else:
        caps = capabilities_for(data_source) or capabilities_for(env_name) or default_caps
    ds_key = data_source.lower()
    math_kind = opts.math or any(k in ds_key for k in _MATH_SOURCES)
    kind = opts.answer_kind or infer_answer_kind(answer, options, math_kind=math_kind)

    index = extra.get("index")
    prefix = data_source or file_stem
    task_id = f"{prefix}-{answer_to_str(index)}" if index is not None and not _missing(index) else f"{file_stem}-{row}"
    domain = opts.domain or str(extra.get("category") or data_source or "general")
    metadata: dict[str, Any] = {
        "row": row,
        "file": file_stem,
        "data_source": data_source,
        "env_name": env_name,
        "reward_style": rm.get("style"),
        "system_prompt": system,
        "prompt": [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"],
        "extra_info": jsonable({k: v for k, v in extra.items() if k != "tools_kwargs"}),
    }
    if alternatives:
        metadata["alternative_answers"] = alternatives
    if raw_q.strip() != question:
        metadata["raw_question"] = raw_q
    for k, v in rec.items():
        if k not in ("prompt", "images", "reward_model", "extra_info", "data_source", "env_name"):
            metadata[k] = jsonable(v)
    return Task(id=task_id, question=question, answer=answer, images=images, answer_kind=kind,
                options=options, domain=domain, capabilities=caps, source=source or "deepeyesv2-rl",
                metadata=metadata)


def _data_files(p: Path, suffixes: tuple[str, ...], what: str) -> list[Path]:
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in suffixes)
        if not files:
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
        if not files:
            raise DataLoadError(f"{p}: no {what} files ({', '.join(suffixes)}) in this directory")
        return files
    raise DataLoadError(f"data file not found: {p}")


def iter_parquet_records(path: Path, what: str, batch_size: int = 64) -> tuple[list[str], Iterator[dict[str, Any]]]:
    """Column names and a lazy row iterator for one parquet file (clear errors when unreadable)."""
    pa = require_pyarrow(what)
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        names = list(pf.schema_arrow.names)
    except (pa.ArrowException, OSError) as exc:
        raise DataLoadError(f"{path}: not a readable parquet file: {exc}") from exc

    def rows() -> Iterator[dict[str, Any]]:
        try:
            for batch in pf.iter_batches(batch_size=batch_size):
                yield from batch.to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise DataLoadError(f"{path}: corrupt parquet data: {exc}") from exc

    return names, rows()


def load_deepeyesv2_rl(path: str | os.PathLike, *, preset: BenchmarkPreset | None = None, **kw: Any) -> LoadResult:
    """Load DeepEyesV2 RL parquet file(s) (a file, or a directory of them) into Tasks."""
    opts = LoadOptions.from_kwargs(kw)
    if preset is not None and preset.math:
        opts.math = True
    default_caps = preset.capabilities if preset is not None else frozenset()
    source = opts.source or (preset.name if preset is not None and preset.format != "deepeyesv2_rl" else None)
    p = Path(path)
    files = _data_files(p, (".parquet",), "parquet")
    sink = RowSink(p, opts.strict, opts.limit)
    tasks: list[Task] = []
    for f in files:
        names, rows = iter_parquet_records(f, "the DeepEyesV2 RL parquet")
        missing = [c for c in RL_REQUIRED_COLUMNS if c not in names]
        if missing:
            raise MissingColumnsError(str(f), missing, names,
                                      hint="DeepEyesV2 RL parquet: prompt, images, data_source, reward_model, extra_info")
        base_dirs = opts.base_dirs(f)
        for row, rec in enumerate(rows):
            if sink.add(tasks, row, lambda: rl_record_to_task(rec, row, opts=opts, base_dirs=base_dirs,
                                                             file_stem=f.stem, default_caps=default_caps,
                                                             source=source), file=str(f)):
                break
        if sink.full(tasks):
            break
    dedupe_ids(tasks)
    return sink.finish(tasks, "deepeyesv2_rl")


# ------------------------------------------------------------------------------------------ SFT
_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "observation": "tool", "function": "tool",
                 "function_call": "assistant", "tool": "tool", "user": "user", "assistant": "assistant",
                 "system": "system"}
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_CODE_RE = re.compile(r"<code>(.*?)</code>", re.DOTALL)


@dataclass
class SFTTrajectory:
    """One cold-start trajectory: the task it solves and every turn, for the SFT trainer.

    ``messages``: dicts with ``role`` (system / user / assistant / tool), ``content`` (text with one
    ``<image>`` placeholder per image), ``images`` (the references for those placeholders, lazy:
    paths or bytes) and ``kind``: ``system``, ``question`` (the first user turn), ``assistant``, or
    ``observation`` (a tool result: a later user turn, or a tool-role turn).
    """

    task: Task
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def system(self) -> str | None:
        return next((m["content"] for m in self.messages if m["kind"] == "system"), None)

    @property
    def images(self) -> tuple[Any, ...]:
        return tuple(ref for m in self.messages for ref in m["images"])

    def assistant_turns(self) -> list[str]:
        return [m["content"] for m in self.messages if m["kind"] == "assistant"]

    def chat_messages(self) -> list[dict[str, Any]]:
        """OpenAI/Qwen-style messages: content parts ``{"type": "image", "image": ref}`` and
        ``{"type": "text", "text": ...}`` interleaved where the placeholders were."""
        out = []
        for m in self.messages:
            pieces = m["content"].split(_PLACEHOLDER)
            parts: list[dict[str, Any]] = []
            for i, piece in enumerate(pieces):
                if i > 0:
                    parts.append({"type": "image", "image": m["images"][i - 1]})
                if piece:
                    parts.append({"type": "text", "text": piece})
            out.append({"role": m["role"], "content": parts})
        return out


def _sft_messages(item: Mapping[str, Any]) -> list[dict[str, Any]]:
    raw = item.get("messages", item.get("conversations"))
    if not isinstance(raw, list) or not raw:
        raise RowError("'messages' should be a non-empty list")
    out = []
    for m in raw:
        if not isinstance(m, Mapping):
            raise RowError("each message should be an object")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        if role is None or content is None:
            raise RowError("messages need role/content (or from/value)")
        norm = _ROLE_ALIASES.get(str(role).lower())
        if norm is None:
            raise RowError(f"unknown message role {role!r}")
        out.append({"role": norm, "content": _content_text(content)})
    return out


def _sft_capabilities(item: Mapping[str, Any], assistant_text: str) -> frozenset[str]:
    for key in ("capabilities", "data_source", "category", "source"):
        v = item.get(key)
        if isinstance(v, list):
            caps = frozenset(str(x).lower() for x in v) & {"perception", "reasoning", "search"}
            if caps:
                return caps
        caps = capabilities_for(v)
        if caps:
            return caps
    # Heuristic from the tools the trajectory uses: search calls -> search; code that touches the
    # input images -> perception; other code -> reasoning.
    caps: set[str] = set()
    for call in _TOOL_CALL_RE.findall(assistant_text):
        if "search" in call:
            caps.add("search")
    for code in _CODE_RE.findall(assistant_text):
        caps.add("perception" if re.search(r"\bimage_\d+\b", code) else "reasoning")
    return frozenset(caps)


def _sft_item(item: Mapping[str, Any], row: int, *, opts: LoadOptions, base_dirs: Sequence[Path], file_stem: str,
              source: str) -> SFTTrajectory:
    msgs = _sft_messages(item)
    raw_images = item.get("images") or []
    if isinstance(raw_images, str):
        raw_images = [raw_images]
    if not isinstance(raw_images, list):
        raise RowError("'images' should be a list of paths")
    n_ph = sum(m["content"].count(_PLACEHOLDER) for m in msgs)
    if n_ph != len(raw_images):
        raise RowError(f"{n_ph} <image> placeholder(s) in the messages but {len(raw_images)} image(s)")
    images = []
    for i, ref in enumerate(raw_images):
        try:
            images.append(resolve_image_ref(ref, base_dirs, validate=opts.validate_images))
        except TaskImageError as exc:
            raise RowError(f"image {i}: {exc}") from exc

    cursor = 0
    seen_question = False
    for m in msgs:
        k = m["content"].count(_PLACEHOLDER)
        m["images"] = tuple(images[cursor: cursor + k])
        cursor += k
        if m["role"] == "system":
            m["kind"] = "system"
        elif m["role"] == "assistant":
            m["kind"] = "assistant"
        elif m["role"] == "user" and not seen_question:
            m["kind"] = "question"
            seen_question = True
        else:
            m["kind"] = "observation"
    first = next((m for m in msgs if m["kind"] == "question"), None)
    if first is None:
        raise RowError("no user message")
    assistants = [m["content"] for m in msgs if m["kind"] == "assistant"]
    if not assistants:
        raise RowError("no assistant message")

    question = clean_question(first["content"])
    if not question:
        raise RowError("empty question")
    answers = _ANSWER_RE.findall(assistants[-1])
    answer = answers[-1].strip() if answers else ""
    options = None
    head, parsed = split_options(question)
    if parsed and answer:
        key = match_option(answer, parsed)
        if key is not None:
            question, options, answer = head, parsed, key

    caps = frozenset(opts.capabilities) if opts.capabilities is not None else _sft_capabilities(item, "\n".join(assistants))
    rid = item.get("id", item.get("index"))
    task_id = f"{source}-{answer_to_str(rid)}" if rid is not None and not _missing(rid) else f"{source}-{file_stem}-{row}"
    metadata: dict[str, Any] = {
        "row": row,
        "file": file_stem,
        "answer_found": bool(answers),
        "system_prompt": next((m["content"] for m in msgs if m["kind"] == "system"), None),
        "messages": [{"role": m["role"], "kind": m["kind"], "content": m["content"],
                      "n_images": len(m["images"])} for m in msgs],
        "trajectory_images": tuple(images),
        "n_tool_turns": sum(1 for m in msgs if m["kind"] == "observation"),
    }
    if first["content"].strip() != question:
        metadata["raw_question"] = first["content"]
    for k, v in item.items():
        if k not in ("messages", "conversations", "images"):
            metadata[k] = jsonable(v)
    task = Task(
        id=task_id, question=question, answer=answer, images=first["images"],
        answer_kind=opts.answer_kind or (infer_answer_kind(answer, options, math_kind=opts.math) if answer else "text"),
        options=options, domain=opts.domain or str(item.get("category") or item.get("data_source") or "general"),
        capabilities=caps, reference_solution=tuple(assistants), source=source, metadata=metadata,
    )
    return SFTTrajectory(task=task, messages=msgs)


def load_sft_trajectories(path: str | os.PathLike, *, preset: BenchmarkPreset | None = None, **kw: Any) -> LoadResult:
    """Load DeepEyesV2 cold-start SFT JSON (a file or a directory of ``.json`` / ``.jsonl``) as
    :class:`SFTTrajectory` objects. Image paths are resolved against ``image_root``, the JSON
    file's directory, then its parent."""
    opts = LoadOptions.from_kwargs(kw)
    p = Path(path)
    files = _data_files(p, (".json", ".jsonl"), "JSON")
    source = opts.source or (preset.name if preset is not None and preset.format != "deepeyesv2_sft" else "deepeyesv2-sft")
    sink = RowSink(p, opts.strict, opts.limit)
    out: list[SFTTrajectory] = []
    for f in files:
        base_dirs = opts.base_dirs(f) + [f.parent.parent]
        checked = False
        for row, item, err in iter_json_records(f):
            if err is not None:
                sink.skip(row, err, file=str(f))
                continue
            if not isinstance(item, Mapping):
                sink.skip(row, f"expected a JSON object, got {type(item).__name__}", file=str(f))
                continue
            if not checked:
                if "messages" not in item and "conversations" not in item:
                    raise MissingColumnsError(str(f), ["messages"], list(item),
                                              hint="cold-start JSON items are {'messages': [...], 'images': [...]}")
                checked = True
            if sink.add(out, row, lambda: _sft_item(item, row, opts=opts, base_dirs=base_dirs,
                                                    file_stem=f.stem, source=source), file=str(f)):
                break
        if sink.full(out):
            break
    dedupe_ids([t.task for t in out])
    return sink.finish(out, "deepeyesv2_sft")


def load_deepeyesv2_sft(path: str | os.PathLike, *, preset: BenchmarkPreset | None = None, **kw: Any) -> LoadResult:
    """The cold-start data as Tasks: the question turn's images, the final ``<answer>``, the
    assistant turns as ``reference_solution`` and the whole trajectory in ``metadata["messages"]``
    (use :func:`load_sft_trajectories` for per-turn images)."""
    trajs = load_sft_trajectories(path, preset=preset, **kw)
    return LoadResult((t.task for t in trajs), skipped=trajs.skipped, source_path=trajs.source_path,
                      format="deepeyesv2_sft")
