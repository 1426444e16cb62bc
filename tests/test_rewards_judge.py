"""The LLM judge against a local OpenAI-compatible server on 127.0.0.1 (a thread, ephemeral port)."""

from __future__ import annotations

import threading
import time

import pytest

from deepeyes_gym.envs.rewards import (
    Accuracy,
    JudgeConfig,
    JudgeError,
    JudgeUnavailableError,
    LLMJudge,
    build_messages,
    episode_from_text,
    parse_verdict,
    resolve_reward,
)
from httpserver import LocalServer, QuietHandler, free_port


class FakeJudge(LocalServer):
    """A minimal chat-completions server; ``policy(messages) -> reply text``."""

    def __init__(self):
        self.headers: list[dict] = []
        self.fail_next = 0  # answer HTTP 500 this many times first
        self.status = 200
        self.delay_s = 0.0
        self.inflight = 0
        self.max_inflight = 0
        self.policy = self.default_policy
        fake = self

        class Handler(QuietHandler):
            def do_GET(self):
                if self.path.endswith("/models"):
                    self.reply(200, {"object": "list", "data": [{"id": "fake-judge"}]})
                else:
                    self.reply(404, {"error": "not found"})

            def do_POST(self):
                body = self.json_body()
                with fake.lock:
                    fake.requests.append(body)
                    fake.headers.append(dict(self.headers))
                    fake.inflight += 1
                    fake.max_inflight = max(fake.max_inflight, fake.inflight)
                    fail = fake.fail_next > 0
                    fake.fail_next -= 1 if fail else 0
                try:
                    if fake.delay_s:
                        time.sleep(fake.delay_s)
                    if fail:
                        self.reply(500, {"error": "overloaded"})
                    elif fake.status != 200:
                        self.reply(fake.status, {"error": {"message": "model 'nope' does not exist"}})
                    else:
                        reply = fake.policy(body["messages"])
                        self.reply(200, {"choices": [{"message": {"role": "assistant", "content": reply}}]})
                finally:
                    with fake.lock:
                        fake.inflight -= 1

        super().__init__(Handler)
        self.url = self.base + "/v1"

    @staticmethod
    def default_policy(messages):
        text = messages[-1]["content"]
        if "Equivalence Judgement" in text:  # math prompt
            ref = text.split("**Reference Answer**")[1].split("## Student Final Answer")[0].strip()
            pred = text.split("## Student Final Answer")[1].strip()
            same = ref.replace(" ", "") == pred.replace(" ", "") or {ref, pred} == {"2x", "x+x"}
            return "## Equivalence Judgement\n" + ("TRUE" if same else "FALSE")
        ref = text.split("[Reference answer]:")[1].split("\n")[0].strip().lower()
        pred = text.split("[Model answer]:")[1].strip().lower()
        return "The answers agree.\n\\boxed{Yes}" if ref in pred else "They differ.\n\\boxed{No}"


@pytest.fixture
def fake():
    with FakeJudge() as f:
        yield f


def make_judge(url, tmp_path, **kw):
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("timeout_s", 5.0)
    return LLMJudge(JudgeConfig(base_url=url, cache_path=str(tmp_path / "cache.sqlite"), **kw))


def test_verdicts_and_model_discovery(fake, tmp_path):
    j = make_judge(fake.url, tmp_path)
    v = j.judge("Which city?", "Paris", "It is the city of Paris.")
    assert v.correct is True and not v.cached and "\\boxed{Yes}" in v.raw
    assert j.judge("Which city?", "Paris", "London").correct is False
    assert fake.requests[0]["model"] == "fake-judge"  # asked GET /models like DeepEyesV2
    assert fake.requests[0]["messages"][0]["role"] == "system"
    assert fake.requests[0]["temperature"] == 0.0


