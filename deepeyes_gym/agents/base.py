"""The agent interface: given the conversation so far, return the next assistant turn."""

from __future__ import annotations

import abc
from typing import Any, Mapping, Sequence

__all__ = ["Agent", "Message"]

# OpenAI-style chat message: {"role": ..., "content": str | list of parts}; image parts are
# {"type": "image", "image": PIL.Image} as given by ``DeepEyesEnv.messages()``.
Message = Mapping[str, Any]


class Agent(abc.ABC):
    """A policy, stateless across episodes: everything it needs is in its arguments.

    ``messages`` is the conversation so far; ``info`` is the env's reset ``info`` for that episode
    (public task facts, never the answer). ``act_batch`` is the batched form for many episodes at
    once: the default loops over ``act``; servers and in-process engines override it.
    """

    name: str = "agent"

    @abc.abstractmethod
    def act(self, messages: Sequence[Message], info: Mapping[str, Any] | None = None) -> str:
        """Return the next assistant turn for this conversation."""

    def act_batch(
        self,
        batch: Sequence[Sequence[Message]],
        infos: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[str]:
        infos = infos if infos is not None else [None] * len(batch)
        return [self.act(m, i) for m, i in zip(batch, infos)]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (HTTP sessions, engines)."""
