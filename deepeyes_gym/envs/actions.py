"""Parse one assistant turn into an action, following the DeepEyesV2 dispatch rules.

Rules (shared spec): an ``<answer>`` ends the episode first; else a ``<code>`` block (code wins
over a tool call); else a ``<tool_call>``. Only the LAST block of a kind counts. Tags are looked
for after the last ``</think>`` so that a model musing about tags inside its thoughts does not act.
An empty ``<answer></answer>`` is not an answer: a code block or tool call beside it runs.

Tolerance for what real models emit: an unclosed ``<code>``/``<tool_call>`` at the end of the turn
(the server dropped the stop string), a missing closing code fence, stray whitespace, a prompt-
prefilled ``<think>`` (no opening tag), tool arguments given as a JSON string. Nothing here raises:
every malformed turn becomes an ``Action`` of kind ``"invalid"`` whose ``error`` is the exact
observation the model gets back.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Action", "parse_action", "sanitize_text", "ERRORS"]

# The exact observations for malformed turns (tests pin them).
ERRORS = {
    "empty": (
        "Error: empty response. Think, then end your turn with exactly one action: "
        "<code>```python ... ```</code>, <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call> "
        "or <answer>...</answer>."
    ),
    "no_action": (
        "Error: no action found. End your turn with exactly one action: "
        "<code>```python ... ```</code>, <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call> "
        "or <answer>...</answer>."
    ),
    "unclosed_answer": "Error: <answer> is not closed. Give the final answer as <answer>...</answer>.",
    "empty_answer": "Error: the answer is empty. Give the final answer as <answer>...</answer>.",
    "no_fence": (
        "Error: the code must be a fenced Python block inside the code tags, like\n"
        "<code>\n```python\nprint(image_1.size)\n```\n</code>"
    ),
    "empty_code": "Error: the code block is empty.",
    "bad_json": "Error: the tool call is not valid JSON ({detail}). Use "
    "<tool_call>{{\"name\": \"<tool name>\", \"arguments\": {{...}}}}</tool_call>.",
    "not_object": "Error: the tool call must be a JSON object with \"name\" and \"arguments\".",
    "no_name": "Error: the tool call has no \"name\" string.",
    "bad_arguments": "Error: \"arguments\" of the tool call must be a JSON object.",
}

_THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class Action:
    """A parsed assistant turn.

    kind: ``"answer"`` | ``"code"`` | ``"tool_call"`` | ``"invalid"``.
    For code, ``payload`` is the Python source; for a tool call, ``name``/``payload`` hold the tool
    name and its arguments dict; for an answer, ``payload`` is the answer text (stripped).
    ``error`` holds the observation text for ``invalid`` actions.
    """

    kind: str
    payload: Any = None
    name: str | None = None
    error: str | None = None


def sanitize_text(text: Any, max_chars: int | None = None, *, drop_nul: bool = True) -> str:
    """Make any input a valid, printable Python str: bytes decoded with replacement, lone
    surrogates replaced, NULs dropped (unless ``drop_nul=False``), optionally truncated."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8", errors="replace")
    elif not isinstance(text, str):
        text = "" if text is None else str(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", errors="replace").decode("utf-8")
    if drop_nul and "\x00" in text:
        text = text.replace("\x00", "")
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars]
    return text


def _last_block(text: str, tag: str) -> tuple[str | None, bool]:
    """Content of the last ``<tag>…</tag>`` block, the innermost one if nested.

    Returns (content, closed). An opening tag after the last closing tag (a block cut off at a
    stop string) yields the rest of the text with closed=False.
    """
    open_t, close_t = f"<{tag}>", f"</{tag}>"
    last_open = text.rfind(open_t)
    if last_open == -1:
        return None, False
    start = last_open + len(open_t)
    close = text.find(close_t, start)
    if close != -1:
        return text[start:close], True
    return text[start:], False


_FENCE = re.compile(r"```[ \t]*(?:python|py)[ \t]*\r?\n(.*?)(?:```|\Z)", re.S | re.I)


def _parse_code(block: str) -> Action:
    matches = _FENCE.findall(block)
    if not matches:
        return Action("invalid", error=ERRORS["no_fence"])
    code = matches[-1].strip("\r\n")
    if not code.strip():
        return Action("invalid", error=ERRORS["empty_code"])
    return Action("code", payload=code, name=None)


def _parse_tool_call(block: str) -> Action:
    raw = block.strip()
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        detail = getattr(exc, "msg", "too deeply nested")
        return Action("invalid", error=ERRORS["bad_json"].format(detail=detail))
    if not isinstance(obj, dict):
        return Action("invalid", error=ERRORS["not_object"])
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return Action("invalid", error=ERRORS["no_name"])
    args = obj.get("arguments", obj.get("parameters", {}))
    if args is None:
        args = {}
    if isinstance(args, str):  # some models stringify the arguments object
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return Action("invalid", name=name.strip(), error=ERRORS["bad_arguments"])
    if not isinstance(args, dict):
        return Action("invalid", name=name.strip(), error=ERRORS["bad_arguments"])
    return Action("tool_call", payload=args, name=name.strip())


def parse_action(text: Any) -> Action:
    """Parse one assistant turn. Never raises."""
    text = sanitize_text(text)
    if not text.strip():
        return Action("invalid", error=ERRORS["empty"])
    cut = text.rfind(_THINK_CLOSE)
    body = text[cut + len(_THINK_CLOSE) :] if cut != -1 else text

    answer, closed = _last_block(body, "answer")
    if answer is not None:
        if not closed:
            return Action("invalid", error=ERRORS["unclosed_answer"])
        if answer.strip():
            return Action("answer", payload=answer.strip())
        # An empty <answer></answer> is not an answer, so it does not take precedence: a code
        # block or tool call in the same turn runs. Alone, it is the empty_answer error.

    code, _ = _last_block(body, "code")
    if code is not None:
        return _parse_code(code)

    call, _ = _last_block(body, "tool_call")
    if call is not None:
        return _parse_tool_call(call)

    if answer is not None:
        return Action("invalid", error=ERRORS["empty_answer"])
    return Action("invalid", error=ERRORS["no_action"])
