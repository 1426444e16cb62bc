"""Shared pieces of the Ray tests: a reward with spread, the tiny RL config, the rollout-worker
spec, and a one-process learner stand-in for sync tests. (The local cluster is conftest's
``ray_cluster`` fixture.)"""

from __future__ import annotations

import asyncio

import ray
import torch

from deepeyes_gym.agents.tiny import tiny_qwen25vl_dir
from deepeyes_gym.envs.rewards.base import RewardResult
from deepeyes_gym.trainers.ray_backend.workers import WorkerSpec
from deepeyes_gym.trainers.rl import RLConfig


def parity_reward(episode):
    """Half the samples right (the parity of the first turn's length): most groups get an advantage."""
    acc = float(len(episode.turns[0].action) % 2 == 0) if episode.turns else 0.0
    return RewardResult(2 * acc - 1, {"accuracy": acc, "format_ok": acc > 0})


def config(tmp_path, name, model=None, **kw):
    base = dict(model=str(model or tiny_qwen25vl_dir()), out_dir=str(tmp_path / name), env_id="DeepEyes-Toy-v0",
                env_kwargs={"reward": parity_reward}, train_batch=2, group_size=4, mini_batch=4, steps=2,
                max_response_tokens=64, max_turn_tokens=10, max_turns=2, overlong_buffer=32, concurrency=4,
                lr=3e-4, warmup_steps=1, deterministic=True, save_every=0, progress=False)
    base.update(kw)
    return RLConfig(**base)


def worker_spec(model, backend="hf", **kw):
    return WorkerSpec(model_dir=str(model), env_id="DeepEyes-Toy-v0", env_kwargs={"reward": parity_reward, "max_turns": 2},
                      backend=backend, concurrency=2, max_response_tokens=48, max_turn_tokens=8, temperature=1.0,
                      top_p=1.0, episode_timeout_s=120.0, vllm_kwargs=kw)


class OneRankLearner:
    """A learner-group stand-in holding an HF model in the driver (enough to test sync and probe)."""

    def __init__(self, model_dir):
        from deepeyes_gym.agents.hf import load_model

        self.model, self.version = load_model(model_dir, device="cpu"), 0

    async def state_dict_ref(self):
        return ray.put({k: v.detach().clone() for k, v in self.model.state_dict().items()})

    async def probe_logprobs(self, ids, n_last):
        from deepeyes_gym.agents.hf import sequence_logprobs

        with torch.no_grad():
            lp = sequence_logprobs(self.model, torch.tensor(ids), None, torch.ones(len(ids)))
        return lp[len(ids) - n_last:].tolist()

    def perturb(self):
        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(torch.randn_like(p) * 1e-2)
        self.version += 1


def probe_ids(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))("a fixed probe prompt")["input_ids"]


def collect_with_a_kill(engine, tasks, n_samples, seed, actor):
    """Collect ``tasks`` × ``n_samples`` episodes, killing ``actor`` (Ray restarts it) once the first
    episode is in, so the others are mid-flight; returns (episodes, how many were re-submitted)."""
    async def run():
        rollout = engine.start(tasks, n_samples, seed=seed)
        got = []
        async for t in rollout:
            got.append(t)
            if len(got) == 1:
                ray.kill(actor, no_restart=False)
        return got, rollout.resubmitted

    return asyncio.run(run())
