"""The single-process RL trainer end to end on a tiny local Qwen2.5-VL: reproducible, resumable,
and dynamic sampling that degrades gracefully."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from deepeyes_gym.agents.tiny import tiny_qwen25vl_dir  # noqa: E402

from deepeyes_gym.envs.rewards.base import RewardResult  # noqa: E402
from deepeyes_gym.trainers.metrics import read_metrics  # noqa: E402
from deepeyes_gym.trainers.rl import RLConfig, TaskSampler, train_rl  # noqa: E402


def parity_reward(episode):
    """A reward a random policy gets half the time: the parity of its first turn's length."""
    acc = float(len(episode.turns[0].action) % 2 == 0) if episode.turns else 0.0
    return RewardResult(2 * acc - 1, {"accuracy": acc, "format_ok": acc > 0})


def constant_reward(episode):
    return RewardResult(0.0, {"accuracy": 0.0})


def config(tmp_path, name, **kw):
    base = dict(model=str(tiny_qwen25vl_dir()), out_dir=str(tmp_path / name), env_id="DeepEyes-Toy-v0",
                env_kwargs={"reward": parity_reward}, train_batch=2, group_size=4, mini_batch=4, steps=4,
                max_response_tokens=96, max_turn_tokens=12, max_turns=2, overlong_buffer=32, concurrency=8,
                lr=3e-4, warmup_steps=1, deterministic=True, save_every=0, progress=False)
    base.update(kw)
    return RLConfig(**base)


def final_weights(out_dir):
    from safetensors.torch import load_file

    (ckpt,) = sorted(p for p in out_dir.glob("checkpoint-*/model/*.safetensors"))[-1:]
    return load_file(ckpt)


def test_dapo_is_reproducible_and_resume_continues_the_same_run(tmp_path):
    straight = train_rl(config(tmp_path, "straight"))
    again = train_rl(config(tmp_path, "again"))
    assert straight.losses == again.losses, "the same seed must give bitwise the same losses"
    assert any(loss != 0.0 for loss in straight.losses), "the reward must give some groups an advantage"

    first = train_rl(config(tmp_path, "resumed", steps=2))
    assert first.steps == 2
    second = train_rl(config(tmp_path, "resumed", steps=4, resume=True))
    assert second.steps == 4
    assert first.losses + second.losses == pytest.approx(straight.losses, abs=1e-6)
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    rows = read_metrics(tmp_path / "straight")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("reward", "accuracy", "entropy", "approx_kl", "clipfrac_low", "clipfrac_high", "mismatch_mean_abs",
                "filtered_group_frac", "tool_calls_per_traj", "tool_success_rate", "response_len",
                "time/generation_s", "time/update_s"):
        assert key in rows[0], key
    assert rows[0]["mismatch_max_abs"] < 1e-5  # the HF sampler and the learner agree token by token
    assert rows[0]["groups_kept"] == 2 and rows[0]["filtered_group_frac"] < 1


