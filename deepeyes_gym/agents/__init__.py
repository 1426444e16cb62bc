"""Agents: policies that, given the conversation so far, return the next assistant turn.

Agents are looked up by name (the CLI's ``--agent``) and imported lazily, so a heavy client
(an HTTP session pool, an in-process engine) is only loaded when asked for::

    from deepeyes_gym.agents import make_agent
    agent = make_agent("openai", model="Qwen2.5-VL-7B-Instruct", base_url="http://localhost:8000/v1")
"""

from __future__ import annotations

from typing import Any, Callable

from ..registry import Registry
from .base import Agent, Message

__all__ = [
    "Agent",
    "Message",
    "AgentError",
    "AgentUnavailable",
    "register_agent",
    "make_agent",
    "available_agents",
    "agent_description",
]


class AgentError(RuntimeError):
    """An agent could not produce a turn for one episode (server down, bad response ...).

    The benchmark runner records the episode as errored with this message and goes on.
    """


class AgentUnavailable(ImportError):
    """A registered agent cannot be loaded on this install (module missing, extra not installed)."""


# name -> (factory or lazy "module:attr", one-line description)
_AGENTS: Registry[Agent] = Registry("agent", {
    "scripted": (
        "deepeyes_gym.agents.scripted:ScriptedAgent",
        "per-family scripted solvers that use the tools and read their outputs (the first baseline)",
    ),
    "glance": (
        "deepeyes_gym.agents.scripted:GlanceAgent",
        "no tools: answers at once from a downscaled view of the image (what a VLM sees) plus guesses",
    ),
    "direct": (
        "deepeyes_gym.agents.baselines:DirectAnswerAgent",
        "answers at once without any tool (a plausible guess; measures tool necessity)",
    ),
    "random": (
        "deepeyes_gym.agents.baselines:RandomAgent",
        "random turns from the action space: code, tool calls, malformed text, answers",
    ),
    "openai": (
        "deepeyes_gym.agents.openai:OpenAIAgent",
        "any OpenAI-compatible chat endpoint (vllm serve, SGLang, hosted APIs); needs model=...",
    ),
    "hf": (
        "deepeyes_gym.agents.hf:HFAgent",
        "in-process Hugging Face transformers model (Qwen2.5-VL or Qwen2) from a local dir; needs model=DIR",
    ),
    "vllm": (
        "deepeyes_gym.agents.vllm:VLLMAgent",
        "in-process vLLM engine (token ids in and out, prefix caching) from a local dir; needs model=DIR",
    ),
})


def register_agent(
    name: str, factory: str | Callable[..., Agent], description: str = "", *, overwrite: bool = False
) -> None:
    """Register an agent factory: an Agent subclass, a callable, or a lazy ``"module:attr"``."""
    _AGENTS.register(name, factory, description, overwrite=overwrite)


def available_agents() -> list[str]:
    return _AGENTS.names()


def agent_description(name: str) -> str:
    return _AGENTS.description(name)


def _resolve(name: str) -> Callable[..., Agent]:
    spec = _AGENTS.spec(name)
    try:
        return _AGENTS.resolve(name)
    except ModuleNotFoundError as exc:
        module = str(spec).split(":")[0]
        if exc.name == module:  # the agent's own module is missing, not one of its imports
            raise AgentUnavailable(
                f"the {name!r} agent is not available in this install: module {module} does not "
                f"exist yet (registered as {spec!r})"
            ) from exc
        raise AgentUnavailable(
            f"the {name!r} agent needs the package {exc.name!r}, which is not installed"
        ) from exc
    except AttributeError:
        module, attr = str(spec).split(":")
        raise AgentUnavailable(f"the {name!r} agent is not available: {module} has no {attr!r}") from None


def make_agent(name: str, **kwargs: Any) -> Agent:
    """Build a registered agent by name; ``kwargs`` go to its constructor."""
    factory = _resolve(name)
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise TypeError(f"cannot build agent {name!r} with {sorted(kwargs)}: {exc}") from exc
