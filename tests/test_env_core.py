"""The env core: Gymnasium contract, seeding, dispatch, info, budgets, messages, v1 tools."""

import hashlib

import gymnasium as gym
import numpy as np
import pytest

from deepeyes_gym.envs.turns import PolicyTurn
from gymnasium.utils.env_checker import check_env
from PIL import Image

import deepeyes_gym
from deepeyes_gym.envs import DeepEyesEnv, Task
from deepeyes_gym.envs.suites.builtin import toy_tasks
from deepeyes_gym.envs.tools import ToolContext, ToolError, resize_returned_image
from deepeyes_gym.envs.tools.image_ops import RotateTool, ZoomInTool

V1 = ("image_zoom_in_tool", "image_rotate_tool")


def zoom(box, **extra):
    import json

    args = {"bbox_2d": box, **extra}
    return f'<think>zoom</think><tool_call>{json.dumps({"name": "image_zoom_in_tool", "arguments": args})}</tool_call>'


@pytest.fixture
def env():
    e = DeepEyesEnv(toy_tasks(6), tools=V1)
    yield e
    e.close()


def _digest(obs) -> str:
    h = hashlib.sha256(obs["text"].encode())
    for im in obs["images"]:
        h.update(im.tobytes())
    return h.hexdigest()


def test_data_envs_explain_a_missing_data_path():
    with pytest.raises(ValueError, match="needs data_path"):
        gym.make("DeepEyes-VStar-v0")


@pytest.mark.parametrize("env_id", sorted(deepeyes_gym.ENV_IDS))
def test_check_env_every_registered_id(env_id, tmp_path):
    from datafiles import write_rl_parquet, write_vlmevalkit_tsv

    from deepeyes_gym.envs.registration import BENCHMARK_OF, NEEDS_DATA

    kwargs = {}
    if env_id in NEEDS_DATA:
        if BENCHMARK_OF[env_id] in ("DeepEyesV2-RL", "MMSearch"):
            kwargs["data_path"] = str(write_rl_parquet(tmp_path / "data.parquet"))
        else:
            kwargs["data_path"] = str(write_vlmevalkit_tsv(tmp_path / "data.tsv"))
    env = gym.make(env_id, **kwargs)
    try:
        check_env(env.unwrapped)
    finally:
        env.close()


def test_observation_and_action_spaces(env):
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["text"].count("<image>") == len(obs["images"]) == 1
    assert obs["images"][0].shape == (480, 640, 3)  # original resolution
    env.action_space.seed(0)
    for _ in range(20):
        a = env.action_space.sample()
        assert env.action_space.contains(a)
    sample = env.observation_space.sample()
    assert env.observation_space.contains(sample)
    assert not env.action_space.contains("\ud800")
    assert not env.observation_space.contains({"text": "x", "images": (np.zeros((2, 2), np.uint8),)})


def test_seeding_gives_same_order_and_observations():
    def run(seed):
        e = DeepEyesEnv(toy_tasks(6), tools=V1)
        out = [_digest(e.reset(seed=seed)[0])] + [_digest(e.reset()[0]) for _ in range(5)]
        e.close()
        return out

    a, b, c = run(3), run(3), run(4)
    assert a == b
    assert a != c
    assert len(set(a)) == 6  # one epoch serves every task once


def test_reset_options_pick_a_task(env):
    _, info = env.reset(options={"task_index": 2})
    assert info["task_id"] == "toy-0-2"
    _, info = env.reset(options={"task_id": "toy-0-4"})
    assert info["task_id"] == "toy-0-4"


def test_answer_never_leaks_before_the_end(env):
    obs, info = env.reset(seed=0)
    truth = env.episode.task.answer
    assert "answer" not in info and "ground_truth" not in info
    obs, r, term, trunc, info = env.step(zoom([0, 0, 200, 200]))
    assert "ground_truth" not in info and "accuracy" not in info
    obs, r, term, trunc, info = env.step(f"The zoomed view shows it.</think><answer>{truth}</answer>")
    assert term and not trunc
    assert info["ground_truth"] == truth and info["accuracy"] == 1.0 and r == 1.0
    assert info["format_ok"] is True


def test_info_per_step(env):
    env.reset(seed=0)
    _, _, _, _, info = env.step(zoom([10, 10, 110, 90], label="squares"))
    assert info["turn"] == 1 and info["action_kind"] == "tool_call"
    assert info["tool"] == "image_zoom_in_tool" and info["error"] is None
    assert info["tool_latency_s"] > 0 and info["n_images"] == 1
    _, _, _, _, info = env.step("no action")
    assert info["action_kind"] == "invalid" and info["tool"] is None and info["error"].startswith("Error:")


