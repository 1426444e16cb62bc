"""Every deepeyes_gym env id in Ray Tune's registry, so RLlib/Tune find them by name.

What RLlib can drive: the env itself (``reset``/``step``, Gymnasium API, one env per RLlib env
runner, ``env_config`` passed as ``gym.make`` kwargs). What it cannot: its models and
connectors expect Box/Discrete-style spaces; here the action space is a ``TurnSpace`` (a whole
assistant turn of text, up to megabytes) and observations are ``{"text", "images"}`` dicts of
unbounded size. RLlib's default models, action distributions and replay buffers cannot
sample, batch or score text actions, so an LLM policy must be a custom RLModule that owns the
tokenizer and generation (and its logprobs come from the LLM, not an RLlib distribution). For
LLM RL use this package's trainer (``RLConfig.backend = "ray"``); the registration serves Tune
sweeps over env settings, evaluation runners and custom RLModules.
"""

from __future__ import annotations

__all__ = ["register_with_ray", "env_ids"]


def env_ids() -> list[str]:
    """The Gymnasium ids this package registers."""
    import gymnasium as gym

    import deepeyes_gym  # noqa: F401  (registers the ids)

    return sorted(k for k in gym.registry if k.startswith("DeepEyes-"))


def register_with_ray() -> list[str]:
    """``ray.tune.register_env`` for every env id (``env_config`` -> ``gym.make`` kwargs); returns the ids."""
    from ray.tune import register_env

    ids = env_ids()
    for env_id in ids:
        register_env(env_id, _creator(env_id))
    return ids


def _creator(env_id: str):
    def make(env_config: dict | None = None):
        import gymnasium as gym

        import deepeyes_gym  # noqa: F401  (in a fresh Ray worker process)

        return gym.make(env_id, **dict(env_config or {}))

    return make
