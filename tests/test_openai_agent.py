"""OpenAIAgent against a local /v1/chat/completions server on 127.0.0.1."""

from __future__ import annotations

import json
import time

import pytest

from deepeyes_gym.agents import AgentError, make_agent
from deepeyes_gym.agents.openai import OpenAIAgent, restore_stop_string
from deepeyes_gym.benchmarks.runner import RunConfig, run_eval
from deepeyes_gym.envs import V1_TOOLS, DeepEyesEnv
from deepeyes_gym.envs.suites.builtin import toy_tasks
from httpserver import LocalServer, QuietHandler, free_port

pytestmark = pytest.mark.timeout(60)


class FakeServer(LocalServer):
    """Replies from ``script`` (a list of (status, body-or-text)) and then with ``default``."""

    def __init__(self, default=None, delay=0.0):
        self.script: list = []
        self.default = default or (200, {"text": "<think>ok</think><answer>3</answer>", "finish": "stop"})
        self.delay = delay
        self.in_flight = 0
        self.max_in_flight = 0
        server = self

        class Handler(QuietHandler):
            def do_POST(self):
                body = self.json_body()
                with server.lock:
                    server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    reply = server.script.pop(0) if server.script else server.default
                status, spec = reply(body) if callable(reply) else reply
                try:
                    time.sleep(server.delay)
                    if isinstance(spec, dict):
                        msg = {"role": "assistant", "content": spec["text"]}
                        choice = {"index": 0, "message": msg, "finish_reason": spec.get("finish", "stop")}
                        if "stop_reason" in spec:
                            choice["stop_reason"] = spec["stop_reason"]
                        for extra in ("token_ids", "logprobs"):
                            if extra in spec:
                                choice[extra] = spec[extra]
                        payload = json.dumps({"choices": [choice], "usage": {"prompt_tokens": 10, "completion_tokens": 5}})
                    else:
                        payload = str(spec)
                    self.reply(status, payload)
                finally:
                    with server.lock:
                        server.in_flight -= 1

        super().__init__(Handler)
        self.url = self.base + "/v1"


@pytest.fixture
def server():
    with FakeServer() as s:
        yield s


def fast_agent(url, **kw):
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("max_retries", 3)
    kw.setdefault("timeout_s", 10)
    return OpenAIAgent(model="test-vlm", base_url=url, api_key="sk-test", **kw)


def env_messages():
    env = DeepEyesEnv(toy_tasks(1), tools=V1_TOOLS)
    env.reset(options={"task_index": 0})
    env.step('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [0, 0, 100, 100]}}</tool_call>')
    msgs = env.messages("pil")
    env.close()
    return msgs


def test_request_carries_images_as_data_urls_and_stop_strings(server):
    agent = fast_agent(server.url, temperature=0.7, max_tokens=321, top_p=0.9)
    out = agent.act(env_messages())
    assert out == "<think>ok</think><answer>3</answer>"
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    body = req["body"]
    assert body["model"] == "test-vlm" and body["temperature"] == 0.7 and body["max_tokens"] == 321
    assert body["top_p"] == 0.9 and body["stop"] == ["</code>", "</tool_call>"]
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    urls = [p["image_url"]["url"] for m in body["messages"] if isinstance(m["content"], list)
            for p in m["content"] if p["type"] == "image_url"]
    assert len(urls) == 2 and all(u.startswith("data:image/png;base64,") for u in urls)
    assert agent.stats["prompt_tokens"] == 10 and agent.stats["completion_tokens"] == 5


@pytest.mark.parametrize(
    "text, reason, want",
    [
        ("<think>x</think><code>\n```python\nprint(1)\n```\n", None, "<think>x</think><code>\n```python\nprint(1)\n```\n</code>"),
        ('<think>x</think><tool_call>{"name": "search"}', "</tool_call>", '<think>x</think><tool_call>{"name": "search"}</tool_call>'),
        ("<think>x</think><code>...</code>", "</code>", "<think>x</think><code>...</code>"),
        ("<think>x</think><answer>4</answer>", None, "<think>x</think><answer>4</answer>"),
    ],
)
def test_stop_string_is_put_back(server, text, reason, want):
    spec = {"text": text, "finish": "stop"}
    if reason:
        spec["stop_reason"] = reason
    server.default = (200, spec)
    assert fast_agent(server.url).act([{"role": "user", "content": "q"}]) == want
    assert restore_stop_string(text, reason) == want


def test_length_cut_is_left_alone(server):
    server.default = (200, {"text": "<think>long", "finish": "length"})
    assert fast_agent(server.url).act([{"role": "user", "content": "q"}]) == "<think>long"


