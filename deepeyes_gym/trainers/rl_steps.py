"""The pieces of an RL step that the single-process trainer (``rl.py``) and the Ray trainer
(``ray_backend``) share: the config, task sampling, group collection with dynamic sampling, reward
shaping, the per-sequence loss and the update, and the step's diagnostics."""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .algorithms import entropy_from_logits, filter_groups, overlong_penalty, policy_loss, truncated_is_weights

__all__ = [
    "RLConfig", "RLResult", "TaskSampler", "StepBatch", "make_sampler", "collect_groups", "shaped_rewards",
    "rollout_metrics", "tool_metrics", "sequence_loss", "update_policy", "token_logprobs_entropy",
    "pad_to_sequence", "import_plugin", "nanmean",
]

log = logging.getLogger(__name__)


@dataclass
class RLConfig:
    """RL with DAPO (or another registered algorithm). Defaults are the DeepEyesV2 / DAPO papers'
    values; the shipped CPU config shrinks the sizes, not the method."""

    model: str = ""
    """Model directory (Hugging Face checkpoint; the cold-start SFT output for stage 2); "tiny"
    builds a random-weight Qwen2.5-VL on the spot (smoke runs)."""
    out_dir: str = "runs/rl"
    """Checkpoints, metrics.jsonl, curves."""
    env_id: str = "DeepEyes-RealX-Train-v0"
    """Env id whose tasks are trained on (its `tasks`: a suite or an unbounded stream)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Env constructor settings (reward preset, tools, max_turns ...)."""
    task_indices: list[int] | None = None
    """Train only on these task indices (e.g. curation's RL pool); None: all of them."""
    task_file: str | None = None
    """A curation rl_tasks.json whose task_indices to use (overrides task_indices)."""
    algorithm: str = "dapo"
    """Registered algorithm: dapo, grpo, drgrpo, ppo, rloo, reinforce_pp, or your own."""
    plugins: list[str] = field(default_factory=list)
    """Modules or .py files imported first, so that they register algorithms, rewards or tools."""
    clip_low: float | None = None
    """ε_low (None: the algorithm's; DAPO 0.2)."""
    clip_high: float | None = None
    """ε_high, clip-higher (None: the algorithm's; DAPO 0.28, DeepEyesV2 0.30)."""
    clip_c: float | None = None
    """Dual-clip constant for negative advantages (None: the algorithm's)."""
    loss_agg: str | None = None
    """token-mean | seq-mean-token-mean | seq-mean-token-sum (None: the algorithm's)."""
    train_batch: int = 256
    """Groups (tasks) per training step (DeepEyesV2: 256)."""
    group_size: int = 16
    """Samples per task, G (DeepEyesV2: 16)."""
    gen_batch: int | None = None
    """Tasks per generation round (None: train_batch); over-sample to fill faster."""
    max_gen_rounds: int = 10
    """Dynamic sampling's cap on generation rounds per step (<= 0: unlimited)."""
    mini_batch: int = 512
    """Trajectories per optimizer update (DAPO: 512 responses)."""
    ppo_epochs: int = 1
    """Passes over each step's batch."""
    lr: float = 1e-6
    """AdamW learning rate (DeepEyesV2: 1e-6)."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_steps: int = 10
    """Linear warm-up of the learning rate, in optimizer updates."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""
    max_response_tokens: int = 16384
    """Budget of an episode's response: sampled + tool tokens (DeepEyesV2: 16384)."""
    max_turn_tokens: int = 4096
    """At most this many tokens sampled per turn."""
    max_turns: int = 9
    """Assistant turns per episode (DeepEyesV2: 9)."""
    max_pixels: int | None = None
    """Per-image pixel cap before rendering (None: the image processor's; Qwen2.5-VL 12.8M)."""
    episode_max_pixels: int | None = None
    """Pixel budget over all images of one episode (None: unbounded)."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling."""
    overlong_buffer: int = 4096
    """L_cache of the soft overlong penalty (0: off); L_max = max_response_tokens."""
    overlong_factor: float = 1.0
    """Scale of the overlong penalty."""
    tis_cap: float | None = None
    """Truncated importance-sampling cap C for the rollout/trainer mismatch (None: off)."""
    tool_collapse_threshold: float = 0.1
    """Warn when fewer than this fraction of trajectories call any tool (the collapse alarm)."""
    steps: int = 100
    """Training steps."""
    concurrency: int = 64
    """Episodes running at once."""
    episode_timeout_s: float | None = 600.0
    """Wall-time bound of one episode."""
    seed: int = 0
    """Seed of tasks, sampling and torch."""
    deterministic: bool = False
    """Bitwise-repeatable losses on CPU (torch deterministic algorithms)."""
    save_every: int = 10
    """Checkpoint every N steps (and at the end)."""
    resume: bool = False
    """Continue from out_dir's latest checkpoint."""
    log_to: list[str] = field(default_factory=list)
    """Extra metric sinks: tensorboard, wandb."""
    progress: bool = True
    """A progress bar on the console."""
    device: str | None = None
    """cpu, cuda, ... (None: cuda when available)."""
    backend: str = "local"
    """local: one process; ray: rollout actors, env workers and a DeepSpeed or FSDP2 learner group (settings in `ray`)."""
    ray: dict[str, Any] = field(default_factory=dict)
    """RayConfig fields (trainers/ray_backend/config.py) when backend is ray."""


