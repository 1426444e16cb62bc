"""The Ray learner group: the FSDP2 strategy matches the single-process trainer, a learner rank
that dies fails fast (max_learner_restarts=0) or costs a rebuild that re-runs the lost step and
leaves the run unchanged, and resume on Ray continues the same run."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("deepspeed")
torch = pytest.importorskip("torch")

from raykit import config  # noqa: E402

from deepeyes_gym.trainers.ray_backend import RayConfig, train_rl_ray  # noqa: E402
from deepeyes_gym.trainers.ray_backend.learner import LearnerFailedError, LearnerGroup, _RankLost  # noqa: E402
from deepeyes_gym.trainers.rl import train_rl  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600), pytest.mark.usefixtures("ray_cluster")]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The single-process reference: 4 steps, checkpoints after 2 and 4 (its first 2 steps are the
    2-step run's: the schedule is constant after warm-up)."""
    out = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: the Ray actors (1 CPU each) need them too
    try:
        res = train_rl(config(out, "local", steps=4, save_every=2))
    finally:
        torch.set_num_threads(threads)
    assert any(x != 0 for x in res.losses)
    return res


def weights(model_dir):
    from safetensors.torch import load_file

    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def assert_same_weights(a_dir, b_dir):
    a, b = weights(a_dir), weights(b_dir)
    assert a.keys() == b.keys()  # whole tensors, gathered from the shards
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def rows(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def kill_learner_rank(monkeypatch, method, on_calls, rank=1):
    """Fault injection at the driver's seam: on the listed calls of ``LearnerGroup.<method>``, kill
    learner rank ``rank`` as soon as the call has been sent to the ranks (the others are then inside
    it, and stuck or failing in its collectives). Returns the group's version at each call."""
    orig, calls = getattr(LearnerGroup, method), []

    async def wrapped(self, *args):
        calls.append(self.version)
        if len(calls) in on_calls:
            asyncio.get_running_loop().call_soon(ray.kill, self.ranks[rank])  # runs once the call awaits
        return await orig(self, *args)

    monkeypatch.setattr(LearnerGroup, method, wrapped)
    return calls


def test_fsdp2_learner_matches_the_single_process_trainer(tmp_path):
    # mini-batches of 3 over 2 ranks: uneven shares, so ranks pad with zero-weighted passes and
    # extra forwards (FSDP2's forwards are collectives: a missing one would hang the group)
    ref = train_rl(config(tmp_path, "local", mini_batch=3))
    got = train_rl_ray(config(tmp_path, "fsdp2", mini_batch=3),
                       RayConfig(rollout_workers=2, learners=2, learner_strategy="fsdp2"))
    assert len(ref.losses) == 2 and any(x != 0 for x in ref.losses)
    assert got.losses == pytest.approx(ref.losses, rel=1e-4, abs=1e-6)
    for a, b in zip(ref.history, got.history):
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["updates"] == a["updates"] == 3
        # the trained groups; "reward" also averages surplus episodes cancelled at timing-dependent points
        assert b["shaped_reward"] == pytest.approx(a["shaped_reward"]) and b["groups_kept"] == a["groups_kept"]
        assert b["probe_max_abs"] <= 1e-5 and b["mismatch_max_abs"] < 1e-5 and b["learner_restarts"] == 0
    ckpt = tmp_path / "fsdp2" / "checkpoint-000002"
    assert (ckpt / "fsdp" / ".metadata").is_file()  # the sharded model + AdamW state (DCP)
    cfg = json.loads((ckpt / "model" / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]  # not the FSDP wrapper's class
    assert_same_weights(tmp_path / "local" / "checkpoint-000002" / "model", ckpt / "model")


def test_a_hung_or_dead_rank_is_named_and_a_rank_s_own_error_passes_through():
    """The group's call: no hang past the time-out, the silent or dead rank named (not the peer
    whose collective failed because of it), and an ordinary error left to the caller."""
    import time

    class Rank:  # a local class: Ray pickles it by value
        def ok(self):
            return 1

        def hang(self):
            time.sleep(120)

        def fail(self, msg):
            raise RuntimeError(msg)

    cls = ray.remote(num_cpus=0)(Rank)
    group = object.__new__(LearnerGroup)
    group.timeout_s, group.ranks = 3.0, [cls.remote(), cls.remote()]
    a, b = group.ranks
    try:
        t = time.perf_counter()
        with pytest.raises(_RankLost, match=r"rank 1 did not answer during 'hang'"):
            asyncio.run(group._gather([a.ok.remote(), b.hang.remote()], "hang"))
        assert time.perf_counter() - t < 10
        with pytest.raises(_RankLost, match=r"rank 1 did not answer during 'timeout'.*Timed out waiting"):
            asyncio.run(group._gather([a.fail.remote("[gloo] Timed out waiting 900000ms for recv"), b.hang.remote()],
                                      "timeout"))
        ray.kill(b)
        group.ranks[1] = b = cls.remote()  # (the old one still sleeps)
        with pytest.raises(RuntimeError, match="a bug") as err:
            asyncio.run(group._gather([a.fail.remote("a bug"), b.ok.remote()], "bug"))
        assert not isinstance(err.value, _RankLost)
        refs = [a.fail.remote("[gloo] Connection closed by peer"), b.hang.remote()]
        ray.kill(b)
        with pytest.raises(_RankLost, match=r"rank 1 died during 'update'"):
            asyncio.run(group._gather(refs, "update"))
    finally:
        for r in group.ranks:
            ray.kill(r)


def test_a_dead_learner_rank_fails_fast_naming_the_rank_and_the_call(tmp_path, monkeypatch):
    kill_learner_rank(monkeypatch, "update", on_calls={1})
    with pytest.raises(LearnerFailedError, match=r"learner rank 1 died during 'learner update to v1'.*"
                                                 r"max_learner_restarts=0"):
        train_rl_ray(config(tmp_path, "failfast", steps=1),
                     RayConfig(rollout_workers=1, learners=2, max_learner_restarts=0, call_timeout_s=120))


def test_a_rank_lost_in_an_update_is_rebuilt_and_the_step_rerun(tmp_path, monkeypatch, caplog, local):
    caplog.set_level(logging.WARNING, logger="deepeyes_gym.trainers.ray_backend.learner")
    calls = kill_learner_rank(monkeypatch, "update", on_calls={2})
    got = train_rl_ray(config(tmp_path, "rebuilt"), RayConfig(rollout_workers=2, learners=2))
    # no checkpoint yet: rebuilt from the model dir, update 1 replayed, update 2 run again
    assert f"from {config(tmp_path, 'x').model} and replaying 1 updates" in caplog.text
    assert "learner rank 1 died during 'learner update to v2'" in caplog.text
    assert calls == [0, 1]  # the trainer asked for each update once
    assert got.losses == pytest.approx(local.losses[:2], rel=1e-4, abs=1e-6)
    logged = rows(tmp_path / "rebuilt")
    assert [r["step"] for r in logged] == [1, 2]  # no step trained (or logged) twice
    assert [(r["learner_restarts"], r["weight_version"]) for r in logged] == [(0, 1), (1, 2)]
    assert all(r["probe_max_abs"] <= 1e-5 for r in logged)  # the workers hold the rebuilt group's weights
    assert_same_weights(local.out_dir / "checkpoint-000002" / "model", tmp_path / "rebuilt" / "checkpoint-000002" / "model")


def test_a_rank_lost_in_a_checkpoint_is_rebuilt_from_the_last_one(tmp_path, monkeypatch, caplog, local):
    caplog.set_level(logging.WARNING, logger="deepeyes_gym.trainers.ray_backend.learner")
    kill_learner_rank(monkeypatch, "save", on_calls={2})
    probed = []  # the group's restarts at each probe: the workers are checked against the rebuilt group
    orig_probe = LearnerGroup.probe_logprobs

    async def probe(self, ids, n_last):
        probed.append(self.restarts)
        return await orig_probe(self, ids, n_last)

    monkeypatch.setattr(LearnerGroup, "probe_logprobs", probe)
    out = tmp_path / "ckpt"
    # Restarts to spare: a rebuilt rank can die on its own (seen once in CI: glibc aborted a fresh
    # FSDP2 rank on a corrupted heap); the group must then survive that too, with the same result.
    got = train_rl_ray(config(tmp_path, "ckpt", save_every=1),
                       RayConfig(rollout_workers=2, learners=2, learner_strategy="fsdp2", max_learner_restarts=3))
    # FSDP2's DCP checkpoint 1 restored, update 2 replayed, checkpoint 2 written again
    assert f"died during 'checkpoint to {out / 'checkpoint-000002'}'" in caplog.text
    assert f"(1 of 3) from {out / 'checkpoint-000001'} and replaying 1 updates" in caplog.text
    assert got.losses == pytest.approx(local.losses[:2], rel=1e-4, abs=1e-6)
    assert [r["step"] for r in rows(out)] == [1, 2]
    # both workers probe-checked against the last rebuilt group
    assert probed[-1] >= 1 and probed[-2:] == [probed[-1]] * 2
    assert (out / "latest").read_text() == "checkpoint-000002"
    assert_same_weights(local.out_dir / "checkpoint-000002" / "model", out / "checkpoint-000002" / "model")


def test_resume_on_ray_continues_the_same_run(tmp_path, local):
    first = train_rl_ray(config(tmp_path, "ray", steps=2), RayConfig(rollout_workers=2, learners=2))
    second = train_rl_ray(config(tmp_path, "ray", steps=4, resume=True), RayConfig(rollout_workers=2, learners=2))
    assert (first.steps, second.steps) == (2, 4)
    assert first.losses + second.losses == pytest.approx(local.losses, rel=1e-4, abs=1e-6)
    # the sampler resumed where it stopped: the same tasks, hence the same rollouts, as the straight run
    state = torch.load(tmp_path / "ray" / "checkpoint-000002" / "trainer_state.pt", weights_only=False)
    ref = torch.load(local.out_dir / "checkpoint-000002" / "trainer_state.pt", weights_only=False)
    assert state["extra"]["sampler_position"] == ref["extra"]["sampler_position"] > 0
    logged, expected = rows(tmp_path / "ray"), rows(local.out_dir)
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    assert [r["weight_version"] for r in logged] == [1, 2, 3, 4]
    for a, b in zip(expected, logged):
        # the trained groups (what the loss sees); reward/response_len also average the surplus episodes
        # that finished before dynamic sampling cancelled them, which depends on the workers' timing
        assert (b["shaped_reward"], b["adv_abs_mean"], b["groups_kept"]) == pytest.approx(
            (a["shaped_reward"], a["adv_abs_mean"], a["groups_kept"]), rel=1e-6)
    assert_same_weights(local.out_dir / "checkpoint-000004" / "model", tmp_path / "ray" / "checkpoint-000004" / "model")


def mixed_trajectories(model_dir, with_image):
    """Hand-made trajectories of the tiny Qwen2.5-VL: a 4×4-patch image (4 tokens once merged) where
    ``with_image`` says, text only elsewhere."""
    from deepeyes_gym.agents.trajectory import Trajectory

    mc = json.loads((model_dir / "config.json").read_text())
    vc = mc["vision_config"]
    patch = vc["in_channels"] * vc["temporal_patch_size"] * vc["patch_size"] ** 2
    g = torch.Generator().manual_seed(0)
    out = []
    for k, img in enumerate(with_image):
        prompt = torch.randint(0, 600, (6,), generator=g).tolist()
        if img:
            prompt[3:3] = [mc["vision_start_token_id"], *[mc["image_token_id"]] * 4, mc["vision_end_token_id"]]
        resp = torch.randint(0, 600, (4 + k,), generator=g).tolist()
        t = Trajectory(uid=f"t:{k}", group=f"t{k // 2}", sample=k % 2, prompt_ids=prompt, response_ids=resp,
                       response_mask=[1] * len(resp), logprobs=[-6.0] * len(resp))
        if img:
            t.pixel_values, t.image_grid_thw = torch.randn(16, patch, generator=g), torch.tensor([[1, 4, 4]])
        out.append(t)
    return out


@pytest.mark.parametrize("strategy", ["fsdp2", "zero2", "zero3"])
def test_a_sharded_learner_trains_mixed_image_and_text_batches(tmp_path, strategy):
    """One image among text-only sequences: passes pair a rank that runs the vision tower with one
    that has no image. Their collectives must still pair up (gloo aborted the rank on the size
    mismatch before) and the update be the single-process one."""
    from deepeyes_gym.agents.hf import load_model
    from deepeyes_gym.trainers.algorithms import get_algorithm
    from deepeyes_gym.trainers.ray_backend.learner import LearnerGroup, _optimizer
    from deepeyes_gym.trainers.rl_steps import token_logprobs_entropy, update_policy

    cfg = config(tmp_path, "mixed", mini_batch=2)
    model_dir = Path(cfg.model)
    trajs = mixed_trajectories(model_dir, [True, False, False, False])
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    algo = get_algorithm(cfg.algorithm)
    ref = load_model(str(model_dir), device="cpu").eval()
    opt, _ = _optimizer(ref, cfg)  # the ranks' AdamW, on the unsharded model
    with torch.no_grad():
        old = [token_logprobs_entropy(ref, t)[0] for t in trajs]
    want = update_policy(ref, opt, trajs, adv, old, cfg, algo, torch.Generator().manual_seed(cfg.seed))
    rc = RayConfig(rollout_workers=1, learners=2, learner_strategy="fsdp2" if strategy == "fsdp2" else "deepspeed",
                   zero_stage=int(strategy[-1]) if strategy != "fsdp2" else 2, call_timeout_s=60,
                   max_learner_restarts=0)

    async def run():
        group = LearnerGroup(str(model_dir), cfg, algo, rc)
        try:
            await group.ready()
            row = await group.update(trajs, adv, 0)
            return row, ray.get(await group.state_dict_ref())
        finally:
            group.close()

    row, sd = asyncio.run(run())
    assert row["updates"] == want["updates"] == 2
    assert row["loss"] == pytest.approx(want["loss"], rel=1e-4, abs=1e-6)
    # ZeRO-3 stepped a vision tower that got no gradient with its last one (3.61 vs 3.28 here)
    assert row["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)
    for k, v in ref.state_dict().items():
        # DeepSpeed's AdamW steps every parameter each update, a zero gradient included (momentum,
        # weight decay); torch's skips one without a gradient: the vision tower after a text-only
        # mini-batch. FSDP2 keeps torch's optimizer, so its vision weights match too.
        if strategy == "fsdp2" or ".visual." not in f".{k}":
            assert torch.allclose(sd[k], v, atol=1e-5), k
