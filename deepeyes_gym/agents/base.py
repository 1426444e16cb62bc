"""The agent interface: given the conversation so far, return the next assistant turn."""

from __future__ import annotations

import abc
import asyncio
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
    # How the runner asks ``env.messages()`` to render images for this agent: "pil", "array" or
    # "data_url" (servers want data URLs; in-process models want PIL images).
    image_format: str = "pil"

    @abc.abstractmethod
    def act(self, messages: Sequence[Message], info: Mapping[str, Any] | None = None) -> str:
        """Return the next assistant turn for this conversation."""

    def act_batch(
        self,
        batch: Sequence[Sequence[Message]],
        infos: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        return_exceptions: bool = False,
    ) -> list[str | BaseException]:
        """One turn for each conversation. With ``return_exceptions`` a failing episode gets its
        exception in its slot (the runner records it against that episode) instead of raising."""
        infos = infos if infos is not None else [None] * len(batch)
        out: list[str | BaseException] = []
        for m, i in zip(batch, infos):
            try:
                out.append(self.act(m, i))
            except Exception as exc:
                if not return_exceptions:
                    raise
                out.append(exc)
        return out

    async def aact(self, messages: Sequence[Message], info: Mapping[str, Any] | None = None) -> Any:
        """The async form the episode driver calls: a str, a ``PolicyTurn``, or a ``Generation``
        (with its finish reason). The default runs :meth:`act` in the loop's default executor;
        agents with native async clients override it."""
        return await asyncio.get_running_loop().run_in_executor(None, self.act, messages, info)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (HTTP sessions, engines)."""
