"""Time per DAPO step on this CPU, split into generation / tools / update, with baselines.

The policy is stage 1 of ``examples/two_stage_tiny.py``: a tiny Qwen2.5-VL SFT'd on the toy
counting family, so every rollout really runs the code tool (one sandboxed Python call per
episode, then an answer). ``train_rl`` then runs a few DAPO steps from it with the example's RL
settings. Per step the trainer logs ``time/generation_s`` (the whole rollout phase, tools
included), ``time/tools_s`` (summed tool wall time across episodes, which overlaps generation)
and ``time/update_s`` (old logprobs + the mini-batch updates).

Baselines measured in the same run, on the same model and the same token counts:

* ``bare generation``: the policy generates as many tokens as a step's rollouts sampled, at the
  same concurrency, with no env, no tools and no renderer; ``rollout overhead`` = rollout time /
  bare time (what the env, the tools and the renderer add to a CPU rollout).

    python benchmarks/train_step.py [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from deepeyes_gym.agents.generation import SamplingParams  # noqa: E402
from deepeyes_gym.agents.hf import HFPolicy  # noqa: E402


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


def _load_example(name: str) -> Any:
    """Import ``examples/<name>.py`` (its stage 1 builds this benchmark's policy)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while it loads
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 RL steps instead of 5")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="train-step-"))
    steps = 2 if args.quick else 5
    ts = _load_example("two_stage_tiny")
    torch.set_num_threads(1)  # as the example: one intra-op thread is faster on a shared 2-core machine
    st = ts.Settings(seeds=(0,), rl_steps=steps)
    ts.register_envs(st)
    ts.make_sft_store(st, work / "sft_data")
    base = ts.build_model(work / "base", seed=0, hidden=st.hidden, layers=st.layers)
    sft_model = ts.run_sft(base, work / "sft_data", work / "sft", st, 0)
    _, rows = ts.run_rl(sft_model, work / "rl", st, 0)
    rows = rows[1:] or rows  # the first step warms caches
    gen = statistics.median(r["time/generation_s"] for r in rows)
    tools = statistics.median(r["time/tools_s"] for r in rows)
    upd = statistics.median(r["time/update_s"] for r in rows)
    step = statistics.median(r["time/step_s"] for r in rows)
    n_eps = round(statistics.median(r["episodes"] for r in rows))  # every episode a step generated
    tok_each = max(1, round(statistics.median(r["response_len"] for r in rows)))
    bare_gen = bare_generation(sft_model, n_eps, tok_each)
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
    md = ["# DAPO step on CPU (tiny Qwen2.5-VL SFT'd on the toy counting family)", "",
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
