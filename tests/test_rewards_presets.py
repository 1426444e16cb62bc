"""Presets reproduce the DeepEyesV2 numbers; combinators compose; the env can use them."""

from __future__ import annotations

import pytest

from deepeyes_gym.envs.episode import Episode
from deepeyes_gym.envs.rewards import (
    REALX_FORMAT_PENALTY,
    Accuracy,
    Bonus,
    Combine,
    Discount,
    FormatReward,
    Penalty,
    RewardResult,
    available_rewards,
    effective_tool_use,
    episode_from_text,
    format_failed,
    resolve_reward,
    weighted_sum,
)

OK = "<think>The sign reads 42.</think><answer>42</answer>"
WRONG = "<think>The sign reads 41.</think><answer>41</answer>"
NO_THINK_CLOSE = "<think>The sign reads 42.<answer>42</answer>"  # format error, answer right
SEARCH = '<think>Look it up.</think><tool_call>{"name": "search", "arguments": {"query": "q"}}</tool_call>'
BAD_SEARCH = '<think>Look it up.</think><tool_call>{"name": "search", "arguments": {"query": "q"}}'
LONG_RIGHT = "<think>t</think><answer>42 " + "because " * 40 + "</answer>"  # >= 300 chars


def reward(name, **kw):
    return resolve_reward(name, **kw)


# DeepEyesV2 release formula, written out as the release computes it.
def release(acc: float, fmt: float, search_penalty: float = 0.0) -> float:
    return 0.8 * acc * (1 - search_penalty) + 0.2 * fmt


@pytest.mark.parametrize(
    "turns, caps, acc, fmt, penalty",
    [
        ((OK,), {"perception"}, 1.0, 1.0, 0.0),
        ((WRONG,), {"perception"}, 0.0, 1.0, 0.0),
        ((NO_THINK_CLOSE,), {"perception"}, 1.0, 0.0, 0.0),
        ((OK,), {"reasoning"}, 1.0, 1.0, 0.0),
        ((SEARCH, OK), {"search"}, 1.0, 1.0, 0.1),
        ((OK,), {"search"}, 1.0, 1.0, 0.0),
        ((SEARCH, WRONG), {"search"}, 0.0, 1.0, 0.1),
        ((BAD_SEARCH, OK), {"search"}, 1.0, 0.0, 0.1),
        ((LONG_RIGHT,), {"perception"}, 0.0, 0.0, 0.0),  # anti-hacking cap zeroes accuracy
        ((LONG_RIGHT,), {"search"}, 0.0, 0.0, 0.0),
    ],
)
def test_deepeyesv2_numbers(turns, caps, acc, fmt, penalty):
    ep = episode_from_text(*turns, answer="42", capabilities=caps)
    r = reward("deepeyesv2")(ep)
    assert r.value == release(acc, fmt, penalty)  # exact float, same operations as the release
    assert r.breakdown["accuracy"] == acc
    assert r.breakdown["format_ok"] is (fmt == 1.0)


def test_deepeyesv2_exact_values():
    search_ok = episode_from_text(SEARCH, OK, answer="42", capabilities={"search"})
    assert reward("deepeyesv2")(search_ok).value == 0.9200000000000002  # 0.8*1*0.9 + 0.2
    assert reward("deepeyesv2")(search_ok).value == pytest.approx(0.92)
    assert reward("deepeyesv2")(episode_from_text(WRONG, answer="42")).value == 0.2
    assert reward("deepeyesv2")(episode_from_text(OK, answer="42")).value == 1.0
    assert reward("deepeyesv2")(episode_from_text(NO_THINK_CLOSE, answer="42")).value == 0.8


def test_python_tool_is_not_discounted_on_search_tasks():
    ep = episode_from_text(OK, answer="42", capabilities={"search"}, tool_turns=1)
    assert reward("deepeyesv2")(ep).value == 1.0


def test_long_answer_on_reasoning_task_keeps_accuracy():
    ep = episode_from_text(LONG_RIGHT.replace("because ", "").replace("42 ", "42"), answer="42",
                           capabilities={"reasoning"})
    assert reward("deepeyesv2")(ep).value == 1.0
    ep = episode_from_text("<think>t</think><answer>" + "4" * 400 + "</answer>", answer="4" * 400,
                           capabilities={"reasoning"})
    assert reward("deepeyesv2")(ep).value == 1.0


