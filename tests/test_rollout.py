"""The rollout engine: concurrent episodes through real envs, exact token-level trajectories,
failures confined to their episode, abort/cancel, lossless save/load, rollout/trainer mismatch."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("pyarrow")

import torch
from transformers import LogitsProcessor

import deepeyes_gym  # noqa: F401  (registers the env ids)
from deepeyes_gym.agents.generation import Generation, SamplingParams
from deepeyes_gym.agents.hf import HFPolicy, sequence_logprobs
from deepeyes_gym.agents.render import Qwen25VLRenderer
from deepeyes_gym.agents.rollout import RolloutEngine, episode_seed, mismatch_report
from deepeyes_gym.agents.trajectory import load_trajectories, save_trajectories
from deepeyes_gym.agents.tiny import tiny_qwen25vl_dir

pytestmark = pytest.mark.timeout(300)

CODE_TURN = "Crop the corner.</think>\n<code>\n```python\ndisplay(image_1.crop((0, 0, 64, 64)))\n```\n</code>"
ANSWER_TURN = "Done.</think><answer>3</answer>"


@pytest.fixture(scope="module")
def renderer():
    return Qwen25VLRenderer.from_pretrained(tiny_qwen25vl_dir())


@pytest.fixture(scope="module")
def hf():
    policy = HFPolicy.from_pretrained(tiny_qwen25vl_dir(), device="cpu")
    yield policy
    policy.close()


def _first_tasks(env_id: str, n: int):
    env = gym.make(env_id)
    tasks = env.unwrapped.tasks[:n]
    env.close()
    return tasks


@pytest.fixture(scope="module")
def realx_tasks():
    return _first_tasks("DeepEyes-RealX-v0", 8)


@pytest.fixture(scope="module")
def toy_tasks():
    return _first_tasks("DeepEyes-Toy-v0", 4)


class BanIds(LogitsProcessor):
    """Random weights sample anything. A trained model never writes image-pad / vision tokens or
    NUL bytes; sampled, they break the image-token and transcript invariants (the env drops NULs;
    see test_a_sampled_image_pad_fails_only_that_episode), so the free-sampling test bans them."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = torch.tensor(sorted(ids), dtype=torch.long)

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.ids] = -float("inf")
        return scores


class TeacherForcedFirstTurn:
    """The first turn of each episode is a fixed code action whose ids are scored by the model
    (real logprobs, so the mismatch check covers them); later turns are sampled by ``policy``."""

    def __init__(self, policy: HFPolicy, renderer: Qwen25VLRenderer, text: str) -> None:
        self.policy, self.ids = policy, renderer.encode_text(text)
        assert policy.decode(self.ids) == text
        self.forced = 0

    async def generate(self, prompt_ids: list[int], images: Sequence[Any], sampling: SamplingParams, *,
                       request_id: str, mm_inputs: Any = None) -> Generation:
        if not request_id.endswith("#0"):
            return await self.policy.generate(prompt_ids, images, sampling, request_id=request_id, mm_inputs=mm_inputs)
        self.forced += 1
        ids = torch.tensor(prompt_ids + self.ids)
        mask = torch.tensor([0] * len(prompt_ids) + [1] * len(self.ids))

        def score() -> list[float]:
            with torch.no_grad():
                return sequence_logprobs(self.policy.model, ids, mm_inputs or None, mask)[len(prompt_ids):].tolist()

        logprobs = await asyncio.to_thread(score)
        return Generation(self.policy.decode(self.ids), "stop", "</code>", list(self.ids), logprobs, len(prompt_ids))


class ScriptPolicy:
    """No model: plays CODE_TURN then ANSWER_TURN (+ end of turn). ``hooks[task_id]`` is awaited
    before each of that task's generations: it can raise, sleep or block."""

    def __init__(self, renderer: Qwen25VLRenderer, hooks: dict[str, Any] | None = None, first: str = CODE_TURN) -> None:
        self.r, self.hooks = renderer, hooks or {}
        self.turns = [renderer.encode_text(first), renderer.encode_text(ANSWER_TURN) + [renderer.eos_token_id]]
        self.calls: list[str] = []

    async def generate(self, prompt_ids, images, sampling, *, request_id: str) -> Generation:
        self.calls.append(request_id)
        uid, turn = request_id.rsplit("#", 1)
        hook = self.hooks.get(uid.rsplit(":", 1)[0])
        if hook is not None:
            await hook()
        await asyncio.sleep(0)
        ids = self.turns[min(int(turn), 1)]
        eos = ids[-1] == self.r.eos_token_id
        text = self.r.decode(ids[:-1] if eos else ids)
        return Generation(text, "stop", None if eos else "</code>", list(ids), [-0.5] * len(ids), len(prompt_ids))


