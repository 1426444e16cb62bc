"""Scripted solvers of the RealX-style suite: pixel code, search parsing, and runs through the env."""

import contextlib
import io
import re
from collections import Counter

import pytest
from PIL import Image

from deepeyes_gym.agents.baselines import DirectAnswerAgent
from deepeyes_gym.agents.scripted import GlanceAgent, ScriptedAgent
from deepeyes_gym.envs.core import DeepEyesEnv
from deepeyes_gym.envs.suites.realx import load_suite
from deepeyes_gym.envs.suites.realx.solvers import (
    Observation,
    extract_fact,
    parse_image_results,
    parse_question,
    parse_search_results,
    run_solver,
    solve_turn,
    stdout_json,
)
from deepeyes_gym.envs.suites.realx.world import build_world


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return load_suite("eval", cache_dir=tmp_path_factory.getbasetemp() / "realx-cache")


def _sample(suite, per_family=2, families=None):
    """The first ``per_family`` tasks of each family (a fixed, stratified sample)."""
    seen, out = Counter(), []
    for i, t in enumerate(suite.tasks):
        f = t.metadata["family"]
        if (families is None or f in families) and seen[f] < per_family:
            seen[f] += 1
            out.append(i)
    return out


def _code_of(action: str) -> str:
    return re.search(r"```python\n(.*?)\n```", action, re.S).group(1)