@pytest.mark.parametrize(
    "turns, expected",
    [
        ((OK,), 1.0),
        ((WRONG,), 0.0),
        ((NO_THINK_CLOSE,), 1.0 - REALX_FORMAT_PENALTY),
        (("<think>hmm<answer>41</answer>",), -REALX_FORMAT_PENALTY),
        ((LONG_RIGHT,), -REALX_FORMAT_PENALTY),
        (("<think>still thinking</think>",), -REALX_FORMAT_PENALTY),  # never answered
    ],
)
def test_realx_is_accuracy_minus_format_penalty(turns, expected):
    ep = episode_from_text(*turns, answer="42", capabilities={"perception"})
    r = reward("realx")(ep)
    assert r.value == expected
    assert r.breakdown["format_penalty"] == (0.0 if r.breakdown["format_ok"] else REALX_FORMAT_PENALTY)


def test_realx_is_the_default_and_penalty_is_configurable():
    ep = episode_from_text(NO_THINK_CLOSE, answer="42")
    assert resolve_reward(None)(ep).value == 0.75
    assert resolve_reward(None)(ep).breakdown["preset"] == "realx"
    assert reward("realx", format_penalty=0.5)(ep).value == 0.5
    assert REALX_FORMAT_PENALTY == 0.25


@pytest.mark.parametrize("turns, expected", [((OK,), 1.0), ((WRONG,), -1.0), ((NO_THINK_CLOSE,), -1.0),
                                             (("<think>x</think>",), -1.0)])
def test_dapo(turns, expected):
    assert reward("dapo")(episode_from_text(*turns, answer="42")).value == expected


def test_dapo_can_ignore_format():
    assert reward("dapo", require_format=False)(episode_from_text(NO_THINK_CLOSE, answer="42")).value == 1.0


def test_accuracy_preset():
    r = reward("accuracy")(episode_from_text(NO_THINK_CLOSE, answer="42"))
    assert r.value == 1.0 and r.breakdown["format_ok"] is False


CODE = "<think>Check.</think><code>\n```python\nprint(6 * 7)\n```\n</code>"
COMMENT_CODE = "<think>Check.</think><code>\n```python\n# just a comment\n'''docstring'''\npass\n```\n</code>"


@pytest.mark.parametrize(
    "turns, kwargs, expected",
    [
        ((CODE, OK), {}, 1.1),
        ((CODE, WRONG), {}, 0.0),  # gated on a correct answer
        ((OK,), {}, 1.0),
        ((COMMENT_CODE, OK), {}, 1.0),  # comment-only code is the known hack: no bonus
        ((CODE, OK), {"tools_fail": True}, 1.0),  # a failed tool earns nothing
        ((SEARCH, OK), {}, 1.1),
    ],
)
def test_tool_bonus_gated_on_correct_answer(turns, kwargs, expected):
    ep = episode_from_text(*turns, answer="42", **kwargs)
    r = reward("realx", tool_bonus=0.1)(ep)
    assert r.value == pytest.approx(expected)
    assert r.breakdown["tool_bonus"] == pytest.approx(0.1 if expected > 1 else 0.0)


def test_tool_bonus_on_deepeyesv2_and_default_off():
    ep = episode_from_text(CODE, OK, answer="42")
    assert reward("deepeyesv2", tool_bonus=0.2)(ep).value == pytest.approx(1.2)
    assert reward("deepeyesv2")(ep).value == 1.0
    assert "tool_bonus" not in reward("deepeyesv2")(ep).breakdown


def test_effective_tool_use():
    assert effective_tool_use(episode_from_text(CODE, OK, answer="1"))
    assert not effective_tool_use(episode_from_text(COMMENT_CODE, OK, answer="1"))
    assert not effective_tool_use(episode_from_text(OK, answer="1"))
    assert effective_tool_use(episode_from_text(SEARCH, OK, answer="1"), tools={"search"})
    assert not effective_tool_use(episode_from_text(SEARCH, OK, answer="1"), tools={"python"})


@pytest.mark.parametrize("name", ["realx", "deepeyesv2", "dapo", "accuracy"])
@pytest.mark.parametrize("turns", [(OK,), (WRONG,), ("<think>x",), ()])
def test_breakdown_always_has_the_keys_the_env_reads(name, turns):
    r = reward(name)(episode_from_text(*turns, answer="42"))
    assert isinstance(r.breakdown["accuracy"], float)
    assert isinstance(r.breakdown["format_ok"], bool)
    assert isinstance(r.breakdown["format_reasons"], list)
    assert r.breakdown["format_ok"] == (not r.breakdown["format_reasons"])


def test_presets_registered():
    assert {"realx", "deepeyesv2", "dapo", "accuracy"} <= set(available_rewards())


