"""Plug in your own reward: a plain function of the finished episode.

A reward is any callable ``episode -> RewardResult | float``. Here: the default ``realx`` reward
(accuracy minus a format penalty) minus a small cost for every tool call beyond the second, so a
policy learns to use tools when they help and not out of habit. It is registered under a name
(usable as ``gym.make(..., reward="frugal")`` and from the CLI as ``--env-arg reward=frugal``),
then the scripted baseline is evaluated under both rewards on the same tasks.

    python examples/custom_reward.py [--limit 30]
"""

from __future__ import annotations

import argparse
import tempfile

import gymnasium as gym
import numpy as np

import deepeyes_gym  # noqa: F401  (registers the env ids)
from deepeyes_gym.benchmarks import RunConfig, run_eval
from deepeyes_gym.envs.episode import Episode
from deepeyes_gym.envs.rewards import RewardResult, register_reward, resolve_reward

BASE = resolve_reward("realx")


def frugal(episode: Episode, *, free_calls: int = 2, cost: float = 0.05) -> RewardResult:
    """``realx`` minus ``cost`` per tool call beyond ``free_calls``; the breakdown says why."""
    base = BASE(episode)
    extra = max(0, len(episode.tool_turns) - free_calls)
    breakdown = dict(base.breakdown, tool_calls=len(episode.tool_turns), tool_cost=cost * extra)
    return RewardResult(base.value - cost * extra, breakdown)


# a factory: reward_kwargs= (or --env-arg reward_kwargs='{"cost": 0.1}') reach it
register_reward("frugal", lambda free_calls=2, cost=0.05: lambda ep: frugal(ep, free_calls=free_calls, cost=cost))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="DeepEyes-RealX-v0")
    ap.add_argument("--limit", type=int, default=30)
    args = ap.parse_args()

    # 1. the reward inside a plain Gymnasium loop: the breakdown arrives in the last info
    env = gym.make(args.env, reward="frugal")
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step("<think>I guess.</think><answer>42</answer>")
    print(f"one-step episode: reward={reward} breakdown={info['reward_breakdown']}\n")
    env.close()

    # 2. the scripted baseline under both rewards, same tasks
    means = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("realx", "frugal"):
            res = run_eval(RunConfig(env_id=args.env, agent="scripted", out_dir=f"{tmp}/{name}", limit=args.limit,
                                     env_kwargs={"reward": name}, save_images=False, progress=False))
            rewards = [r["reward"] for r in res.records if r["status"] == "ok"]
            calls = [r["reward_breakdown"].get("tool_calls") for r in res.records]
            means[name] = (float(np.mean(rewards)), float(np.mean([r["accuracy"] for r in res.records])))
            if name == "frugal":
                print(f"tool calls per episode under 'frugal': {np.mean([c for c in calls if c is not None]):.2f}")
    print("| reward | mean reward | accuracy |\n|---|---:|---:|")
    for name, (mean, acc) in means.items():
        print(f"| {name} | {mean:.3f} | {100 * acc:.1f}% |")


if __name__ == "__main__":
    main()
