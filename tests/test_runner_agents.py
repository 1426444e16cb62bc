"""Baseline agents and the agent registry."""

from __future__ import annotations

import pytest

from deepeyes_gym.agents import AgentUnavailable, available_agents, make_agent, register_agent
from deepeyes_gym.agents.baselines import DirectAnswerAgent, RandomAgent
from deepeyes_gym.envs import V1_TOOLS, DeepEyesEnv, parse_action
from deepeyes_gym.envs.suites.builtin import toy_tasks


def conv(question: str, system: str = "sys"):
    return [{"role": "system", "content": system}, {"role": "user", "content": [{"type": "text", "text": question}]}]


def test_registry_names_and_errors(monkeypatch):
    import deepeyes_gym.agents as agents

    monkeypatch.setattr(agents._AGENTS, "_entries", dict(agents._AGENTS._entries))  # the test's registrations stay local
    assert {"scripted", "direct", "random", "openai"} <= set(available_agents())
    assert isinstance(make_agent("direct", seed=1), DirectAnswerAgent)
    with pytest.raises(KeyError, match="registered"):
        make_agent("nope")
    with pytest.raises(TypeError, match="direct"):
        make_agent("direct", bogus=1)
    with pytest.raises(ValueError, match="model"):
        make_agent("openai")
    register_agent("ghost", "deepeyes_gym.agents.not_written_yet:Ghost", "a module that does not exist")
    with pytest.raises(AgentUnavailable, match="not_written_yet"):
        make_agent("ghost")
    with pytest.raises(ValueError, match="already registered"):
        register_agent("ghost", DirectAnswerAgent)


def test_scripted_agent_loads():
    from deepeyes_gym.agents.scripted import ScriptedAgent

    assert isinstance(make_agent("scripted"), ScriptedAgent)


def test_direct_agent_answers_at_once_and_plausibly():
    agent = DirectAnswerAgent(seed=0)
    num = agent.act(conv("How many red squares are there?"), {"task_id": "t1", "answer_kind": "numeric"})
    action = parse_action(num)
    assert action.kind == "answer" and float(action.payload) in [float(k) for k in range(1, 11)]
    choice = parse_action(agent.act(conv("Pick"), {"task_id": "t2", "options": {"A": "x", "B": "y", "C": "z"}}))
    assert choice.payload in {"A", "B", "C"}
    first = DirectAnswerAgent(choice="first").act(conv("Pick"), {"task_id": "t2", "options": {"B": "x", "C": "y"}})
    assert parse_action(first).payload == "B"
    inline = parse_action(agent.act(conv("Which?\nA. red\nB. blue\nC. green"), {"task_id": "t3"}))
    assert inline.payload in {"A", "B", "C"}
    text = parse_action(agent.act(conv("Who designed the Velmar Bridge?"), {"task_id": "t4", "answer_kind": "text"}))
    assert text.payload in {"Velmar", "Bridge", "Who"}
    # seeded per episode: same task and sample, same answer; other samples vary
    a = [agent.act(conv("How many?"), {"task_id": "t5", "answer_kind": "numeric", "sample": s}) for s in range(12)]
    assert a == [agent.act(conv("How many?"), {"task_id": "t5", "answer_kind": "numeric", "sample": s}) for s in range(12)]
    assert len(set(a)) > 1


def test_random_agent_explores_the_action_space():
    env = DeepEyesEnv(toy_tasks(4), tools=V1_TOOLS)
    agent = RandomAgent(seed=1)
    kinds, tools = set(), set()
    try:
        for ep in range(40):
            _, info = env.reset(options={"task_index": ep % 4})
            info = dict(info, sample=ep)
            done = False
            while not done:
                _, _, term, trunc, step_info = env.step(agent.act(env.messages(), info))
                done = term or trunc
                kinds.add(step_info["action_kind"])
                tools.add(step_info["tool"])
    finally:
        env.close()
    assert {"answer", "tool_call", "invalid"} <= kinds
    assert {"image_zoom_in_tool", "image_rotate_tool"} <= tools