def test_accuracy_details():
    acc = Accuracy()
    r = acc(episode_from_text("<think>x</think><answer>(B) blue</answer>", answer="B",
                              options={"A": "red", "B": "blue"}))
    assert r.value == 1.0 and r.breakdown["accuracy_method"] == "rules:choice"
    r = acc(episode_from_text("<think>x</think><answer>3.14</answer>", answer="3.1416",
                              metadata={"tolerance": 1e-3}))
    assert r.value == 1.0
    r = acc(episode_from_text("<think>x</think><answer>b, a</answer>", answer="a, b",
                              metadata={"unordered": True}))
    assert r.value == 1.0
    r = acc(episode_from_text("<think>x</think><answer>42</answer>", answer="42", kind="numberz"))
    assert r.value == 1.0 and "unknown answer kind" in r.breakdown["kind_error"]  # no crash
    r = acc(episode_from_text("<think>x</think><answer>Paris, I believe</answer>", answer="Paris"))
    assert r.value == 0.0 and r.breakdown["accuracy_method"] == "rules:text_differs"


def test_answer_from_response_when_episode_answer_missing():
    ep = episode_from_text(OK, answer="42")
    ep.prediction = None  # e.g. an episode assembled by hand
    assert Accuracy()(ep).value == 1.0


# ------------------------------------------------------------------------- combinators
def always(v):
    return lambda ep: v


def test_weighted_sum_and_combine():
    ep = episode_from_text(OK, answer="42")
    fn = weighted_sum(a=(0.5, always(1.0)), b=(0.25, lambda e: RewardResult(2.0, {"x": 1})))
    r = fn(ep)
    assert r.value == 1.0 and r.breakdown["x"] == 1 and r.breakdown["components"] == {"a": 1.0, "b": 2.0}
    c = Combine(lambda res, e: res["acc"].value * 10, acc=Accuracy(), fmt=FormatReward())
    assert c(ep).value == 10.0 and c(ep).breakdown["format_ok"] is True
    with pytest.raises(ValueError):
        Combine(lambda r, e: 0.0)


def test_penalty_bonus_discount():
    ep = episode_from_text(NO_THINK_CLOSE, answer="42")
    base = Combine(lambda r, e: r["a"].value, a=Accuracy(), f=FormatReward())
    assert Penalty(base, 0.3, format_failed)(ep).value == pytest.approx(0.7)
    assert Penalty(base, 0.3, lambda e, r: False)(ep).breakdown["penalty"] == 0.0
    assert Bonus(always(1.0), 0.5, lambda e, r: True, name="b")(ep).value == 1.5
    assert Discount(always(0.8), 0.5, lambda e, r: True)(ep).value == pytest.approx(0.4)
    ok_ep = episode_from_text(OK, answer="42")
    assert Penalty(base, 0.3, format_failed)(ok_ep).value == 1.0


def test_user_reward_by_object():
    def my_reward(ep: Episode) -> float:
        return 2.0 if ep.prediction == "42" else 0.0

    fn = resolve_reward(my_reward)
    r = fn(episode_from_text(OK, answer="42"))
    assert r.value == 2.0 and r.breakdown == {}


def test_episode_from_text_records_turns_like_the_env():
    ep = episode_from_text(SEARCH, CODE, OK, answer="42", capabilities={"search"})
    assert [t.kind for t in ep.turns] == ["tool_call", "code", "answer"]
    assert ep.tools_used == ["search", "python"]
    assert ep.turns[1].arguments == "print(6 * 7)"
    assert ep.prediction == "42" and ep.terminated and not ep.truncated
    ep = episode_from_text(OK, answer="42", tool_turns=["search", "image_search", "python"])
    assert ep.tools_used == ["search", "image_search", "python"]
    ep = episode_from_text("no tags at all", answer="42")
    assert ep.turns[0].kind == "invalid" and ep.turns[0].error and ep.truncated


def test_env_pays_the_preset(tmp_path):
    from deepeyes_gym.envs import DeepEyesEnv
    from deepeyes_gym.envs.rewards import make_task

    tasks = [make_task("42", question="What number is on the sign?", kind="numeric",
                       capabilities={"search"})]
    env = DeepEyesEnv(tasks, tools=(), reward="deepeyesv2")
    try:
        env.reset(seed=0)
        _, rew, term, _, info = env.step("The sign reads 42.</think><answer>42</answer>")
    finally:
        env.close()
    assert term and rew == 1.0
    assert info["accuracy"] == 1.0 and info["format_ok"] is True and info["format_reasons"] == []
