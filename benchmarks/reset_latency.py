"""Reset latency of ``DeepEyesEnv`` with the python tool at rollout-batch scale, against today's
code path (commit 47533ff, extracted with ``git archive``) measured in the same run.

Laid out as an RL step is: ``N / 16`` tasks x 16 samples of the same task, one 2000x2000 image per
task, ``tools=("python",)``, N episodes reset at once (one thread per env, released together;
latency is counted from the common start). Per N in 32, 128, 512 and per code path:

* ``cold``: a fresh process, nothing started: the first resets also start the sandbox;
* ``server-up``: the sandbox's fork server runs (with its default 2 idle workers): the resets
  wait for workers to be spawned;
* ``prewarmed``: a rollout step after the first: the envs exist, their python tools are started
  (``warm_up``) and the sandbox was filled before the resets (this tree: ``prewarm_sandbox(N)``;
  the baseline has no prewarm, so it gets its best equivalent: a pool of 16 idle workers, its
  fixed cap);

* ``prewarmed, tool only``: the same resets of the sandbox alone (``PythonTool.start_episode``
  with the task's images, no env), to tell the sandbox's share from the env core's;

each with the reset's p50/p95 and the python tool's share (``start_episode``). Also measured:
memory per live idle worker and per live episode (USS + page tables, from
``/proc/PID/smaps_rollup``), and 512 live episodes at once (reset, then one cell each) with the
machine's memory before and after, from which the largest number this machine holds is estimated.
Each measurement runs in its own subprocess; one that would leave under 4 GiB of free memory
stops and says so. Writes ``reset_latency.json`` and ``reset_latency.md``.

    python benchmarks/reset_latency.py [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "47533ff"
TARGET_P50_MS = 20.0  # prewarmed reset p50 at 128 concurrent (8 tasks x 16)

# Runs in a subprocess with PYTHONPATH set to the tree being measured; only uses APIs that both
# trees have (and prewarm_sandbox where it exists).
_MEASURE = r'''
import json, os, statistics, sys, threading, time, warnings
warnings.simplefilter("ignore")
import logging; logging.disable(logging.WARNING)
import numpy as np
from PIL import Image
from deepeyes_gym.envs import DeepEyesEnv, Task
from deepeyes_gym.envs.tools import python as pymod

args = json.loads(sys.argv[1])
n, samples, side, mode = args["n"], args["samples"], args["side"], args["mode"]

def mem_available():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) << 10

def guard():  # never take the machine down (others use it too): stop while 4 GiB are still free
    while True:
        if mem_available() < (4 << 30):
            print(json.dumps({"error": "stopped: under 4 GiB of memory left"}), flush=True)
            os._exit(3)
        time.sleep(0.05)

threading.Thread(target=guard, daemon=True).start()

def cost(pid):
    total = 0
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1]) << 10
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmPTE:"):
                total += int(line.split()[1]) << 10
    except OSError:
        return None
    return total

def worker_cost(init_pid):  # the worker's init (pid 1 of its namespace) and the worker itself
    try:
        kids = [int(p) for p in open(f"/proc/{init_pid}/task/{init_pid}/children").read().split()]
    except OSError:
        kids = []
    parts = [cost(init_pid)] + [cost(k) for k in kids]
    return None if any(p is None for p in parts) else sum(parts)

def pool_of(tool):
    b = tool.backend
    return getattr(b, "pool", None) or b._state.pool

mem0 = mem_available()
rng = np.random.default_rng(0)
n_tasks = max(1, n // samples)
tasks = [Task(id=f"task-{i}", question="What is in the image?", answer="x",
              images=[Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))]) for i in range(n_tasks)]
kw = {"timeout": 30, "max_output_chars": 4000}
prewarm = {}
idle_costs = []
if mode == "server-up":  # the fork server runs (and its default 2 idle workers), nothing more
    holder = pymod.PythonTool(**kw)
    holder.warm_up()
    pool = pool_of(holder)
    while len(pool._idle) < pool.target:
        time.sleep(0.01)
if mode == "prewarmed":
    t0 = time.perf_counter()
    if hasattr(pymod, "prewarm_sandbox"):
        ready = pymod.prewarm_sandbox(n, wait=600, **kw)
        how = f"prewarm_sandbox({n})"
    else:  # the baseline: no prewarm; its best is a pool of 16 idle workers (its fixed cap)
        kw["pool_size"] = min(n, 16)
        holder = pymod.PythonTool(**kw)
        pool = pool_of(holder)
        while len(pool._idle) < pool.target:
            time.sleep(0.01)
        ready = len(pool._idle)
        how = f"pool_size={kw['pool_size']} (no prewarm in this tree; 16 is its idle cap)"
    prewarm = {"how": how, "ready": ready, "seconds": time.perf_counter() - t0}
    pool = pool_of(pymod._PINNED[0] if hasattr(pymod, "_PINNED") else holder)
    idle_costs = [c for c in (worker_cost(w.pid) for w in list(pool._idle)[:32] if w.pid) if c]
tool_only = bool(args.get("tool_only"))  # the sandbox's share alone: PythonTool.start_episode, no env
envs = [] if tool_only else [DeepEyesEnv(tasks, tools=("python",), tool_kwargs={"python": dict(kw)}) for _ in range(n)]
tools = [pymod.PythonTool(**kw) for _ in range(n)] if tool_only else []
if tool_only:
    from deepeyes_gym.envs.tools.base import ToolContext
    ctxs = [ToolContext(task_id=t.id, images=list(t.images)) for t in tasks]
if mode == "prewarmed":  # a rollout step after the first: the envs and their python tools exist
    for t in tools or [e.tools["python"] for e in envs]:
        t.warm_up()

starts = {}
orig = pymod.PythonTool.start_episode
def timed(self, ctx):
    t = time.perf_counter()
    try:
        return orig(self, ctx)
    finally:
        starts[id(self)] = time.perf_counter() - t
pymod.PythonTool.start_episode = timed

barrier = threading.Barrier(n + 1)
done = [None] * n
errors = []
def reset(i):
    barrier.wait()
    try:
        if tool_only:
            tools[i].start_episode(ctxs[i // samples])
        else:
            envs[i].reset(options={"task": tasks[i // samples]})
    except Exception as exc:
        errors.append(repr(exc))
    done[i] = time.perf_counter()
threads = [threading.Thread(target=reset, args=(i,)) for i in range(n)]
for th in threads:
    th.start()
time.sleep(0.2)
t0 = time.perf_counter()
barrier.wait()
for th in threads:
    th.join()
lat = sorted(d - t0 for d in done)
tool_s = sorted(starts.values())
start_errors = sum(1 for e in envs if e._tool_start_errors)
start_error_kinds = sorted({str(e._tool_start_errors)[:200] for e in envs if e._tool_start_errors})[:3]

def q(xs, p):
    return 1000 * xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]

out = {"n": n, "mode": mode, "tasks": n_tasks, "side": side, "prewarm": prewarm,
       "reset_p50_ms": q(lat, 0.5), "reset_p95_ms": q(lat, 0.95), "reset_max_ms": q(lat, 1.0),
       "tool_start_p50_ms": q(tool_s, 0.5) if tool_s else None, "tool_start_p95_ms": q(tool_s, 0.95) if tool_s else None,
       "errors": errors[:3], "tool_start_errors": start_errors, "tool_start_error_kinds": start_error_kinds}
if args.get("live"):  # every episode runs a cell: all N are live at once
    cells = [None] * n
    def cell(i):
        env = envs[i]
        obs = env.step("<think>size</think>\n<code>\n```python\nprint(image_1.size)\n```\n</code>")[0]
        cells[i] = f"({side}, {side})" in obs["text"]
    ths = [threading.Thread(target=cell, args=(i,)) for i in range(n)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    out["live_ok"] = sum(bool(c) for c in cells)
    costs = [worker_cost(e.tools["python"].backend.worker_pid) for e in envs[:64]]
    costs = [c for c in costs if c]
    out["live_episode_worker_bytes"] = statistics.median(costs) if costs else None
    out["env_process_rss_bytes"] = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    out["mem_used_bytes"] = mem0 - mem_available()
out["idle_worker_bytes"] = statistics.median(idle_costs) if idle_costs else None
out["level"] = pool_of(tools[0] if tool_only else envs[0].tools["python"]).level
print(json.dumps(out), flush=True)
os._exit(0)  # envs and pools die with the process (their workers follow the fork server)
'''


def measure(tree: Path, **args: Any) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(args)], capture_output=True, text=True,
                       env=env, cwd=str(tree), timeout=1800)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    res = json.loads(lines[-1]) if lines else {"error": (p.stderr or p.stdout)[-800:]}
    res["wall_s"] = time.perf_counter() - t0
    res["load_before"] = load  # the machine is shared: a busy one slows every number
    res.setdefault("n", args["n"])
    res.setdefault("mode", args["mode"])
    time.sleep(2.0)  # let the last workers' memory and cgroups go before the next measurement
    return res


def extract_baseline(dest: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BASELINE], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--quick", action="store_true", help="32 concurrent, 500x500 images, no 512-live run")
    ap.add_argument("--no-baseline", action="store_true", help="measure this tree only")
    ap.add_argument("--sizes", type=int, nargs="+", help="concurrent episodes to measure (default 32 128 512)")
    ap.add_argument("--no-live", action="store_true", help="skip the 512-live run")
    args = ap.parse_args()
    sizes = args.sizes or ([32] if args.quick else [32, 128, 512])
    side = 500 if args.quick else 2000
    with tempfile.TemporaryDirectory(prefix="reset-baseline-") as tmp:
        trees = {"this tree": ROOT}
        if not args.no_baseline:
            trees[f"baseline {BASELINE}"] = extract_baseline(Path(tmp))
        rows = []
        for n in sizes:
            for mode in ("cold", "server-up", "prewarmed", "prewarmed, tool only"):
                for name, tree in trees.items():
                    r = measure(tree, n=n, samples=16, side=side, mode=mode.split(",")[0],
                                tool_only=mode.endswith("tool only"))
                    r["mode"], r["tree"] = mode, name
                    rows.append(r)
                    print(f"{name:18s} n={n:4d} {mode:9s} " + (
                        f"p50={r['reset_p50_ms']:8.1f} ms p95={r['reset_p95_ms']:8.1f} ms  tool p50="
                        f"{r['tool_start_p50_ms'] or 0:7.1f} ms  errors={len(r['errors'])}+{r['tool_start_errors']}"
                        if "error" not in r else f"failed: {r['error'][-300:]}"), flush=True)
        live = {}
        if not (args.quick or args.no_live):
            for name, tree in trees.items():
                live[name] = measure(tree, n=512, samples=16, side=side, mode="prewarmed", live=True)
                print(f"512 live, {name}: {json.dumps(live[name])}", flush=True)
    mem_total = _meminfo("MemTotal")
    def row(mode: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["tree"] == "this tree" and r["n"] == 128 and r["mode"] == mode), None)

    def met(r: dict[str, Any] | None) -> bool:
        return r is not None and "error" not in r and r["reset_p50_ms"] <= TARGET_P50_MS
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "mem_total_bytes": mem_total,
                    "platform": platform.platform()},
        "layout": {"samples_per_task": 16, "image_side": side, "tools": ["python"]},
        "rows": rows,
        "live_512": live,
        "estimated_max_live_episodes": _max_live(live.get("this tree"), mem_total),
        "targets_met": {
            f"prewarmed env reset p50 <= {TARGET_P50_MS:g} ms at 128 concurrent": met(row("prewarmed")),
            f"prewarmed sandbox reset (tool only) p50 <= {TARGET_P50_MS:g} ms at 128 concurrent": met(
                row("prewarmed, tool only")),
            "512 live episodes at once": bool(live.get("this tree", {}).get("live_ok") == 512),
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reset_latency.json").write_text(json.dumps(result, indent=2))
    (out / "reset_latency.md").write_text(render_md(result))
    print((out / "reset_latency.md").read_text())


def _meminfo(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) << 10
    return 0


def _max_live(r: dict[str, Any] | None, mem_total: int) -> dict[str, Any] | None:
    """Episodes that fit: the machine's memory over what one live episode cost in the 512 run
    (its worker plus its share of the env process), keeping 2 GiB for everything else."""
    if not r or "error" in r or not r.get("mem_used_bytes"):
        return None
    per = r["mem_used_bytes"] / r["n"]
    return {"bytes_per_live_episode": per, "estimate": int((mem_total - (2 << 30)) / per),
            "basis": "measured memory used by the 512-live run / 512; an estimate, not a run"}


def render_md(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = ["# Reset latency at rollout-batch scale", "",
             f"Machine: {m['cpus']} CPUs, {m['mem_total_bytes'] / 2**30:.1f} GiB, Python {m['python']}. Layout: "
             f"N/16 tasks x 16 samples, one {r['layout']['image_side']}x{r['layout']['image_side']} image per task, "
             "`tools=(\"python\",)`; N resets released together, latency from the common start. "
             f"Baseline: commit {BASELINE} (today's code path), same run.", "",
             "| N | mode | tree | reset p50 (ms) | reset p95 (ms) | tool start p50 (ms) | idle worker (MiB) | errors | load |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        if "error" in row:
            lines.append(f"| {row.get('n', '?')} | {row.get('mode', '?')} | {row['tree']} | failed: {row['error'][-120:]} | | | | | |")
            continue
        iw = f"{row['idle_worker_bytes'] / 2**20:.1f}" if row.get("idle_worker_bytes") else "-"
        lines.append(f"| {row['n']} | {row['mode']} | {row['tree']} | {row['reset_p50_ms']:.1f} | {row['reset_p95_ms']:.1f} | "
                     f"{row['tool_start_p50_ms'] or 0:.1f} | {iw} | {len(row['errors']) + row['tool_start_errors']} | "
                     f"{row['load_before']:.1f} |")
    lines += ["", "Prewarmed: this tree calls `prewarm_sandbox(N)`; the baseline has no prewarm and gets a pool "
              "of 16 idle workers (its fixed cap). Tool start = the python tool's `start_episode` inside the reset "
              "(the rest is the env core). Idle worker = USS + page tables of its init and worker. Load = the "
              "machine's 1-minute load average before the run (it is shared).", ""]
    if r["live_512"]:
        lines += ["## 512 live episodes at once (prewarmed reset, then one cell each)", "",
                  "| tree | live OK | worker per live episode (MiB) | env process RSS (GiB) | memory used (GiB) |",
                  "|---|---:|---:|---:|---:|"]
        for name, x in r["live_512"].items():
            if "error" in x:
                lines.append(f"| {name} | failed: {x['error'][-120:]} | | | |")
                continue
            w = x.get("live_episode_worker_bytes")
            lines.append(f"| {name} | {x.get('live_ok')} / 512 | {w / 2**20 if w else 0:.1f} | "
                         f"{x.get('env_process_rss_bytes', 0) / 2**30:.2f} | {x.get('mem_used_bytes', 0) / 2**30:.2f} |")
        est = r["estimated_max_live_episodes"]
        if est:
            lines += ["", f"Largest number of live episodes this machine holds (estimate): **{est['estimate']}** "
                      f"({est['bytes_per_live_episode'] / 2**20:.1f} MiB per live episode; {est['basis']})."]
    lines += ["", "## Targets", ""] + [f"- {k}: {v}" for k, v in r["targets_met"].items()] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
