"""The benchmark runner: any agent on any env id, many episodes at once, resumable.

Design: K episode coroutines (one per concurrent slot, each with its own env) driven by
:func:`deepeyes_gym.agents.loop.run_episode`: an episode waits only for its own agent call and
its own env step (in a thread pool sized to K), so there is no batch barrier. Every finished episode is appended to ``episodes.jsonl`` at once, as one line; ``resume=True``
skips the (task, sample) keys already there, so a crash or Ctrl-C loses at most the episodes that
were running, and nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..agents import Agent, make_agent
from ..agents.loop import EpisodeOutcome, env_executor, run_episode
from ..envs.episode_io import EpisodeStore
from ..envs.messages import render_messages
from .records import (
    SCHEMA_VERSION,
    append_record,
    clip_text,
    compact_records,
    dedupe_records,
    episode_key,
    jsonable,
    read_records,
    save_images,
)

__all__ = ["RunConfig", "RunResult", "RunAborted", "run_eval", "select_tasks", "make_env", "load_run"]

log = logging.getLogger(__name__)

EPISODES_FILE = "episodes.jsonl"
META_FILE = "run.json"
EPISODE_STORE_DIR = "episodes"  # lossless episodes (EpisodeStore): SFT input, rescoring


class RunAborted(RuntimeError):
    """The run stopped early (too many consecutive agent errors); what finished is saved."""


@dataclass
class RunConfig:
    """What to run. ``env_id``/``agent`` name registered envs and agents; ``*_kwargs`` go to
    their constructors. ``limit`` evaluates a seeded random subset of that many tasks (the subset
    for a larger limit contains the smaller one, so raising it and resuming extends a run).
    ``samples`` runs each task that many times (seeded per sample)."""

    env_id: str
    agent: str
    out_dir: str | os.PathLike[str]
    limit: int | None = None
    samples: int = 1
    concurrency: int = 8
    resume: bool = False
    seed: int = 0
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    agent_kwargs: dict[str, Any] = field(default_factory=dict)
    save_images: bool = True
    save_episodes: bool = True  # lossless episodes under out_dir/episodes (for SFT and rescoring)
    progress: bool = True
    max_consecutive_errors: int = 25  # 0 disables the early stop


@dataclass
class RunResult:
    out_dir: Path
    records: list[dict[str, Any]]  # every finished episode, deduplicated, sorted by key
    n_new: int  # episodes run by this call
    n_skipped: int  # episodes found finished in the JSONL and skipped
    wall_s: float
    meta: dict[str, Any]

    @property
    def episodes_path(self) -> Path:
        return self.out_dir / EPISODES_FILE


def make_env(env_id: str, **kwargs: Any):
    """``gym.make`` an id, wrappers kept; the runner reaches the episode record through them."""
    import gymnasium as gym

    import deepeyes_gym  # noqa: F401  (registers the ids)

    env = gym.make(env_id, **kwargs)
    if not env.has_wrapper_attr("episode_record"):
        env.close()
        raise TypeError(f"{env_id} is not a DeepEyesEnv (no episode_record())")
    return env


def _env_attr(env: Any, name: str) -> Any:
    """An attribute of the env through any wrappers (None when absent)."""
    has = getattr(env, "has_wrapper_attr", None)
    if has is not None:
        return env.get_wrapper_attr(name) if has(name) else None
    return getattr(env, name, None)


def select_tasks(n_tasks: int | None, limit: int | None) -> list[int]:
    """Task indices to run: all of them, or a fixed random subset of ``limit`` (seed 0, so every
    agent gets the same subset, and a smaller limit's subset is a prefix of a larger one's)."""
    if n_tasks is None:
        if limit is None:
            raise ValueError("this env serves an unbounded task stream: give a limit (--limit N)")
        return list(range(limit))
    if limit is None or limit >= n_tasks:
        return list(range(n_tasks))
    if limit < 1:
        raise ValueError("limit must be >= 1")
    perm = np.random.default_rng(0).permutation(n_tasks)[:limit]
    return sorted(int(i) for i in perm)


def _episode_seed(seed: int, task_index: int, sample: int) -> int:
    return int(zlib.crc32(f"{seed}:{task_index}:{sample}".encode()))


class _StopAfter(Exception):
    """stop_after episodes are done (tests simulate Ctrl-C with it)."""


@dataclass
class _RunState:
    acc_sum: float = 0.0
    n_acc: int = 0
    n_err: int = 0
    consecutive_err: int = 0
    aborted: str | None = None
    new_records: list[dict[str, Any]] = field(default_factory=list)


class _Progress:
    def __init__(self, total: int, initial: int, enabled: bool, desc: str):
        self.bar = None
        self.total, self.done = total, initial
        self.enabled = enabled
        self._last = 0.0
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, initial=initial, desc=desc, unit="ep", dynamic_ncols=True)
            except ImportError:
                print(f"{desc}: {initial}/{total} (install tqdm for a progress bar)", file=sys.stderr)

    def update(self, acc: float | None, errors: int) -> None:
        self.done += 1
        if self.bar is not None:
            post = {"acc": f"{acc:.3f}" if acc is not None else "-"}
            if errors:
                post["err"] = errors
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)
        elif self.enabled and (time.time() - self._last > 10 or self.done == self.total):
            self._last = time.time()
            print(f"  {self.done}/{self.total} episodes, accuracy {acc or 0:.3f}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_meta(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The old run.json, after checking that the run being resumed is the same run."""
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    for k in ("env_id", "agent", "samples", "seed"):
        if k in old and old[k] != meta[k]:
            raise ValueError(
                f"cannot resume {path.parent}: it was run with {k}={old[k]!r}, now {meta[k]!r}. "
                "Use another --out directory."
            )
    return old


