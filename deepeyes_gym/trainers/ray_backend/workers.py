"""Rollout workers as Ray actors, and the driver-side engine that spreads episodes over them.

A :class:`RolloutWorker` holds one policy (HF or vLLM), the renderer and its envs: its own
(``RayConfig.env_workers = 0``: they live in the actor, next to the engine that waits on them) or
slots on :class:`~.env_workers.EnvWorker` actors (env-worker pools, placed on its node), reached
through proxies that the engine drives exactly like local envs. It plays single episodes through
:class:`~deepeyes_gym.agents.rollout.RolloutEngine`. The driver-side
:class:`RayRolloutEngine` has the local engine's ``start(tasks, G, seed=...)`` interface, so
``rl.collect_groups`` (dynamic sampling, in-order decisions) runs on it unchanged, and the
episodes' seeds are the local engine's: the same run seed gives the same trajectories whichever
worker plays them. A worker that dies mid-round is restarted by Ray (``max_restarts``); its
unfinished episodes are re-run on a live worker, and every uid is yielded exactly once. An
episode whose env worker dies under it is re-run the same way (the env worker is restarted).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["RolloutWorker", "WorkerPool", "RayRolloutEngine", "RayRolloutRun", "EpisodeLostError"]

log = logging.getLogger(__name__)


class EpisodeLostError(RuntimeError):
    """An episode could not be played: every retry landed on a dying worker."""


@dataclass(frozen=True)
class WorkerSpec:
    """What a rollout actor is built from (also what Ray re-runs on a restart)."""

    model_dir: str
    env_id: str
    env_kwargs: dict[str, Any]
    backend: str  # "hf" | "vllm"
    concurrency: int
    max_response_tokens: int
    max_turn_tokens: int
    temperature: float
    top_p: float
    episode_timeout_s: float | None
    vllm_kwargs: dict[str, Any]
    plugins: tuple[str, ...] = ()
    sleep: bool = False  # free the engine's accelerator memory during updates (RayConfig.sleep_engines)


class RolloutWorker:
    """One rollout actor (async: its episodes share one event loop; generation and env steps run
    in their own threads). Created by :class:`WorkerPool` as a Ray actor. ``env_slots``: its
    ``(EnvWorker actor name, slot)`` pairs when the envs run in env-worker actors (None: its own)."""

    def __init__(self, spec: WorkerSpec, env_slots: Sequence[tuple[str, int]] | None = None) -> None:
        import faulthandler

        import gymnasium as gym

        import deepeyes_gym  # noqa: F401  (env ids)

        from ...agents.generation import SamplingParams
        from ...agents.render.qwen25vl import Qwen25VLRenderer
        from ...agents.rollout import RolloutEngine
        from ..rl_steps import import_plugin

        faulthandler.enable()  # a native crash (SIGSEGV, SIGABRT) leaves the Python stack in the worker's log
        for p in spec.plugins:
            import_plugin(p)
        self.spec = spec
        self.policy = _make_policy(spec)
        renderer = Qwen25VLRenderer.from_pretrained(spec.model_dir)
        sampling = SamplingParams(max_tokens=spec.max_turn_tokens, temperature=spec.temperature, top_p=spec.top_p)
        self.concurrency = spec.concurrency
        self._lost: set[tuple[str, int]] | None = None  # (task id, seed) of episodes whose env worker died
        envs: Any = lambda: gym.make(spec.env_id, **spec.env_kwargs)  # noqa: E731
        if env_slots is not None:
            import ray

            from .env_workers import RemoteEnv

            self._lost = set()
            handles = {name: ray.get_actor(name) for name in {name for name, _ in env_slots}}
            envs = [RemoteEnv(handles[name], slot, self._lost) for name, slot in env_slots]
            self.concurrency = min(spec.concurrency, len(envs))  # one env slot per running episode
        self.engine = RolloutEngine(envs, self.policy, renderer,
                                    max_concurrency=self.concurrency, max_response_tokens=spec.max_response_tokens,
                                    sampling=sampling, episode_timeout_s=spec.episode_timeout_s)
        self._slots: asyncio.Semaphore | None = None  # made on the actor's loop, on first use
        self._groups: dict[str, Any] = {}  # broadcast weight sync: prefix -> BroadcastGroup
        self._main_group: str | None = None

    async def run_episode(self, task: Any, task_index: int, sample: int, seed: int) -> Any:
        """Play one episode (the local engine's seed scheme) and return its Trajectory."""
        from ...agents.rollout import RolloutRun, _Job

        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        async with self._slots:
            run = RolloutRun(self.engine, [_Job(task, task_index, sample, seed)], None)
            (traj,) = await run.wait()
        key = (str(task.id), seed)
        if self._lost is not None and key in self._lost:
            self._lost.discard(key)
            if traj.error is not None:  # failed because its env worker died: the driver re-runs it
                from .env_workers import EnvWorkerLostError

                raise EnvWorkerLostError(f"episode {traj.uid} lost its env worker ({traj.error})")
        return traj

    def abort(self, uid: str) -> bool:
        """Abort the running episode ``uid`` (it returns an aborted trajectory)."""
        return self.engine.abort(uid)

    def version(self) -> int:
        """The weight version the worker samples with (0: the model dir's weights)."""
        return self.engine.weight_version

    async def load_weights(self, state: dict[str, Any], version: int) -> int:
        """Install new weights, stamped ``version``; returns it. Runs off the event loop, under the
        model lock for HF (a generation never sees half-loaded weights)."""
        await asyncio.get_running_loop().run_in_executor(None, self._load, state)
        self.engine.weight_version = version
        return version

    def sleep(self) -> bool:
        """Free the engine's accelerator memory for a colocated update; False where the platform
        cannot (CPU, or vLLM without sleep mode)."""
        return bool(self.policy.sleep())

    def wake_up(self) -> None:
        self.policy.wake_up()

    # ---- broadcast weight sync (the receiving side; see sync.BroadcastGroup) ----

    def wsync_main(self) -> str | None:
        """The prefix of the main weight-sync group this process belongs to (None after a restart)."""
        return self._main_group

    async def wsync_join(self, addr: tuple[str, int], prefix: str, rank: int, size: int, backend: str,
                         timeout_s: float, main: bool) -> None:
        """Join group ``prefix`` as ``rank`` (blocks, off the event loop, until every rank joined);
        a new main group replaces the previous one."""
        import ray

        from .sync import BroadcastGroup

        host = ray.util.get_node_ip_address()
        group = await asyncio.get_running_loop().run_in_executor(None, lambda: BroadcastGroup.connect(
            addr, prefix, rank, size, backend=backend, timeout_s=timeout_s, host=host))
        if main:
            old = self._groups.pop(self._main_group, None) if self._main_group else None
            if old is not None:
                old.close()
            self._main_group = prefix
        self._groups[prefix] = group

    async def wsync_recv(self, prefix: str) -> int:
        """Receive the weights broadcast over group ``prefix`` and install them (stamped with the
        root's version, returned). A failed group, or a one-shot catch-up group, is dropped."""
        group = self._groups.get(prefix)
        if group is None:
            raise RuntimeError(f"rollout worker {os.getpid()} is not in weight-sync group {prefix} (it restarted?)")
        ok = False
        try:
            version = await asyncio.get_running_loop().run_in_executor(None, self._recv_load, group)
            ok = True
        finally:
            if not ok or prefix != self._main_group:
                self._groups.pop(prefix, None)
                group.close()
                if prefix == self._main_group:
                    self._main_group = None
        self.engine.weight_version = version
        return version

    def _recv_load(self, group: Any) -> int:
        # Loaded bucket by bucket as they arrive: one bucket in flight, never a second model copy.
        version, names, items = group.recv()
        if self.spec.backend == "vllm":
            self.policy.load_weights(items)  # reloads (consuming the buckets), then resets the prefix cache
            return version
        import torch

        from ...agents.hf import model_lock

        model = self.policy.model
        local = model.state_dict()  # tensors sharing the parameters' storage
        unexpected = sorted(set(names) - local.keys())
        missing = sorted(k for k in local.keys() - set(names) if not k.endswith("lm_head.weight"))
        if unexpected or missing:  # checked on the header, before any copy: never half-loaded weights
            raise RuntimeError(f"weight broadcast: missing {missing[:5]}, unexpected {unexpected[:5]}")
        # the lock for the whole transfer: a generation sees the old weights or the new, never a mix
        with torch.no_grad(), model_lock(model):
            for k, t in items:
                local[k].copy_(t)
        return version

    def _load(self, state: dict[str, Any]) -> None:
        if self.spec.backend == "vllm":
            self.policy.load_weights(state)  # reloads, then resets the prefix cache
            return
        from ...agents.hf import model_lock

        with model_lock(self.policy.model):
            missing, unexpected = self.policy.model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
            raise RuntimeError(f"weight sync: missing {missing[:5]}, unexpected {unexpected[:5]}")

    async def probe(self, prompt_ids: list[int], n_tokens: int) -> tuple[list[int], list[float]]:
        """Greedy ``n_tokens`` from ``prompt_ids`` with their logprobs: the post-sync probe."""
        from ...agents.generation import SamplingParams

        gen = await self.policy.generate(list(prompt_ids), [], SamplingParams(
            max_tokens=n_tokens, temperature=0.0, stop=(), seed=0), request_id=f"probe-{os.getpid()}")
        return list(gen.token_ids or []), list(gen.logprobs or [])

    def ping(self) -> int:
        return os.getpid()

    def shutdown(self) -> None:
        for group in self._groups.values():
            group.close()
        self._groups.clear()
        self.engine.close()
        self.policy.close()


def _make_policy(spec: WorkerSpec) -> Any:
    if spec.backend == "vllm":
        from ...agents.vllm import VLLMPolicy

        kwargs = dict(spec.vllm_kwargs)
        if spec.sleep and _has_cuda():  # vLLM's sleep mode exists on CUDA only
            kwargs.setdefault("enable_sleep_mode", True)
        return VLLMPolicy.from_pretrained(spec.model_dir, **kwargs)
    if spec.backend != "hf":
        raise ValueError(f"rollout_backend must be 'hf' or 'vllm', not {spec.backend!r}")
    from ...agents.hf import HFPolicy

    return HFPolicy.from_pretrained(spec.model_dir, device="cuda" if _has_cuda() else "cpu")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class WorkerPool:
    """The rollout actors, the weights they should hold, and their restarts.

    ``state_ref``/``version`` are the last pushed weights: a worker that comes back from a restart
    (at the model dir's weights, version 0) gets them again before it plays anything (from
    ``state_ref``, or through ``catch_up`` when the weights travel by broadcast).

    ``env_workers > 0``: the envs run in an :class:`~.env_workers.EnvWorkerPool` of that many
    actors (``cpus_per_env_worker`` each, ``envs_per_env_worker`` env slots each, None: as many
    as the rollout workers' concurrency needs), each rollout worker and its env workers sharing
    one placement-group bundle (one node).
    """

    def __init__(self, spec: WorkerSpec, n: int, *, num_cpus: float = 1.0, num_gpus: float = 0.0,
                 max_restarts: int = 3, env_vars: dict[str, str] | None = None, timeout_s: float = 120.0,
                 env_workers: int = 0, cpus_per_env_worker: float = 1.0,
                 envs_per_env_worker: int | None = None) -> None:
        import ray

        from .sync import timed_get

        env = {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p), **(env_vars or {})}
        self.env_pool: Any = None
        options: list[dict[str, Any]] = [{} for _ in range(n)]
        slots: list[Any] = [None] * n
        if env_workers:
            from .env_workers import EnvWorkerPool

            self.env_pool = EnvWorkerPool(spec, env_workers, rollout_workers=n, cpus_per_env_worker=cpus_per_env_worker,
                                          envs_per_env_worker=envs_per_env_worker, rollout_cpus=num_cpus,
                                          rollout_gpus=num_gpus, max_restarts=max_restarts, env_vars=env,
                                          timeout_s=timeout_s)
            options = [{"scheduling_strategy": self.env_pool.strategy(r)} for r in range(n)]
            slots = [self.env_pool.slots[r] for r in range(n)]
        if spec.backend == "vllm":
            from ...agents.vllm import CPU_ENV

            env = {**CPU_ENV, **env} if not num_gpus else env
        cls = ray.remote(RolloutWorker)
        self.spec, self.timeout_s = spec, timeout_s
        self.workers = [cls.options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts,
                                    max_concurrency=max(64, 4 * spec.concurrency), runtime_env={"env_vars": env},
                                    name=None, **options[r]).remote(spec, slots[r]) for r in range(n)]
        self.state_ref: Any = None
        self.version = 0
        self.catch_up: Any = None  # async (worker index) -> version; set by a broadcast WeightSync
        self._next = 0
        timed_get([w.ping.remote() for w in self.workers], timeout_s, "starting the rollout workers")

    def pick(self, exclude: int | None = None) -> int:
        """Round-robin index of the next worker (skipping ``exclude``, a worker just found dead)."""
        for _ in range(len(self.workers)):
            i, self._next = self._next, (self._next + 1) % len(self.workers)
            if i != exclude or len(self.workers) == 1:
                return i
        return 0

    async def call(self, i: int, method: str, *args: Any) -> Any:
        """``workers[i].method(*args)``, waiting out a restart (Ray re-runs ``__init__``) for up to
        ``timeout_s``; each try is bounded by ``timeout_s``."""
        import ray

        w = self.workers[i]
        for attempt in range(int(self.timeout_s * 2)):
            try:
                return await asyncio.wait_for(_aw(getattr(w, method).remote(*args)), self.timeout_s)
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.ActorDiedError):
                if attempt == int(self.timeout_s * 2) - 1:
                    raise
                await asyncio.sleep(0.5)
        raise AssertionError("unreachable")

    async def all(self, method: str, *args: Any) -> list[Any]:
        """``method(*args)`` on every worker at once (each through :meth:`call`)."""
        return list(await asyncio.gather(*(self.call(i, method, *args) for i in range(len(self.workers)))))

    async def ensure_current(self, i: int) -> None:
        """Wait for worker ``i`` to be reachable and give it the pool's weights if it lacks them."""
        version = await self.call(i, "version")
        if version >= self.version:
            return
        if self.state_ref is not None:
            ref = self.workers[i].load_weights.remote(self.state_ref, self.version)
            await asyncio.wait_for(_aw(ref), self.timeout_s)
        elif self.catch_up is not None:
            await self.catch_up(i)
        else:
            return
        log.info("rollout worker %d was behind (v%d): resynced to v%d", i, version, self.version)

    def close(self) -> None:
        import ray

        for w in self.workers:
            try:
                ray.get(w.shutdown.remote(), timeout=30)
            except Exception:  # a dead worker has nothing to close
                pass
            ray.kill(w, no_restart=True)
        self.workers = []
        if self.env_pool is not None:
            self.env_pool.close()
            self.env_pool = None