def test_cache_hit_sends_no_second_request(fake, tmp_path):
    j = make_judge(fake.url, tmp_path)
    first = j.judge("Q", "Paris", "Paris, France")
    assert len(fake.requests) == 1
    again = j.judge("Q", "Paris", "Paris, France")
    assert again.cached and again.correct is first.correct and len(fake.requests) == 1
    # On disk: a new judge with the same cache file does not ask either.
    j.close()
    j2 = make_judge(fake.url, tmp_path, model="fake-judge")
    assert j2.judge("Q", "Paris", "Paris, France").cached and len(fake.requests) == 1
    # A different prediction or mode is a different key.
    j2.judge("Q", "Paris", "Paris!")
    j2.judge("Q", "Paris", "Paris, France", mode="math")
    assert len(fake.requests) == 3


def test_cache_can_be_disabled(fake, tmp_path):
    j = LLMJudge(JudgeConfig(base_url=fake.url, cache_path=""))
    j.judge("Q", "a", "a")
    j.judge("Q", "a", "a")
    assert len(fake.requests) == 2


def test_math_mode_uses_true_false_prompt(fake, tmp_path):
    j = make_judge(fake.url, tmp_path)
    assert j.judge("Simplify x+x", "2x", "x+x", mode="math").correct is True
    assert "Equivalence Judgement" in fake.requests[-1]["messages"][-1]["content"]
    assert j.judge("Simplify x+x", "2x", "3x", mode="math").correct is False
    with pytest.raises(ValueError):
        j.judge("q", "a", "b", mode="vibes")


def test_retries_transient_errors(fake, tmp_path):
    fake.fail_next = 2
    j = make_judge(fake.url, tmp_path, max_retries=3)
    assert j.judge("Q", "cat", "a cat").correct is True
    assert len(fake.requests) == 3


def test_client_errors_fail_fast_with_the_server_message(fake, tmp_path):
    fake.status = 404
    j = make_judge(fake.url, tmp_path, model="nope", max_retries=3)
    with pytest.raises(JudgeError, match="HTTP 404.*does not exist"):
        j.judge("Q", "cat", "cat")
    assert len(fake.requests) == 1


