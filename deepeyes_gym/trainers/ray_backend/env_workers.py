"""Env-worker pools: the envs (and their tools and code sandboxes) in Ray actors of their own.

With ``RayConfig.env_workers = 0`` each rollout actor makes its envs in its own process. With
``env_workers = N`` they live in N :class:`EnvWorker` actors instead, each hosting up to
``envs_per_env_worker`` envs (``gym.make(env_id, **env_kwargs)``; the sandboxes run inside the
env worker), so tool CPU load and crashes are kept apart from the policy engine and the env
side scales on its own CPUs.

A rollout worker reaches its env slots through :class:`RemoteEnv` proxies that its
:class:`~deepeyes_gym.agents.rollout.RolloutEngine` drives exactly like local envs (blocking
``reset``/``step``/``abort``/``close`` and ``episode_record`` from its env thread pool,
``info["delta"]`` as the env returns it), so the episode driver and the token-exact rollout
code are unchanged. Every slot belongs to one rollout worker.

Placement: one placement group with a bundle per rollout worker; env worker ``j`` shares bundle
``j % rollout_workers`` with its rollout worker, so an env worker runs on the node of the rollout
worker that uses it (a bundle is on one node). With fewer env workers than rollout workers some
are shared, and sit on the node of one of their users.

Failures: an env worker that dies is restarted by Ray (``max_restarts``) with empty slots. The
proxy turns the death (or a step on a slot the restarted worker no longer has) into
:class:`EnvWorkerLostError` and records the episode as lost; the rollout worker then raises it
from ``run_episode`` and the driver re-runs the episode like one lost to a rollout-worker death
(same seed, yielded once). A reset waits out a restart instead (a new episode loses nothing).

Sandbox admission: env workers on one machine are separate processes of the same user, so their
code tools queue for running cells at the one admission daemon of that machine
(:mod:`deepeyes_gym.envs.sandbox.admission`, under :func:`~deepeyes_gym.envs.sandbox.node.node_dir`,
which every actor on the node resolves to the same directory): one node-wide budget, not one per
env worker. :meth:`EnvWorker.admission` reports it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any, Sequence

__all__ = ["EnvWorker", "EnvWorkerPool", "RemoteEnv", "EnvWorkerLostError", "assign_slots"]

log = logging.getLogger(__name__)


class EnvWorkerLostError(RuntimeError):
    """An episode's env worker died (or restarted) under it: the episode is re-run elsewhere."""


