"""What happened in one episode: the record rewards, reports and exporters read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .task import Task

__all__ = ["Turn", "Episode"]


@dataclass
class Turn:
    """One assistant action and what the environment returned for it."""

    action: str  # raw assistant text
    kind: str  # "answer" | "code" | "tool_call" | "invalid"
    tool: str | None = None  # tool that ran ("python", "search", ...)
    arguments: Any = None  # parsed arguments (code string for the code tool)
    observation: str | None = None  # text returned to the model (None after the answer)
    n_images: int = 0  # images returned with the observation
    error: str | None = None  # parse or tool error text, if any
    latency_s: float = 0.0  # wall-clock time the tool took
    metadata: dict[str, Any] = field(default_factory=dict)  # tool extras (search hits, ...)


@dataclass
class Episode:
    """A finished (or running) episode: the task, every turn, and the final answer."""

    task: Task
    turns: list[Turn] = field(default_factory=list)
    answer: str | None = None  # extracted text of the final <answer>, None if never answered
    terminated: bool = False
    truncated: bool = False

    @property
    def tool_turns(self) -> list[Turn]:
        """Turns that ran a tool (code or tool call), successful or not."""
        return [t for t in self.turns if t.tool is not None]

    @property
    def tools_used(self) -> list[str]:
        return [t.tool for t in self.turns if t.tool is not None]

    @property
    def response_text(self) -> str:
        """All assistant turns joined, as the DeepEyesV2 format check reads them."""
        return "".join(t.action for t in self.turns)
