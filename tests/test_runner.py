"""The benchmark runner: records, concurrency, per-episode errors, crash-safe resume."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deepeyes_gym.agents import Agent, AgentError
from deepeyes_gym.agents.baselines import DirectAnswerAgent, RandomAgent
from deepeyes_gym.benchmarks.records import read_records
from deepeyes_gym.benchmarks.runner import RunAborted, RunConfig, load_run, run_eval, select_tasks
from deepeyes_gym.benchmarks.summary import summarize
from deepeyes_gym.envs import V1_TOOLS, DeepEyesEnv, Task
from deepeyes_gym.envs.suites.builtin import toy_tasks

ROOT = Path(__file__).resolve().parents[1]
ENV = "DeepEyes-V1-Toy-v0"  # 12 tasks, zoom/rotate tools: no sandbox or search needed


def deterministic(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "timing"}


def cfg(tmp_path: Path, name: str = "run", **kw) -> RunConfig:
    base = dict(env_id=ENV, agent="random", out_dir=tmp_path / name, concurrency=4, samples=2, progress=False)
    base.update(kw)
    return RunConfig(**base)


class ZoomThenAnswer(Agent):
    """Zooms once, then answers a number derived from the task id (deterministic)."""

    name = "zoom"

    def act(self, messages, info=None):
        if sum(m["role"] == "assistant" for m in messages) == 0:
            return ('<think>look closer</think><tool_call>{"name": "image_zoom_in_tool", '
                    '"arguments": {"bbox_2d": [0, 0, 320, 240]}}</tool_call>')
        return f"<think>done</think><answer>{int(info['task_id'].rsplit('-', 1)[1]) % 4 + 1}</answer>"


def test_records_have_the_documented_fields(tmp_path):
    res = run_eval(cfg(tmp_path), agent=ZoomThenAnswer())
    lines = (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()
    assert len(lines) == len(res.records) == 24 and res.n_new == 24
    rec = json.loads(lines[0])
    for key in ("env_id", "agent", "task_index", "sample", "task_id", "reward", "accuracy", "format_ok", "prediction",
                "ground_truth", "capabilities", "domain", "turns", "timing", "images", "reward_breakdown"):
        assert key in rec
    assert rec["status"] == "ok" and rec["n_turns"] == 2
    zoom = rec["turns"][0]
    assert zoom["tool"] == "image_zoom_in_tool" and zoom["latency_s"] >= 0 and zoom["n_images"] == 1
    assert "<image>" in zoom["observation"]
    assert "base64" not in lines[0]  # images are files, never inlined
    files = [e["file"] for e in rec["images"]]
    assert len(files) == 2 and all((tmp_path / "run" / f).exists() for f in files)
    # the answers follow the agent's rule and the accuracy the ground truth
    for r in res.records:
        want = str(int(r["task_id"].rsplit("-", 1)[1]) % 4 + 1)
        assert r["prediction"] == want
        assert r["accuracy"] == float(want == r["ground_truth"])
    assert sorted((r["task_index"], r["sample"]) for r in res.records) == [(i, s) for i in range(12) for s in range(2)]


def test_concurrency_does_not_change_results(tmp_path):
    a = run_eval(cfg(tmp_path, "a", concurrency=1))
    b = run_eval(cfg(tmp_path, "b", concurrency=8))
    assert deterministic(summarize(a.records)) == deterministic(summarize(b.records))
    assert [r["prediction"] for r in a.records] == [r["prediction"] for r in b.records]


def test_existing_output_needs_resume(tmp_path):
    run_eval(cfg(tmp_path, samples=1))
    with pytest.raises(FileExistsError, match="--resume"):
        run_eval(cfg(tmp_path, samples=1))


def test_resume_after_interrupt_equals_uninterrupted_run(tmp_path):
    full = run_eval(cfg(tmp_path, "full"))
    with pytest.raises(KeyboardInterrupt):
        run_eval(cfg(tmp_path, "cut"), stop_after=9)
    partial = read_records(tmp_path / "cut" / "episodes.jsonl")
    assert 9 <= len(partial) < 24
    # a torn last line, as left by a kill in the middle of a write
    with open(tmp_path / "cut" / "episodes.jsonl", "a") as f:
        f.write('{"key": "11:1", "status": "ok", "accur')
    resumed = run_eval(cfg(tmp_path, "cut", resume=True))
    assert resumed.n_skipped == len(partial) and resumed.n_new == 24 - len(partial)
    on_disk = read_records(tmp_path / "cut" / "episodes.jsonl")
    assert len(on_disk) == 24 and len({r["key"] for r in on_disk}) == 24  # nothing twice
    assert deterministic(summarize(on_disk)) == deterministic(summarize(full.records))
    # resuming a finished run runs nothing and changes nothing
    again = run_eval(cfg(tmp_path, "cut", resume=True))
    assert again.n_new == 0 and deterministic(summarize(again.records)) == deterministic(summarize(full.records))


def test_resume_refuses_another_agent(tmp_path):
    run_eval(cfg(tmp_path, samples=1))
    with pytest.raises(ValueError, match="agent"):
        run_eval(cfg(tmp_path, samples=1, agent="direct", resume=True))


def test_raising_limit_extends_a_run(tmp_path):
    small = select_tasks(12, 4)
    assert set(small) <= set(select_tasks(12, 8)) and len(small) == 4
    run_eval(cfg(tmp_path, limit=4, samples=1))
    res = run_eval(cfg(tmp_path, limit=8, samples=1, resume=True))
    assert res.n_skipped == 4 and res.n_new == 4 and len(res.records) == 8


class FlakyAgent(Agent):
    """Fails on some tasks; ``broken=False`` makes it healthy again."""

    def __init__(self, broken=True):
        self.broken = broken
        self.inner = DirectAnswerAgent(seed=3)

    def act(self, messages, info=None):
        if self.broken and info["task_index"] % 3 == 0:
            raise AgentError("the model server is down")
        return self.inner.act(messages, info)


def test_agent_errors_are_recorded_and_retried_on_resume(tmp_path):
    res = run_eval(cfg(tmp_path, samples=1), agent=FlakyAgent())
    errored = [r for r in res.records if r["status"] == "error"]
    assert {r["task_index"] for r in errored} == {0, 3, 6, 9}
    assert all("server is down" in r["error"] and r["accuracy"] == 0.0 for r in errored)
    s = summarize(res.records)
    assert s["n_errors"] == 4 and s["n_episodes"] == 12
    assert s["accuracy_excluding_errors"]["n"] == 8
    healed = run_eval(cfg(tmp_path, samples=1, resume=True), agent=FlakyAgent(broken=False))
    assert healed.n_new == 4 and healed.n_skipped == 8
    assert all(r["status"] == "ok" for r in healed.records) and len(healed.records) == 12
    clean = run_eval(cfg(tmp_path, "clean", samples=1), agent=FlakyAgent(broken=False))
    assert deterministic(summarize(healed.records)) == deterministic(summarize(clean.records))


class DownAgent(Agent):
    def act(self, messages, info=None):
        raise AgentError("cannot connect")


def test_many_consecutive_errors_stop_the_run(tmp_path):
    with pytest.raises(RunAborted, match="--resume"):
        run_eval(cfg(tmp_path, samples=2, concurrency=2, max_consecutive_errors=5), agent=DownAgent())
    n = len(read_records(tmp_path / "run" / "episodes.jsonl"))
    assert 5 <= n < 24


def test_unreadable_task_image_is_an_errored_episode(tmp_path):
    tasks = toy_tasks(3) + [Task(id="broken", question="?", answer="1", images=[str(tmp_path / "missing.png")])]
    res = run_eval(cfg(tmp_path, samples=1), agent=DirectAnswerAgent(),
                   env_factory=lambda: DeepEyesEnv(tasks, tools=V1_TOOLS))
    bad = [r for r in res.records if r["task_id"] == "broken"]
    assert len(bad) == 1 and bad[0]["status"] == "error" and "reset failed" in bad[0]["error"]
    assert sum(r["status"] == "ok" for r in res.records) == 3


def test_stochastic_agents_are_reproducible(tmp_path):
    a = run_eval(cfg(tmp_path, "a"), agent=RandomAgent(seed=5))
    b = run_eval(cfg(tmp_path, "b", concurrency=3), agent=RandomAgent(seed=5))
    assert [r["turns"] for r in a.records][:3] and [
        [t["action"] for t in r["turns"]] for r in a.records] == [[t["action"] for t in r["turns"]] for r in b.records]


_KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from deepeyes_gym import cli
    from deepeyes_gym.agents import register_agent
    from deepeyes_gym.agents.baselines import RandomAgent

    class Slow(RandomAgent):
        def act(self, messages, info=None):
            time.sleep(0.01)
            return super().act(messages, info)

    register_agent("slow-random", Slow)
    sys.exit(cli.main(sys.argv[1:]))
""")


