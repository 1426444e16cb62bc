"""Data curation (the paper's recipe): keep the tasks the base model rarely solves but a
tool-using reference does, then split them into a cold-start SFT pool and an RL pool.

1. The base agent tries every task ``attempts`` times (8 in the paper).
2. A task is kept when the base agent solves it at most ``max_base_solves`` times (2) and the
   reference agent (tool-using, e.g. the scripted solvers or a stronger model) solves it.
3. Kept tasks are split by a seeded shuffle: ``sft_fraction`` to SFT (the reference's successful
   episodes, stored losslessly as the SFT trainer's input), the rest to RL (task indices).
"""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..benchmarks.runner import EPISODE_STORE_DIR, RunConfig, run_eval
from ..envs.episode_io import EpisodeStore

__all__ = ["CurateConfig", "CurationResult", "curate"]

log = logging.getLogger(__name__)


@dataclass
class CurateConfig:
    """What to curate from and how."""

    env_id: str = "DeepEyes-RealX-Train-v0"
    """Env id whose tasks are curated."""
    base_agent: str = "direct"
    """The model to be trained (a registered agent name)."""
    base_agent_kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor settings of the base agent (e.g. model=DIR)."""
    reference_agent: str = "scripted"
    """A tool-using agent whose solutions become SFT data."""
    reference_agent_kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor settings of the reference agent."""
    limit: int | None = 64
    """Tasks to consider (None: the whole suite; needed for unbounded streams)."""
    attempts: int = 8
    """Base-agent attempts per task."""
    max_base_solves: int = 2
    """Keep a task only if the base agent solves it at most this many times."""
    sft_fraction: float = 0.5
    """Share of kept tasks that go to the SFT pool (the rest to RL)."""
    out_dir: str = "runs/curate"
    """Output folder."""
    seed: int = 0
    """Seed of the runs and of the split."""
    concurrency: int = 8
    """Episodes at once."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Env constructor settings."""


@dataclass
class CurationResult:
    out_dir: Path
    counts: dict[str, int]
    sft_tasks: list[int]
    rl_tasks: list[int]


def curate(cfg: CurateConfig) -> CurationResult:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(env_id=cfg.env_id, limit=cfg.limit, seed=cfg.seed, concurrency=cfg.concurrency,
                  env_kwargs=dict(cfg.env_kwargs), save_images=False, progress=False, resume=True)
    base = run_eval(RunConfig(agent=cfg.base_agent, out_dir=out / "base", samples=cfg.attempts,
                              agent_kwargs=dict(cfg.base_agent_kwargs), **common))
    ref = run_eval(RunConfig(agent=cfg.reference_agent, out_dir=out / "reference", samples=1,
                             agent_kwargs=dict(cfg.reference_agent_kwargs), **common))
    solves: dict[int, int] = defaultdict(int)
    for r in base.records:
        solves[r["task_index"]] += int(r["status"] == "ok" and r["accuracy"] >= 1.0)
    ref_ok = {r["task_index"] for r in ref.records if r["status"] == "ok" and r["accuracy"] >= 1.0}
    considered = sorted({r["task_index"] for r in base.records})
    kept = [i for i in considered if solves[i] <= cfg.max_base_solves and i in ref_ok]
    rng = random.Random(cfg.seed)
    shuffled = kept[:]
    rng.shuffle(shuffled)
    n_sft = round(cfg.sft_fraction * len(shuffled))
    sft_tasks, rl_tasks = sorted(shuffled[:n_sft]), sorted(shuffled[n_sft:])

    # The SFT pool: the reference's successful episodes on the SFT tasks, stored losslessly.
    sft_store = EpisodeStore(out / "sft")
    if sft_store.path.exists():
        sft_store.path.unlink()
    wanted = set(sft_tasks)
    n_sft_episodes = 0
    for key, ep, extra in EpisodeStore(out / "reference" / EPISODE_STORE_DIR):
        index = int(str(key).split(":")[0]) if key is not None else -1
        if index in wanted and float(ep.reward_breakdown.get("accuracy", 0.0)) >= 1.0:
            sft_store.append(ep, key=key, extra=extra)
            wanted.discard(index)
            n_sft_episodes += 1
    counts = {
        "considered": len(considered),
        "base_solved_at_most_%d_of_%d" % (cfg.max_base_solves, cfg.attempts):
            sum(1 for i in considered if solves[i] <= cfg.max_base_solves),
        "reference_solved": len(ref_ok),
        "kept": len(kept),
        "sft_tasks": len(sft_tasks),
        "sft_episodes": n_sft_episodes,
        "rl_tasks": len(rl_tasks),
    }
    (out / "rl_tasks.json").write_text(json.dumps({"env_id": cfg.env_id, "task_indices": rl_tasks}, indent=2))
    (out / "curation.json").write_text(json.dumps({"config": asdict(cfg), "counts": counts,
                                                   "sft_tasks": sft_tasks, "rl_tasks": rl_tasks}, indent=2))
    log.info("curation: %s", counts)
    return CurationResult(out, counts, sft_tasks, rl_tasks)