def test_generation_carries_the_finish_reason_stop_string_ids_and_logprobs(server):
    server.default = (200, {"text": "<think>x</think><code>\n```python\nprint(1)\n```\n", "finish": "stop",
                            "stop_reason": "</code>", "token_ids": [5, 6, 7],
                            "logprobs": {"content": [{"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -1.0},
                                                     {"token": "c", "logprob": -0.25}]}})
    gen = fast_agent(server.url).generate([{"role": "user", "content": "q"}])
    assert gen.finish_reason == "stop" and gen.stop == "</code>" and gen.text.endswith("</code>")
    assert gen.token_ids == [5, 6, 7] and gen.logprobs == [-0.5, -1.0, -0.25] and gen.prompt_tokens == 10
    server.default = (200, {"text": "<think>long", "finish": "length"})
    gen = fast_agent(server.url).generate([{"role": "user", "content": "q"}])
    assert gen.finish_reason == "length" and gen.stop is None and gen.token_ids is None


def test_a_length_cut_turn_reaches_the_env_and_runs_no_code(tmp_path, server):
    """Before, the finish reason was dropped and the half-written code of a cut turn ran."""
    server.default = (200, {"text": "<think>x</think><code>\n```python\nprint('ran')\nfor i in range(", "finish": "length"})
    agent = make_agent("openai", model="test-vlm", base_url=server.url, backoff_s=0.01)
    res = run_eval(RunConfig(env_id="DeepEyes-Toy-v0", agent="openai", out_dir=tmp_path, limit=2,
                             concurrency=2, progress=False, save_images=False), agent=agent)
    agent.close()
    for r in res.records:
        assert r["status"] == "ok" and r["stop_reason"] == "length" and r["n_turns"] == 1
        assert r["turns"][0]["finish_reason"] == "length" and r["turns"][0]["tool"] is None


def test_server_errors_are_retried_then_succeed(server):
    server.script = [(500, "boom"), (503, "busy"), (429, "slow down")]
    agent = fast_agent(server.url, max_retries=3)
    assert agent.act([{"role": "user", "content": "q"}]).endswith("</answer>")
    assert len(server.requests) == 4 and agent.stats["retries"] == 3


def test_persistent_500_gives_a_clear_error(server):
    server.default = (500, "internal error: out of memory")
    agent = fast_agent(server.url, max_retries=2)
    with pytest.raises(AgentError, match="3 attempts.*HTTP 500.*out of memory"):
        agent.act([{"role": "user", "content": "q"}])


def test_client_errors_are_not_retried(server):
    server.default = (400, '{"error": "model test-vlm does not exist"}')
    with pytest.raises(AgentError, match="HTTP 400.*does not exist"):
        fast_agent(server.url).act([{"role": "user", "content": "q"}])
    assert len(server.requests) == 1


def test_malformed_response_is_an_agent_error(server):
    server.default = (200, "not json at all")
    with pytest.raises(AgentError, match="unexpected response"):
        fast_agent(server.url).act([{"role": "user", "content": "q"}])


def test_server_down_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}/v1"
    agent = fast_agent(url, max_retries=1)
    with pytest.raises(AgentError, match=r"cannot connect to http://127.0.0.1:\d+/v1/chat/completions.*running"):
        agent.act([{"role": "user", "content": "q"}])


def test_act_batch_bounds_concurrency_and_keeps_order():
    srv = FakeServer(delay=0.05)
    try:
        agent = fast_agent(srv.url, concurrency=3)
        srv.default = lambda body: (200, {"text": f"<answer>{body['messages'][0]['content']}</answer>"})
        out = agent.act_batch([[{"role": "user", "content": f"q{i}"}] for i in range(10)])
        agent.close()
    finally:
        srv.close()
    assert srv.max_in_flight == 3
    assert out == [f"<answer>q{i}</answer>" for i in range(10)]  # each episode gets its own reply


def test_act_batch_returns_per_episode_errors(server):
    server.script = [(200, {"text": "<answer>1</answer>"}), (400, "bad"), (200, {"text": "<answer>2</answer>"})]
    agent = fast_agent(server.url, concurrency=1)
    out = agent.act_batch([[{"role": "user", "content": str(i)}] for i in range(3)], return_exceptions=True)
    assert out[0] == "<answer>1</answer>" and isinstance(out[1], AgentError) and out[2] == "<answer>2</answer>"
    server.script = [(400, "bad"), (400, "bad")]
    with pytest.raises(AgentError):  # without return_exceptions the first failure raises
        agent.act_batch([[{"role": "user", "content": "x"}]] * 2)
    agent.close()


def test_runner_records_server_down_as_errored_episodes(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    agent = fast_agent(url, max_retries=0)
    res = run_eval(RunConfig(env_id="DeepEyes-V1-Toy-v0", agent="openai", out_dir=tmp_path, limit=4, progress=False,
                             max_consecutive_errors=0), agent=agent)
    assert len(res.records) == 4
    assert all(r["status"] == "error" and "cannot connect" in r["error"] for r in res.records)


def test_runner_drives_a_served_model(tmp_path, server):
    server.script = [(500, "warming up")]
    agent = make_agent("openai", model="test-vlm", base_url=server.url, backoff_s=0.01)
    res = run_eval(RunConfig(env_id="DeepEyes-V1-Toy-v0", agent="openai", out_dir=tmp_path, limit=5,
                             concurrency=3, progress=False), agent=agent)
    agent.close()
    assert [r["prediction"] for r in res.records] == ["3"] * 5 and all(r["status"] == "ok" for r in res.records)
    assert res.meta["agent_settings"]["model"] == "test-vlm" and "api_key" not in res.meta["agent_settings"]