def _run_code_here(code: str, image: Image.Image) -> Observation:
    """What the Python tool would return, executed in-process (tests only)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<cell>", "exec"), {"image_1": image})  # noqa: S102 - our own solver code
    return Observation(f"Code execution result:\nstdout:\n```\n{out.getvalue().strip()}\n```\n\nstderr:\n```\n\n```")


PIXEL_ONLY = ("count_marked", "chart_read", "board_compute", "chart_compute", "count_compare")


@pytest.mark.parametrize("family", PIXEL_ONLY)
def test_pixel_code_solves_pixel_families(suite, family):
    for i in _sample(suite, 2, {family}):
        t = suite.tasks[i]
        q = parse_question(t.prompt_text(), t.load_images(), family=family, domain=t.domain, options=t.options)
        first = run_solver(q, [])
        assert "<code>" in first
        obs = _run_code_here(_code_of(first), t.load_images()[0])
        final = run_solver(q, [obs])
        assert f"<answer>{t.answer}</answer>" in final, (t.id, obs.text[-300:], final)


def test_pixel_code_fails_on_a_downscaled_view(suite):
    """Counting and chart reading need full resolution: at a 1024-px view the code misses."""
    wrong = 0
    idx = _sample(suite, 3, {"count_marked", "chart_read"})
    for i in idx:
        t = suite.tasks[i]
        img = t.load_images()[0]
        small = img.resize((1024, round(1024 * img.height / img.width)), Image.LANCZOS)
        q = parse_question(t.prompt_text(), [small], family=t.metadata["family"], domain=t.domain)
        obs = _run_code_here(_code_of(run_solver(q, [])), small)
        wrong += f"<answer>{t.answer}</answer>" not in run_solver(q, [obs])
    assert wrong >= len(idx) - 1


def _results(*pairs):
    body = "\n\n".join(f"{i}. [{t}](https://x.example/{i})\n\n{s}" for i, (t, s) in enumerate(pairs, 1))
    return f"<tool_response>\nA Google search for 'q' found {len(pairs)} results:\n\n## Web Results\n{body}\n</tool_response>"


def test_fact_extraction_picks_the_named_entity_not_a_lookalike():
    world = build_world(0)
    groups = Counter(e.group for e in world.entities)
    gid = next(g for g, n in groups.items() if n >= 2)
    a, b = [e for e in world.entities if e.group == gid][:2]
    text = _results((f"{b.name} — profile", b.profile_text()), (f"{a.name} opens a site", f"In 2019, {a.name} announced a new site."),
                    (f"{a.name} — profile", a.profile_text()), (f"{a.name} — key figures", a.figures_text()))
    res = parse_search_results(text)
    assert [r["title"] for r in res][0] == f"{b.name} — profile"
    for attr in ("year", "town", "person", "count", "unit"):
        assert extract_fact(res, a.domain, a.name, attr) == str(getattr(a, attr))
    assert extract_fact(res[:2], a.domain, a.name, "year") is None


def test_observation_parsers_are_tolerant():
    assert parse_search_results("Search error (timeout): the engine did not answer") == []
    assert parse_image_results("<tool_response>\nA Google image search for the image found 2 results:\n\n## Web Results\n"
                               "1. <image>\n[Alpha Optics — official emblem] \n\n2. <image>\n[Beta — x] \n</tool_response>") == [
        "Alpha Optics — official emblem", "Beta — x"]
    assert stdout_json("Code execution result:\nstdout:\n```\nhello\n{\"a\": 1}\n```\n\nstderr:\n```\n\n```") == {"a": 1}
    assert stdout_json("Code execution result:\nstdout:\n```\n\n```\n\nstderr:\n```\nTraceback ...\n```") is None


def test_solver_recovers_from_tool_errors_with_a_clear_answer(suite):
    t = next(t for t in suite.tasks if t.metadata["family"] == "search_fact")
    q = parse_question(t.prompt_text(), family="search_fact", domain=t.domain)
    err = Observation("<tool_response>\nSearch error (timeout): try again\n</tool_response>")
    second = run_solver(q, [err])
    assert '"name": "search"' in second  # a retry with a broader query
    assert "<answer>unknown</answer>" in run_solver(q, [err, err])
    c = next(t for t in suite.tasks if t.metadata["family"] == "count_marked")
    qc = parse_question(c.prompt_text(), family="count_marked", domain=c.domain)
    crash = Observation("Code execution result:\nstdout:\n```\n\n```\n\nstderr:\n```\nMemoryError\n```")
    assert "<answer>unknown</answer>" in run_solver(qc, [crash])


def test_solve_turn_rejects_foreign_questions_politely():
    msgs = [{"role": "system", "content": "x"}, {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}]
    assert "<answer>unknown</answer>" in solve_turn(msgs, {})
    assert "<answer>unknown</answer>" in GlanceAgent().act(msgs, {})


def _run(env, agent, idx):
    results = []
    for i in idx:
        _, info = env.reset(options={"task_index": i})
        assert "answer" not in info and "family" in info
        step_info = {}
        for _ in range(env.max_turns):
            _, _, term, trunc, step_info = env.step(agent.act(env.messages(), info))
            if term or trunc:
                break
        results.append((i, float(step_info.get("accuracy", 0.0)), env.episode.tools_used))
    return results


@pytest.fixture(scope="module")
def env(suite):
    e = DeepEyesEnv(suite.tasks, tool_kwargs=suite.tool_kwargs(), shuffle=False)
    yield e
    e.close()


@pytest.mark.timeout(300)
def test_scripted_solvers_solve_a_sample_through_the_env_using_the_tools(suite, env):
    idx = _sample(suite, 2)  # 24 tasks, every family
    res = _run(env, ScriptedAgent(), idx)
    assert sum(acc for _, acc, _ in res) >= 0.95 * len(res), [r for r in res if r[1] < 1]
    for i, _, tools in res:
        caps, fam = suite.tasks[i].capabilities, suite.tasks[i].metadata["family"]
        if "search" in caps:
            assert "search" in tools
        if "perception" in caps or fam == "board_compute":
            assert "python" in tools
        if fam.startswith("emblem"):
            assert "image_search" in tools


@pytest.mark.timeout(300)
def test_agents_without_tools_fail_the_same_sample(suite, env):
    idx = _sample(suite, 2)
    for agent in (DirectAnswerAgent(seed=0), GlanceAgent()):
        res = _run(env, agent, idx)
        assert all(not tools for _, _, tools in res)
        assert sum(acc for _, acc, _ in res) <= 0.15 * len(res), (agent.name, [r for r in res if r[1] > 0])


@pytest.mark.timeout(300)
def test_reference_solutions_replay_through_the_env(suite, env):
    for i in _sample(suite, 1):
        t = suite.tasks[i]
        env.reset(options={"task_index": i})
        info = {}
        for turn in t.reference_solution:
            _, _, term, trunc, info = env.step(turn)
        assert term and info["accuracy"] == 1.0, (t.id, t.metadata["family"])
