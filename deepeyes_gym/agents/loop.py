"""The async per-episode driver: one coroutine plays one episode, env steps in an executor.

There is no batch barrier: an episode waits only for its own agent call and its own env step,
so a slow request or a long tool call never holds up the others. The evaluation runner uses it,
and the rollout engine reuses the same shape with a token-level policy.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Mapping

from ..envs.episode import Episode
from ..envs.messages import message_to_dict
from ..envs.turns import PolicyTurn
from . import AgentError
from .base import Agent

__all__ = ["EpisodeOutcome", "run_episode", "env_executor", "as_policy_turn"]


def env_executor(concurrency: int) -> ThreadPoolExecutor:
    """A thread pool for env calls sized to the number of concurrent episodes, so no episode's
    step waits behind another's (asyncio's shared default pool is far smaller)."""
    return ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="env")


@dataclass
class EpisodeOutcome:
    """How one episode went: the env's record, the last info, timings charged to this episode."""

    episode: Episode | None  # None when the reset failed
    info: dict[str, Any] = field(default_factory=dict)
    reward: float | None = None
    error: str | None = None  # reset, agent or env failure; the episode is lost, the run goes on
    started: float = 0.0  # wall-clock start (time.time())
    wall_s: float = 0.0
    reset_s: float = 0.0
    agent_s: float = 0.0  # this episode's own agent calls, not its neighbours'
    step_s: list[float] = field(default_factory=list)  # each env.step, tool time included

    @property
    def ok(self) -> bool:
        return self.error is None


def as_policy_turn(out: Any) -> PolicyTurn:
    """What an agent returned as a PolicyTurn: a str, a PolicyTurn, or a ``Generation``-like
    object (``text``, ``finish_reason``, optional ``token_ids``)."""
    if isinstance(out, PolicyTurn):
        return out
    if isinstance(out, str):
        return PolicyTurn(out)
    text, finish = getattr(out, "text", None), getattr(out, "finish_reason", None)
    if not isinstance(text, str) or finish is None:
        raise TypeError(f"an agent returned {type(out).__name__}: expected a str, a PolicyTurn or a Generation")
    ids = getattr(out, "token_ids", None)
    return PolicyTurn(text, finish, len(ids) if ids is not None else None)


async def run_episode(
    env: Any,
    agent: Agent,
    *,
    seed: int | None = None,
    options: Mapping[str, Any] | None = None,
    executor: Executor | None = None,
    image_format: str | None = None,
    agent_info: Mapping[str, Any] | None = None,
    timeout_s: float | None = None,
) -> EpisodeOutcome:
    """Play one episode of ``env`` (a Gymnasium env built on DeepEyesEnv, wrappers allowed) with
    a text-level ``agent``. The agent sees the chat built from the env's deltas (each new message
    rendered once and appended); env calls run in ``executor``. Failures end only this episode:
    they come back in ``outcome.error``. ``timeout_s`` bounds the whole episode; on expiry the
    episode is aborted (its running tool killed)."""
    out = EpisodeOutcome(episode=None, started=time.time())
    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(_play(env, agent, out, seed, options, executor, image_format, agent_info), timeout_s)
    except asyncio.TimeoutError:
        out.error = f"the episode timed out after {timeout_s} s"
        await asyncio.get_running_loop().run_in_executor(executor, env.get_wrapper_attr("abort"))
    except asyncio.CancelledError:
        await asyncio.get_running_loop().run_in_executor(executor, env.get_wrapper_attr("abort"))
        raise
    out.wall_s = time.perf_counter() - t0
    if out.episode is None and out.error is None:
        out.episode = env.get_wrapper_attr("episode_record")()
    return out


async def _play(env, agent, out, seed, options, executor, image_format, agent_info) -> None:
    loop = asyncio.get_running_loop()
    fmt = image_format or getattr(agent, "image_format", "pil")
    url_cache: dict[int, str] = {}
    t = time.perf_counter()
    try:
        _, info = await loop.run_in_executor(executor, partial(env.reset, seed=seed, options=dict(options or {})))
    except Exception as exc:
        out.reset_s = time.perf_counter() - t
        out.error = f"reset failed: {type(exc).__name__}: {exc}"
        return
    out.reset_s = time.perf_counter() - t
    info_for_agent = {**info, **dict(agent_info or {})}
    info_for_agent.pop("delta", None)
    messages: list[dict[str, Any]] = [message_to_dict(m, fmt, url_cache) for m in info["delta"].messages]
    while True:
        t = time.perf_counter()
        try:
            turn = as_policy_turn(await agent.aact(messages, info_for_agent))
        except Exception as exc:
            out.agent_s += time.perf_counter() - t
            msg = str(exc) if isinstance(exc, AgentError) else f"{type(exc).__name__}: {exc}"
            out.error = f"agent error: {msg}"
            return
        out.agent_s += time.perf_counter() - t
        messages.append({"role": "assistant", "content": turn.text})
        t = time.perf_counter()
        try:
            _, reward, term, trunc, info = await loop.run_in_executor(executor, env.step, turn)
        except Exception as exc:  # an env bug: recorded against this episode
            out.error = f"env.step raised {type(exc).__name__}: {exc}"
            return
        finally:
            out.step_s.append(time.perf_counter() - t)
        out.info = info
        messages.extend(message_to_dict(m, fmt, url_cache) for m in info["delta"].messages)
        if term or trunc:
            out.reward = float(reward)
            out.episode = env.get_wrapper_attr("episode_record")()
            return

