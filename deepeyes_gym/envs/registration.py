"""Env ids: ``import deepeyes_gym`` registers them with Gymnasium."""

from __future__ import annotations

from typing import Any

from gymnasium.envs.registration import register, registry

__all__ = ["ENV_IDS", "register_envs", "make_toy_env"]

ENV_IDS: dict[str, str] = {}


def make_toy_env(n_tasks: int = 12, seed: int = 0, **kwargs: Any):
    from .core import V1_TOOLS, DeepEyesEnv
    from .suites.builtin import toy_tasks

    kwargs.setdefault("tools", ("python",))
    return DeepEyesEnv(toy_tasks(n_tasks, seed), **kwargs)


def make_v1_env(n_tasks: int = 12, seed: int = 0, **kwargs: Any):
    from .core import V1_TOOLS, DeepEyesEnv
    from .suites.builtin import toy_tasks

    kwargs.setdefault("tools", V1_TOOLS)
    return DeepEyesEnv(toy_tasks(n_tasks, seed), **kwargs)


_SPECS = {
    "DeepEyes-Toy-v0": ("deepeyes_gym.envs.registration:make_toy_env", "tiny in-code suite, code tool"),
    "DeepEyes-V1-Toy-v0": ("deepeyes_gym.envs.registration:make_v1_env", "tiny suite, DeepEyes v1 zoom/rotate tools"),
}


def register_envs() -> None:
    for env_id, (entry, doc) in _SPECS.items():
        ENV_IDS[env_id] = doc
        if env_id not in registry:
            register(id=env_id, entry_point=entry)