@dataclass
class RLResult:
    out_dir: Path
    steps: int
    losses: list[float]
    history: list[dict[str, Any]]


class TaskSampler:
    """Serves tasks for training: without replacement through a seeded permutation per epoch
    (finite suites) or along the stream (unbounded ones). ``position`` is the resumable state."""

    def __init__(self, tasks: Any, indices: Sequence[int] | None, seed: int):
        self.tasks, self.seed, self.position = tasks, seed, 0
        finite = hasattr(tasks, "__len__")
        self.indices = list(indices) if indices is not None else (list(range(len(tasks))) if finite else None)
        if self.indices is not None and not self.indices:
            raise ValueError("no tasks to train on")

    def _index(self, k: int) -> int:
        if self.indices is None:
            return k
        epoch, i = divmod(k, len(self.indices))
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.indices))
        return self.indices[int(perm[i])]

    def next(self, n: int) -> list[tuple[int, Any]]:
        """The next ``n`` (index, task) pairs, distinct within the call where the pool allows."""
        out: list[tuple[int, Any]] = []
        seen: set[int] = set()
        limit = len(self.indices) if self.indices is not None else n
        while len(out) < min(n, limit):
            idx = self._index(self.position)
            self.position += 1
            if idx not in seen:
                seen.add(idx)
                out.append((idx, self.tasks[idx]))
        return out


def make_sampler(cfg: RLConfig) -> tuple[dict[str, Any], Any, TaskSampler]:
    """(env kwargs, a first env, the task sampler) for a config: tasks from the env id's suite,
    restricted to ``task_indices`` or the curation file ``task_file``."""
    import json

    import gymnasium as gym

    # The engine reads info["delta"], never the reset observation: skip its per-sample image copy.
    env_kwargs = {"max_turns": cfg.max_turns, "copy_reset_images": False, **cfg.env_kwargs}
    env = gym.make(cfg.env_id, **env_kwargs)
    indices = cfg.task_indices
    if cfg.task_file:
        indices = json.loads(Path(cfg.task_file).read_text())["task_indices"]
    return env_kwargs, env, TaskSampler(env.get_wrapper_attr("tasks"), indices, cfg.seed)


@dataclass
class StepBatch:
    groups: list[list[Any]]  # accepted groups of trajectories, in task order
    rounds: int = 0
    n_groups_seen: int = 0
    n_filtered: int = 0
    n_failed_groups: int = 0
    trajectories_seen: list[Any] = field(default_factory=list)


def shaped_rewards(trajs: Sequence[Any], cfg: RLConfig, shaping: bool) -> list[float]:
    rewards = [float(t.reward) for t in trajs]
    if shaping and cfg.overlong_buffer > 0:
        pen = overlong_penalty(torch.tensor([t.n_sampled for t in trajs]), cfg.max_response_tokens,
                               min(cfg.overlong_buffer, cfg.max_response_tokens), cfg.overlong_factor)
        rewards = [r + float(p) for r, p in zip(rewards, pen)]
    return rewards


