"""Summaries, bootstrap CIs, Markdown reports next to the published numbers, PNG plots."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from deepeyes_gym.benchmarks.plots import write_plots
from deepeyes_gym.benchmarks.report import PUBLISHED, comparison_table, published_for, render_comparison, render_report
from deepeyes_gym.benchmarks.summary import bootstrap_ci, summarize


def rec(i, acc, caps, domain="d1", tools=(), sample=0, status="ok", n_turns=None, errors=(), latency=0.01):
    turns = [{"kind": "tool_call", "tool": t, "error": "bad" if t in errors else None, "latency_s": latency,
              "step_s": latency + 0.0005} for t in tools]
    turns.append({"kind": "answer", "tool": None, "error": None, "latency_s": 0.0, "step_s": 0.0002})
    return {
        "key": f"{i}:{sample}", "task_index": i, "sample": sample, "env_id": "DeepEyes-RealX-v0", "agent": "a",
        "status": status, "error": None if status == "ok" else "agent error: down", "accuracy": acc if status == "ok" else 0.0,
        "reward": acc, "format_ok": True, "answer": "x", "capabilities": list(caps), "domain": domain,
        "family": "fam", "truncated": False, "n_turns": n_turns or len(turns), "turns": turns,
        "timing": {"wall_s": 0.5, "agent_s": 0.1, "reset_s": 0.01},
    }


@pytest.fixture
def records():
    return [
        rec(0, 1.0, ["perception"], tools=["python"]),
        rec(1, 0.0, ["perception", "reasoning"], tools=["python", "python"], errors=["python"]),
        rec(2, 1.0, ["search"], "d2", tools=["search"]),
        rec(3, 1.0, ["perception", "reasoning", "search"], "d2", tools=["python", "search", "image_search"]),
        rec(4, 0.0, ["reasoning"], status="error"),
        rec(5, 0.0, ["search"], "d2"),
    ]


def test_summary_numbers(records):
    s = summarize(records)
    assert s["n_episodes"] == 6 and s["n_errors"] == 1 and s["n_tasks"] == 6
    assert s["accuracy"]["mean"] == pytest.approx(3 / 6)
    assert s["accuracy_excluding_errors"]["mean"] == pytest.approx(3 / 5)
    assert s["by_capability"]["perception"]["n"] == 3
    assert s["by_capability"]["perception"]["mean"] == pytest.approx(2 / 3)
    assert s["by_capability"]["search"]["mean"] == pytest.approx(2 / 3)
    assert s["by_capability"]["reasoning"]["mean"] == pytest.approx(1 / 3)
    assert s["by_domain"]["d2"]["mean"] == pytest.approx(2 / 3)
    assert s["integration"] == {"n": 1, "mean": 1.0, "ci95": [1.0, 1.0]}
    tu = s["tool_use"]
    assert tu["per_tool"]["python"]["calls"] == 4 and tu["per_tool"]["python"]["episode_rate"] == pytest.approx(3 / 5)
    assert tu["per_tool"]["python"]["error_rate"] == pytest.approx(2 / 4)
    assert tu["any_tool_rate"] == pytest.approx(4 / 5)
    assert tu["by_capability"]["search"]["search"] == pytest.approx(2 / 3)
    assert tu["by_capability"]["perception"]["python"] == pytest.approx(1.0)
    assert s["turns"]["histogram"] == {"1": 1, "2": 2, "3": 1, "4": 1}
    assert s["timing"]["tool_latency_s"]["python"]["p50"] == pytest.approx(0.01)
    assert s["timing"]["env_overhead_ms_per_step"]["max"] == pytest.approx(0.5)
    assert s["top_errors"] == [{"error": "agent error: down", "count": 1}]


def test_duplicates_count_once_and_finished_beats_errored(records):
    dup = records + [dict(records[0]), rec(2, 0.0, ["search"], status="error")]
    a, b = summarize(records), summarize(dup)
    a.pop("timing"), b.pop("timing")
    assert a == b


def test_pass_at_k_with_samples():
    recs = [rec(i, float(s == 1 and i < 2), ["perception"], sample=s) for i in range(3) for s in range(3)]
    s = summarize(recs)
    assert s["samples"] == 3 and s["pass_at_3"] == pytest.approx(2 / 3)


def test_bootstrap_ci_is_seeded_and_sane():
    rng = np.random.default_rng(1)
    x = (rng.random(400) < 0.5).astype(float)
    lo, hi = bootstrap_ci(x, seed=0)
    assert lo < x.mean() < hi and 0.07 < hi - lo < 0.13  # ~ 2 * 1.96 * sqrt(.25 / 400) = 0.098
    assert bootstrap_ci(x, seed=0) == (lo, hi)
    lo_s, hi_s = bootstrap_ci(x[:40], seed=0)
    assert hi_s - lo_s > hi - lo
    assert bootstrap_ci([1.0, 1.0]) == (1.0, 1.0)
    assert all(v != v for v in bootstrap_ci([]))


def test_published_lookup():
    assert published_for("DeepEyes-RealX-v0") == "RealX-Bench"
    assert published_for("DeepEyes-RealX-Train-v0") is None
    assert published_for("DeepEyes-HRBench-8K-v0") == "HRBench-8K"
    assert published_for("DeepEyes-VStar-v0") == "V*"
    assert published_for("DeepEyes-V1-Toy-v0") is None
    assert PUBLISHED["RealX-Bench"]["DeepEyesV2-7B"] == 28.3


def test_comparison_table_puts_paper_numbers_beside_ours(records):
    s1 = summarize(records)
    s2 = summarize([dict(r, accuracy=0.0) for r in records])
    table = comparison_table({"scripted": s1, "direct": s2}, meta={"env_kwargs": {}})
    header = table.splitlines()[0]
    assert "| scripted | direct | DeepEyesV2-7B (paper) | best model (paper) | humans (paper) |" in header
    acc_row = next(l for l in table.splitlines() if l.startswith("| Accuracy"))
    assert acc_row == "| Accuracy (%) | 50.0 [16.7, 83.3] | 0.0 [0.0, 0.0] | 28.3 | 46.0 | 70.0 |"
    assert "bundled procedural RealX-style suite" in table
    real = comparison_table({"m": s1}, meta={"env_kwargs": {"data_path": "/data/realx"}})
    assert "bundled" not in real and "28.3" in real
    toy = comparison_table({"m": dict(s1, env_id="DeepEyes-V1-Toy-v0")})
    assert "paper" not in toy


def test_reports_render(records):
    s = summarize(records)
    md = render_report(s, {"env_kwargs": {}}, plots=["accuracy_by_capability.png"])
    for section in ("## Overview", "### By capability", "## Tool use", "## Turns", "## Latency", "## Errors",
                    "![accuracy_by_capability.png](accuracy_by_capability.png)"):
        assert section in md
    cmp_md = render_comparison({"a": s, "b": s})
    assert "a vs b" in cmp_md and "| Metric | a | b |" in cmp_md


def test_plots_are_pngs(tmp_path, records):
    s = summarize(records)
    names = write_plots({"scripted": s, "direct": summarize(records[:3])}, tmp_path)
    assert len(names) == 3
    for n in names:
        data = (tmp_path / n).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_missing_matplotlib_says_how_to_get_it(tmp_path, records, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"deepeyes-gym\[eval\]"):
        write_plots({"a": summarize(records)}, tmp_path)