def _prepare(config: RunConfig, agent: Agent, env: Any, out_dir: Path, ep_path: Path):
    """Select the tasks, write run.json, and (when resuming) load the finished episodes."""
    tasks = _env_attr(env, "tasks")
    n_tasks = len(tasks) if tasks is not None and hasattr(tasks, "__len__") else None
    indices = select_tasks(n_tasks, config.limit)
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    meta = {
        "schema": SCHEMA_VERSION,
        "env_id": config.env_id,
        "agent": config.agent,
        "agent_name": getattr(agent, "name", config.agent),
        "agent_settings": jsonable(agent.describe()) if hasattr(agent, "describe") else jsonable(config.agent_kwargs),
        "env_kwargs": jsonable(config.env_kwargs),
        "samples": config.samples,
        "seed": config.seed,
        "limit": config.limit,
        "n_suite_tasks": n_tasks,
        "n_selected_tasks": len(indices),
        "system_prompt": _env_attr(env, "system_prompt"),
        "created": now,
        "updated": now,
    }
    meta_path = out_dir / META_FILE
    done: dict[str, dict[str, Any]] = {}
    if config.resume:
        old = _check_meta(meta_path, meta)
        meta["created"] = old.get("created", now)
        if ep_path.exists():
            for rec in compact_records(ep_path, drop_errors=True):
                done[rec["key"]] = rec
    meta_path.write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    return meta, indices, tasks, done