def test_dynamic_sampling_at_the_round_cap_trains_on_what_it_kept(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    res = train_rl(config(tmp_path, "flat", env_kwargs={"reward": constant_reward}, steps=1, max_gen_rounds=2,
                          deterministic=False))
    assert res.steps == 1 and res.losses == []  # every group filtered: no update, no crash
    assert "0 of 2 groups kept after 2 rounds" in caplog.text
    (row,) = read_metrics(tmp_path / "flat")
    assert row["groups_kept"] == 0 and row["filtered_group_frac"] == 1.0 and row["gen_rounds"] == 2


def test_task_sampler_is_seeded_without_replacement_and_resumable():
    tasks = [f"t{i}" for i in range(5)]
    s = TaskSampler(tasks, None, seed=3)
    first = [i for i, _ in s.next(5)]
    assert sorted(first) == [0, 1, 2, 3, 4]
    pos = s.position
    rest = [i for i, _ in s.next(3)]
    s2 = TaskSampler(tasks, None, seed=3)
    s2.position = pos
    assert [i for i, _ in s2.next(3)] == rest
    assert [i for i, _ in TaskSampler(tasks, [4, 2], seed=0).next(2)] in ([4, 2], [2, 4])
    with pytest.raises(ValueError):
        TaskSampler(tasks, [], seed=0)


def test_train_cli_prints_and_validates_the_config(tmp_path, capsys):
    from deepeyes_gym import cli

    cfg = tmp_path / "rl.yaml"
    cfg.write_text("model: some/dir\ntrain_batch: 4\nenv_kwargs: {max_turns: 3}\n")
    assert cli.main(["train", "rl", "--config", str(cfg), "--set", "lr=2e-6", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["train_batch"] == 4 and printed["lr"] == 2e-6 and printed["env_kwargs"] == {"max_turns": 3}
    assert printed["clip_low"] is None and printed["algorithm"] == "dapo"
    assert cli.main(["train", "rl", "--config", str(cfg), "--set", "no_such_field=1"]) == cli.EXIT_USAGE
    assert "no_such_field" in capsys.readouterr().err


@dataclass
class Inner:
    beta: float = 0.5
    """A weight."""


@dataclass
class Outer:
    lr: float = 1.0
    """Learning rate."""
    cap: float | None = None
    inner: Inner = field(default_factory=Inner)


def test_config_reads_yaml_numbers_nested_overrides_and_rejects_unknown_keys(tmp_path):
    from deepeyes_gym.trainers.config import field_docs, load_config

    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-6\ninner: {beta: 2}\n")  # YAML 1.1 reads 1e-6 as a string
    cfg = load_config(Outer, path, ["inner.beta=3e-1", "cap=5e-1"])
    assert cfg.lr == 1e-6 and cfg.inner.beta == 0.3 and cfg.cap == 0.5
    with pytest.raises(ValueError, match="expected a number"):
        load_config(Outer, None, ["lr=fast"])
    with pytest.raises(ValueError, match="unknown key"):
        load_config(Outer, None, ["inner.gamma=1"])
    assert field_docs(RLConfig)["group_size"].startswith("Samples per task")


def test_truncated_importance_sampling_logs_its_effect(tmp_path):
    res = train_rl(config(tmp_path, "tis", steps=1, tis_cap=1.5, deterministic=False))
    (row,) = [r for r in read_metrics(tmp_path / "tis") if "loss" in r]
    # On-policy HF rollouts: the sampler and the learner agree, so the weights are ~1, never capped.
    assert row["tis_weight_mean"] == pytest.approx(1.0, abs=1e-4) and row["tis_capped_frac"] == 0.0
    assert res.steps == 1


@pytest.mark.parametrize("name", ["rl_cpu", "ray_cpu", "rl_qwen7b_32gpu", "rl_qwen7b_1gpu", "sft_cpu"])
def test_shipped_configs_load_and_their_ray_settings_validate(name):
    from pathlib import Path

    from deepeyes_gym.trainers.config import load_config
    from deepeyes_gym.trainers.ray_backend.config import RayConfig
    from deepeyes_gym.trainers.sft import SFTConfig

    path = Path(__file__).resolve().parents[1] / "examples" / "configs" / f"{name}.yaml"
    if name.startswith("sft"):
        assert load_config(SFTConfig, path).epochs >= 1
        return
    cfg = load_config(RLConfig, path)
    assert cfg.backend in ("local", "ray")
    if cfg.backend == "ray":
        ray_cfg = RayConfig(**cfg.ray)  # unknown keys or bad values raise here, not at submit time
        if name == "rl_qwen7b_32gpu":  # 4 nodes x 8 GPUs: 16 engines + 16 learner ranks
            assert ray_cfg.rollout_workers * ray_cfg.gpus_per_rollout_worker + ray_cfg.learners * ray_cfg.gpus_per_learner == 32
