"""Property test: any string fed to step() gives a valid observation and never an exception."""

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepeyes_gym.envs import DeepEyesEnv, Tool, ToolResult
from deepeyes_gym.envs.suites.builtin import toy_tasks
from deepeyes_gym.envs.turns import IMAGE_TOKEN, PolicyTurn

FRAGMENTS = [
    "<think>", "</think>", "<answer>", "</answer>", "<code>", "</code>", "```python\n", "```",
    "<tool_call>", "</tool_call>", '{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [',
    '{"name": "image_rotate_tool", "arguments": {"angle": ', "]}}", "}}", "0, 0, 64, 64", "-1e309",
    "<image>", "\ud800", "\x00", "\n",
]

turns = st.lists(
    st.one_of(st.text(max_size=40), st.sampled_from(FRAGMENTS), st.integers().map(str)), max_size=12
).map("".join)

ENV = DeepEyesEnv(toy_tasks(4), tools=("image_zoom_in_tool", "image_rotate_tool"), max_turns=5)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 3), actions=st.lists(turns, min_size=1, max_size=6))
def test_random_turns_never_crash(seed, actions):
    obs, info = ENV.reset(seed=seed)
    assert ENV.observation_space.contains(obs)
    for action in actions:
        obs, reward, term, trunc, info = ENV.step(action)
        assert ENV.observation_space.contains(obs)
        assert isinstance(reward, float)
        assert obs["text"].count("<image>") == len(obs["images"])
        # info is plain data; the delta holds exactly what the step added
        json.dumps({k: v for k, v in info.items() if k not in ("reward_breakdown", "delta")})
        _check_delta(obs, info, term or trunc)
        if term or trunc:
            break


def _check_delta(obs, info, done):
    delta = info["delta"]
    if done:
        assert delta.messages == () and delta.prefill == "" and delta.stop_reason == info["stop_reason"]
        return
    (msg,) = delta.messages
    assert msg.role == "user" and msg.text == obs["text"] and msg.images == obs["images"]
    assert delta.prefill == "<think>" and delta.stop_reason is None


class EchoTool(Tool):
    """Returns the text and images it is asked for: long texts, stray placeholders, many images."""

    name = "echo"
    description = "echo text and images"
    parameters = {"type": "object", "properties": {"text": {"type": "string"}, "sides": {"type": "array"}},
                  "required": ["text", "sides"]}

    def execute(self, args, ctx):
        images = [np.full((int(h), int(w), 3), 7, np.uint8) for h, w in args["sides"]]
        return ToolResult(args["text"], images)


ECHO_ENV = DeepEyesEnv(toy_tasks(2), tools=(EchoTool(),), max_turns=4, max_obs_chars=300,
                       max_turn_pixels=64 * 64 * 4, max_episode_pixels=64 * 64 * 6)
side = st.tuples(st.integers(1, 300), st.integers(1, 300))
echo_text = st.lists(st.one_of(st.text(max_size=200), st.just(IMAGE_TOKEN), st.just("x" * 500)), max_size=8).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=st.lists(st.tuples(echo_text, st.lists(side, max_size=12)), min_size=1, max_size=4),
       finish=st.sampled_from(["stop", "stop", "stop", "length"]))
def test_long_tool_outputs_with_images_keep_one_placeholder_per_image(calls, finish):
    """Clipping, pixel budgets and stray placeholders never break placeholders == images."""
    ECHO_ENV.reset(seed=0)
    for text, sides in calls:
        action = "<think>t</think><tool_call>" + json.dumps(
            {"name": "echo", "arguments": {"text": text, "sides": [list(s) for s in sides]}}) + "</tool_call>"
        obs, _, term, trunc, info = ECHO_ENV.step(PolicyTurn(action, finish))
        assert ECHO_ENV.observation_space.contains(obs)
        assert obs["text"].count(IMAGE_TOKEN) == len(obs["images"]) <= 10
        assert len(obs["text"]) <= 300 + len(IMAGE_TOKEN) * len(obs["images"])
        _check_delta(obs, info, term or trunc)
        if term or trunc:
            assert finish == "length" or info["stop_reason"] == "max_turns"
            break
    record = ECHO_ENV.episode_record()
    assert sum(sum(a.shape[0] * a.shape[1] for a in t.observation_images)
               for t in record.turns) <= 64 * 64 * 6
    for m in record.messages():
        if m.role == "user":
            assert m.text.count(IMAGE_TOKEN) == len(m.images)