class SpyEnv(gym.Wrapper):
    """Counts ``abort`` calls (the engine reaches it through ``get_wrapper_attr``)."""

    aborts: list[str] = []

    def abort(self) -> None:
        ep = self.env.unwrapped.episode
        SpyEnv.aborts.append(ep.task.id if ep is not None else "?")
        self.env.unwrapped.abort()


def toy_env() -> gym.Env:
    return SpyEnv(gym.make("DeepEyes-Toy-v0"))


def check_trajectory(t, renderer) -> None:
    """What every usable trajectory must satisfy, independently of the engine's own checks."""
    assert t.error is None, (t.uid, t.error)
    n = len(t.response_ids)
    assert len(t.response_mask) == len(t.logprobs) == n
    assert all(lp == 0.0 for lp, m in zip(t.logprobs, t.response_mask) if m == 0)
    assert t.n_sampled == sum(s.n_tokens for s in t.turns)
    renderer.check_image_tokens(t.input_ids, t.image_grid_thw)
    assert t.prompt_ids[-len(renderer.encode_text("assistant\n<think>")):] == renderer.encode_text("assistant\n<think>")


# ----------------------------------------------------------------------------- HF, 16 episodes


def test_hf_policy_plays_16_realx_episodes_concurrently_with_exact_trajectories(hf, renderer, realx_tasks, tmp_path):
    banned = [renderer.image_pad_id, renderer.vision_start_id, renderer.vision_end_id,
              *(i for i, t in enumerate(hf._token_texts) if "\x00" in t or t in ("<|vision_pad|>", "<|video_pad|>"))]
    hf.logits_processors = [BanIds(banned)]
    policy = TeacherForcedFirstTurn(hf, renderer, CODE_TURN)
    engine = RolloutEngine(lambda: gym.make("DeepEyes-RealX-v0"), policy, renderer, max_concurrency=16,
                           max_response_tokens=160, sampling=SamplingParams(max_tokens=48), episode_timeout_s=240)
    try:
        trajs = asyncio.run(engine.collect(realx_tasks, 2, seed=7))
    finally:
        hf.logits_processors = []
        engine.close()
    assert [t.uid for t in trajs] == [f"{task.id}:{s}" for task in realx_tasks for s in range(2)]
    assert policy.forced == 16
    for t in trajs:
        check_trajectory(t, renderer)
        assert t.turns[0].tool == "python" and t.turns[0].n_images == 1, t.turns[0]
        assert len(t.images) == 2 and t.image_grid_thw.shape == (2, 3)  # the input image + the crop
        assert t.num_turns >= 2 and t.stop_reason is not None
        assert t.seed == episode_seed(7, realx_tasks.index(next(x for x in realx_tasks if x.id == t.group)), t.sample)
    # The samples of a task share one initial render (same reset delta, so the same pixels).
    assert all(trajs[2 * i].images[0] is trajs[2 * i + 1].images[0] for i in range(8))
    # Free sampling actually happened after the forced turn, differently per sample.
    assert len({tuple(t.response_ids) for t in trajs}) == 16
    report = mismatch_report(hf.model, trajs)
    assert report["n_trajectories"] == 16 and report["n_tokens"] == sum(t.n_sampled for t in trajs)
    assert report["max_abs"] <= 1e-5 and report["kl_k3"] <= 1e-9, report
    # The report sees a real discrepancy: one sampled token's logprob off by 0.01.
    off = dataclasses.replace(trajs[3], logprobs=list(trajs[3].logprobs))
    k = max(i for i, m in enumerate(off.response_mask) if m)  # the last sampled token
    off.logprobs[k] += 0.01
    bad = mismatch_report(hf.model, [off])
    assert bad["max_abs"] == pytest.approx(0.01, abs=1e-5) and bad["worst_uid"] == off.uid

    # Lossless round trip: ids, mask, logprobs, pixels and processed tensors.
    save_trajectories(trajs, tmp_path)
    back = load_trajectories(tmp_path)
    assert len(back) == len(trajs)
    for a, b in zip(trajs, back):
        for f in ("uid", "group", "sample", "prompt_ids", "response_ids", "response_mask", "logprobs", "reward",
                  "reward_breakdown", "accuracy", "turns", "stop_reason", "error", "weight_version", "seed"):
            assert getattr(a, f) == getattr(b, f), f
        assert [np.asarray(i).tobytes() for i in a.images] == [np.asarray(i).tobytes() for i in b.images]
        assert torch.equal(a.pixel_values, b.pixel_values) and a.pixel_values.dtype == b.pixel_values.dtype
        assert torch.equal(a.image_grid_thw, b.image_grid_thw) and a.image_grid_thw.dtype == b.image_grid_thw.dtype
        # The stored images reprocess to the stored tensors (what the trainer gets from either).
        assert torch.equal(renderer.process(b.images)["pixel_values"], b.pixel_values)


