"""Property test: any string fed to step() gives a valid observation and never an exception."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepeyes_gym.envs import DeepEyesEnv
from deepeyes_gym.envs.suites.builtin import toy_tasks

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
        json.dumps({k: v for k, v in info.items() if k != "reward_breakdown"})  # info is plain data
        if term or trunc:
            break
