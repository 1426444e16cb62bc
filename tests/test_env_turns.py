"""The env as a token-level consumer needs it: deltas, policy turns, stop reasons, one record."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

import deepeyes_gym  # noqa: F401
from deepeyes_gym import cli
from deepeyes_gym.agents.base import Agent
from deepeyes_gym.agents.loop import env_executor, run_episode
from deepeyes_gym.envs import DeepEyesEnv, Task, Tool, ToolResult
from deepeyes_gym.envs.episode_io import EpisodeStore
from deepeyes_gym.envs.rewards import resolve_reward
from deepeyes_gym.envs.suites.builtin import toy_tasks
from deepeyes_gym.envs.turns import IMAGE_TOKEN, EnvDelta, Message, PolicyTurn, clip_middle, clip_observation

V1 = ("image_zoom_in_tool", "image_rotate_tool")
ZOOM = '<think>z</think><tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [0, 0, 100, 100]}}</tool_call>'


class CountingTool(Tool):
    """Counts executions; returns what it is configured to."""

    name = "count"
    description = "count calls"

    def __init__(self, text="ok", images=()):
        self.calls, self.text, self.images = 0, text, list(images)

    def execute(self, args, ctx):
        self.calls += 1
        return ToolResult(self.text, list(self.images))


def call(name="count"):
    return f'<think>t</think><tool_call>{{"name": "{name}", "arguments": {{}}}}</tool_call>'


def test_reset_hands_out_the_first_user_turn_and_the_delta():
    env = DeepEyesEnv(toy_tasks(2), tools=V1)
    obs, info = env.reset(seed=0)
    delta = info["delta"]
    system, user = delta.messages
    assert system.role == "system" and system.text == env.system_prompt and system.images == ()
    assert user.role == "user" and obs["text"] == user.text
    assert len(obs["images"]) == len(user.images) == 1 and np.array_equal(obs["images"][0], user.images[0])
    assert obs["text"].startswith(IMAGE_TOKEN) and env.system_prompt not in obs["text"]
    assert delta.prefill == "<think>" and delta.stop_reason is None and info["stop_reason"] is None
    with pytest.raises(ValueError):  # the record's images (shared by the task's samples) are read-only
        user.images[0][0, 0, 0] = 1
    obs["images"][0][0, 0, 0] = 1  # the observation is the caller's own copy
    assert not np.shares_memory(obs["images"][0], user.images[0])
    env.close()


def test_samples_of_a_task_share_one_decoded_copy_of_its_images():
    task = toy_tasks(1)[0]
    a, b = DeepEyesEnv(None, tools=V1), DeepEyesEnv(None, tools=V1)
    _, ia = a.reset(options={"task": task})
    _, ib = b.reset(options={"task": task})
    assert ia["delta"].messages[1].images[0] is ib["delta"].messages[1].images[0]


def test_budget_is_checked_before_the_tool_runs():
    tool = CountingTool()
    env = DeepEyesEnv(toy_tasks(1), tools=(tool,), max_turns=2)
    env.reset(seed=0)
    obs, _, term, trunc, info = env.step(call())
    assert tool.calls == 1 and not (term or trunc) and info["delta"].messages[0].text == "ok"
    obs, _, term, trunc, info = env.step(call())
    assert tool.calls == 1, "the last permitted turn must not run a tool nobody reads"
    assert trunc and not term and info["stop_reason"] == "max_turns" and obs == {"text": "", "images": ()}
    assert info["delta"] == EnvDelta((), "", "max_turns")
    roles = [m.role for m in env.episode_record().messages()]
    assert roles == ["system", "user", "assistant", "user", "assistant"]  # no trailing observation


def test_an_answer_on_the_last_turn_still_counts():
    env = DeepEyesEnv(toy_tasks(1), tools=(CountingTool(),), max_turns=1)
    env.reset(seed=0)
    *_, term, trunc, info = env.step("<think>t</think><answer>3</answer>")
    assert term and not trunc and info["stop_reason"] == "answer"


@pytest.mark.parametrize("finish", ["length", "abort"])
def test_a_cut_turn_runs_no_tool_and_ends_the_episode(finish):
    tool = CountingTool()
    env = DeepEyesEnv(toy_tasks(1), tools=(tool,), max_turns=5)
    env.reset(seed=0)
    # A half-written code block that would parse as runnable code.
    obs, reward, term, trunc, info = env.step(PolicyTurn(call()[:-5], finish, n_tokens=40))
    assert tool.calls == 0 and trunc and not term and info["stop_reason"] == finish
    record = env.episode_record()
    assert record.turns[0].finish_reason == finish and record.turns[0].n_tokens == 40
    assert record.stop_reason == finish and record.prediction is None


def test_character_and_token_budgets_name_their_reason():
    env = DeepEyesEnv(toy_tasks(1), tools=(CountingTool(),), max_chars=60)
    env.reset(seed=0)
    *_, trunc, info = env.step(call() + " " * 40)
    assert trunc and info["stop_reason"] == "max_chars"
    tok = DeepEyesEnv(toy_tasks(1), tools=(CountingTool(),), max_tokens=100)
    tok.reset(seed=0)
    *_, trunc, _ = tok.step(PolicyTurn(call(), n_tokens=60))
    assert not trunc
    *_, trunc, info = tok.step(PolicyTurn(call(), n_tokens=40))  # sampled counts, no re-encoding
    assert trunc and info["stop_reason"] == "max_tokens"


def test_a_failed_reset_leaves_a_clean_env():
    env = DeepEyesEnv(toy_tasks(2), tools=V1)
    env.reset(seed=0)
    env.step(ZOOM)
    broken = Task(id="broken", question="q?", answer="1", images=(b"not an image",))
    with pytest.raises(Exception):
        env.reset(options={"task": broken})
    obs, reward, term, trunc, info = env.step("<answer>1</answer>")  # an observation, no AssertionError
    assert obs["text"].startswith("Error: no episode is running: the last reset failed") and reward == 0.0
    assert trunc and info["stop_reason"] == "error" and env.episode_record() is None
    obs, _ = env.reset(seed=1)  # and the env works again
    assert obs["text"].count(IMAGE_TOKEN) == 1


def test_tasks_none_takes_each_task_from_reset_options():
    env = DeepEyesEnv(None, tools=V1)
    with pytest.raises(ValueError, match="options"):
        env.reset(seed=0)
    task = toy_tasks(3)[2]
    obs, info = env.reset(options={"task": task})
    assert info["task_id"] == task.id
    *_, term, _, info = env.step("<think>t</think><answer>x</answer>")
    assert term and info["ground_truth"] == task.answer


def test_observation_clipping_keeps_every_placeholder():
    images = [np.zeros((40, 40, 3), np.uint8)] * 3
    text = "a" * 500 + IMAGE_TOKEN + "b" * 500 + IMAGE_TOKEN * 2 + "c" * 500
    env = DeepEyesEnv(toy_tasks(1), tools=(CountingTool(text, images),), max_obs_chars=200)
    env.reset(seed=0)
    obs, *_ = env.step(call())
    assert obs["text"].count(IMAGE_TOKEN) == 3 == len(obs["images"]) and "truncated" in obs["text"]
    assert env.messages()[-1]["content"].count({"type": "image", "image": None}) == 0
    assert sum(p["type"] == "image" for p in env.messages()[-1]["content"]) == 3


def test_clip_helpers():
    assert clip_middle("abc", 10) == ("abc", 0)
    for n in (100, 10_000):
        out, cut = clip_middle("x" * n, 60)
        assert len(out) <= 60 and cut == n - out.count("x")
    text = "<image>" + "y" * 300 + "<image>"
    assert clip_observation(text, 100).count("<image>") == 2 and len(clip_observation(text, 100)) <= 100


def test_returned_images_fit_the_turn_and_episode_budgets():
    big = [np.zeros((1000, 1000, 3), np.uint8)] * 4
    env = DeepEyesEnv(toy_tasks(1), tools=(CountingTool("see", big),), max_turn_pixels=1_000_000,
                      max_episode_pixels=1_500_000, max_turns=5)
    env.reset(seed=0)
    obs, *_ = env.step(call())
    assert sum(a.shape[0] * a.shape[1] for a in obs["images"]) <= 1_000_000 and len(obs["images"]) == 4
    assert "downscaled" in obs["text"] and obs["text"].count(IMAGE_TOKEN) == 4
    obs, *_ = env.step(call())
    assert sum(a.shape[0] * a.shape[1] for a in obs["images"]) <= 500_000
    obs, *_ = env.step(call())  # the episode budget is spent: images are dropped, with a note
    assert obs["images"] == () and "were not returned" in obs["text"] and IMAGE_TOKEN not in obs["text"]


def test_an_image_side_beyond_the_space_is_brought_inside():
    strip = [np.zeros((200, 40000, 3), np.uint8)]
    env = DeepEyesEnv(toy_tasks(1), tools=(CountingTool("s", strip),))
    env.reset(seed=0)
    obs, *_ = env.step(call())
    assert env.observation_space.contains(obs) and max(obs["images"][0].shape[:2]) <= 32768


def test_episode_record_saves_losslessly_and_rescores(tmp_path):
    long = "z" * 300_000
    env = DeepEyesEnv(toy_tasks(2), tools=(CountingTool(long + "\n" + IMAGE_TOKEN, [np.full((30, 50, 3), 9, np.uint8)]),),
                      max_obs_chars=400_000)
    env.reset(seed=0)
    env.step(call())
    env.step("<think>t</think><answer>2</answer>")
    ep = env.episode_record()
    store = EpisodeStore(tmp_path / "episodes")
    store.append(ep, key="0:0")
    store.append(ep, key="0:1")
    (back,) = store.load()[:1]
    assert [(m.role, m.text) for m in back.messages()] == [(m.role, m.text) for m in ep.messages()]
    assert len(back.turns[0].observation) == len(ep.turns[0].observation) > 200_000  # unclipped
    for m1, m2 in zip(ep.messages(), back.messages()):
        assert all(np.array_equal(a, b) for a, b in zip(m1.images, m2.images))
    assert back.reward == ep.reward and back.stop_reason == "answer" and back.task.answer == ep.task.answer
    assert len(list((tmp_path / "episodes" / "images").rglob("*.png"))) == 2  # each image stored once
    assert resolve_reward("realx")(back).value == ep.reward


def test_rescore_command(tmp_path, capsys):
    from deepeyes_gym.benchmarks.runner import RunConfig, run_eval

    run_eval(RunConfig(env_id="DeepEyes-V1-Toy-v0", agent="direct", out_dir=tmp_path / "run", limit=4,
                       progress=False, save_images=False))
    code = cli.main(["rescore", str(tmp_path / "run"), "--reward", "dapo"])
    out = capsys.readouterr().out
    assert code == 0 and "| 4 |" in out
    rows = [json.loads(x) for x in (tmp_path / "run" / "rescored-dapo.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["reward"] in (1.0, -1.0) for r in rows)
    assert cli.main(["rescore", str(tmp_path / "nothing")]) == cli.EXIT_USAGE


def test_make_vec_async_works_with_its_defaults():
    venv = gym.make_vec("DeepEyes-V1-Toy-v0", num_envs=2, vectorization_mode="async")
    try:
        obs, infos = venv.reset(seed=0)
        assert len(obs["text"]) == 2 and all(t.count(IMAGE_TOKEN) == 1 for t in obs["text"])
        assert all(len(ims) == 1 and ims[0].ndim == 3 for ims in obs["images"])
        obs, rew, term, trunc, infos = venv.step([ZOOM, "<answer>1</answer>"])
        assert obs["text"][0].startswith("<tool_response>") and len(obs["images"][0]) == 1
        assert list(term) == [False, True] and infos["stop_reason"][1] == "answer"
    finally:
        venv.close()


class SlowAgent(Agent):
    """Answers after a per-episode delay, in threads (a slow server for some episodes)."""

    def __init__(self, delays):
        self.delays = delays

    def act(self, messages, info=None):
        time.sleep(self.delays[info["k"]])
        return "<think>t</think><answer>1</answer>"


def test_run_episode_has_no_batch_barrier_and_charges_each_its_own_time():
    envs = [DeepEyesEnv(toy_tasks(2), tools=V1) for _ in range(3)]
    agent = SlowAgent({0: 0.6, 1: 0.05, 2: 0.05})
    ex = env_executor(3)

    async def main():
        asyncio.get_running_loop().set_default_executor(env_executor(3))
        return await asyncio.gather(*(run_episode(e, agent, seed=k, executor=ex, agent_info={"k": k})
                                      for k, e in enumerate(envs)))

    outs = asyncio.run(main())
    assert all(o.ok and o.episode.stop_reason == "answer" for o in outs)
    assert outs[0].agent_s >= 0.6 and outs[1].agent_s < 0.5 and outs[2].agent_s < 0.5
    assert outs[1].wall_s < 0.5  # it did not wait for episode 0's agent call


def test_run_episode_reports_failures_of_one_episode():
    class Broken(Agent):
        def act(self, messages, info=None):
            raise RuntimeError("server down")

    env = DeepEyesEnv(toy_tasks(1), tools=V1)
    out = asyncio.run(run_episode(env, Broken(), seed=0))
    assert not out.ok and "server down" in out.error
    out = asyncio.run(run_episode(env, SlowAgent({0: 0.0}), seed=0, options={"task": Task(
        id="b", question="q", answer="1", images=(b"junk",))}, agent_info={"k": 0}))
    assert out.error.startswith("reset failed")


def test_abort_ends_an_episode_from_another_thread():
    class Stuck(Tool):
        name = "stuck"
        description = "blocks until aborted"

        def __init__(self):
            self.released = threading.Event()

        def execute(self, args, ctx):
            self.released.wait(5)
            return ToolResult("late")

        def abort(self):
            self.released.set()

    env = DeepEyesEnv(toy_tasks(1), tools=(Stuck(),))
    env.reset(seed=0)
    threading.Timer(0.1, env.abort).start()
    obs, reward, term, trunc, info = env.step(call("stuck"))
    assert trunc and info["stop_reason"] == "abort" and reward == 0.0
    assert env.episode_record().stop_reason == "abort"


def test_message_checks_the_placeholder_invariant():
    with pytest.raises(AssertionError, match="placeholder invariant"):
        Message("user", IMAGE_TOKEN * 2, (np.zeros((2, 2, 3), np.uint8),))
    with pytest.raises(ValueError):
        Message("assistant", "x", (np.zeros((2, 2, 3), np.uint8),))
    assert Message("assistant", "I wrote <image> as text").images == ()
    assert Image.open  # PIL available for parts()
    from deepeyes_gym.envs.messages import message_parts

    parts = message_parts(Message("user", "a" + IMAGE_TOKEN + "b", (np.zeros((2, 2, 3), np.uint8),)), "array")
    assert [p["type"] for p in parts] == ["text", "image", "text"]


def test_a_policy_turn_is_recorded_exactly_as_decoded():
    """Token-level turns keep every character (a sampled NUL byte token too): the record must
    decode from the same ids the trainer trains on. Plain str actions are still sanitised."""
    env = DeepEyesEnv(toy_tasks(1), tools=V1)
    env.reset(seed=0)
    env.step(PolicyTurn("<think>a\x00b</think>", n_tokens=5))
    env.step("<think>c\x00d</think>")
    turns = env.episode_record().turns
    assert turns[0].action == "<think>a\x00b</think>" and turns[1].action == "<think>cd</think>"


def test_token_level_consumers_can_skip_the_reset_copy_and_prewarm_workers():
    task = toy_tasks(1)[0]
    env = DeepEyesEnv(None, tools=("python",), copy_reset_images=False)
    obs, info = env.reset(options={"task": task})
    shared = info["delta"].messages[1].images[0]
    assert obs["images"][0] is shared and not shared.flags.writeable
    assert env.prewarm(2, 60.0) >= 2
    assert DeepEyesEnv(None, tools=V1).prewarm(2) == 0  # no code tool, nothing to warm
    env.close()