def test_zoom_returns_full_resolution_crop(env):
    obs, _ = env.reset(seed=0)
    src = obs["images"][0]
    obs, *_ = env.step(zoom([100, 50, 300, 250]))
    assert obs["text"] == "<tool_response>\nZoomed in:\n<image>\n</tool_response>"
    np.testing.assert_array_equal(obs["images"][0], src[50:250, 100:300])


@pytest.mark.parametrize(
    "box, message",
    [
        ([700, 500, 900, 700], "Error: bbox_2d [700, 500, 900, 700] lies outside the image of size 640x480"),
        ([300, 300, 100, 100], "Error: invalid bbox_2d [300, 300, 100, 100]: need x1 < x2 and y1 < y2 (top-left, bottom-right)"),
        ([0, 0, 20, 200], "Error: bbox_2d [0, 0, 20, 200] is too small (20x200 px inside the image); each side must be at least 28 px"),
        ([0, 0, 5000, 30], "Error: bbox_2d [0, 0, 5000, 30] has an aspect ratio above 100"),
    ],
)
def test_zoom_errors(box, message):
    tool = ZoomInTool()
    ctx = ToolContext("t", [Image.new("RGB", (640, 480) if box[2] != 5000 else (6000, 480))])
    with pytest.raises(ToolError) as exc:
        tool.execute(tool.parse({"bbox_2d": box}), ctx)
    assert f"Error: {exc.value}" == message


def test_zoom_argument_errors_become_observations(env):
    env.reset(seed=0)
    cases = {
        '{"name": "image_zoom_in_tool", "arguments": {}}': "Error: 'image_zoom_in_tool' is missing required argument(s): bbox_2d",
        '{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [0,0,50,50], "zoom": 2}}': (
            "Error: 'image_zoom_in_tool' got unexpected argument(s): zoom; it accepts: bbox_2d, label, image_index"
        ),
        '{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [0,0,50]}}': (
            "Error: bbox_2d must be a list of 4 finite numbers [x1, y1, x2, y2]"
        ),
        '{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": "0,0,50,50"}}': (
            "Error: argument 'bbox_2d' of 'image_zoom_in_tool' must be of type array"
        ),
        '{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [0,0,50,50], "image_index": 3}}': (
            "Error: image_index must be between 1 and 1, got 3"
        ),
        '{"name": "web_browse", "arguments": {}}': (
            "Error: unknown tool 'web_browse'. Available actions: <tool_call> image_zoom_in_tool, "
            "<tool_call> image_rotate_tool, <answer>."
        ),
    }
    env.max_turns = 100
    for call, expected in cases.items():
        obs, r, term, trunc, info = env.step(f"<tool_call>{call}</tool_call>")
        assert obs["text"] == expected
        assert info["error"] == expected or info["error"] == expected[len("Error: "):]
        assert not term and not trunc
    obs, *_ = env.step("<code>\n```python\nprint(1)\n```\n</code>")
    assert obs["text"] == (
        "Error: code execution is not available here. Available actions: <tool_call> image_zoom_in_tool, "
        "<tool_call> image_rotate_tool, <answer>."
    )


def test_rotate_tool():
    img = Image.new("RGB", (100, 40), (10, 20, 30))
    tool = RotateTool()
    res = tool.execute(tool.parse({"angle": 90}), ToolContext("t", [img]))
    assert res.images[0].size == (40, 100)
    with pytest.raises(ToolError):
        tool.parse({"angle": float("nan")})


@pytest.mark.parametrize(
    "size, expected",
    [((10, 5), (64, 32)), ((1000, 2), (6400, 32)), ((640, 480), (640, 480)), ((40000, 100), (20000, 100))],
)
def test_returned_images_follow_protocol(size, expected):
    out = resize_returned_image(Image.new("RGB", size))
    assert (out.shape[1], out.shape[0]) == expected
    assert min(out.shape[:2]) >= 32 and max(out.shape[:2]) / min(out.shape[:2]) <= 200


def test_truncation_at_max_turns_pays_reward():
    env = DeepEyesEnv(toy_tasks(2), tools=V1, max_turns=3)
    env.reset(seed=0)
    for i in range(3):
        obs, r, term, trunc, info = env.step("thinking...")
    assert trunc and not term
    assert info["accuracy"] == 0.0 and info["prediction"] is None and info["format_ok"] is False
    assert r < 0  # format penalty: never answered
    obs, r, term, trunc, info = env.step("<answer>1</answer>")  # after the end: reported, no crash
    assert obs["text"] == "Error: the episode is over; call reset()." and r == 0.0 and trunc
    env.close()


