"""The paper's two-stage finding at toy scale, on CPU, with a tiny model built on the spot.

DeepEyesV2's central training result: RL alone does not teach a model to use tools; a cold-start
SFT stage on tool-using trajectories followed by DAPO does, and beats the SFT stage alone. This
script reproduces the shape of that result with a random-weight Qwen2.5-VL of 0.5 M parameters,
on a task family where the answer can only be read from a tool's output:

* **Task family** (``toy_count``, the bundled toy suite): a 640×480 canvas with small red, green
  and blue squares; "How many <colour> squares are in the image?". The model sees the image at
  56×56 pixels (4 visual tokens), where 10-pixel squares are invisible; the only way to the answer
  is to write pixel-counting Python (the env's sandboxed code tool runs it on the original image)
  and copy the printed count into ``<answer>``. Reward: the ``dapo`` preset (+1 right, −1 wrong).
* **Model**: a byte-level BPE trained here on the protocol text (digits one per token) and a
  random-weight ``Qwen2_5_VLForConditionalGeneration`` (text width 128, vision tower width 32),
  both from :mod:`deepeyes_gym.agents.tiny`'s builders.
* **Stage 1 (SFT)**: a teacher plays every training task through the env (so each observation is
  the tool's real output): it writes the counting code for a colour, runs it, and answers what it
  printed. The teacher has one systematic slip: on 2 of 3 blue questions it counts the green
  pixels. Its trajectories are kept as they are (``only_correct=False``), so the cold-start data
  teaches tool use, the answer format and copying, and also the slip; greedy SFT then answers blue
  questions with the green count. (At toy scale an accuracy filter would remove the slips; they
  stand for the errors that survive curation in a real cold-start set. With the filter on, this
  family is too easy to leave RL anything: 26 SFT epochs alone reached 1.0, 1.0 and 0.86 accuracy on
  36 held-out tasks, seeds 0-2.) ``train_sft`` trains on them, tool outputs masked.
* **Stage 2 (RL)**: ``train_rl`` with DAPO (clip-higher, dynamic sampling, token-level loss) from
  the SFT model, rewarded on the answer only; and, as the control, the same DAPO run from the
  untrained model.
* **Evaluation**: ``run_eval`` with the ``hf`` agent, greedy, on held-out tasks, for four arms:
  base, SFT, SFT→DAPO, DAPO from base. Accuracy (overall, on blue questions, on red/green ones)
  and tool-call rate per arm, mean over seeds with a 95 % t-interval; the RL gain paired by seed.

Outputs in ``--out`` (default ``runs/two_stage_tiny``): ``results.json``, ``results.md``,
``two_stage.png``, and every run folder (SFT/RL metrics.jsonl, eval episodes).

    python examples/two_stage_tiny.py                 # full: 5 seeds
    python examples/two_stage_tiny.py --quick         # smoke: 1 seed, a few steps (about a minute)

Recorded result (seeds 0-4, 48 held-out tasks, 850 s on 2 cores shared with other jobs, load
2-9; about 165 s per seed): base 0.000; SFT 0.762 [0.739, 0.786] (blue questions 0.21, red/green
0.99); SFT->DAPO 0.929 [0.800, 1.058] (blue 0.84, red/green 0.97); DAPO from base 0.000 with no
tool call. Paired RL gain +0.167 [+0.027, +0.306]: finding (a) holds (per seed 0.77->1.00,
0.77->0.88, 0.77->1.00, 0.77->0.77, 0.73->1.00; on seed 3 DAPO did not flip the blue questions
within 10 steps); finding (b) holds (every group from the untrained model is all-wrong, dynamic
sampling filters it: no gradient). What RL cost: at T=1 some rollouts break the answer turn after
a printed "1" ("<answer>1.</think>..."); on seed 1 greedy decoding inherited it (red/green 1.00 ->
0.82), and the format rate fell on seeds 1-2 (0.67 -> 0.33, 0.81 -> 0.40: extra text around a right
answer). At lr 1e-4 the same break happened on 1 seed of 4.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

ARMS = ("base", "sft", "sft_dapo", "dapo_from_base")
ARM_LABELS = {"base": "base (untrained)", "sft": "SFT only", "sft_dapo": "SFT → DAPO", "dapo_from_base": "DAPO from base"}

SYSTEM_PROMPT = "Count with python code, then answer with the number it prints."
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220)}  # builtin toy palette
TRAIN_ENV_ID = "TwoStageTiny-Count-Train-v0"
EVAL_ENV_ID = "TwoStageTiny-Count-Eval-v0"
IMAGE_PIXELS = 56 * 56  # at most 4 merged visual tokens per image
METRICS = ("accuracy", "blue_accuracy", "other_accuracy", "tool_call_rate", "tool_ok_rate", "format_rate")


@dataclass
class Settings:
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    n_train_tasks: int = 64
    n_eval_tasks: int = 48  # held-out tasks per greedy eval (more tasks: less per-seed eval noise)
    hidden: int = 128
    layers: int = 2
    # Copying the printed count is learnt abruptly (a cliff between 16 and 26 epochs whose place
    # varies by seed); 22 epochs on the unfiltered 64 episodes are past it on seeds 0-4.
    sft_epochs: int = 22
    # The teacher counts green pixels on this share of the blue questions (a systematic slip that an
    # accuracy filter would catch at toy scale, standing for the errors that survive curation at
    # real scale); SFT imitates it, greedy decoding then answers every blue question the wrong way.
    teacher_confusion: float = 2 / 3
    sft_only_correct: bool = False  # train on the teacher's trajectories as they are (slips included)
    sft_batch: int = 16
    sft_lr: float = 3e-3
    rl_steps: int = 10
    rl_batch: int = 4  # tasks (groups) per step
    rl_group: int = 8  # samples per task, G
    rl_lr: float = 5e-5  # gentle: at 1e-4 one seed of four lost the answer format on count-1 tasks
    rl_temperature: float = 1.0  # the paper's
    rl_algorithm: str = "dapo"
    rl_clip_high: float | None = 0.28  # DAPO's clip-higher ε_high
    # Two generation rounds per step at most (dynamic sampling drops all-right/all-wrong groups and
    # generates more): generation is most of a step's time on CPU.
    rl_max_gen_rounds: int = 2
    # Several clipped updates per batch of rollouts (PPO-style reuse; this is where clip-higher
    # acts): updates cost ~1 s against ~3 s of generation per step.
    rl_minibatches: int = 1  # mini-batches per pass over a step's trajectories
    rl_ppo_epochs: int = 2  # passes over a step's trajectories (updates per step = this × rl_minibatches)
    max_turn_tokens: int = 48  # the reference code turn is 32 tokens, the answer turn 8
    max_turns: int = 2


QUICK = Settings(seeds=(0,), n_train_tasks=32, n_eval_tasks=8, sft_epochs=2, rl_steps=2, rl_batch=2, rl_group=4)


# ----------------------------------------------------------------------------- task family

def code_action(colour: str) -> str:
    r, g, b = COLOURS[colour]
    return ("<think>Count the pixels.</think>\n<code>\n```python\nimport numpy as np\n"
            f"print((np.asarray(image_1) == ({r}, {g}, {b})).all(-1).sum() // 100)\n```\n</code>")


def answer_action(value: str) -> str:
    return f"<think>It printed {value}.</think>\n<answer>{value}</answer>"


def _tasks(split: str, n: int):
    from deepeyes_gym.envs.suites.builtin import toy_tasks

    return toy_tasks(n, seed={"train": 1001, "eval": 2002}[split])


def make_count_env(split: str = "train", n_tasks: int = 96, **kwargs: Any):
    """The toy counting family with the code tool only (train and held-out eval splits)."""
    from deepeyes_gym.envs.core import DeepEyesEnv

    kwargs.setdefault("tools", ("python",))
    kwargs.setdefault("system_prompt", SYSTEM_PROMPT)
    return DeepEyesEnv(_tasks(split, n_tasks), **kwargs)


def register_envs(s: Settings) -> None:
    import gymnasium as gym

    for env_id, split, n in ((TRAIN_ENV_ID, "train", s.n_train_tasks), (EVAL_ENV_ID, "eval", s.n_eval_tasks)):
        if env_id in gym.registry:
            del gym.registry[env_id]
        gym.register(id=env_id, entry_point=make_count_env, kwargs={"split": split, "n_tasks": n})


ENV_KWARGS = {"reward": "dapo", "tools": ["python"], "system_prompt": SYSTEM_PROMPT}


def teacher_colours(tasks: list[Any], confusion: float, seed: int = 0) -> list[str]:
    """The colour whose pixels the teacher counts, per task: the asked one, except on a fixed
    ``confusion`` share of the blue questions, where it counts the green ones (its systematic slip)."""
    asked = [t.metadata["colour"] for t in tasks]
    blue = [i for i, c in enumerate(asked) if c == "blue"]
    slips = set(random.Random(seed).sample(blue, round(confusion * len(blue))))
    return ["green" if i in slips else c for i, c in enumerate(asked)]


def make_sft_store(s: Settings, out: Path) -> dict[str, Any]:
    """Play the teacher through the env (real tool outputs) and store its episodes as they are.

    The teacher writes the counting code for a colour, runs it, and answers what it printed; its
    trajectories are kept unfiltered, so its slips on blue questions are in the cold-start data too.
    """
    import gymnasium as gym

    from deepeyes_gym.envs.episode_io import EpisodeStore

    env = gym.make(TRAIN_ENV_ID, max_turns=s.max_turns, **ENV_KWARGS)
    store = EpisodeStore(out)
    tasks = env.get_wrapper_attr("tasks")
    colours = teacher_colours(tasks, s.teacher_confusion)
    right = []
    try:
        for task, colour in zip(tasks, colours):
            env.reset(options={"task": task})
            obs, *_ = env.step(code_action(colour))
            printed = re.search(r"stdout:\n```\n(\d+)\s*```", obs["text"]).group(1)  # read the tool, not the task
            _, _, terminated, _, info = env.step(answer_action(printed))
            assert terminated
            right.append(info["accuracy"] == 1.0)
            store.append(env.get_wrapper_attr("episode_record")())
    finally:
        env.close()
    honest = [ok for ok, t, c in zip(right, tasks, colours) if c == t.metadata["colour"]]
    if not all(honest):
        raise RuntimeError(f"the teacher's code for the asked colour solved {sum(honest)}/{len(honest)} tasks")
    blue = [ok for ok, t in zip(right, tasks) if t.metadata["colour"] == "blue"]
    return {"episodes": len(tasks), "teacher_accuracy": sum(right) / len(right),
            "teacher_blue_accuracy": sum(blue) / max(1, len(blue)), "slips": sum(a != t.metadata["colour"]
                                                                               for a, t in zip(colours, tasks))}


# ----------------------------------------------------------------------------- tiny model

def _corpus(n: int = 400, seed: int = 0) -> list[str]:
    """The protocol text this family uses, with varied digits (what the tokenizer is trained on)."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        colour = rng.choice(list(COLOURS))
        v = str(rng.randint(0, 9))
        lines += [
            f"system\n{SYSTEM_PROMPT}\nuser\n",
            f"\nHow many {colour} squares are in the image? Answer with a number.\nassistant\n<think>",
            code_action(colour),
            f"Code execution result:\nstdout:\n```\n{v}\n\n```\n\nstderr:\n```\n\n```",
            answer_action(v),
            f"Error: {rng.choice(['the answer is empty', 'no action found', 'bad code'])}. {i} {rng.random():.4f}",
        ]
    return lines


