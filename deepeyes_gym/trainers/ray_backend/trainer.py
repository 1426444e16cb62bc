"""The RL loop on Ray: rl.py's method (task sampling, dynamic sampling, shaping, advantages,
the sharded ``_update``), with rollouts on :mod:`.workers`, updates on :mod:`.learner` and
weight sync by :mod:`.sync`.

Synchronous mode: collect step k with weights v_k, update to v_{k+1}, sync, check, repeat (the
same seeds give the single-process trainer's trajectories and, within float rounding of the
all-reduce, its losses). Async mode: the collection of step k+1 (with v_k) runs while step k
updates; the sync follows both, so a trajectory is one version stale; ``max_staleness`` drops any
group staler than the bound, and the learner refuses one as a last guard.

A learner rank that dies or hangs is absorbed by the learner group (rebuilt from its last
checkpoint, the updates since replayed, the call re-run; ``max_learner_restarts``): each step
is trained and logged once, and after a rebuild the workers are pushed the weights and
probe-checked again before they sample.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..algorithms import get_algorithm, group_advantages
from ..checkpoint import latest_checkpoint, write_json
from ..metrics import MetricsLogger
from ..rl_steps import RLConfig, RLResult, StepBatch, collect_groups, import_plugin, make_sampler, rollout_metrics
from ..rl_steps import shaped_rewards
from .config import RayConfig

__all__ = ["train_rl_ray", "fresh_groups"]

log = logging.getLogger(__name__)

PROBE_TEXT = "The probe: a fixed prompt whose greedy continuation every worker must score like the learner."


def train_rl_ray(cfg: RLConfig, ray_cfg: RayConfig | None = None) -> RLResult:
    """Run (or resume) RL training on Ray. Joins ``ray_cfg.address`` or the running cluster; with
    neither, starts a local one and shuts it down at the end."""
    import ray

    import deepeyes_gym  # noqa: F401  (env ids)

    from ...agents.tiny import model_dir

    ray_cfg = ray_cfg or RayConfig()
    if not cfg.model:
        raise ValueError("RLConfig.model: give a model directory")
    cfg = replace(cfg, model=str(model_dir(cfg.model)))  # "tiny": built here once, read by every actor
    for plugin in cfg.plugins:
        import_plugin(plugin)
    algo = get_algorithm(cfg.algorithm)
    algo = algo.with_overrides(**{k: v for k, v in (("clip_low", cfg.clip_low), ("clip_high", cfg.clip_high),
                                                     ("clip_c", cfg.clip_c), ("loss_agg", cfg.loss_agg)) if v is not None})
    if ray_cfg.async_mode and cfg.tis_cap is None:
        log.warning("async mode without tis_cap: the one-version-stale sampler is not importance-corrected")
    started = not ray.is_initialized()
    if started:
        ray.init(address=ray_cfg.address, num_cpus=None if ray_cfg.address else ray_cfg.num_cpus,
                 include_dashboard=False, log_to_driver=False)
    try:
        return asyncio.run(_train(cfg, ray_cfg, algo))
    finally:
        if started:
            ray.shutdown()


def fresh_groups(groups: list[list[Any]], version: int, bound: int) -> tuple[list[list[Any]], int]:
    """Groups whose every trajectory is at most ``bound`` versions behind ``version``; and how many were dropped."""
    keep = [g for g in groups if all(version - t.weight_version <= bound for t in g)]
    return keep, len(groups) - len(keep)


async def _train(cfg: RLConfig, ray_cfg: RayConfig, algo: Any) -> RLResult:
    from transformers import AutoTokenizer

    from .learner import LearnerGroup
    from .sync import WeightSync
    from .workers import RayRolloutEngine, WorkerPool, WorkerSpec

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {**asdict(cfg), "ray": asdict(ray_cfg), "resolved_algorithm": asdict(algo)})
    env_kwargs, probe_env, sampler = make_sampler(cfg)
    spec = WorkerSpec(model_dir=cfg.model, env_id=cfg.env_id, env_kwargs=env_kwargs, backend=ray_cfg.rollout_backend,
                      concurrency=ray_cfg.worker_concurrency or max(1, -(-cfg.concurrency // ray_cfg.rollout_workers)),
                      max_response_tokens=cfg.max_response_tokens, max_turn_tokens=cfg.max_turn_tokens,
                      temperature=cfg.temperature, top_p=cfg.top_p, episode_timeout_s=cfg.episode_timeout_s,
                      vllm_kwargs=dict(ray_cfg.vllm_kwargs), plugins=tuple(cfg.plugins), sleep=ray_cfg.sleep_engines)
    pool = learners = metrics = None
    try:
        learners = LearnerGroup(cfg.model, cfg, algo, ray_cfg)  # its ranks start while the workers do
        pool = WorkerPool(spec, ray_cfg.rollout_workers, num_cpus=ray_cfg.cpus_per_rollout_worker,
                          num_gpus=ray_cfg.gpus_per_rollout_worker, max_restarts=ray_cfg.max_restarts,
                          env_vars=ray_cfg.env_vars, timeout_s=ray_cfg.sync_timeout_s,
                          env_workers=ray_cfg.env_workers, cpus_per_env_worker=ray_cfg.cpus_per_env_worker,
                          envs_per_env_worker=ray_cfg.envs_per_env_worker)
        await learners.ready()
        step = 0
        ckpt = latest_checkpoint(out) if cfg.resume else None
        if ckpt is not None:
            extra = await learners.load(str(ckpt))
            step, sampler.position = int(extra["step"]), int(extra["sampler_position"])
            log.info("resumed from %s at step %d (weights v%d)", ckpt, step, learners.version)
        probe_ids = AutoTokenizer.from_pretrained(cfg.model)(PROBE_TEXT)["input_ids"]
        sync = WeightSync(learners, pool, probe_ids, timeout_s=ray_cfg.sync_timeout_s, probe_tol=ray_cfg.probe_tol,
                          probe_tokens=ray_cfg.probe_tokens, transport=ray_cfg.weight_transport,
                          backend=ray_cfg.dist_backend, bucket_mb=ray_cfg.weight_bucket_mb)

        async def sync_workers(push: bool = True) -> float:
            """Push the learner's weights and probe-check every worker; again while the learner group
            was rebuilt meanwhile (the workers must hold what the rebuilt group holds)."""
            while True:
                restarts = learners.restarts
                if push:
                    await sync.push(learners.version)
                probe = await sync.verify()
                if learners.restarts == restarts:
                    return probe
                push = True

        await sync_workers(push=bool(learners.version))  # the workers start from the learner's weights
        engine = RayRolloutEngine(pool, max_episode_retries=ray_cfg.max_episode_retries)
        metrics = MetricsLogger(out, sinks=cfg.log_to, run_name=out.name, config=asdict(cfg))
        bound = ray_cfg.max_staleness if ray_cfg.async_mode else 0
        losses: list[float] = []
        history: list[dict[str, Any]] = []

        async def collect(k: int) -> tuple[StepBatch, float, int]:
            t = time.perf_counter()
            b = await collect_groups(engine, sampler, target=cfg.train_batch, group_size=cfg.group_size,
                                     gen_batch=cfg.gen_batch or cfg.train_batch, max_rounds=cfg.max_gen_rounds,
                                     dynamic=algo.dynamic_sampling,
                                     seed=int(np.random.SeedSequence([cfg.seed, k]).generate_state(1)[0]))
            return b, time.perf_counter() - t, sampler.position

        batch, gen_s, position = await collect(step)
        warned_sleep = False
        while step < cfg.steps:
            t_step = time.perf_counter()
            row = rollout_metrics(batch, gen_s, cfg)
            groups, n_stale = fresh_groups(batch.groups, learners.version, bound)
            row["stale_groups_dropped"] = n_stale
            trajs = [t for g in groups for t in g]
            nxt = asyncio.create_task(collect(step + 1)) if ray_cfg.async_mode and step + 1 < cfg.steps else None
            t0 = time.perf_counter()
            if trajs:
                rewards = torch.tensor(shaped_rewards(trajs, cfg, algo.overlong_shaping))
                adv = group_advantages(rewards, cfg.group_size, algo.advantage)
                row.update({"shaped_reward": float(rewards.mean()), "adv_abs_mean": float(adv.abs().mean())})
                slept = await pool.all("sleep") if ray_cfg.sleep_engines else []  # colocated: free their memory
                if not all(slept) and not warned_sleep:
                    warned_sleep = True
                    log.warning("sleep_engines: %d of %d rollout engines cannot sleep on this platform (CPU, or "
                                "vLLM without CUDA); they stay up during updates", slept.count(False), len(slept))
                try:
                    upd = await learners.update(trajs, adv, bound)
                finally:
                    if any(slept):
                        await pool.all("wake_up")
                row["engines_slept"] = sum(slept)
                row.update(upd)
                row["time/update_s"] = time.perf_counter() - t0
            else:
                log.warning("step %d: no group was kept; skipping the update", step)
            if nxt is not None:
                batch, gen_s, position_next = await nxt  # generated with the pre-update weights
            if trajs:
                t0 = time.perf_counter()
                row["probe_max_abs"] = await sync_workers()
                row["weight_version"] = learners.version
                row["time/sync_s"] = time.perf_counter() - t0
            step += 1
            row["learner_restarts"] = learners.restarts
            row["time/step_s"] = time.perf_counter() - t_step
            metrics.log(step, row)
            if trajs:
                losses.append(row["loss"])
                history.append(row)
            if step < cfg.steps and cfg.save_every and step % cfg.save_every == 0 or step == cfg.steps:
                # the sampler position of the tasks trained so far (an async pre-fetched batch re-runs on resume)
                name = f"checkpoint-{step:06d}"
                restarts = learners.restarts
                await learners.save(str(out / name), {"step": step, "sampler_position": position})
                (out / "latest").write_text(name)
                if learners.restarts != restarts:  # rebuilt during the save: resync the workers
                    await sync_workers()
            if nxt is not None:
                position = position_next
            elif step < cfg.steps:
                batch, gen_s, position = await collect(step)
        return RLResult(out, step, losses, history)
    finally:
        if metrics is not None:
            metrics.close()
        if learners is not None:
            learners.close()
        if pool is not None:
            pool.close()
        probe_env.close()
