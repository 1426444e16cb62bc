"""Smoke test of examples/two_stage_tiny.py: the quick mode runs end to end and writes its results.

It checks the files and their keys only; whether the two-stage finding holds is the full script's
job (it runs minutes, over several seeds), not a timed test's.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "two_stage_tiny.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("two_stage_tiny", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the script loads
    spec.loader.exec_module(mod)
    return mod


def test_quick_mode_writes_results_and_plot(tmp_path):
    mod = _load_script()
    out = tmp_path / "two_stage"
    assert mod.main(["--quick", "--out", str(out)]) == 0

    res = json.loads((out / "results.json").read_text())
    for key in ("task_family", "settings", "arms", "per_seed", "summary", "findings", "rl_curves", "timings",
                "wall_s"):
        assert key in res, key
    assert res["arms"] == ["base", "sft", "sft_dapo", "dapo_from_base"]
    for arm in res["arms"]:
        assert len(res["per_seed"][arm]) == len(res["settings"]["seeds"]) == 1
        for metric in ("accuracy", "tool_call_rate", "tool_ok_rate", "format_rate"):
            s = res["summary"][arm][metric]
            assert 0.0 <= s["mean"] <= 1.0 and len(s["ci95"]) == 2 and s["n_seeds"] == 1
        assert res["per_seed"][arm][0]["n"] == res["settings"]["n_eval_tasks"]
    for key in ("rl_gain", "a_holds", "b_holds"):
        assert key in res["findings"], key
    for arm in ("sft_dapo", "dapo_from_base"):
        (curve,) = res["rl_curves"][arm]
        assert len(curve) == res["settings"]["rl_steps"] and "accuracy" in curve[0] and "tool_use_rate" in curve[0]

    st = res["settings"]
    assert st["rl_algorithm"] in ("dapo", "grpo") and st["rl_updates_per_step"] == st["rl_ppo_epochs"] * st["rl_minibatches"]
    md = (out / "results.md").read_text()
    assert "| arm |" in md and "SFT → DAPO" in md and "DAPO from base" in md
    assert "RL (both arms, identical)" in md
    png = out / "two_stage.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    # the stages' own outputs: the SFT store, the trainers' metrics, the evaluator's episodes
    assert any((out / "sft_data").iterdir())
    assert (out / "seed0" / "sft" / "metrics.jsonl").exists()
    assert (out / "seed0" / "sft_dapo" / "metrics.jsonl").exists()
    assert (out / "seed0" / "eval_sft" / "episodes.jsonl").exists()
