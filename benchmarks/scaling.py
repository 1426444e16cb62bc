"""Throughput of the Ray backend with 1, 2, 4 rollout workers (logical CPUs), sync vs async, on
the tiny Qwen2.5-VL, and the weight sync's cost by transport (object store vs a gloo broadcast
group, sync mode); writes benchmarks/results/scaling.{json,md} with a projection to 32 GPUs from
the measured per-component costs.

    python benchmarks/scaling.py [--steps 3] [--workers 1 2 4]

On a 2-core machine the workers share the cores: the numbers measure the backend's overheads
and the async overlap, not hardware scaling.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from raykit import parity_reward  # noqa: E402  (the Ray tests' reward with spread)

from deepeyes_gym.trainers.ray_backend import RayConfig, train_rl_ray  # noqa: E402
from deepeyes_gym.trainers.rl import RLConfig  # noqa: E402

OUT = Path(__file__).parent / "results"


def run(model: str, workers: int, async_mode: bool, steps: int, tmp: Path, transport: str = "object_store") -> dict:
    cfg = RLConfig(model=model, out_dir=str(tmp / f"w{workers}-{async_mode}-{transport}"), env_id="DeepEyes-Toy-v0",
                   env_kwargs={"reward": parity_reward}, train_batch=2, group_size=4, mini_batch=8, steps=steps,
                   max_response_tokens=64, max_turn_tokens=16, max_turns=2, overlong_buffer=32, concurrency=8,
                   lr=1e-4, warmup_steps=1, save_every=0, progress=False, tis_cap=2.0)
    t0 = time.perf_counter()
    res = train_rl_ray(cfg, RayConfig(rollout_workers=workers, learners=2, async_mode=async_mode,
                                      weight_transport=transport))
    wall = time.perf_counter() - t0
    h = res.history[1:] or res.history  # step 1 pays the workers' warm-up
    # sync: a step's cycle is its collection plus its update and sync; async: the update and sync
    # wait for the overlapped collection, so time/step_s is already the whole cycle
    step_s = sum(r["time/step_s"] + (0.0 if async_mode else r["time/generation_s"]) for r in h) / len(h)
    traj = 2 * 4
    tokens = sum(r["response_len"] * traj for r in h) / len(h)
    return {"workers": workers, "async": async_mode, "transport": transport, "steps": res.steps, "wall_s": wall, "step_s": step_s,
            "gen_s": sum(r["time/generation_s"] for r in h) / len(h),
            "update_s": sum(r.get("time/update_s", 0.0) for r in h) / len(h),
            "sync_s": sum(r.get("time/sync_s", 0.0) for r in h) / len(h),
            "sampled_tokens_per_step": tokens, "trajectories_per_s": traj / step_s, "tokens_per_s": tokens / step_s}


def projection(rows: list[dict]) -> str:
    one = next(r for r in rows if r["workers"] == 1 and not r["async"] and r["transport"] == "object_store")
    gen_tok_s = one["sampled_tokens_per_step"] / one["gen_s"]
    upd_tok_s = one["sampled_tokens_per_step"] / max(one["update_s"], 1e-9)
    return "\n".join([
        "## Projection to 32 GPUs (Qwen2.5-VL-7B, 4 nodes x 8 GPUs)",
        "",
        f"Measured here per component (tiny model, 1 worker, sync): generation {gen_tok_s:.0f} sampled tok/s per worker, "
        f"update {upd_tok_s:.0f} tok/s for the 2-rank learner, weight sync {one['sync_s'] * 1e3:.0f} ms incl. the probe.",
        "",
        "The step time is max(generation, update) in async mode and their sum in sync mode, plus the sync. "
        "Generation scales with the number of engines (episodes are independent; the measured cost per "
        "episode does not depend on the worker that plays it); the update scales with the learner ranks "
        "(ZeRO-2 all-reduce is the only cross-rank cost). For the paper's step (256 groups x 16 = 4096 "
        "trajectories, ~2k sampled tokens each = 8.4M tokens): a 7B vLLM engine on one H100 samples "
        "~2.5k tok/s per sequence stream, ~25-40k tok/s batched; 16 engines (TP=1) give ~0.5M tok/s, "
        "i.e. ~17 s of generation per step before tool latency, which dominates agentic rollouts "
        "(tool calls of 0.1-2 s per turn, up to 9 turns: plan ~60-120 s per step). A 7B FSDP/ZeRO "
        "learner on 16 GPUs trains at ~3-4k tok/s/GPU (forward+backward, 16k context), so ~8.4M x 2 "
        "(old logprobs + update) / 55k tok/s = ~300 s per step; colocated (all 32 GPUs alternate) "
        "halves it to ~150 s. Async mode hides generation behind the update: ~max(120, 150) s instead "
        "of ~270 s, the same ratio as measured here when generation and update costs are comparable. "
        "The weight sync of 15 GB over NCCL (~20 GB/s intra-node, ~10 GB/s across) is ~1-2 s.",
    ])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = ap.parse_args()
    import ray

    from deepeyes_gym.agents.tiny import tiny_qwen25vl_dir

    model = str(tiny_qwen25vl_dir())
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for w in args.workers:
                for a, transport in ((False, "object_store"), (True, "object_store"), (False, "broadcast")):
                    rows.append(run(model, w, a, args.steps, Path(tmp), transport))
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        ray.shutdown()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "scaling.json").write_text(json.dumps(rows, indent=2))
    lines = ["# Ray backend scaling (tiny Qwen2.5-VL, 2 cores, 8 logical CPUs, 2 learner ranks)", "",
             "| workers | mode | weight transport | step s | gen s | update s | sync s (+probe) | traj/s | sampled tok/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workers']} | {'async' if r['async'] else 'sync'} | {r['transport']} | {r['step_s']:.2f} | "
                     f"{r['gen_s']:.2f} | "
                     f"{r['update_s']:.2f} | {r['sync_s']:.2f} | {r['trajectories_per_s']:.2f} | {r['tokens_per_s']:.1f} |")
    lines.append("")
    for w in args.workers:
        s, a, b = (next(r for r in rows if r["workers"] == w and (r["async"], r["transport"]) == key)
                   for key in ((False, "object_store"), (True, "object_store"), (False, "broadcast")))
        lines.append(f"- {w} worker(s): async speed-up {s['step_s'] / a['step_s']:.2f}x (step time, same run); "
                     f"broadcast sync {b['sync_s'] * 1e3:.0f} ms vs object store {s['sync_s'] * 1e3:.0f} ms "
                     f"({s['sync_s'] / max(b['sync_s'], 1e-9):.2f}x; both include the probe check)")
    lines += ["", projection(rows), ""]
    (OUT / "scaling.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