class EnvWorker:
    """One env actor: up to ``capacity`` envs, one per slot, made on the slot's first reset (and
    again after a restart). Threaded (``max_concurrency``): slots step concurrently, and an abort
    runs while its slot's step does."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], capacity: int, plugins: Sequence[str] = ()) -> None:
        import deepeyes_gym  # noqa: F401  (env ids)

        from ..rl_steps import import_plugin

        for p in plugins:
            import_plugin(p)
        self.env_id, self.env_kwargs, self.capacity = env_id, dict(env_kwargs), capacity
        self.envs: dict[int, Any] = {}
        self.locks = {slot: threading.Lock() for slot in range(capacity)}  # one call at a time per slot (abort aside)

    def _env(self, slot: int) -> Any:
        env = self.envs.get(slot)
        if env is None:
            raise EnvWorkerLostError(f"env slot {slot} is not on env worker {os.getpid()} (it restarted mid-episode)")
        return env

    def reset(self, slot: int, seed: int | None, options: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
        """``env.reset`` of ``slot`` (made now if new)."""
        import gymnasium as gym

        if slot not in self.locks:
            raise ValueError(f"env slot {slot} out of range: this env worker hosts {self.capacity}")
        lock = self.locks[slot]
        if not lock.acquire(blocking=False):
            # a call of a rollout worker that died is still running on this slot: end it first
            self.abort(slot)
            lock.acquire()
        try:
            if slot not in self.envs:
                self.envs[slot] = gym.make(self.env_id, **self.env_kwargs)
            return self.envs[slot].reset(seed=seed, options=options)
        finally:
            lock.release()

    def step(self, slot: int, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """``env.step`` of ``slot``."""
        with self.locks[slot]:
            return self._env(slot).step(action)

    def episode_record(self, slot: int) -> Any:
        """The slot's ``episode_record()``."""
        with self.locks[slot]:
            return self._env(slot).get_wrapper_attr("episode_record")()

    def abort(self, slot: int) -> None:
        """Abort the slot's running episode (kills its running tool); no lock: it must interrupt a step."""
        env = self.envs.get(slot)
        if env is not None:
            env.get_wrapper_attr("abort")()

    def close_slot(self, slot: int) -> None:
        """Close and forget the slot's env."""
        env = self.envs.pop(slot, None)
        if env is not None:
            env.close()

    def admission(self) -> dict[str, Any]:
        """Where this process's code cells queue: ``mode`` "node" (the machine's admission daemon,
        shared with every env process of this user there) or "process" (its fallback), the state
        directory, the Ray node and the pid."""
        import ray

        from ...envs.sandbox.admission import admission_mode
        from ...envs.sandbox.node import node_dir

        return {"mode": admission_mode(), "node_dir": str(node_dir()),
                "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def admission_probe(self, capacity: int, wait_s: float) -> bool:
        """Diagnostics: whether this process gets one of ``capacity`` running-cell slots of the
        node-wide budget within ``wait_s`` (the slot is given back at once)."""
        from ...envs.sandbox.admission import admit

        ticket = admit(capacity)
        deadline = time.monotonic() + wait_s
        while not ticket.granted and time.monotonic() < deadline:
            time.sleep(0.01)
        granted = ticket.granted
        ticket.cancel()  # releases a granted slot, or leaves the queue
        return granted

    def ping(self) -> int:
        return os.getpid()

    def shutdown(self) -> None:
        for slot in list(self.envs):
            try:
                self.close_slot(slot)
            except Exception as exc:
                log.warning("closing env slot %d failed: %s", slot, exc)


class RemoteEnv:
    """A rollout worker's handle on one :class:`EnvWorker` slot, used like a local env (blocking
    calls, made from the rollout engine's env threads). ``lost`` collects the ``(task id, seed)``
    of episodes that lost their env worker; ``wait_s`` bounds a reset's wait for a restarting one."""

    def __init__(self, handle: Any, slot: int, lost: set[tuple[str, int]], *, wait_s: float = 120.0) -> None:
        self.handle, self.slot, self.lost, self.wait_s = handle, slot, lost, wait_s
        self._episode: tuple[str, int] | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        import ray

        task = (options or {}).get("task")
        self._episode = (str(getattr(task, "id", "")), seed)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                return self._call("reset", seed, options, lose=False)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                if time.monotonic() > deadline:  # dead for good: the driver re-runs the episode elsewhere
                    self._lose(exc)
                time.sleep(0.5)  # restarting: a reset starts afresh, so waiting loses nothing

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        return self._call("step", action)

    def episode_record(self) -> Any:
        return self._call("episode_record")

    def abort(self) -> None:
        """Best effort: an env worker that is gone has nothing left to abort."""
        try:
            self.handle.abort.remote(self.slot).future().result(timeout=30)
        except Exception as exc:
            log.warning("abort of env slot %d failed: %s", self.slot, exc)

    def close(self) -> None:
        try:
            self.handle.close_slot.remote(self.slot).future().result(timeout=30)
        except Exception:  # the env worker is gone or shutting down with the run
            pass

    def get_wrapper_attr(self, name: str) -> Any:
        """Gymnasium's accessor (``abort``, ``episode_record``), as on a wrapped local env."""
        return getattr(self, name)

    def _call(self, method: str, *args: Any, lose: bool = True) -> Any:
        import ray

        try:
            # a blocking wait in this (env) thread; the rollout actor's event loop runs on
            return getattr(self.handle, method).remote(self.slot, *args).future().result()
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            if not lose:
                raise
            self._lose(exc)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause  # the env's own error, as a local env would raise it
            if isinstance(cause, EnvWorkerLostError):
                self._lose(cause)
            raise cause from None

    def _lose(self, exc: BaseException) -> None:
        if self._episode is not None:
            self.lost.add(self._episode)
        raise EnvWorkerLostError(f"env slot {self.slot}: its env worker died ({type(exc).__name__})") from exc


def assign_slots(env_workers: int, rollout_workers: int, concurrency: int,
                 envs_per_env_worker: int | None) -> list[list[tuple[int, int]]]:
    """Each rollout worker's ``(env worker, slot)`` pairs: its own env workers (``j % R == r``),
    or a shared one (``r % E``) when there are fewer env workers than rollout workers; one slot
    per concurrent episode, spread evenly, at most ``envs_per_env_worker`` per env worker."""
    used = [0] * env_workers
    out: list[list[tuple[int, int]]] = []
    for r in range(rollout_workers):
        mine = [j for j in range(env_workers) if j % rollout_workers == r] or [r % env_workers]
        pairs: list[tuple[int, int]] = []
        for _ in range(concurrency):
            free = [j for j in mine if envs_per_env_worker is None or used[j] < envs_per_env_worker]
            if not free:
                break
            j = min(free, key=lambda j: used[j])
            pairs.append((j, used[j]))
            used[j] += 1
        if not pairs:
            raise ValueError(f"rollout worker {r} gets no env slot: envs_per_env_worker={envs_per_env_worker} is "
                             f"used up by the other rollout workers sharing its env worker")
        if len(pairs) < concurrency:
            log.warning("rollout worker %d gets %d env slots for a concurrency of %d: it runs %d episodes at once",
                        r, len(pairs), concurrency, len(pairs))
        out.append(pairs)
    return out


class EnvWorkerPool:
    """The env-worker actors of a :class:`~.workers.WorkerPool`, placed with its rollout workers
    (see the module doc). ``slots[r]``: rollout worker ``r``'s ``(EnvWorker actor name, slot)``
    pairs (names, not handles: a rollout actor's constructor arguments then stay inline, which its
    restarts need); :meth:`strategy` puts rollout worker ``r`` in its bundle."""

    def __init__(self, spec: Any, n: int, *, rollout_workers: int, cpus_per_env_worker: float = 1.0,
                 envs_per_env_worker: int | None = None, rollout_cpus: float = 1.0, rollout_gpus: float = 0.0,
                 max_restarts: int = 3, env_vars: dict[str, str] | None = None, timeout_s: float = 120.0) -> None:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from .sync import timed_get

        if n < 1:
            raise ValueError("an env-worker pool needs env_workers >= 1")
        pairs = assign_slots(n, rollout_workers, spec.concurrency, envs_per_env_worker)
        capacity = [0] * n
        for ps in pairs:
            for j, s in ps:
                capacity[j] = max(capacity[j], s + 1)
        self.home = [j % rollout_workers for j in range(n)]
        bundles = []
        for r in range(rollout_workers):
            cpus = rollout_cpus + cpus_per_env_worker * self.home.count(r)
            bundles.append({"CPU": cpus, **({"GPU": rollout_gpus} if rollout_gpus else {})})
        self.pg = placement_group(bundles, strategy="PACK")
        timed_get(self.pg.ready(), timeout_s,
                  f"placement group for {rollout_workers} rollout workers and {n} env workers (not enough resources?)")
        cls = ray.remote(EnvWorker)
        self.names = [f"deepeyes-env-worker-{uuid.uuid4().hex[:12]}-{j}" for j in range(n)]
        self.workers = [
            cls.options(name=self.names[j], num_cpus=cpus_per_env_worker, max_restarts=max_restarts,
                        max_concurrency=2 * max(capacity[j], 1) + 4, runtime_env={"env_vars": dict(env_vars or {})},
                        scheduling_strategy=PlacementGroupSchedulingStrategy(
                            self.pg, placement_group_bundle_index=self.home[j]))
            .remote(spec.env_id, spec.env_kwargs, max(capacity[j], 1), tuple(spec.plugins))
            for j in range(n)]
        self.slots = [[(self.names[j], s) for j, s in ps] for ps in pairs]
        self._strategy = PlacementGroupSchedulingStrategy
        timed_get([w.ping.remote() for w in self.workers], timeout_s, "starting the env workers")

    def strategy(self, r: int) -> Any:
        """Rollout worker ``r``'s scheduling strategy: its bundle, shared with its env workers."""
        return self._strategy(self.pg, placement_group_bundle_index=r)

    def close(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for w in self.workers:
            try:
                ray.get(w.shutdown.remote(), timeout=30)
            except Exception:  # a dead env worker has nothing to close
                pass
            ray.kill(w, no_restart=True)
        self.workers = []
        remove_placement_group(self.pg)