def test_endpoint_down_is_a_clear_error(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    j = make_judge(url, tmp_path, model="m", max_retries=1, timeout_s=2.0, cooldown_s=60)
    with pytest.raises(JudgeUnavailableError) as info:
        j.judge("Q", "Paris", "Paris, France")
    msg = str(info.value)
    assert url in msg and "unavailable after 2 attempts" in msg and "judge=None" in msg
    sent = j.requests_sent
    with pytest.raises(JudgeUnavailableError):  # cooldown: fails fast, no new attempts
        j.judge("Q", "Paris", "somewhere else")
    assert j.requests_sent == sent
    assert not j.ping()


def test_reward_degrades_when_the_judge_is_down(tmp_path, caplog):
    url = f"http://127.0.0.1:{free_port()}/v1"
    judge = make_judge(url, tmp_path, model="m", max_retries=0, timeout_s=2.0)
    undecided = episode_from_text("<think>x</think><answer>the capital, Paris</answer>", answer="Paris")
    r = resolve_reward("deepeyesv2", judge=judge)(undecided)
    assert r.value == 0.2  # accuracy 0 (rules could not decide), format 1
    assert r.breakdown["accuracy"] == 0.0 and "unavailable" in r.breakdown["judge_error"]
    assert "LLM judge failed" in caplog.text
    # Rule-decidable answers never need the judge.
    sent = judge.requests_sent
    decided = episode_from_text("<think>x</think><answer>Paris</answer>", answer="Paris")
    assert resolve_reward("deepeyesv2", judge=judge)(decided).value == 1.0
    assert judge.requests_sent == sent
    with pytest.raises(JudgeUnavailableError):
        Accuracy(judge=judge, on_judge_error="raise")(undecided)


def test_accuracy_asks_the_judge_only_when_rules_cannot_decide(fake, tmp_path):
    judge = make_judge(fake.url, tmp_path)
    fn = resolve_reward("realx", judge=judge)
    r = fn(episode_from_text("<think>x</think><answer>42.0</answer>", answer="42"))
    assert r.value == 1.0 and r.breakdown["accuracy_method"] == "rules:numeric" and not fake.requests
    r = fn(episode_from_text("<think>x</think><answer>It is Paris, in France</answer>", answer="Paris"))
    assert r.value == 1.0 and r.breakdown["accuracy_method"] == "judge" and len(fake.requests) == 1
    r = fn(episode_from_text("<think>x</think><answer>It is Paris, in France</answer>", answer="Paris"))
    assert r.breakdown["accuracy_method"] == "judge_cache" and len(fake.requests) == 1
    # A reasoning task uses the TRUE/FALSE math prompt.
    ep = episode_from_text("<think>x</think><answer>x+x</answer>", answer="2x", kind="text",
                           capabilities={"reasoning"})
    assert fn(ep).value == 1.0
    assert "Equivalence Judgement" in fake.requests[-1]["messages"][-1]["content"]


def test_answer_cap_stops_judge_hacking(fake, tmp_path):
    judge = make_judge(fake.url, tmp_path)
    long = "Paris " + "or maybe Rome " * 30
    ep = episode_from_text(f"<think>x</think><answer>{long}</answer>", answer="Paris",
                           capabilities={"perception"})
    r = resolve_reward("deepeyesv2", judge=judge)(ep)
    assert r.value == 0.0 and r.breakdown["accuracy_method"] == "answer_too_long" and not fake.requests


def test_unparseable_verdict_is_retried_then_undecided(fake, tmp_path):
    fake.policy = lambda messages: "I cannot decide."
    j = make_judge(fake.url, tmp_path, max_retries=2)
    v = j.judge("Q", "a", "b")
    assert v.correct is None and len(fake.requests) == 3
    assert fake.requests[1]["temperature"] > 0  # a resample, not the same greedy reply
    r = Accuracy(judge=j)(episode_from_text("<think>x</think><answer>bb</answer>", answer="a"))
    assert r.value == 0.0 and r.breakdown["accuracy_method"] == "judge_unparsed"


def test_bounded_concurrency(fake, tmp_path):
    fake.delay_s = 0.05
    j = make_judge(fake.url, tmp_path, max_concurrency=3, model="fake-judge")
    items = [("Q", f"item{i}", f"item{i}") for i in range(12)]
    verdicts = j.judge_many(items)
    assert [v.correct for v in verdicts] == [True] * 12
    assert len(fake.requests) == 12
    assert 1 <= fake.max_inflight <= 3
    # Many threads sharing one judge are bounded too.
    fake.max_inflight = 0
    threads = [threading.Thread(target=j.judge, args=("Q", f"x{i}", f"x{i}")) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert 1 <= fake.max_inflight <= 3 and len(fake.requests) == 22


def test_api_key_header(fake, tmp_path):
    j = make_judge(fake.url, tmp_path, api_key="sk-test", model="m")
    j.judge("Q", "a", "a")
    assert fake.headers[0].get("Authorization") == "Bearer sk-test"


def test_config_validation():
    with pytest.raises(ValueError, match="http"):
        JudgeConfig(base_url="localhost:8000")
    with pytest.raises(ValueError):
        JudgeConfig(base_url="http://x", max_concurrency=0)
    with pytest.raises(TypeError):
        Accuracy(judge=42)
    assert JudgeConfig(base_url="http://h:1/v1/").base_url == "http://h:1/v1"


@pytest.mark.parametrize(
    "text, mode, expected",
    [
        ("reasoning...\n\\boxed{Yes}", "yesno", True),
        ("\\boxed{No}", "yesno", False),
        ("<think>Yes? no...</think>\\boxed{No}", "yesno", False),
        ("Yes.", "yesno", True),
        ("No", "yesno", False),
        ("Yes and no", "yesno", None),
        ("", "yesno", None),
        ("## Equivalence Judgement\nTRUE", "math", True),
        ("## Equivalence Judgement\nFALSE", "math", False),
        ("## Equivalence Judgement\nTRUE or FALSE", "math", None),
        ("blah", "math", None),
    ],
)
def test_parse_verdict(text, mode, expected):
    assert parse_verdict(text, mode) is expected


def test_build_messages():
    msgs = build_messages("Q?", "ref", "pred", "yesno")
    assert [m["role"] for m in msgs] == ["system", "user"] and "[Model answer]: pred" in msgs[1]["content"]
    msgs = build_messages("Q?", "ref", "pred", "math")
    assert len(msgs) == 1 and "## Student Final Answer\npred" in msgs[0]["content"]
