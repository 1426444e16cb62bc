"""The DeepEyesV2 format verdict, with the reasons it failed.

Rules (shared spec, as in the release's reward code), on the assistant text:

1. ``<think>`` is prepended when missing (the env pre-fills it at the start of every assistant
   turn, so a turn's own text usually lacks it);
2. ``<think>``/``</think>`` counts are equal and non-zero;
3. ``<code>``/``</code>`` counts are equal;
4. after the last ``</think>``, ``<answer>``/``</answer>`` counts are equal and non-zero;
5. the extracted answer is non-empty;
6. perception and search tasks: an answer of 300 characters or more is a format error (and
   zeroes accuracy: a long answer is an attempt to talk an LLM judge into "Yes");
7. search tasks: ``<tool_call>``/``</tool_call>`` counts are equal.

Task category (which of the release's three reward functions applies), see
:func:`reward_category`: ``search`` when the task needs search; ``reasoning`` (math: no length
cap, TRUE/FALSE judge) when it needs reasoning and either has a math/numeric answer or needs no
perception; else ``perception``. ``task.metadata["reward_category"]`` overrides it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from ..episode import Episode
from ..task import Task
from ..turns import THINK_PREFILL

__all__ = ["ANSWER_CAP", "CATEGORIES", "FormatVerdict", "check_format", "episode_format", "reward_category"]

ANSWER_CAP = 300  # characters; DeepEyesV2's anti judge-hacking cap
CATEGORIES = ("perception", "reasoning", "search")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)


@dataclass
class FormatVerdict:
    """``ok`` and, when not ok, one human-readable reason per broken rule."""

    ok: bool
    reasons: list[str] = field(default_factory=list)
    answer: str | None = None  # the answer the release would extract (first block, stripped)
    answer_too_long: bool = False
    tool_call_used: bool = False  # any "<tool_call>" in the text (the search-use discount)

    def __bool__(self) -> bool:
        return self.ok


def _with_think(turn: str) -> str:
    return turn if turn.lstrip().startswith(THINK_PREFILL) else THINK_PREFILL + turn


def check_format(
    response: str | Sequence[str],
    *,
    search: bool = False,
    answer_cap: int | None = ANSWER_CAP,
) -> FormatVerdict:
    """Judge the format of an assistant response.

    Args:
        response: the whole response as one string, or the assistant turns in order (``<think>``
            is then prepended to each turn that lacks it, as the env's prefill would).
        search: apply the search-data rule (balanced ``<tool_call>`` tags).
        answer_cap: answers this long or longer fail; None disables the cap (math tasks).
    """
    if isinstance(response, str):
        text = _with_think(response)
    else:
        text = "".join(_with_think(str(t)) for t in response) if response else THINK_PREFILL
    reasons: list[str] = []
    n_open, n_close = text.count("<think>"), text.count("</think>")
    if n_open == 0 or n_close == 0:
        reasons.append("no complete <think>...</think> block")
    elif n_open != n_close:
        reasons.append(f"unbalanced <think> tags ({n_open} open, {n_close} closed)")
    c_open, c_close = text.count("<code>"), text.count("</code>")
    if c_open != c_close:
        reasons.append(f"unbalanced <code> tags ({c_open} open, {c_close} closed)")
    t_open, t_close = text.count("<tool_call>"), text.count("</tool_call>")
    if search and t_open != t_close:
        reasons.append(f"unbalanced <tool_call> tags ({t_open} open, {t_close} closed)")
    tail = text.split("</think>")[-1].strip()
    a_open, a_close = tail.count("<answer>"), tail.count("</answer>")
    if a_open == 0 or a_close == 0:
        reasons.append("no <answer>...</answer> after the last </think>")
    elif a_open != a_close:
        reasons.append(f"unbalanced <answer> tags after the last </think> ({a_open} open, {a_close} closed)")
    m = _ANSWER.search(tail)
    answer = m.group(1).strip() if m else None
    if m is not None and not answer:
        reasons.append("empty answer")
    too_long = bool(answer) and answer_cap is not None and len(answer) >= answer_cap
    if too_long:
        reasons.append(f"answer too long ({len(answer)} characters; the cap is {answer_cap})")
    return FormatVerdict(not reasons, reasons, answer, too_long, t_open > 0)


def reward_category(task: Task) -> str:
    """``perception``, ``reasoning`` or ``search``: which DeepEyesV2 reward rules apply."""
    meta = task.metadata.get("reward_category") if task.metadata else None
    if meta is not None:
        if meta not in CATEGORIES:
            raise ValueError(f"task {task.id}: reward_category must be one of {CATEGORIES}, got {meta!r}")
        return str(meta)
    caps = task.capabilities
    if "search" in caps:
        return "search"
    kind = (task.answer_kind or "").lower()
    if "reasoning" in caps and (kind in ("math", "numeric") or "perception" not in caps):
        return "reasoning"
    if not caps and kind == "math":
        return "reasoning"
    return "perception"


def episode_format(episode: Episode, *, answer_cap: int | None = ANSWER_CAP) -> FormatVerdict:
    """The format verdict of a finished episode; the cap applies to perception/search tasks."""
    category = reward_category(episode.task)
    return check_format(
        [t.action for t in episode.turns],
        search=category == "search",
        answer_cap=None if category == "reasoning" else answer_cap,
    )
