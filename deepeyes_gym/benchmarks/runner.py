"""The benchmark runner: any agent on any env id, many episodes at once, resumable.

Design: a pool of K env instances (one per concurrent episode slot). Episodes whose next turn is
due are handed to the agent's ``act_batch`` together; each ``env.step`` (tools are subprocess- or
IO-bound) runs in a thread pool, so the agent works on some episodes while tools run for others.
Every finished episode is appended to ``episodes.jsonl`` at once, as one line; ``resume=True``
skips the (task, sample) keys already there, so a crash or Ctrl-C loses at most the episodes that
were running, and nothing is counted twice.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import zlib
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..agents import Agent, AgentError, make_agent
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
    """``gym.make`` an id and return the underlying DeepEyesEnv (the runner needs ``messages()``
    and the ``episode`` record, which wrappers hide)."""
    import gymnasium as gym

    import deepeyes_gym  # noqa: F401  (registers the ids)

    env = gym.make(env_id, **kwargs).unwrapped
    if not (hasattr(env, "messages") and hasattr(env, "episode")):
        raise TypeError(f"{env_id} is not a DeepEyesEnv (no messages()/episode)")
    return env


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


@dataclass
class _Slot:
    """One concurrent episode slot, with its own env instance."""

    env: Any = None
    key: tuple[int, int] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    reset_s: float = 0.0
    agent_s: float = 0.0
    steps: list[dict[str, float]] = field(default_factory=list)
    live: bool = False  # env.episode belongs to this slot's current key


def _act_safely(agent: Agent, batch: list, infos: list) -> list[Any]:
    """Actions for a batch, with a per-episode exception in place of a str where one failed."""
    if not batch:
        return []
    try:
        return list(agent.act_batch(batch, infos, return_exceptions=True))
    except TypeError as exc:  # a user's act_batch without return_exceptions
        if "return_exceptions" not in str(exc):
            raise
    try:
        return list(agent.act_batch(batch, infos))
    except Exception:  # find the failing episode(s): one call each
        out = []
        for msgs, info in zip(batch, infos):
            try:
                out.append(agent.act(msgs, info))
            except Exception as exc2:
                out.append(exc2)
        return out


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
    tasks = getattr(env, "tasks", None)
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
        "system_prompt": getattr(env, "system_prompt", None),
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
    slots = [_Slot() for _ in range(k_slots)]
    slots[0].env = first_env
    pool = ThreadPoolExecutor(max_workers=k_slots, thread_name_prefix="episode")
    fh = open(ep_path, "a", encoding="utf-8")
    bar = _Progress(len(wanted), n_skipped, config.progress, f"{config.env_id} × {config.agent}")
    wanted_keys = {episode_key(*k) for k in wanted}
    acc_sum = sum(float(r.get("accuracy") or 0.0) for r in done.values() if r["key"] in wanted_keys)
    n_acc, n_err, consecutive_err, n_new = n_skipped, 0, 0, 0
    new_records: list[dict[str, Any]] = []

    def _task_at(index: int) -> Any:
        try:
            return tasks[index] if tasks is not None else None
        except Exception:  # the task itself may be what failed
            return None

    # ------------------------------------------------------------------ per-slot work (threads)
    def start(slot: _Slot, key: tuple[int, int]) -> tuple[_Slot, str, Any]:
        slot.key, slot.agent_s, slot.steps, slot.live = key, 0.0, [], False
        slot.started = time.time()
        t0 = time.perf_counter()
        try:
            if slot.env is None:
                slot.env = factory()
            ep_seed = _episode_seed(config.seed, *key)
            _, info = slot.env.reset(seed=ep_seed, options={"task_index": key[0]})
        except Exception as exc:
            slot.reset_s = time.perf_counter() - t0
            return slot, "error", f"reset failed: {type(exc).__name__}: {exc}"
        slot.reset_s = time.perf_counter() - t0
        slot.live = True
        slot.info = dict(info, sample=key[1], episode_seed=ep_seed, task_index=key[0])
        return slot, "ready", None

    def step(slot: _Slot, action: str) -> tuple[_Slot, str, Any]:
        t0 = time.perf_counter()
        try:
            _, reward, term, trunc, info = slot.env.step(action)
        except Exception as exc:  # an env bug: record it against this episode
            log.exception("env.step raised")
            return slot, "error", f"env.step raised {type(exc).__name__}: {exc}"
        turn = slot.env.episode.turns[-1]
        slot.steps.append({"step_s": time.perf_counter() - t0, "tool_s": float(turn.latency_s or 0.0)})
        if term or trunc:
            return slot, "done", build_record(slot, "ok", None, float(reward), info)
        return slot, "ready", None

    def build_record(slot: _Slot, status: str, error: str | None, reward: float | None,
                     info: Mapping[str, Any] | None) -> dict[str, Any]:
        task_index, sample = slot.key
        env = slot.env
        ep = env.episode if env is not None and slot.live else None
        task = ep.task if ep is not None else _task_at(task_index)
        turns = []
        if ep is not None:
            for t_i, t in enumerate(ep.turns):
                timing = slot.steps[t_i] if t_i < len(slot.steps) else {}
                turns.append({
                    "kind": t.kind,
                    "tool": t.tool,
                    "arguments": clip_text(t.arguments) if isinstance(t.arguments, str) else t.arguments,
                    "action": clip_text(t.action),
                    "observation": clip_text(t.observation),
                    "n_images": t.n_images,
                    "error": t.error,
                    "latency_s": round(float(t.latency_s or 0.0), 6),
                    "step_s": round(float(timing.get("step_s", 0.0)), 6),
                    "metadata": t.metadata,
                })
        images: list[dict[str, Any]] = []
        rel = f"images/{task_index}-{sample}"
        if config.save_images and env is not None and ep is not None:
            try:
                images = save_images(env.messages("array"), out_dir, rel)
            except Exception as exc:  # the record matters more than its pictures
                log.warning("could not save the images of %s: %s", rel, exc)
        info = dict(info or {})
        breakdown = info.get("reward_breakdown", {})
        step_s = sum(s["step_s"] for s in slot.steps)
        tool_s = sum(s["tool_s"] for s in slot.steps)
        rec = {
            "schema": SCHEMA_VERSION,
            "key": episode_key(task_index, sample),
            "env_id": config.env_id,
            "agent": config.agent,
            "task_index": task_index,
            "sample": sample,
            "task_id": getattr(task, "id", None),
            "status": status,
            "error": error,
            "reward": reward,
            "accuracy": float(info.get("accuracy", 0.0)) if status == "ok" else 0.0,
            "format_ok": bool(info.get("format_ok", False)) if status == "ok" else False,
            "format_reasons": info.get("format_reasons", []),
            "answer": info.get("answer", ep.answer if ep is not None else None),
            "ground_truth": getattr(task, "answer", None),
            "reward_breakdown": breakdown,
            "question": clip_text(task.prompt_text()) if task is not None else None,
            "answer_kind": getattr(task, "answer_kind", None),
            "domain": getattr(task, "domain", None),
            "capabilities": sorted(getattr(task, "capabilities", ()) or ()),
            "family": (getattr(task, "metadata", None) or {}).get("family"),
            "source": getattr(task, "source", None),
            "terminated": bool(getattr(ep, "terminated", False)),
            "truncated": bool(getattr(ep, "truncated", False)),
            "n_turns": len(turns),
            "turns": turns,
            "images": images,
            "timing": {
                "started": round(slot.started, 3),
                "wall_s": round(time.time() - slot.started, 6),
                "reset_s": round(slot.reset_s, 6),
                "agent_s": round(slot.agent_s, 6),
                "env_s": round(step_s, 6),
                "tool_s": round(tool_s, 6),
                "env_overhead_s": round(max(0.0, step_s - tool_s), 6),
            },
        }
        return jsonable(rec)

    def error_record(slot: _Slot, message: str) -> dict[str, Any]:
        return build_record(slot, "error", message, None, None)

    # ------------------------------------------------------------------ main loop
    idle = list(slots)
    ready: list[_Slot] = []
    in_flight: dict[Future, str] = {}
    aborted: str | None = None

    def finish(rec: dict[str, Any], slot: _Slot) -> None:
        nonlocal acc_sum, n_acc, n_err, consecutive_err, n_new, aborted
        append_record(fh, rec)
        new_records.append(rec)
        n_new += 1
        n_acc += 1
        acc_sum += rec["accuracy"]
        if rec["status"] != "ok":
            n_err += 1
            consecutive_err += 1
            if config.max_consecutive_errors and consecutive_err >= config.max_consecutive_errors:
                aborted = f"{consecutive_err} episodes in a row failed; the last error: {rec['error']}"
        else:
            consecutive_err = 0
        bar.update(acc_sum / n_acc if n_acc else None, n_err)
        slot.key = None
        idle.append(slot)
        if stop_after is not None and n_new >= stop_after:
            raise KeyboardInterrupt(f"stop_after={stop_after}")

    try:
        while pending or ready or in_flight:
            while idle and pending and aborted is None:
                slot = idle.pop()
                in_flight[pool.submit(start, slot, pending.popleft())] = "start"
            if ready:
                batch = ready
                ready = []
                convs = [s.env.messages(image_format) for s in batch]
                t0 = time.perf_counter()
                actions = _act_safely(agent, convs, [s.info for s in batch])
                dt = time.perf_counter() - t0
                for slot, action in zip(batch, actions):
                    slot.agent_s += dt
                    if isinstance(action, BaseException):
                        msg = str(action) if isinstance(action, AgentError) else f"{type(action).__name__}: {action}"
                        finish(error_record(slot, f"agent error: {msg}"), slot)
                    else:
                        in_flight[pool.submit(step, slot, action)] = "step"
                continue
            if not in_flight:
                break
            finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            for fut in finished:
                in_flight.pop(fut)
                slot, state, payload = fut.result()
                if state == "ready":
                    ready.append(slot)
                elif state == "done":
                    finish(payload, slot)
                else:
                    finish(error_record(slot, payload), slot)
            if aborted is not None and not in_flight:
                ready.clear()
                break
    finally:
        for fut in in_flight:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        fh.close()
        bar.close()
        for slot in slots:
            if slot.env is not None:
                try:
                    slot.env.close()
                except Exception as exc:
                    log.warning("env.close failed: %s", exc)
        if own_agent:
            agent.close()

    if aborted is not None:
        raise RunAborted(
            f"stopped early: {aborted}. The {n_new} episodes run so far are saved in {ep_path}; "
            "fix the cause and re-run with --resume."
        )
    records = [r for r in dedupe_records(list(done.values()) + new_records) if r["key"] in wanted_keys]
    return RunResult(
        out_dir=out_dir,
        records=records,
        n_new=n_new,
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


