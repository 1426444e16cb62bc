"""The RL trainer (the paper's stage 2): DAPO by default, any registered algorithm by name.

One training step, top to bottom, as in the DAPO paper's algorithm box:

  1. sample ``train_batch`` tasks                                  (TaskSampler, seeded, resumable)
  2. roll out G samples per task with the current policy           (RolloutEngine, token in/out)
  3. rewards from the env; overlong shaping on the policy's tokens (overlong_penalty)
  4. dynamic sampling: keep groups with 0 < #correct < G, stream new rounds until exactly
     ``train_batch`` groups are kept (groups never split, surplus episodes cancelled; at the
     round cap, train on what was kept, with a warning)
  5. group advantages                                              (group_advantages)
  6. old logprobs with the weights that sampled                    (+ rollout/trainer mismatch)
  7. ``ppo_epochs`` × mini-batches: clipped loss with clip-higher, token-level aggregation over
     the whole mini-batch, tool-output tokens masked; AdamW, warm-up, grad clipping
  8. log the diagnostics, checkpoint

The single-process path keeps policy and learner in one model object: the policy samples with
exactly the weights the learner just wrote (no sync needed); the Ray backend syncs them.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .algorithms import get_algorithm, group_advantages
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, write_json
from .metrics import MetricsLogger
from .optim import make_optimizer
from .rl_steps import (
    RLConfig,
    RLResult,
    TaskSampler,
    collect_groups,
    import_plugin,
    make_sampler,
    pad_to_sequence,
    rollout_metrics,
    shaped_rewards,
    token_logprobs_entropy,
    update_policy,
)

__all__ = ["RLConfig", "RLResult", "TaskSampler", "train_rl"]

log = logging.getLogger(__name__)


def train_rl(cfg: RLConfig) -> RLResult:
    """Run (or resume) RL training as configured; see the module doc for the loop."""
    import deepeyes_gym  # noqa: F401  (env ids)

    if not cfg.model:
        raise ValueError("RLConfig.model: give a model directory")
    for plugin in cfg.plugins:
        import_plugin(plugin)
    if cfg.backend == "ray":
        from .ray_backend import RayConfig, train_rl_ray

        return train_rl_ray(cfg, RayConfig(**cfg.ray))
    if cfg.backend != "local":
        raise ValueError(f"RLConfig.backend must be 'local' or 'ray', not {cfg.backend!r}")
    algo = get_algorithm(cfg.algorithm)
    algo = algo.with_overrides(**{k: v for k, v in (("clip_low", cfg.clip_low), ("clip_high", cfg.clip_high),
                                                     ("clip_c", cfg.clip_c), ("loss_agg", cfg.loss_agg)) if v is not None})
    torch.manual_seed(cfg.seed)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(cfg.deterministic or was_deterministic)
    try:
        return _train(cfg, algo)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _train(cfg: RLConfig, algo: Any) -> RLResult:
    import gymnasium as gym

    from ..agents.generation import SamplingParams
    from ..agents.hf import HFPolicy, logprob_mismatch, load_model
    from ..agents.render.images import load_image_processor
    from ..agents.render.qwen25vl import Qwen25VLRenderer
    from ..agents.rollout import RolloutEngine

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {**asdict(cfg), "resolved_algorithm": asdict(algo)})

    # ---------------------------------------------------------------- set-up
    from ..agents.tiny import model_dir as resolve_model

    ckpt = latest_checkpoint(out) if cfg.resume else None
    model_dir = ckpt / "model" if ckpt else resolve_model(cfg.model)
    model = load_model(model_dir, device=cfg.device)
    model.eval()  # no dropout anywhere: sampling and training see the same function
    from transformers import AutoTokenizer

    proc, spec = load_image_processor(model_dir) if getattr(model.config, "vision_config", None) is not None else (None, None)
    policy = HFPolicy(model, AutoTokenizer.from_pretrained(model_dir), proc, spec)
    renderer = Qwen25VLRenderer.from_pretrained(model_dir, max_pixels=cfg.max_pixels,
                                                episode_max_pixels=cfg.episode_max_pixels)
    env_kwargs, probe, sampler = make_sampler(cfg)
    sampling = SamplingParams(max_tokens=cfg.max_turn_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    probe.get_wrapper_attr("prewarm")(cfg.concurrency, 60.0)  # a step's first resets find workers ready
    engine = RolloutEngine([probe] + [gym.make(cfg.env_id, **env_kwargs) for _ in range(cfg.concurrency - 1)],
                           policy, renderer, max_concurrency=cfg.concurrency,
                           max_response_tokens=cfg.max_response_tokens, sampling=sampling,
                           episode_timeout_s=cfg.episode_timeout_s)
    opt, sched = make_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas),
                                total_steps=cfg.steps, warmup_steps=cfg.warmup_steps, schedule="constant")
    update_gen = torch.Generator().manual_seed(cfg.seed)
    step = 0
    if ckpt is not None:
        state = load_checkpoint(ckpt, opt, sched, {"update": update_gen})
        step, sampler.position = state["step"], int(state["extra"]["sampler_position"])
        log.info("resumed from %s at step %d", ckpt, step)
    metrics = MetricsLogger(out, sinks=cfg.log_to, run_name=out.name, config=asdict(cfg))
    bar = _bar(cfg, step)
    losses: list[float] = []
    history: list[dict[str, Any]] = []

    def save() -> None:
        save_checkpoint(out, step, model, opt, sched, model_src=model_dir, generators={"update": update_gen},
                        extra={"sampler_position": sampler.position})

    def finish_step(row: dict[str, Any]) -> None:
        history.append(row)
        metrics.log(step, row)
        if bar is not None:
            bar.set_postfix({"reward": f"{row['reward']:.3f}", "acc": f"{row['accuracy']:.3f}",
                             "tools": f"{row['tool_calls_per_traj']:.2f}"}, refresh=False)
            bar.update(1)
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
            save()

    try:
        while step < cfg.steps:
            t_step = time.perf_counter()
            # 1–4. tasks → rollouts (G each) → rewards → dynamic sampling
            t0 = time.perf_counter()
            batch = asyncio.run(collect_groups(
                engine, sampler, target=cfg.train_batch, group_size=cfg.group_size,
                gen_batch=cfg.gen_batch or cfg.train_batch, max_rounds=cfg.max_gen_rounds,
                dynamic=algo.dynamic_sampling, seed=int(np.random.SeedSequence([cfg.seed, step]).generate_state(1)[0])))
            gen_s = time.perf_counter() - t0
            trajs = [t for g in batch.groups for t in g]
            row = rollout_metrics(batch, gen_s, cfg)
            if row["tool_collapse"]:
                log.warning("tool-use collapse alarm: only %.0f%% of trajectories called a tool (threshold %.0f%%)",
                            100 * row["tool_use_rate"], 100 * cfg.tool_collapse_threshold)
            if not trajs:
                log.warning("step %d: no group was kept; skipping the update", step)
                step += 1
                finish_step(row)  # the sampler moved on: a resume must not replay these tasks
                continue
            # 3 + 5. overlong shaping, then group advantages
            rewards = torch.tensor(shaped_rewards(trajs, cfg, algo.overlong_shaping))
            adv = group_advantages(rewards, cfg.group_size, algo.advantage)
            # 6. old logprobs with the weights that sampled; how far the sampler's were
            t0 = time.perf_counter()
            with torch.no_grad():
                old = [token_logprobs_entropy(model, t)[0].cpu() for t in trajs]
            full_mask = [torch.tensor(pad_to_sequence(t, t.response_mask)) for t in trajs]
            roll = [torch.tensor(pad_to_sequence(t, t.logprobs), dtype=torch.float32) for t in trajs]
            mm = logprob_mismatch(torch.cat(roll), torch.cat(old), torch.cat(full_mask))
            row.update({"mismatch_mean_abs": mm["mean_abs"], "mismatch_max_abs": mm["max_abs"],
                        "mismatch_kl": mm["kl_k3"], "shaped_reward": float(rewards.mean()),
                        "adv_abs_mean": float(adv.abs().mean())})
            # 7. updates
            upd = update_policy(model, opt, trajs, adv, old, cfg, algo, update_gen)
            sched.step()
            row.update(upd)
            row["time/update_s"] = time.perf_counter() - t0
            row["time/step_s"] = time.perf_counter() - t_step
            row["lr"] = sched.get_last_lr()[0]
            step += 1
            losses.append(upd["loss"])
            # 8. log, checkpoint
            finish_step(row)
        save()
    finally:
        metrics.close()
        engine.close()
        policy.close()
        if bar is not None:
            bar.close()
    return RLResult(out, step, losses, history)


def _bar(cfg: RLConfig, initial: int):
    if not cfg.progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=cfg.steps, initial=initial, desc=f"{cfg.algorithm}", unit="step", dynamic_ncols=True)