# ----------------------------------------------------------------------------- failures


def test_hf_rollouts_are_reproducible_from_the_seed(hf, renderer, realx_tasks):
    """Episode and sampling seeds derive from (seed, task index, sample), not from the order in
    which concurrent episodes happen to run: the same seed gives the same trajectories."""
    def run(concurrency: int, seed: int):
        engine = RolloutEngine(lambda: gym.make("DeepEyes-RealX-v0"), TeacherForcedFirstTurn(hf, renderer, CODE_TURN),
                               renderer, max_concurrency=concurrency, max_response_tokens=120,
                               sampling=SamplingParams(max_tokens=48))
        try:
            return [(t.uid, t.response_ids, t.logprobs) for t in asyncio.run(engine.collect(realx_tasks[:2], 2, seed=seed))]
        finally:
            engine.close()

    a = run(4, seed=3)
    assert a == run(1, seed=3)
    assert a != run(4, seed=4)


def test_a_raising_backend_fails_only_its_episodes(renderer, toy_tasks):
    async def down():
        raise ConnectionError("backend down")

    bad = toy_tasks[1].id
    engine = RolloutEngine(toy_env, ScriptPolicy(renderer, {bad: down}), renderer, max_concurrency=4)
    SpyEnv.aborts.clear()
    try:
        trajs = asyncio.run(engine.collect(toy_tasks, 2, seed=0))
    finally:
        engine.close()
    for t in trajs:
        if t.group == bad:
            assert t.error == "policy error: ConnectionError: backend down" and t.response_ids == []
        else:
            check_trajectory(t, renderer)
            assert t.stop_reason == "answer" and [s.tool for s in t.turns] == ["python", None]
    assert sorted(SpyEnv.aborts) == [bad, bad]


def test_timeouts_fail_only_their_episodes_even_inside_a_tool(renderer, toy_tasks):
    """One task's generation hangs, another's tool call hangs (sleeps in the sandbox): both time
    out (the tool is killed by env.abort), the other episodes finish, and the envs are reused."""
    async def hang():
        await asyncio.Event().wait()

    slow_gen, slow_tool = toy_tasks[0].id, toy_tasks[1].id
    policy = ScriptPolicy(renderer, {slow_gen: hang})
    sleepy = renderer.encode_text("Wait.</think>\n<code>\n```python\nimport time\ntime.sleep(600)\n```\n</code>")
    orig = policy.generate

    async def generate(prompt_ids, images, sampling, *, request_id):
        g = await orig(prompt_ids, images, sampling, request_id=request_id)
        if request_id.startswith(slow_tool) and request_id.endswith("#0"):
            return Generation(renderer.decode(sleepy), "stop", "</code>", sleepy, [0.0] * len(sleepy), len(prompt_ids))
        return g

    policy.generate = generate
    made = []
    engine = RolloutEngine(lambda: made.append(1) or toy_env(), policy, renderer, max_concurrency=2, episode_timeout_s=5)
    SpyEnv.aborts.clear()
    try:
        trajs = asyncio.run(engine.collect(toy_tasks, 1, seed=0))
    finally:
        engine.close()
    by = {t.group: t for t in trajs}
    for tid in (slow_gen, slow_tool):
        assert by[tid].error == "the episode timed out after 5 s"
    for t in trajs:
        if t.group not in (slow_gen, slow_tool):
            check_trajectory(t, renderer)
    assert sorted(SpyEnv.aborts) == sorted([slow_gen, slow_tool])
    assert len(made) == 2  # both envs went back to the pool after their time-out