def _cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", _KILL_SCRIPT, "eval", "--env", ENV, "--agent", "slow-random", "--samples", "6",
            "--concurrency", "3", "--out", str(out), "--no-progress", "--no-plots", "--no-viewer", *extra]


def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full = subprocess.run(_cli(tmp_path / "full"), env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert full.returncode == 0, full.stderr
    total = len(read_records(tmp_path / "full" / "episodes.jsonl"))
    assert total == 72

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(out), env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = out / "episodes.jsonl"
    deadline = time.time() + 60
    try:
        while time.time() < deadline and proc.poll() is None:
            if path.exists() and path.read_bytes().count(b"\n") >= 20:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    n_before = len(read_records(path))
    assert 20 <= n_before < total, "the run ended before it could be killed"

    resumed = subprocess.run(_cli(out, "--resume", "--json"), env=env, cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    _, recs = load_run(out)
    assert len(recs) == total and len(read_records(path)) == total
    s_full = json.loads((tmp_path / "full" / "summary.json").read_text())
    s_resumed = json.loads((out / "summary.json").read_text())
    assert deterministic(s_resumed) == deterministic(s_full)
    assert s_resumed["timing"]["run"]["resumed_episodes"] == n_before


def test_progress_without_tqdm_falls_back_to_lines(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    res = run_eval(cfg(tmp_path, samples=1, progress=True), agent=DirectAnswerAgent())
    assert len(res.records) == 12
    assert "install tqdm for a progress bar" in capsys.readouterr().err


def test_benchmarks_import_only_envs_and_agents_and_stay_light():
    pkg = ROOT / "deepeyes_gym" / "benchmarks"
    for path in pkg.glob("*.py"):
        text = path.read_text()
        assert "trainers" not in re.findall(r"^\s*(?:from|import)\s+(\S+)", text, re.M).__str__(), path
    code = ("import sys, deepeyes_gym.cli, deepeyes_gym.benchmarks, deepeyes_gym.agents.openai; "
            "heavy = [m for m in ('matplotlib', 'tqdm', 'torch') if m in sys.modules]; print(heavy)")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