async def collect_groups(engine: Any, sampler: TaskSampler, *, target: int, group_size: int, gen_batch: int,
                         max_rounds: int, dynamic: bool, seed: int) -> StepBatch:
    """Roll out rounds of ``gen_batch`` tasks × G until ``target`` groups are accepted.

    Groups are decided in task order (a group waits for the ones before it), so the kept set does
    not depend on which episode happened to finish first: runs are reproducible. A group with a
    failed episode is dropped whole; with ``dynamic``, so is a group whose accuracies are all
    equal. Once the target is reached the round's unfinished episodes are cancelled.
    """
    out = StepBatch(groups=[])
    while len(out.groups) < target and (max_rounds <= 0 or out.rounds < max_rounds):
        picked = sampler.next(gen_batch)
        if not picked:
            break
        tasks = [t for _, t in picked]
        run = engine.start(tasks, group_size, seed=int(np.random.SeedSequence([seed, out.rounds]).generate_state(1)[0]))
        out.rounds += 1
        order = [str(t.id) for t in tasks]
        done: dict[str, list[Any]] = {k: [] for k in order}
        cursor = 0
        async for traj in run:
            out.trajectories_seen.append(traj)
            done[traj.group].append(traj)
            while cursor < len(order) and len(done[order[cursor]]) == group_size:
                group = sorted(done[order[cursor]], key=lambda t: t.sample)
                cursor += 1
                out.n_groups_seen += 1
                if any(not t.ok for t in group):
                    out.n_failed_groups += 1
                elif dynamic and not bool(filter_groups(torch.tensor([t.accuracy for t in group]), group_size)[0]):
                    out.n_filtered += 1
                else:
                    out.groups.append(group)
                if len(out.groups) >= target:
                    break
            if len(out.groups) >= target:
                await run.cancel()
                break
    if len(out.groups) < target:
        log.warning("dynamic sampling: %d of %d groups kept after %d rounds (cap %d); training on the partial batch",
                    len(out.groups), target, out.rounds, max_rounds)
    return out