def _aw(ref: Any) -> Any:
    """An ObjectRef as an awaitable future (asyncio.wait needs futures)."""
    return asyncio.wrap_future(ref.future())


class RayRolloutEngine:
    """The :class:`~deepeyes_gym.agents.rollout.RolloutEngine` interface over a :class:`WorkerPool`."""

    def __init__(self, pool: WorkerPool, *, max_episode_retries: int = 3) -> None:
        self.pool = pool
        self.max_episode_retries = max_episode_retries

    def start(self, tasks: Sequence[Any], n_samples: int, *, seed: int = 0) -> "RayRolloutRun":
        from ...agents.rollout import episode_seed

        jobs = [(t, i, s, episode_seed(seed, i, s)) for i, t in enumerate(tasks) for s in range(n_samples)]
        if len({f"{t.id}:{s}" for t, _, s, _ in jobs}) != len(jobs):
            raise ValueError("task ids must be unique within one collect")
        return RayRolloutRun(self, jobs)

    async def collect(self, tasks: Sequence[Any], n_samples: int, *, seed: int = 0) -> list[Any]:
        """Every trajectory, in task-major order."""
        run = self.start(tasks, n_samples, seed=seed)
        got = {t.uid: t async for t in run}
        return [got[f"{t.id}:{s}"] for t, _, s, _ in run.jobs]

    def close(self) -> None:
        self.pool.close()


