"""The RL trainer on Ray: rollout actors (HF or vLLM) with their envs, a DeepSpeed learner group,
versioned and probe-checked weight sync, worker restarts, and an async (one-step-off) mode.
Needs ``ray[default]`` and ``deepspeed``; imported only when used."""

from .config import RayConfig
from .registry import env_ids, register_with_ray
from .sync import StaleWeightsError, SyncTimeoutError, WeightSync
from .trainer import fresh_groups, train_rl_ray

__all__ = ["RayConfig", "train_rl_ray", "fresh_groups", "register_with_ray", "env_ids", "WeightSync",
           "StaleWeightsError", "SyncTimeoutError"]