def run_eval(
    config: RunConfig,
    *,
    agent: Agent | None = None,
    env_factory: Callable[[], Any] | None = None,
    stop_after: int | None = None,
) -> RunResult:
    """Run (or resume) an evaluation and return every finished episode.

    ``agent``/``env_factory`` override the registry lookups (for custom agents and envs).
    ``stop_after`` raises KeyboardInterrupt after that many new episodes (tests use it to
    simulate Ctrl-C).
    """
    t_start = time.perf_counter()
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ep_path = out_dir / EPISODES_FILE
    if ep_path.exists() and ep_path.stat().st_size > 0 and not config.resume:
        raise FileExistsError(
            f"{ep_path} already holds episodes: pass resume=True (--resume) to continue that run, "
            "or choose another output directory"
        )
    if config.concurrency < 1 or config.samples < 1:
        raise ValueError("concurrency and samples must be >= 1")

    factory = env_factory or (lambda: make_env(config.env_id, **config.env_kwargs))
    own_agent = agent is None
    agent = agent if agent is not None else make_agent(config.agent, **config.agent_kwargs)
    image_format = getattr(agent, "image_format", "pil")

    first_env = None
    try:
        first_env = factory()
        meta, indices, tasks, done = _prepare(config, agent, first_env, out_dir, ep_path)
    except BaseException:
        if first_env is not None:
            first_env.close()
        if own_agent:
            agent.close()
        raise
    wanted = [(i, s) for i in indices for s in range(config.samples)]
    pending = deque(k for k in wanted if episode_key(*k) not in done)
    n_skipped = len(wanted) - len(pending)
    k_slots = max(1, min(config.concurrency, len(pending)))
    store = EpisodeStore(out_dir / EPISODE_STORE_DIR) if config.save_episodes else None
    bar = _Progress(len(wanted), n_skipped, config.progress, f"{config.env_id} × {config.agent}")
    wanted_keys = {episode_key(*k) for k in wanted}
    state = _RunState(acc_sum=sum(float(r.get("accuracy") or 0.0) for r in done.values() if r["key"] in wanted_keys),
                      n_acc=n_skipped)

    def _task_at(index: int) -> Any:
        try:
            return tasks[index] if tasks is not None else None
        except Exception:  # the task itself may be what failed
            return None

    def build_record(key: tuple[int, int], seed: int, out: EpisodeOutcome | None, error: str | None) -> dict[str, Any]:
        task_index, sample = key
        ep = out.episode if out is not None else None
        task = ep.task if ep is not None else _task_at(task_index)
        status = "ok" if error is None else "error"
        steps = out.step_s if out is not None else []
        turns = []
        for t_i, t in enumerate(ep.turns if ep is not None else ()):
            turns.append({
                "kind": t.kind,
                "tool": t.tool,
                "arguments": clip_text(t.arguments) if isinstance(t.arguments, str) else t.arguments,
                "action": clip_text(t.action),
                "finish_reason": t.finish_reason,
                "observation": clip_text(t.observation),
                "n_images": t.n_images,
                "error": t.error,
                "latency_s": round(float(t.latency_s or 0.0), 6),
                "step_s": round(float(steps[t_i]) if t_i < len(steps) else 0.0, 6),
                "metadata": t.metadata,
            })
        images: list[dict[str, Any]] = []
        rel = f"images/{task_index}-{sample}"
        if config.save_images and ep is not None:
            try:
                images = save_images(render_messages(ep.messages(), "array"), out_dir, rel)
            except Exception as exc:  # the record matters more than its pictures
                log.warning("could not save the images of %s: %s", rel, exc)
        info = dict(out.info if out is not None else {})
        step_s = sum(steps)
        tool_s = sum(float(t.latency_s or 0.0) for t in (ep.turns if ep is not None else ()))
        rec = {
            "schema": SCHEMA_VERSION,
            "key": episode_key(task_index, sample),
            "env_id": config.env_id,
            "agent": config.agent,
            "task_index": task_index,
            "sample": sample,
            "episode_seed": seed,
            "task_id": getattr(task, "id", None),
            "status": status,
            "error": error,
            "reward": out.reward if status == "ok" else None,
            "accuracy": float(info.get("accuracy", 0.0)) if status == "ok" else 0.0,
            "format_ok": bool(info.get("format_ok", False)) if status == "ok" else False,
            "format_reasons": info.get("format_reasons", []),
            "prediction": ep.prediction if ep is not None else None,
            "ground_truth": getattr(task, "answer", None),
            "reward_breakdown": info.get("reward_breakdown", {}),
            "question": clip_text(task.prompt_text()) if task is not None else None,
            "answer_kind": getattr(task, "answer_kind", None),
            "domain": getattr(task, "domain", None),
            "capabilities": sorted(getattr(task, "capabilities", ()) or ()),
            "family": (getattr(task, "metadata", None) or {}).get("family"),
            "source": getattr(task, "source", None),
            "terminated": bool(getattr(ep, "terminated", False)),
            "truncated": bool(getattr(ep, "truncated", False)),
            "stop_reason": getattr(ep, "stop_reason", None) if status == "ok" else "error",
            "n_turns": len(turns),
            "turns": turns,
            "images": images,
            "timing": {
                "started": round(out.started, 3) if out else round(time.time(), 3),
                "wall_s": round(out.wall_s, 6) if out else 0.0,
                "reset_s": round(out.reset_s, 6) if out else 0.0,
                "agent_s": round(out.agent_s, 6) if out else 0.0,
                "env_s": round(step_s, 6),
                "tool_s": round(tool_s, 6),
                "env_overhead_s": round(max(0.0, step_s - tool_s), 6),
            },
        }
        return jsonable(rec)

    def finish(rec: dict[str, Any], ep: Any) -> None:
        append_record(fh, rec)
        if store is not None and ep is not None and rec["status"] == "ok":
            try:
                store.append(ep, key=rec["key"], extra={"env_id": config.env_id, "agent": config.agent})
            except Exception as exc:
                log.warning("could not store episode %s losslessly: %s", rec["key"], exc)
        state.new_records.append(rec)
        state.acc_sum += rec["accuracy"]
        state.n_acc += 1
        if rec["status"] != "ok":
            state.n_err += 1
            state.consecutive_err += 1
            if config.max_consecutive_errors and state.consecutive_err >= config.max_consecutive_errors:
                state.aborted = f"{state.consecutive_err} episodes in a row failed; the last error: {rec['error']}"
        else:
            state.consecutive_err = 0
        bar.update(state.acc_sum / state.n_acc if state.n_acc else None, state.n_err)
        if stop_after is not None and len(state.new_records) >= stop_after:
            raise _StopAfter()

    envs: list[Any] = [first_env]
    executor = env_executor(k_slots)

    async def worker(slot: int) -> None:
        loop = asyncio.get_running_loop()
        env = None
        while pending and state.aborted is None:
            key = pending.popleft()
            seed = _episode_seed(config.seed, *key)
            if env is None:
                try:
                    env = envs[slot] if slot < len(envs) and envs[slot] is not None else await loop.run_in_executor(
                        executor, factory)
                except Exception as exc:
                    finish(build_record(key, seed, None, f"env creation failed: {type(exc).__name__}: {exc}"), None)
                    continue
                envs.extend([None] * (slot + 1 - len(envs)))
                envs[slot] = env
            out = await run_episode(env, agent, seed=seed, options={"task_index": key[0]}, executor=executor,
                                    image_format=image_format,
                                    agent_info={"sample": key[1], "episode_seed": seed, "task_index": key[0]})
            finish(build_record(key, seed, out, out.error), out.episode)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        # Agents' blocking act() runs in the loop's default pool: one thread per concurrent episode.
        loop.set_default_executor(ThreadPoolExecutor(max_workers=k_slots, thread_name_prefix="agent"))
        workers = [asyncio.create_task(worker(i)) for i in range(k_slots)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    fh = open(ep_path, "a", encoding="utf-8")
    try:
        asyncio.run(main())
    except _StopAfter:
        raise KeyboardInterrupt(f"stop_after={stop_after}") from None
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        fh.close()
        bar.close()
        for env in envs:
            if env is not None:
                try:
                    env.close()
                except Exception as exc:
                    log.warning("env.close failed: %s", exc)
        if own_agent:
            agent.close()

    if state.aborted is not None:
        raise RunAborted(
            f"stopped early: {state.aborted}. The {len(state.new_records)} episodes run so far are saved in "
            f"{ep_path}; fix the cause and re-run with --resume."
        )
    records = [r for r in dedupe_records(list(done.values()) + state.new_records) if r["key"] in wanted_keys]
    return RunResult(
        out_dir=out_dir,
        records=records,
        n_new=len(state.new_records),
        n_skipped=n_skipped,
        wall_s=time.perf_counter() - t_start,
        meta=meta,
    )


def load_run(out_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(meta, deduplicated records) of a run directory."""
    out_dir = Path(out_dir)
    meta_path = out_dir / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return meta, dedupe_records(read_records(out_dir / EPISODES_FILE))


