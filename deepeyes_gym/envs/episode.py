"""What happened in one episode: the one record rewards, runners, exporters and trainers read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .task import Task
from .turns import FinishReason, Message, StopReason

__all__ = ["Turn", "Episode", "ActionKind"]

ActionKind = Literal["answer", "code", "tool_call", "invalid"]


@dataclass
class Turn:
    """One assistant action and what the environment returned for it."""

    action: str  # the whole assistant turn as the env read it (prefill included when sent)
    kind: ActionKind
    finish_reason: FinishReason = "stop"  # how the policy's turn ended
    n_tokens: int | None = None  # sampled tokens, when the policy said
    tool: str | None = None  # tool that ran ("python", "search", ...)
    arguments: Any = None  # parsed arguments (code string for the code tool)
    observation: str | None = None  # text returned to the model (None when nothing was returned)
    observation_images: tuple[np.ndarray, ...] = ()  # images returned with it, placeholder order
    error: str | None = None  # parse or tool error text, if any
    latency_s: float = 0.0  # wall-clock time the tool took
    metadata: dict[str, Any] = field(default_factory=dict)  # tool extras (search hits, ...)

    @property
    def n_images(self) -> int:
        return len(self.observation_images)


@dataclass
class Episode:
    """A finished (or running) episode: the task, the prompt, every turn, the outcome.

    ``messages()`` rebuilds the chat from this record alone, so a saved episode is a complete
    SFT example and can be re-scored without the model.
    """

    task: Task
    system_prompt: str = ""
    prompt: Message | None = None  # the first user message (question + input images)
    turns: list[Turn] = field(default_factory=list)
    prediction: str | None = None  # the model's extracted <answer> text, None if it never answered
    terminated: bool = False
    truncated: bool = False
    stop_reason: StopReason | None = None
    reward: float | None = None
    reward_breakdown: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated

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

    def messages(self) -> list[Message]:
        """The conversation: system, first user, then each assistant turn and its observation."""
        out = [Message("system", self.system_prompt)]
        if self.prompt is not None:
            out.append(self.prompt)
        for t in self.turns:
            out.append(Message("assistant", t.action))
            if t.observation is not None:
                out.append(Message("user", t.observation, t.observation_images))
        return out
