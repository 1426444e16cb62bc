"""The deepeyes-gym command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepeyes_gym import cli

ROOT = Path(__file__).resolve().parents[1]
ENV = "DeepEyes-V1-Toy-v0"


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for name in ("envs", "agents", "eval", "report", "index", "sandbox-check"):
        assert name in text


@pytest.mark.parametrize("command, needle", [
    ("envs", "env id"), ("agents", "agents"), ("eval", "--resume"), ("eval", "viewer.html"),
    ("report", "episodes.jsonl"), ("index", "docs.jsonl"), ("sandbox-check", "isolation"),
])
def test_each_command_explains_itself(capsys, command, needle):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    assert needle in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    code, out, _ = run(capsys)
    assert code == cli.EXIT_USAGE and "commands" in out


def test_python_dash_m_works():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "deepeyes_gym", "envs"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and ENV in proc.stdout


def test_new_commands_join_by_registration(capsys, monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))
    seen = {}

    def configure(p):
        p.add_argument("--epochs", type=int, default=3)

    def go(args):
        seen["epochs"] = args.epochs
        return 0

    cli.register_command(cli.Command("sft", "supervised fine-tuning", "SFT on trajectories.", configure, go))
    assert cli.main(["sft", "--epochs", "5"]) == 0 and seen == {"epochs": 5}
    with pytest.raises(ValueError):
        cli.register_command(cli.Command("sft", "x", "x", configure, go))


def test_envs_and_agents(capsys):
    code, out, _ = run(capsys, "envs")
    assert code == 0 and ENV in out
    code, out, _ = run(capsys, "envs", "--json")
    assert ENV in json.loads(out)
    code, out, _ = run(capsys, "agents", "--json")
    assert {"scripted", "direct", "random", "openai"} <= set(json.loads(out))


def test_eval_writes_every_artifact_and_prints_the_table(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "eval", "--env", ENV, "--agent", "direct", "--compare", "random", "--limit", "4",
                         "--samples", "2", "--out", str(out_dir), "--no-progress", "--agent-arg", "random.p_answer=0.5")
    assert code == 0, err
    assert "| Metric | direct | random |" in out and "report:" in out
    for name in ("report.md", "summary.json", "accuracy_by_capability.png", "tool_use_by_category.png",
                 "turns_histogram.png"):
        assert (out_dir / name).exists(), name
    for agent in ("direct", "random"):
        for name in ("episodes.jsonl", "summary.json", "report.md", "viewer.html", "run.json",
                     "accuracy_by_capability.png"):
            assert (out_dir / agent / name).exists(), (agent, name)
        assert len((out_dir / agent / "episodes.jsonl").read_text().splitlines()) == 8
    meta = json.loads((out_dir / "random" / "run.json").read_text())
    assert meta["agent_settings"] == {"p_answer": 0.5}
    combined = json.loads((out_dir / "summary.json").read_text())
    assert set(combined["agents"]) == {"direct", "random"}
    assert combined["agents"]["direct"]["tool_use"]["any_tool_rate"] == 0.0

    # the same output folder again: refused without --resume, a no-op with it
    code, _, err = run(capsys, "eval", "--env", ENV, "--agent", "direct", "--out", str(out_dir / "direct"),
                       "--limit", "4", "--samples", "2", "--no-progress")
    assert code == cli.EXIT_USAGE and "--resume" in err
    code, out, _ = run(capsys, "eval", "--env", ENV, "--agent", "direct", "--out", str(out_dir / "direct"),
                       "--limit", "4", "--samples", "2", "--no-progress", "--resume", "--json")
    assert code == 0 and json.loads(out)["n_episodes"] == 8

    code, out, _ = run(capsys, "report", str(out_dir / "random"), "--no-plots")
    assert code == 0 and "| Metric | random |" in out


@pytest.mark.parametrize("argv, message", [
    (["--env", "Nope-v0", "--agent", "direct"], "unknown env id"),
    (["--env", ENV, "--agent", "nope"], "unknown agent"),
    (["--env", ENV, "--agent", "openai"], "needs --model"),
    (["--env", ENV, "--agent", "direct", "--resume"], "--resume needs --out"),
    (["--env", ENV, "--agent", "direct", "--agent", "direct"], "given twice"),
    (["--env", ENV, "--agent", "direct", "--env-arg", "novalue"], "KEY=VALUE"),
])
def test_eval_usage_errors_are_clear(capsys, argv, message):
    code, _, err = run(capsys, "eval", *argv, "--no-progress")
    assert code == cli.EXIT_USAGE and message in err


def test_eval_reports_an_unavailable_agent(capsys, monkeypatch, tmp_path):
    import deepeyes_gym.agents as agents

    monkeypatch.setattr(agents._AGENTS, "_entries", dict(agents._AGENTS._entries))
    agents.register_agent("later", "deepeyes_gym.agents.written_later:Later")
    code, _, err = run(capsys, "eval", "--env", ENV, "--agent", "later", "--out", str(tmp_path), "--no-progress")
    assert code == cli.EXIT_ERROR and "'later' agent is not available" in err and "written_later" in err


def test_bad_settings_are_one_clear_line(tmp_path, capsys):
    code, _, err = run(capsys, "eval", "--env", ENV, "--agent", "direct", "--agent-arg", "bogus=1",
                       "--out", str(tmp_path / "a"), "--no-progress")
    assert code == cli.EXIT_USAGE and "cannot build agent 'direct'" in err and "Traceback" not in err
    code, _, err = run(capsys, "eval", "--env", ENV, "--agent", "direct", "--env-arg", "reward=nope",
                       "--out", str(tmp_path / "b"), "--no-progress")
    assert code == cli.EXIT_USAGE and "unknown reward 'nope'" in err


def test_env_args_reach_the_env(tmp_path, capsys):
    code, out, err = run(capsys, "eval", "--env", ENV, "--agent", "direct", "--env-arg", "n_tasks=3",
                         "--out", str(tmp_path / "r"), "--no-progress", "--json", "--no-viewer", "--no-plots")
    assert code == 0, err
    assert json.loads(out)["n_tasks"] == 3


def test_index_builds_and_queries_a_corpus(tmp_path, capsys):
    from deepeyes_gym.envs.search.synthetic import make_synthetic_corpus

    corpus = make_synthetic_corpus(tmp_path / "corpus", n_docs=60, n_images=8, image_size=(96, 72))
    query, gold = corpus.text_queries[0]
    image = tmp_path / "corpus" / "images" / f"{corpus.image_ids[0]}.jpg"
    code, out, err = run(capsys, "index", str(tmp_path / "corpus"), "--query", query, "--image", str(image))
    assert code == 0, err
    assert "60 documents" in out and "8 images" in out and "built in" in out
    assert "<tool_response>" in out and "A Google search for" in out
    assert f"id={corpus.image_ids[0]}" in out.split("# image", 1)[1].splitlines()[1]  # the image ranks first
    code, out, _ = run(capsys, "index", str(tmp_path / "corpus"))
    assert "up to date" in out
    code, _, err = run(capsys, "index", str(tmp_path))
    assert code == cli.EXIT_USAGE and "docs.jsonl" in err


@pytest.mark.timeout(120)
def test_sandbox_check_reports_the_isolation(capsys):
    code, out, err = run(capsys, "sandbox-check", "--json", "--strict")  # one call: each starts a sandbox
    report = json.loads(out)
    assert report["level"] in ("bwrap", "unshare", "rlimits") and report["enforced"]
    assert code == (cli.EXIT_OK if report["is_strongest"] else cli.EXIT_ERROR)
