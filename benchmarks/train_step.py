"""Time per DAPO step on this CPU, split into generation / tools / update, with baselines.

A tiny Qwen2.5-VL is first taught the bundled suite's tool use by a short cold-start SFT on the
scripted agent's episodes (so rollouts really call the tools), then ``train_rl`` runs a few steps
on ``DeepEyes-RealX-Train-v0`` (images capped at 64 visual tokens). Per step the trainer logs ``time/generation_s`` (the whole rollout phase,
tools included), ``time/tools_s`` (summed tool wall time across episodes, which overlaps
generation) and ``time/update_s`` (old logprobs + the mini-batch updates).

Baselines measured in the same run, on the same model and the same token counts:

* ``bare generation``: the policy generates as many tokens as a step's rollouts sampled, at the
  same concurrency, with no env, no tools and no renderer; ``rollout overhead`` = rollout time /
  bare time (what the env, the tools and the renderer add to a CPU rollout).

    python benchmarks/train_step.py [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from deepeyes_gym.agents.generation import SamplingParams  # noqa: E402
from deepeyes_gym.agents.hf import HFPolicy  # noqa: E402
from deepeyes_gym.benchmarks.runner import RunConfig, run_eval  # noqa: E402
from deepeyes_gym.trainers.metrics import read_metrics  # noqa: E402
from deepeyes_gym.trainers.rl import RLConfig, train_rl  # noqa: E402
from deepeyes_gym.trainers.sft import SFTConfig, train_sft  # noqa: E402


def bare_generation(model_dir: Path, n_requests: int, tokens_each: int) -> float:
    """Seconds to sample n_requests × tokens_each with the policy alone (short fixed prompt)."""
    policy = HFPolicy.from_pretrained(model_dir)
    prompt = policy._tok.encode("<|im_start|>user\nHow many?<|im_end|>\n<|im_start|>assistant\n<think>").ids
    sampling = SamplingParams(max_tokens=tokens_each, temperature=1.0, stop=())

    async def run() -> None:
        await asyncio.gather(*(policy.generate(prompt, [], sampling, request_id=f"b{i}") for i in range(n_requests)))

    t0 = time.perf_counter()
    asyncio.run(run())
    dt = time.perf_counter() - t0
    policy.close()
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 RL steps instead of 5")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    from deepeyes_gym.agents.tiny import tiny_qwen25vl_dir

    work = Path(tempfile.mkdtemp(prefix="train-step-"))
    steps = 2 if args.quick else 5
    run_eval(RunConfig(env_id="DeepEyes-RealX-Train-v0", agent="scripted", out_dir=work / "scripted", limit=12,
                       progress=False, save_images=False))
    sft = train_sft(SFTConfig(model=str(tiny_qwen25vl_dir()), data=[str(work / "scripted")], out_dir=str(work / "sft"),
                              epochs=30, batch_size=4, lr=3e-3, warmup_ratio=0.0, max_pixels=64 * 28 * 28))
    cfg = RLConfig(model=str(sft.final_model), out_dir=str(work / "rl"), env_id="DeepEyes-RealX-Train-v0",
                   max_pixels=64 * 28 * 28,
                   env_kwargs={"reward": "dapo"}, algorithm="grpo", train_batch=4, group_size=4, mini_batch=16,
                   steps=steps, max_turns=3, max_response_tokens=1024, max_turn_tokens=320, overlong_buffer=128,
                   concurrency=16, lr=1e-5, warmup_steps=0, save_every=0, progress=False)
    train_rl(cfg)
    rows = read_metrics(work / "rl")[1:] or read_metrics(work / "rl")  # the first step warms caches
    gen = statistics.median(r["time/generation_s"] for r in rows)
    tools = statistics.median(r["time/tools_s"] for r in rows)
    upd = statistics.median(r["time/update_s"] for r in rows)
    step = statistics.median(r["time/step_s"] for r in rows)
    n_eps = cfg.train_batch * cfg.group_size
    tok_each = max(1, round(statistics.median(r["response_len"] for r in rows)))
    bare_gen = bare_generation(sft.final_model, n_eps, tok_each)
    result = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": torch.get_num_threads()},
        "config": {"steps": steps, "episodes_per_step": n_eps, "sampled_tokens_per_episode": tok_each,
                   "tool_calls_per_traj": statistics.median(r["tool_calls_per_traj"] for r in rows)},
        "per_step_s": {"step": step, "generation": gen, "tools_summed": tools, "update": upd},
        "shares_of_step": {"generation": gen / step, "update": upd / step},
        "baselines_s": {"bare_generation": bare_gen},
        "ratios": {"rollout_overhead": gen / bare_gen, "tools_summed_over_generation": tools / gen},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_step.json").write_text(json.dumps(result, indent=2))
    md = ["# RL step on CPU (tiny Qwen2.5-VL, DeepEyes-RealX-Train-v0)", "",
          f"{n_eps} episodes per step, about {tok_each} sampled tokens each, "
          f"{result['config']['tool_calls_per_traj']:.2f} tool calls per episode (median over steps).", "",
          "| part | seconds per step | share of step | baseline (same run) | ratio |", "|---|---:|---:|---:|---:|",
          f"| generation (rollouts, tools overlapped) | {gen:.2f} | {gen / step:.2f} | bare generation {bare_gen:.2f} | {gen / bare_gen:.2f} |",
          f"| tools (summed over episodes) | {tools:.2f} | - | - | {tools / gen:.2f} of generation |",
          f"| update (old logprobs + mini-batches) | {upd:.2f} | {upd / step:.2f} | - | - |",
          f"| whole step | {step:.2f} | 1.00 | | |"]
    (out / "train_step.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
