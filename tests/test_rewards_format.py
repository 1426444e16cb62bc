"""The DeepEyesV2 format verdict (shared spec, Reward section)."""

from __future__ import annotations

import pytest

from deepeyes_gym.envs.rewards import (
    ANSWER_CAP,
    check_format,
    episode_format,
    episode_from_text,
    make_task,
    reward_category,
)

GOOD = "<think>Count them: 3 + 4.</think>\n<answer>7</answer>"


def test_well_formed_single_turn():
    v = check_format(GOOD)
    assert v.ok and v.reasons == [] and v.answer == "7" and bool(v)


def test_prefilled_think_is_prepended():
    # The env pre-fills "<think>", so the turn text starts inside the thoughts.
    assert check_format("Count them: 3 + 4.</think><answer>7</answer>").ok
    assert check_format(["look closer</think><code>\n```python\nprint(1)\n```\n</code>",
                         "ok</think><answer>7</answer>"]).ok


@pytest.mark.parametrize(
    "text, reason",
    [
        ("<answer>7</answer>", "no complete <think>"),
        ("<think>a</think><think>b<answer>7</answer>", "unbalanced <think> tags (2 open, 1 closed)"),
        ("<think>a</think>", "no <answer>...</answer> after the last </think>"),
        ("<think>a <answer>7</answer></think>", "no <answer>...</answer> after the last </think>"),
        ("<think>a</think><answer>7</answer><answer>8", "unbalanced <answer> tags"),
        ("<think>a</think><answer>  </answer>", "empty answer"),
        ("<think>a</think><code>print(1)<answer>7</answer>", "unbalanced <code> tags (1 open, 0 closed)"),
    ],
)
def test_each_rule_fails_with_its_reason(text, reason):
    v = check_format(text)
    assert not v.ok
    assert any(r.startswith(reason) for r in v.reasons), v.reasons


def test_tool_call_balance_only_for_search():
    text = "<think>a</think><tool_call>{\"name\": \"search\"}<think>b</think><answer>x</answer>"
    assert check_format(text).ok
    v = check_format(text, search=True)
    assert not v.ok and v.reasons == ["unbalanced <tool_call> tags (1 open, 0 closed)"]
    assert v.tool_call_used


def test_answer_cap():
    long_answer = "x" * ANSWER_CAP
    v = check_format(f"<think>a</think><answer>{long_answer}</answer>")
    assert not v.ok and v.answer_too_long and "answer too long (300 characters" in v.reasons[0]
    assert check_format(f"<think>a</think><answer>{long_answer[:-1]}</answer>").ok
    assert check_format(f"<think>a</think><answer>{long_answer}</answer>", answer_cap=None).ok


def test_several_reasons_are_all_reported():
    v = check_format("<code><answer></answer>")
    assert len(v.reasons) == 3, v.reasons


@pytest.mark.parametrize(
    "caps, kind, meta, category",
    [
        ({"search"}, None, None, "search"),
        ({"search", "reasoning", "perception"}, "numeric", None, "search"),
        ({"reasoning"}, None, None, "reasoning"),
        ({"perception", "reasoning"}, "math", None, "reasoning"),
        ({"perception", "reasoning"}, "text", None, "perception"),
        ({"perception"}, "numeric", None, "perception"),
        (set(), None, None, "perception"),
        (set(), "math", None, "reasoning"),
        ({"perception"}, None, {"reward_category": "search"}, "search"),
    ],
)
def test_reward_category(caps, kind, meta, category):
    assert reward_category(make_task("1", kind=kind, capabilities=caps, metadata=meta)) == category


def test_bad_category_override_is_a_clear_error():
    with pytest.raises(ValueError, match="reward_category"):
        reward_category(make_task("1", metadata={"reward_category": "vision"}))


def test_episode_format_applies_the_cap_by_category():
    long = "<think>a</think><answer>" + "1" * 400 + "</answer>"
    assert not episode_format(episode_from_text(long, answer="1", capabilities={"perception"})).ok
    assert not episode_format(episode_from_text(long, answer="1", capabilities={"search"})).ok
    assert episode_format(episode_from_text(long, answer="1", capabilities={"reasoning"})).ok


def test_episode_without_turns_fails_format():
    ep = episode_from_text(answer="1")
    v = episode_format(ep)
    assert not v.ok and ep.truncated and ep.prediction is None
