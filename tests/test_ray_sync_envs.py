"""Collective weight sync (``weight_transport="broadcast"``) and env-worker pools on a local Ray
cluster: the broadcast gives the learner's logprobs, a restarted worker rejoins, a hung
collective fails fast; env workers train like in-actor envs, a killed one loses no episode, and
they share the node's sandbox admission budget."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
import time

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("deepspeed")
torch = pytest.importorskip("torch")

from raykit import OneRankLearner, collect_with_a_kill, config, parity_reward, probe_ids, worker_spec  # noqa: E402

from deepeyes_gym.agents.tiny import tiny_qwen25vl_dir  # noqa: E402
from deepeyes_gym.trainers.ray_backend import RayConfig, StaleWeightsError, SyncTimeoutError, WeightSync  # noqa: E402
from deepeyes_gym.trainers.ray_backend import train_rl_ray  # noqa: E402
from deepeyes_gym.trainers.ray_backend.sync import BroadcastRoot  # noqa: E402
from deepeyes_gym.trainers.ray_backend.workers import RayRolloutEngine, WorkerPool  # noqa: E402
from deepeyes_gym.trainers.rl import train_rl  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600), pytest.mark.usefixtures("ray_cluster")]


class _BroadcastLearner(OneRankLearner):
    """The one-rank stand-in as a broadcast root: its store and groups live in this (driver)
    process, the blocking joins and sends run in threads. ``hang``: it never sends."""

    def __init__(self, model_dir, hang=False):
        super().__init__(model_dir)
        self.root, self.hang = BroadcastRoot(ray.util.get_node_ip_address()), hang

    async def wsync_store(self):
        return self.root.state()

    async def wsync_join(self, prefix, size, backend, timeout_s, main):
        await asyncio.to_thread(self.root.join, prefix, size, backend, timeout_s, main)

    async def wsync_send(self, prefix, bucket_bytes):
        if not self.hang:
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            await asyncio.to_thread(self.root.send, prefix, state, self.version, bucket_bytes)
        return self.version


def slow_parity_reward(episode):
    """parity_reward after 0.3 s: the final env step lasts, so an env worker killed mid-round is
    killed mid-step."""
    time.sleep(0.3)
    return parity_reward(episode)


def _tasks(n):
    import gymnasium as gym

    return list(gym.make("DeepEyes-Toy-v0").get_wrapper_attr("tasks"))[:n]


def test_broadcast_sync_gives_the_learners_logprobs_and_a_restarted_worker_rejoins():
    model = tiny_qwen25vl_dir()
    pool = WorkerPool(worker_spec(model), 2, max_restarts=2, timeout_s=120)
    learner = _BroadcastLearner(model)
    probe = probe_ids(model)
    # small buckets: the weights go in several collectives per dtype
    sync = WeightSync(learner, pool, probe, timeout_s=30, probe_tol=1e-5, transport="broadcast", bucket_mb=0.5)
    try:
        learner.perturb()
        with pytest.raises(StaleWeightsError):
            asyncio.run(sync.verify())
        asyncio.run(sync.push(learner.version))
        assert asyncio.run(sync.verify()) <= 1e-5 and sync.generation == 1
        times = {"broadcast": [], "object_store": []}
        by_store = WeightSync(learner, pool, probe, timeout_s=30)
        for _ in range(3):  # the same weights again: the group is reused, not rebuilt
            for name, s in (("object_store", by_store), ("broadcast", sync)):  # broadcast last: no state_ref left
                asyncio.run(s.push(learner.version))
                times[name].append(s.last_push_s)
        assert sync.generation == 1
        print("sync time (s, median of 3):", {k: sorted(v)[1] for k, v in times.items()})

        pid = ray.get(pool.workers[0].ping.remote())
        ray.kill(pool.workers[0], no_restart=False)  # between syncs; Ray restarts it at the model dir's weights
        # before it plays, the next round catches it up over a two-rank group of its own
        trajs = asyncio.run(RayRolloutEngine(pool).collect(_tasks(2), 2, seed=3))
        assert ray.get(pool.workers[0].ping.remote()) != pid
        assert sync.catch_ups == 1 and all(t.ok and t.weight_version == 1 for t in trajs)
        learner.perturb()
        asyncio.run(sync.push(learner.version))  # the restarted worker had no group: a new generation
        assert sync.generation == 2
        assert asyncio.run(sync.verify()) <= 1e-5
    finally:
        pool.close()


def test_a_broadcast_that_cannot_complete_raises_sync_timeout_fast():
    root = BroadcastRoot("127.0.0.1")
    t = time.perf_counter()
    with pytest.raises(SyncTimeoutError, match="waited 1 s for its peers to join"):
        root.join("lonely/1", 2, "gloo", 1.0, True)  # the other rank never comes
    assert time.perf_counter() - t < 10

    model = tiny_qwen25vl_dir()
    pool = WorkerPool(worker_spec(model), 1, timeout_s=60)
    learner = _BroadcastLearner(model, hang=True)
    sync = WeightSync(learner, pool, probe_ids(model), timeout_s=2, probe_tol=1e-5, transport="broadcast")
    try:
        learner.perturb()
        t = time.perf_counter()
        with pytest.raises(SyncTimeoutError, match="did not complete within 2 s"):
            asyncio.run(sync.push(learner.version))  # the root never sends: the worker's receive times out
        assert time.perf_counter() - t < 20
        learner.hang = False
        asyncio.run(sync.push(learner.version))  # the broken group is replaced by a new one
        assert sync.generation == 2
        assert asyncio.run(sync.verify()) <= 1e-5
    finally:
        pool.close()


def test_env_slots_go_to_the_rollout_workers_env_workers_within_their_capacity():
    from deepeyes_gym.trainers.ray_backend.env_workers import assign_slots

    # env worker j serves rollout worker j % R; one slot per concurrent episode, spread evenly
    assert assign_slots(4, 2, 3, None) == [[(0, 0), (2, 0), (0, 1)], [(1, 0), (3, 0), (1, 1)]]
    # fewer env workers than rollout workers: shared, slots numbered across their users
    assert assign_slots(1, 2, 2, None) == [[(0, 0), (0, 1)], [(0, 2), (0, 3)]]
    # a capacity lowers the concurrency; none left for a rollout worker is an error
    assert assign_slots(1, 2, 2, 3) == [[(0, 0), (0, 1)], [(0, 2)]]
    with pytest.raises(ValueError, match="rollout worker 1 gets no env slot"):
        assign_slots(1, 2, 2, 2)


def test_env_worker_pools_train_like_in_actor_envs(tmp_path):
    """Env workers + broadcast sync against the single-process trainer, which the in-actor-env Ray
    loop (env_workers=0, object store) matches already (test_ray_backend): one Ray start-up, not two."""
    ref = train_rl(config(tmp_path, "local"))
    got = train_rl_ray(config(tmp_path, "env_workers"),
                       RayConfig(rollout_workers=2, learners=2, env_workers=2, cpus_per_env_worker=0.5,
                                 weight_transport="broadcast"))
    assert len(ref.losses) == 2 and any(x != 0 for x in ref.losses)
    # the same trajectories (rewards, lengths, turns and kept groups match) give the same losses,
    # within the all-reduce's rounding; step 2 was sampled with the broadcast weights
    assert got.losses == pytest.approx(ref.losses, rel=1e-4, abs=1e-6)
    for a, b in zip(ref.history, got.history):
        for key in ("reward", "groups_kept", "response_len", "turns"):
            assert b[key] == a[key], key
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["probe_max_abs"] <= 1e-5 and b["mismatch_max_abs"] < 1e-5


def test_a_killed_env_worker_loses_no_episode_and_env_workers_share_the_node_admission(monkeypatch):
    from deepeyes_gym.envs.sandbox import admission
    from deepeyes_gym.envs.sandbox.node import NODE_DIR_ENV

    node = tempfile.mkdtemp(prefix="dgr-")  # a private admission daemon (short path: a unix socket)
    monkeypatch.setenv(NODE_DIR_ENV, node)
    monkeypatch.setattr(admission, "_CLIENT", None)
    model = tiny_qwen25vl_dir()
    spec = dataclasses.replace(worker_spec(model), env_kwargs={"reward": slow_parity_reward, "max_turns": 2})
    pool = WorkerPool(spec, 2, max_restarts=2, timeout_s=120, env_vars={NODE_DIR_ENV: node},
                      env_workers=2, cpus_per_env_worker=0.5)
    envs = pool.env_pool.workers
    try:
        engine = RayRolloutEngine(pool)
        tasks = _tasks(4)
        clean = asyncio.run(engine.collect(tasks, 4, seed=7))
        assert all(t.ok for t in clean)
        pid = ray.get(envs[0].ping.remote())

        got, resubmitted = collect_with_a_kill(engine, tasks, 4, 7, envs[0])
        assert resubmitted >= 1
        assert sorted(t.uid for t in got) == sorted(t.uid for t in clean)  # none lost, none twice
        by_uid = {t.uid: t for t in clean}
        assert all(t.ok and t.response_ids == by_uid[t.uid].response_ids and t.reward == by_uid[t.uid].reward
                   for t in got)  # the re-runs are the same episodes
        assert ray.get(envs[0].ping.remote()) != pid  # restarted, and serving again, also to a
        ray.kill(pool.workers[1], no_restart=False)  # restarted rollout worker (it takes its slots back)
        assert all(t.ok for t in asyncio.run(engine.collect(tasks[:2], 4, seed=8)))

        # every env worker queues its code cells at the node's one admission daemon
        infos = ray.get([w.admission.remote() for w in envs])
        assert all(i["mode"] == "node" and i["node_dir"] == node for i in infos)
        held = admission.admit(1)  # this process takes the node's only slot of a 1-slot budget
        held.wait()
        assert ray.get([w.admission_probe.remote(1, 0.5) for w in envs]) == [False, False]
        held.release()
        assert ray.get([w.admission_probe.remote(1, 10.0) for w in envs]) == [True, True]
    finally:
        pool.close()
        client = admission._CLIENT
        if client is not None and client[1].sock is not None:
            client[1].sock.close()
        shutil.rmtree(node, ignore_errors=True)


@pytest.mark.vllm
def test_a_vllm_worker_loads_the_broadcast_and_resets_its_prefix_cache():
    pytest.importorskip("vllm")
    from deepeyes_gym.agents.tiny import tiny_qwen2_dir

    model = tiny_qwen2_dir()
    pool = WorkerPool(worker_spec(model, "vllm"), 1, timeout_s=180)
    learner = _BroadcastLearner(model)
    sync = WeightSync(learner, pool, probe_ids(model), timeout_s=60, probe_tol=1e-5, transport="broadcast")
    try:
        assert asyncio.run(sync.verify()) <= 1e-5  # the probe prompt is now in the prefix cache
        learner.perturb()
        asyncio.run(sync.push(learner.version))  # reload_weights + prefix-cache reset in the worker
        assert asyncio.run(sync.verify()) <= 1e-5  # a stale cached prefix would fail this
    finally:
        pool.close()