def test_cancel_and_abort_end_episodes_and_abort_their_envs(renderer, toy_tasks):
    """Dynamic sampling: stream trajectories as they finish, abort one episode by uid, cancel the
    rest; every episode yields exactly one trajectory and every cancelled one aborts its env."""
    blocked = threading.Event()  # never set: the hooked episodes wait until cancelled

    async def block():
        while not blocked.is_set():
            await asyncio.sleep(0.01)

    hooks = {toy_tasks[2].id: block, toy_tasks[3].id: block}
    engine = RolloutEngine(toy_env, ScriptPolicy(renderer, hooks), renderer, max_concurrency=8)
    SpyEnv.aborts.clear()
    seen = []

    async def main():
        run = engine.start(toy_tasks, 2, seed=1, on_trajectory=seen.append)
        got = []
        async for t in run:
            got.append(t)
            if len(got) == 4:
                break
        assert sorted(run.pending) == sorted(f"{toy_tasks[i].id}:{s}" for i in (2, 3) for s in (0, 1))
        assert engine.abort(f"{toy_tasks[2].id}:0") and not engine.abort("no-such:0")
        first = await run.__anext__()
        rest = await run.cancel()
        return got, first, rest, run

    try:
        got, first, rest, run = asyncio.run(main())
    finally:
        engine.close()
    assert all(t.error is None and t.stop_reason == "answer" for t in got)
    assert {t.group for t in got} == {toy_tasks[0].id, toy_tasks[1].id}
    assert first.uid == f"{toy_tasks[2].id}:0" and first.error == "aborted" and first.stop_reason == "abort"
    assert sorted(t.uid for t in rest) == sorted([f"{toy_tasks[2].id}:1", *(f"{toy_tasks[3].id}:{s}" for s in (0, 1))])
    assert all(t.error == "aborted" for t in rest)
    assert len(seen) == 8 and not run.pending
    # One abort per cancelled episode ("?": it was still in env.reset, before the episode existed).
    assert len(SpyEnv.aborts) == 4 and set(SpyEnv.aborts) <= {toy_tasks[2].id, toy_tasks[3].id, "?"}


def test_a_sampled_image_pad_fails_only_that_episode(renderer, toy_tasks):
    """The run-time invariants fire: a policy that writes an image-pad token (no image behind it),
    or one whose backend saw a different prompt length, fails that episode and no other."""
    policy = ScriptPolicy(renderer)
    orig = policy.generate

    async def generate(prompt_ids, images, sampling, *, request_id):
        g = await orig(prompt_ids, images, sampling, request_id=request_id)
        if request_id.startswith(toy_tasks[0].id) and request_id.endswith("#1"):
            ids = [renderer.image_pad_id, *g.token_ids]
            return Generation(renderer._tok.decode(ids[:-1], skip_special_tokens=False), "stop", None, ids, [0.0] * len(ids), g.prompt_tokens)
        if request_id.startswith(toy_tasks[1].id):
            g.prompt_tokens += 1
        return g

    policy.generate = generate
    engine = RolloutEngine(toy_env, policy, renderer, max_concurrency=4)
    try:
        trajs = asyncio.run(engine.collect(toy_tasks, 1, seed=0))
    finally:
        engine.close()
    assert trajs[0].error.startswith("invariant broken: image tokens do not match image features"), trajs[0].error
    assert trajs[1].error.startswith("invariant broken: the backend saw"), trajs[1].error
    for t in trajs[2:]:
        check_trajectory(t, renderer)


def test_the_response_budget_ends_the_episode_as_length(renderer, toy_tasks):
    """A budget smaller than the first turn: the turn is cut (finish "length"), no tool runs,
    and the trajectory is still exact (the closing end-of-turn id is template, mask 0)."""
    class Cut(ScriptPolicy):
        async def generate(self, prompt_ids, images, sampling, *, request_id):
            g = await super().generate(prompt_ids, images, sampling, request_id=request_id)
            ids = g.token_ids[: sampling.max_tokens]
            return Generation(self.r.decode(ids), "length" if len(ids) < len(g.token_ids) else g.finish_reason,
                              None, ids, g.logprobs[: len(ids)], len(prompt_ids))

    engine = RolloutEngine(toy_env, Cut(renderer), renderer, max_concurrency=2, max_response_tokens=5)
    try:
        (t,) = asyncio.run(engine.collect(toy_tasks[:1], 1, seed=0))
    finally:
        engine.close()
    check_trajectory(t, renderer)
    assert t.stop_reason == "length" and t.response_mask == [1] * 5 + [0]
    assert t.response_ids[-1] == renderer.eos_token_id and t.turns[0].tool is None


def test_a_group_reuses_the_initial_render_only_for_an_identical_reset_delta():
    from deepeyes_gym.agents.rollout import _same_delta
    from deepeyes_gym.envs.turns import EnvDelta, Message

    img = np.zeros((8, 8, 3), np.uint8)
    d = lambda im, q="Q?": EnvDelta((Message("system", "S"), Message("user", "<image>" + q, (im,))), "<think>")  # noqa: E731
    assert _same_delta(d(img), d(img.copy()))
    other = img.copy()
    other[3, 3, 1] = 1
    assert not _same_delta(d(img), d(other))
    assert not _same_delta(d(img), d(img, "Q2?"))
    assert not _same_delta(d(img), d(np.zeros((8, 9, 3), np.uint8)))