class RayRolloutRun:
    """A started collection over the pool: ``async for`` yields each episode's trajectory once, as
    it finishes; ``abort(uid)``/``cancel()`` as in the local run. ``resubmitted`` counts episodes
    re-run because their worker died."""

    def __init__(self, engine: RayRolloutEngine, jobs: list[tuple[Any, int, int, int]]) -> None:
        self.engine, self.pool, self.jobs = engine, engine.pool, jobs
        self._job = {f"{t.id}:{s}": j for j in jobs for t, s in [(j[0], j[2])]}
        self._inflight: dict[asyncio.Future, tuple[str, int]] = {}  # future -> (uid, worker)
        self._where: dict[str, int] = {}
        self._tries: dict[str, int] = {}
        self._yielded: set[str] = set()
        self._cancelled = False
        self.resubmitted = 0
        self._started = False

    def _submit(self, uid: str, worker: int) -> None:
        task, i, s, seed = self._job[uid]
        fut = _aw(self.pool.workers[worker].run_episode.remote(task, i, s, seed))
        self._inflight[fut] = (uid, worker)
        self._where[uid] = worker

    def __aiter__(self) -> "RayRolloutRun":
        return self

    async def __anext__(self) -> Any:
        import ray

        from .env_workers import EnvWorkerLostError

        if not self._started:
            self._started = True
            # a worker back from a restart holds the model dir's weights: resync it first
            await asyncio.gather(*(self.pool.ensure_current(i) for i in range(len(self.pool.workers))))
            for uid in self._job:
                self._submit(uid, self.pool.pick())
        while self._inflight:
            done, _ = await asyncio.wait(list(self._inflight), return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                uid, worker = self._inflight.pop(fut)
                try:
                    traj = fut.result()
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, EnvWorkerLostError) as exc:
                    if self._cancelled:
                        continue
                    await self._rerun(uid, worker, exc)
                    continue
                if uid in self._yielded or (self._cancelled and traj.error == "aborted"):
                    continue
                self._yielded.add(uid)
                return traj  # the other done futures stay in _inflight: the next wait returns them
        raise StopAsyncIteration

    async def _rerun(self, uid: str, dead: int, exc: BaseException) -> None:
        self._tries[uid] = self._tries.get(uid, 0) + 1
        if self._tries[uid] > self.engine.max_episode_retries:
            raise EpisodeLostError(f"episode {uid} lost {self._tries[uid]} times to dying workers: {exc}") from exc
        target = self.pool.pick(exclude=dead)
        await self.pool.ensure_current(target)
        from .env_workers import EnvWorkerLostError

        self.resubmitted += 1
        what = "lost an env worker" if isinstance(exc, EnvWorkerLostError) else "died"
        log.warning("rollout worker %d %s (%s); re-running episode %s on worker %d", dead, what,
                    type(exc).__name__, uid, target)
        self._submit(uid, target)

    @property
    def pending(self) -> list[str]:
        return [uid for uid, _ in self._inflight.values()]

    def abort(self, uid: str) -> bool:
        if uid not in self._where or uid in self._yielded:
            return False
        self.pool.workers[self._where[uid]].abort.remote(uid)
        return True

    async def cancel(self) -> list[Any]:
        """Abort every unfinished episode and wait for them (their trajectories are dropped)."""
        self._cancelled = True
        for uid in self.pending:
            self.abort(uid)
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=self.pool.timeout_s)
        self._inflight.clear()
        return []