def build_model(out: Path, *, seed: int, hidden: int, layers: int) -> Path:
    """A random-weight Qwen2.5-VL (seeded, one per experiment seed) with a tokenizer trained here on
    this family's text; digits are split one per token, so a count is copied digit by digit."""
    from deepeyes_gym.agents.tiny import build_qwen25vl, train_tokenizer

    tok = train_tokenizer(out / "tokenizer", _corpus(), vocab_size=800, split=r"\p{N}|\n")
    ids = {t["content"]: t["id"] for t in json.loads((tok / "tokenizer.json").read_text())["added_tokens"]}
    eos, pad = ids["<|im_end|>"], ids["<|endoftext|>"]
    heads = max(2, hidden // 32)
    return build_qwen25vl(out, tok, seed=seed, hidden=hidden, layers=layers, heads=heads, kv_heads=max(1, heads // 2),
                          rope_theta=10000.0, vision_depth=1, min_pixels=IMAGE_PIXELS // 2, max_pixels=IMAGE_PIXELS,
                          generation={"bos_token_id": pad, "pad_token_id": pad, "eos_token_id": [eos, pad]})


# ----------------------------------------------------------------------------- stages

def evaluate(model_dir: Path, out: Path, s: Settings) -> dict[str, Any]:
    from deepeyes_gym.benchmarks.runner import RunConfig, run_eval

    res = run_eval(RunConfig(
        env_id=EVAL_ENV_ID, agent="hf", out_dir=out, concurrency=2, progress=False, save_images=False,
        env_kwargs={**ENV_KWARGS, "max_turns": s.max_turns},
        agent_kwargs={"model": str(model_dir), "max_tokens": s.max_turn_tokens, "temperature": 0.0,
                      "max_pixels": IMAGE_PIXELS}))
    recs = [r for r in res.records if r.get("status") == "ok"]
    n = max(1, len(recs))

    def used_tool(r: dict, ok_only: bool = False) -> bool:  # ok: the code ran with an empty stderr
        return any(t.get("tool") and (not ok_only or (t.get("error") is None and re.search(
            r"stderr:\n```\n\s*```", t.get("observation") or ""))) for t in r.get("turns", []))

    def acc(blue: bool) -> float:  # accuracy on the questions where the teacher slips (blue) / never slips
        sub = [r["accuracy"] for r in recs if ("How many blue" in r["question"]) == blue]
        return sum(sub) / max(1, len(sub))

    return {
        "n": len(recs),
        "accuracy": sum(r["accuracy"] for r in recs) / n,
        "blue_accuracy": acc(True),
        "other_accuracy": acc(False),
        "tool_call_rate": sum(used_tool(r) for r in recs) / n,
        "tool_ok_rate": sum(used_tool(r, True) for r in recs) / n,
        "format_rate": sum(bool(r.get("format_ok")) for r in recs) / n,
        "errors": len(res.records) - len(recs),
    }


def run_sft(model_dir: Path, store: Path, out: Path, s: Settings, seed: int) -> Path:
    from deepeyes_gym.trainers.sft import SFTConfig, train_sft

    res = train_sft(SFTConfig(model=str(model_dir), data=[str(store)], out_dir=str(out), epochs=s.sft_epochs,
                              batch_size=s.sft_batch, lr=s.sft_lr, warmup_ratio=0.1, max_pixels=IMAGE_PIXELS,
                              freeze_vision=True, only_correct=s.sft_only_correct, seed=seed, device="cpu"))
    return res.final_model


def run_rl(model_dir: Path, out: Path, s: Settings, seed: int) -> tuple[Path, list[dict[str, Any]]]:
    from deepeyes_gym.trainers.metrics import read_metrics
    from deepeyes_gym.trainers.rl import RLConfig, train_rl

    cfg = RLConfig(
        model=str(model_dir), out_dir=str(out), env_id=TRAIN_ENV_ID, env_kwargs=dict(ENV_KWARGS),
        algorithm=s.rl_algorithm, clip_high=s.rl_clip_high, train_batch=s.rl_batch, group_size=s.rl_group,
        gen_batch=s.rl_batch, max_gen_rounds=s.rl_max_gen_rounds,
        mini_batch=max(1, s.rl_batch * s.rl_group // s.rl_minibatches), ppo_epochs=s.rl_ppo_epochs, lr=s.rl_lr, weight_decay=0.0, warmup_steps=1,
        max_response_tokens=4 * s.max_turn_tokens, max_turn_tokens=s.max_turn_tokens, max_turns=s.max_turns,
        overlong_buffer=0, temperature=s.rl_temperature, steps=s.rl_steps, concurrency=8, episode_timeout_s=120.0,
        seed=seed, save_every=0, progress=False, device="cpu")
    train_rl(cfg)
    ckpt = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))[-1]
    # every step's row (RLResult.history leaves out steps where dynamic sampling kept no group)
    return ckpt / "model", read_metrics(out)


# ----------------------------------------------------------------------------- statistics

_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_ci(xs: list[float]) -> dict[str, Any]:
    """Mean and a 95 % Student-t interval over seeds (no interval from one seed)."""
    n = len(xs)
    m = float(np.mean(xs)) if n else math.nan
    if n < 2:
        return {"mean": m, "ci95": [m, m], "half_width": 0.0, "n_seeds": n, "per_seed": list(xs)}
    sd = float(np.std(xs, ddof=1))
    h = _T975.get(n - 1, 1.96) * sd / math.sqrt(n)
    return {"mean": m, "ci95": [m - h, m + h], "half_width": h, "n_seeds": n, "per_seed": list(xs)}


def paired_diff(a: list[float], b: list[float]) -> dict[str, Any]:
    return mean_ci([x - y for x, y in zip(a, b)])


# ----------------------------------------------------------------------------- report

def write_report(results: dict[str, Any], out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2))
    s = results["summary"]
    lines = [
        "| arm | accuracy (95% CI over seeds) | blue questions | red/green questions | tool-call rate (95% CI) "
        "| code ran without error | format ok |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm in ARMS:
        a, bl, ot, t, k, f = (s[arm][key] for key in METRICS)
        lines.append(f"| {ARM_LABELS[arm]} | {a['mean']:.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}] | {bl['mean']:.3f} | "
                     f"{ot['mean']:.3f} | {t['mean']:.3f} [{t['ci95'][0]:.3f}, {t['ci95'][1]:.3f}] | {k['mean']:.3f} | "
                     f"{f['mean']:.3f} |")
    d = results["findings"]
    st = results["settings"]
    lines += [
        "",
        f"SFT→DAPO − SFT accuracy (paired by seed): {d['rl_gain']['mean']:+.3f} "
        f"[{d['rl_gain']['ci95'][0]:+.3f}, {d['rl_gain']['ci95'][1]:+.3f}]; "
        f"finding (a) SFT-then-DAPO beats SFT alone: **{d['a_holds']}**.",
        f"DAPO from base: tool-call rate {s['dapo_from_base']['tool_call_rate']['mean']:.3f}, accuracy "
        f"{s['dapo_from_base']['accuracy']['mean']:.3f}; finding (b) DAPO alone does not learn tool use: "
        f"**{d['b_holds']}**.",
        "",
        f"Seeds {results['settings']['seeds']}, {results['settings']['n_eval_tasks']} held-out tasks per eval "
        f"(greedy), wall time {results['wall_s']:.0f} s.",
        f"RL (both arms, identical): {st['rl_algorithm']}, {st['rl_steps']} steps × {st['rl_batch']} groups × "
        f"G={st['rl_group']}, T={st['rl_temperature']}, lr {st['rl_lr']:g}, clip_high {st['rl_clip_high']}, "
        f"{st['rl_updates_per_step']} updates per step "
        f"({st['rl_ppo_epochs']} epochs × {st['rl_minibatches']} mini-batches), max_gen_rounds {st['rl_max_gen_rounds']}; "
        f"SFT {st['sft_epochs']} epochs, batch {st['sft_batch']}, lr {st['sft_lr']:g}, on the teacher's "
        f"{results['sft_data']['episodes']} unfiltered episodes ({results['sft_data']['slips']} slips; teacher "
        f"accuracy {results['sft_data']['teacher_accuracy']:.2f}, on blue questions "
        f"{results['sft_data']['teacher_blue_accuracy']:.2f}).",
    ]
    rows = [r for hist in results["rl_curves"]["sft_dapo"] for r in hist]
    fg = [r["filtered_group_frac"] for r in rows if r.get("filtered_group_frac") is not None]
    fm = [r["format_rate"] for r in rows if r.get("format_rate") is not None]
    if fg and fm:
        lines.append(f"SFT → DAPO rollouts, mean over steps and seeds: filtered-group fraction {np.mean(fg):.2f}, "
                     f"format ok {np.mean(fm):.2f}, accuracy {np.mean([r['accuracy'] for r in rows]):.2f}.")
    (out / "results.md").write_text("# Two-stage finding at toy scale\n\n" + "\n".join(lines) + "\n")


def plot(results: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["summary"]
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    x = np.arange(len(ARMS))
    for ax, key, title in ((axes[0], "accuracy", "held-out accuracy"),
                           (axes[1], "blue_accuracy", "accuracy on blue questions (the teacher's slips)"),
                           (axes[2], "tool_call_rate", "tool-call rate")):
        means = [s[a][key]["mean"] for a in ARMS]
        err = [s[a][key]["half_width"] for a in ARMS]
        ax.bar(x, means, yerr=err, capsize=5, color=["#999", "#6a9fd4", "#2a6fb0", "#d47a6a"])
        for i, a in enumerate(ARMS):
            ax.scatter([i] * len(s[a][key]["per_seed"]), s[a][key]["per_seed"], color="k", s=10, zorder=3)
        ax.set_xticks(x, [ARM_LABELS[a] for a in ARMS], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{title}\n(mean ± 95% CI, dots = seeds)", fontsize=9)
    ax = axes[3]
    for arm, colour in (("sft_dapo", "#2a6fb0"), ("dapo_from_base", "#d47a6a")):
        for i, hist in enumerate(results["rl_curves"][arm]):
            steps = [h["step"] for h in hist]
            ax.plot(steps, [h["accuracy"] for h in hist], color=colour, alpha=0.8,
                    label=f"{ARM_LABELS[arm]}: rollout accuracy" if i == 0 else None)
            ax.plot(steps, [h["tool_use_rate"] for h in hist], color=colour, ls="--", alpha=0.6,
                    label=f"{ARM_LABELS[arm]}: tool-use rate" if i == 0 else None)
    ax.set_xlabel("DAPO step")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title(f"DAPO training rollouts (T={results['settings']['rl_temperature']}), one line per seed", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "two_stage.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- main

def run(s: Settings, out: Path, log_fn=print) -> dict[str, Any]:
    import torch

    import transformers

    import deepeyes_gym  # noqa: F401  (env ids, agents)

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    # One intra-op thread: on the shared 2-core machine, 2 threads made SFT steps 10-20x slower
    # (measured 0.5-1 s/step with 1 thread, 6-17 s/step with 2, under the same load).
    torch.set_num_threads(int(os.environ.get("TWO_STAGE_THREADS", "1")))
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    register_envs(s)
    store = out / "sft_data"
    shutil.rmtree(store, ignore_errors=True)
    sft_data = make_sft_store(s, store)
    log_fn(f"[{time.perf_counter() - t_start:5.0f}s] SFT store: {sft_data}")
    per_seed: dict[str, list[dict[str, Any]]] = {a: [] for a in ARMS}
    curves: dict[str, list[list[dict[str, Any]]]] = {"sft_dapo": [], "dapo_from_base": []}
    timings = []
    for seed in s.seeds:
        t0 = time.perf_counter()
        d = out / f"seed{seed}"
        shutil.rmtree(d, ignore_errors=True)
        base = build_model(d / "base_model", seed=seed, hidden=s.hidden, layers=s.layers)
        sft = run_sft(base, store, d / "sft", s, seed)
        t_sft = time.perf_counter() - t0
        sft_rl, h1 = run_rl(sft, d / "sft_dapo", s, seed)
        base_rl, h2 = run_rl(base, d / "dapo_from_base", s, seed)
        t_rl = time.perf_counter() - t0 - t_sft
        for arm, model in (("base", base), ("sft", sft), ("sft_dapo", sft_rl), ("dapo_from_base", base_rl)):
            per_seed[arm].append(evaluate(model, d / f"eval_{arm}", s))
        keep = ("step", "accuracy", "reward", "tool_use_rate", "format_rate", "groups_kept", "filtered_group_frac",
                "entropy", "loss")
        curves["sft_dapo"].append([{k: r.get(k) for k in keep} for r in h1])
        curves["dapo_from_base"].append([{k: r.get(k) for k in keep} for r in h2])
        timings.append({"seed": seed, "sft_s": t_sft, "rl_s": t_rl, "total_s": time.perf_counter() - t0})
        log_fn(f"[{time.perf_counter() - t_start:5.0f}s] seed {seed}: " + ", ".join(
            f"{a} acc {per_seed[a][-1]['accuracy']:.2f} (blue {per_seed[a][-1]['blue_accuracy']:.2f}) tools {per_seed[a][-1]['tool_call_rate']:.2f}" for a in ARMS))
    summary = {a: {k: mean_ci([r[k] for r in per_seed[a]]) for k in METRICS} for a in ARMS}
    gain = paired_diff([r["accuracy"] for r in per_seed["sft_dapo"]], [r["accuracy"] for r in per_seed["sft"]])
    b = summary["dapo_from_base"]
    findings = {
        "rl_gain": gain,
        # (a): the paired gain's interval is above 0 (with one seed: the gain is positive).
        "a_holds": bool(gain["ci95"][0] > 0) if gain["n_seeds"] > 1 else bool(gain["mean"] > 0),
        # (b): RL from the untrained model never gets to tool use or accuracy.
        "b_holds": bool(b["tool_ok_rate"]["ci95"][1] < 0.05 and b["accuracy"]["ci95"][1] < 0.05),
    }
    results = {
        "task_family": "toy_count (bundled toy suite; answer readable only from the code tool's output)",
        "settings": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(s).items()},
                     "image_pixels": IMAGE_PIXELS, "reward": "dapo",
                     "rl_updates_per_step": s.rl_ppo_epochs * s.rl_minibatches},
        "sft_data": sft_data, "arms": list(ARMS), "per_seed": per_seed, "summary": summary, "findings": findings,
        "rl_curves": curves, "timings": timings, "wall_s": time.perf_counter() - t_start,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    write_report(results, out)
    plot(results, out)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/two_stage_tiny", help="output directory")
    ap.add_argument("--quick", action="store_true", help="smoke mode: one seed, a few steps")
    ap.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("deepeyes_gym").setLevel(logging.ERROR)  # the tool-collapse alarm is expected here
    s = QUICK if args.quick else Settings()
    if args.seeds:
        s.seeds = tuple(args.seeds)
    run(s, Path(args.out), log_fn=lambda m: print(m, flush=True))
    print((Path(args.out) / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