def test_character_and_token_budgets():
    env = DeepEyesEnv(toy_tasks(2), tools=V1, max_chars=50)
    env.reset(seed=0)
    *_, trunc, _ = env.step("a" * 30)
    assert not trunc
    *_, trunc, _ = env.step("b" * 30)
    assert trunc
    env = DeepEyesEnv(toy_tasks(2), tools=V1, max_tokens=10)  # counts come with each PolicyTurn
    env.reset(seed=0)
    with pytest.raises(ValueError, match="n_tokens"):
        env.step("a plain str carries no token count")
    *_, trunc, info = env.step(PolicyTurn("x", n_tokens=12))
    assert trunc and info["stop_reason"] == "max_tokens"
    env = DeepEyesEnv(toy_tasks(2), tools=V1, max_tokens=5, token_counter=lambda s: len(s.split()))
    env.reset(seed=0)
    *_, trunc, _ = env.step("one two three four five six")
    assert trunc


def test_messages_are_openai_style(env):
    env.reset(seed=0)
    env.step(zoom([0, 0, 100, 100]))
    msgs = env.messages()
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert isinstance(msgs[0]["content"], str) and "<|im_start|>" not in msgs[0]["content"]
    parts = msgs[1]["content"]
    assert parts[0]["type"] == "image" and isinstance(parts[0]["image"], Image.Image)
    assert parts[1]["type"] == "text" and "How many" in parts[1]["text"]
    assert [p["type"] for p in msgs[3]["content"]] == ["text", "image", "text"]
    urls = env.messages("data_url")
    assert urls[1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    for m in msgs:
        text = m["content"] if isinstance(m["content"], str) else "".join(p.get("text", "") for p in m["content"])
        assert "<|im_start|>" not in text and "<|im_end|>" not in text


def test_stray_image_placeholder_is_neutralised():
    from deepeyes_gym.envs.tools import Tool, ToolResult

    class Echo(Tool):
        name = "echo"
        description = "echo"
        parameters = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}

        def execute(self, args, ctx):
            return ToolResult(args["text"])

    env = DeepEyesEnv(toy_tasks(1), tools=[Echo()])
    env.reset(seed=0)
    obs, *_ = env.step('<tool_call>{"name": "echo", "arguments": {"text": "a <image> b"}}</tool_call>')
    assert obs["text"] == "a [image] b" and obs["images"] == ()
    env.close()


def test_tool_crash_is_an_observation():
    from deepeyes_gym.envs.tools import Tool

    class Boom(Tool):
        name = "boom"
        description = "always fails"

        def execute(self, args, ctx):
            raise RuntimeError("kaput")

    env = DeepEyesEnv(toy_tasks(1), tools=[Boom()])
    env.reset(seed=0)
    obs, r, term, trunc, info = env.step('<tool_call>{"name": "boom"}</tool_call>')
    assert obs["text"] == "Error: the tool 'boom' failed: RuntimeError: kaput"
    assert not term and not trunc
    env.close()


def test_broken_image_tasks_are_skipped(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    tasks = [Task("bad", "q?", "1", images=[str(bad)]), Task("good", "q?", "1", images=[np.zeros((40, 40, 3), np.uint8)])]
    env = DeepEyesEnv(tasks, tools=V1, shuffle=False)
    obs, info = env.reset(seed=0)
    assert info["task_id"] == "good"
    assert info["skipped_tasks"][0][0] == "bad" and "cannot read image" in info["skipped_tasks"][0][1]
    env.close()


def test_custom_reward_callable():
    env = DeepEyesEnv(toy_tasks(1), tools=V1, reward=lambda ep: len(ep.turns) * 10)
    env.reset(seed=0)
    env.step("x")
    *_, r, term, trunc, info = env.step("<answer>0</answer>")
    assert r == 20.0
    env.close()


@pytest.mark.parametrize("vector_cls", [gym.vector.SyncVectorEnv, gym.vector.AsyncVectorEnv])
def test_vector_envs_run_four_copies(vector_cls):
    fns = [lambda: gym.make("DeepEyes-V1-Toy-v0") for _ in range(4)]
    venv = vector_cls(fns, **({"shared_memory": False} if vector_cls is gym.vector.AsyncVectorEnv else {}))
    try:
        obs, infos = venv.reset(seed=0)
        assert len(obs["text"]) == 4
        actions = [zoom([0, 0, 100, 100]), "garbage", "<answer>3</answer>", zoom([1, 1, 2, 2])]
        obs, rew, term, trunc, infos = venv.step(actions)
        assert rew.shape == (4,) and list(term) == [False, False, True, False] and not trunc.any()
        assert obs["text"][0].startswith("<tool_response>") and len(obs["images"][0]) == 1
        assert obs["text"][1].startswith("Error: no action found") and obs["images"][1] == ()
    finally:
        venv.close()


def test_render_ansi():
    env = DeepEyesEnv(toy_tasks(1), tools=V1, render_mode="ansi")
    env.reset(seed=0)
    env.step("<answer>1</answer>")
    text = env.render()
    assert "[system]" in text and "[assistant]" in text and "<answer>1</answer>" in text
    env.close()
