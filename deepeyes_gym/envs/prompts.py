"""System prompts, built from the tools an env offers (model-agnostic: no chat-template tokens)."""

from __future__ import annotations

import json
from typing import Sequence

from .tools.base import Tool
from .turns import IMAGE_TOKEN

__all__ = ["build_system_prompt", "user_prompt"]

_INTRO = (
    "You are a helpful assistant that solves visual questions step by step. "
    "In each turn, first think inside <think> </think>, then take exactly one action:"
)

_CODE = (
    "- Run Python code on the image(s): <code>\n```python\n# your code\n```\n</code>\n"
    "  The input images are loaded as PIL images named image_1, image_2, ... at their original "
    "resolution. Variables persist across your turns. numpy, PIL and matplotlib are available; "
    "print() what you need, and show images with plt.show() or display(img). Do not write files. "
    "The execution result (stdout, stderr, images) comes back in the next message."
)

_TOOLS = (
    "- Call a tool: <tool_call>{{\"name\": <tool name>, \"arguments\": <JSON object>}}</tool_call>\n"
    "  Available tools:\n<tools>\n{schemas}\n</tools>"
)

_ANSWER = (
    "- Give the final answer: <answer>your answer</answer>. Keep it short (a number, a word, a "
    "name or an option letter). The answer ends the conversation."
)


def build_system_prompt(tools: Sequence[Tool]) -> str:
    lines = [_INTRO]
    if any(t.action_kind == "code" for t in tools):
        lines.append(_CODE)
    calls = [t for t in tools if t.action_kind == "tool_call"]
    if calls:
        schemas = "\n".join(json.dumps(t.schema(), ensure_ascii=False) for t in calls)
        lines.append(_TOOLS.format(schemas=schemas))
    lines.append(_ANSWER)
    return "\n".join(lines)


def user_prompt(question: str, n_images: int) -> str:
    """The first user turn: one ``<image>`` placeholder per input image, then the question."""
    return IMAGE_TOKEN * n_images + ("\n" if n_images else "") + question