def token_logprobs_entropy(model: torch.nn.Module, traj: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(logprobs [T], entropy [T]) of the trajectory's ids under ``model`` (position 0 is 0)."""
    from ..agents.hf import forward_logits

    ids = torch.tensor([traj.input_ids])
    logits = forward_logits(model, ids, traj.mm_inputs or None)[0, :-1].float()
    ids = ids.to(logits.device)
    logp = logits.log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    ent = entropy_from_logits(logits)
    zero = torch.zeros(1, device=logits.device)
    return torch.cat([zero, logp]), torch.cat([zero, ent])


def pad_to_sequence(traj: Any, values: Sequence[float] | Sequence[int]) -> list:
    return [0] * len(traj.prompt_ids) + list(values)


def tool_metrics(trajs: Sequence[Any], threshold: float) -> dict[str, float]:
    calls: Counter[str] = Counter()
    n_tool_turns = n_tool_ok = n_using = 0
    for t in trajs:
        used = False
        for turn in t.turns:
            if turn.tool:
                used = True
                calls[turn.tool] += 1
                n_tool_turns += 1
                n_tool_ok += turn.error is None
        n_using += used
    n = max(1, len(trajs))
    out = {"tool_calls_per_traj": sum(calls.values()) / n, "tool_use_rate": n_using / n,
           "tool_success_rate": n_tool_ok / n_tool_turns if n_tool_turns else 0.0}
    out.update({f"tool_calls/{k}": v / n for k, v in calls.items()})
    out["tool_collapse"] = float(out["tool_use_rate"] < threshold)
    return out


def rollout_metrics(batch: StepBatch, gen_s: float, cfg: RLConfig) -> dict[str, Any]:
    """A step's rollout diagnostics over every finished episode it generated (kept or not)."""
    seen_ok = [t for t in batch.trajectories_seen if t.ok]
    return {
        "reward": nanmean([t.reward for t in seen_ok]),
        "accuracy": nanmean([t.accuracy for t in seen_ok]),
        "format_rate": nanmean([float(bool(t.reward_breakdown.get("format_ok"))) for t in seen_ok]),
        "response_len": nanmean([t.n_sampled for t in seen_ok]),
        "turns": nanmean([t.num_turns for t in seen_ok]),
        "episodes": len(batch.trajectories_seen),
        "failed_episodes": sum(not t.ok for t in batch.trajectories_seen),
        "gen_rounds": batch.rounds,
        "groups_kept": len(batch.groups),
        "filtered_group_frac": batch.n_filtered / max(1, batch.n_groups_seen),
        "stop/length": nanmean([float(t.stop_reason == "length") for t in seen_ok]),
        **tool_metrics(seen_ok, cfg.tool_collapse_threshold),
        "time/generation_s": gen_s,
        "time/tools_s": sum(turn.latency_s for t in batch.trajectories_seen for turn in t.turns),
    }


def sequence_loss(model: torch.nn.Module, traj: Any, old_logp: torch.Tensor, advantage: torch.Tensor,
                  cfg: RLConfig, algo: Any, *, global_tokens: int, global_seqs: int
                  ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor]:
    """One sequence's share of a mini-batch loss (its micro-batch): the clipped loss normalised by
    the whole mini-batch's counts, so micro-batches (and ranks) sum to the mini-batch loss.
    Returns (loss, metrics, per-token entropy, loss mask)."""
    logp, ent = token_logprobs_entropy(model, traj)
    mask = torch.tensor(pad_to_sequence(traj, traj.response_mask), dtype=torch.float32, device=logp.device)
    old = old_logp.to(logp.device)
    isw = None
    if cfg.tis_cap is not None:
        roll = torch.tensor(pad_to_sequence(traj, traj.logprobs), dtype=torch.float32, device=logp.device)
        isw = truncated_is_weights(old, roll, cfg.tis_cap)[None]
    loss, m = policy_loss(logp[None], old[None], advantage.reshape(1).to(logp.device), mask[None],
                          clip_low=algo.clip_low, clip_high=algo.clip_high, clip_c=algo.clip_c,
                          agg=algo.loss_agg, global_tokens=max(global_tokens, 1), global_seqs=global_seqs,
                          is_weights=isw)
    if isw is not None:  # the correction's effect: how far from 1 the weights are, how often capped
        n = mask.sum().clamp(min=1)
        m["tis_weight_mean"] = float((isw[0] * mask).sum() / n)
        m["tis_capped_frac"] = float(((isw[0] >= cfg.tis_cap) * mask).sum() / n)
    return loss, m, ent.detach(), mask


def update_policy(model, opt, trajs, advantages, old_logps, cfg: RLConfig, algo, gen: torch.Generator) -> dict[str, float]:
    """ppo_epochs × mini-batches; each mini-batch normalised by its own global token count."""
    sums: Counter[str] = Counter()
    n_updates = 0
    ent_sum = ent_n = 0.0
    losses = []
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(len(trajs), generator=gen).tolist()
        for start in range(0, len(order), cfg.mini_batch):
            mb = order[start:start + cfg.mini_batch]
            n_tok = sum(trajs[i].n_sampled for i in mb)
            opt.zero_grad(set_to_none=True)
            mb_loss = 0.0
            for i in mb:  # micro-batches of one sequence, each scaled by the mini-batch's counts
                loss, m, ent, mask = sequence_loss(model, trajs[i], old_logps[i], advantages[i], cfg, algo,
                                                   global_tokens=n_tok, global_seqs=len(mb))
                loss.backward()
                mb_loss += loss.item()
                for k, v in m.items():
                    sums[k] += v * trajs[i].n_sampled
                ent_sum += float((ent * mask).sum())
                ent_n += float(mask.sum())
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            n_updates += 1
            sums["grad_norm"] += float(grad_norm) * max(n_tok, 1)
            losses.append(mb_loss)
    total_w = sum(trajs[i].n_sampled for i in range(len(trajs))) * cfg.ppo_epochs
    out = {k: v / max(total_w, 1) for k, v in sums.items() if k != "ratio_max"}
    out["loss"] = float(np.mean(losses)) if losses else 0.0
    out["entropy"] = ent_sum / max(ent_n, 1)
    out["updates"] = n_updates
    return out


def import_plugin(spec: str) -> None:
    """Import a module by name, or a ``.py`` file by path (run once per process)."""
    import importlib
    import importlib.util
    import sys

    if not spec.endswith(".py"):
        importlib.import_module(spec)
        return
    name = f"deepeyes_gym_plugin_{Path(spec).stem}"
    if name in sys.modules:
        return
    loader_spec = importlib.util.spec_from_file_location(name, spec)
    if loader_spec is None or loader_spec.loader is None:
        raise ImportError(f"cannot import plugin {spec}")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    loader_spec.loader.exec_module(module)


def nanmean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else math.nan
