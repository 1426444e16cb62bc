"""Build episodes from strings, to unit-test reward functions in a few lines.

>>> from deepeyes_gym.envs.rewards import episode_from_text, resolve_reward
>>> ep = episode_from_text("<think>6*7</think><answer>42</answer>", answer="42", kind="numeric")
>>> resolve_reward("realx")(ep).value
1.0

Turns are parsed with the env's own action parser, so ``episode.prediction``, turn kinds and tool
names are what the env would record. ``tool_turns`` prepends well-formed tool turns (an int: that
many Python turns; or tool names such as ``["search", "python"]``) that count as having run
without error.
"""

from __future__ import annotations

import json
from typing import Any, Collection, Mapping, Sequence

from ..actions import parse_action
from ..episode import Episode, Turn
from ..task import Task

__all__ = ["episode_from_text", "make_task", "tool_turn_text"]

_CODE_TOOL = "python"


def make_task(
    answer: str,
    *,
    question: str = "What is the answer?",
    kind: str | None = None,
    options: Mapping[str, str] | None = None,
    capabilities: Collection[str] = (),
    domain: str = "general",
    metadata: Mapping[str, Any] | None = None,
    task_id: str = "test-0",
) -> Task:
    """A text-only task with the given ground truth."""
    return Task(
        id=task_id, question=question, answer=answer, answer_kind=kind,
        options=dict(options) if options else None, domain=domain,
        capabilities=frozenset(capabilities), metadata=dict(metadata or {}),
    )


def tool_turn_text(tool: str) -> str:
    """A well-formed assistant turn calling ``tool`` ("python"/"code" runs a code block)."""
    if tool in (_CODE_TOOL, "code"):
        return "<think>Let me compute it.</think>\n<code>\n```python\nprint(6 * 7)\n```\n</code>"
    args = {"query": "the question"} if tool == "search" else {}
    call = json.dumps({"name": tool, "arguments": args})
    return f"<think>Let me use {tool}.</think>\n<tool_call>{call}</tool_call>"


def _turn(text: str, *, ran: bool) -> Turn:
    action = parse_action(text)
    turn = Turn(action=text, kind=action.kind)
    if action.kind == "code":
        turn.tool, turn.arguments = _CODE_TOOL, action.payload
    elif action.kind == "tool_call":
        turn.tool, turn.arguments = action.name, action.payload
    elif action.kind == "invalid":
        turn.error = action.error
    if turn.tool is not None:
        turn.observation = "(tool output)" if ran else "Error: the tool failed."
        if not ran:
            turn.error = "the tool failed"
    return turn


def episode_from_text(
    *turns: str,
    answer: str,
    kind: str | None = None,
    options: Mapping[str, str] | None = None,
    capabilities: Collection[str] = (),
    question: str = "What is the answer?",
    domain: str = "general",
    metadata: Mapping[str, Any] | None = None,
    tool_turns: int | Sequence[str] = 0,
    tools_fail: bool = False,
    task: Task | None = None,
) -> Episode:
    """An :class:`Episode` from assistant turn texts.

    Args:
        *turns: the assistant turns, in order (the last usually holds ``<answer>``).
        answer: the ground truth (the task's answer), not the model's.
        kind, options, capabilities, question, domain, metadata: the task's fields.
        tool_turns: well-formed tool turns to put before ``turns``: an int (Python turns) or
            a list of tool names.
        tools_fail: mark the tool turns (given or generated) as failed (``turn.error`` set).
        task: use this task instead of building one (``answer`` etc. are then ignored).
    """
    if task is None:
        task = make_task(
            answer, question=question, kind=kind, options=options, capabilities=capabilities,
            domain=domain, metadata=metadata,
        )
    names = [_CODE_TOOL] * tool_turns if isinstance(tool_turns, int) else list(tool_turns)
    texts = [tool_turn_text(n) for n in names] + [str(t) for t in turns]
    ep = Episode(task=task)
    for text in texts:
        turn = _turn(text, ran=not tools_fail)
        ep.turns.append(turn)
        if turn.kind == "answer":
            ep.prediction = parse_action(text).payload
            ep.terminated = True
            break
    ep.truncated = not ep.terminated
    return ep
