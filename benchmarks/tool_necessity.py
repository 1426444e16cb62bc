"""Tool necessity on the bundled RealX-style suite: scripted solvers vs agents without tools.

Runs, through ``DeepEyesEnv`` (tools: python, search, image_search on the suite's offline corpus),
every eval task (or ``--limit`` of them) with:

* ``scripted`` — the per-family solvers (pixel code in the Python tool, text and image search);
  target: accuracy >= 95%;
* ``direct`` — the library's DirectAnswerAgent: answers at once, without any tool (a plausible
  guess from the question); target: <= 15%;
* ``glance`` — answers at once, without tools, after analysing the image downscaled to a typical
  VLM input (long side 1024 px) with the same pixel code, guessing whatever needs search; a
  stronger no-tool agent, also expected <= 15%.

Also measured in the same run: the suite's generation time on first use (into a fresh cache
directory) vs loading it from the cache, that two builds with the same seed are byte-identical,
and the same agents on the first ``--train`` tasks of the seeded train stream. Writes ``tool_necessity.json`` and ``tool_necessity.md`` to ``--out``.

    python benchmarks/tool_necessity.py              # all 300 tasks
    python benchmarks/tool_necessity.py --limit 60   # a seeded subset
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepeyes_gym.agents.base import Agent  # noqa: E402
from deepeyes_gym.agents.baselines import DirectAnswerAgent  # noqa: E402
from deepeyes_gym.agents.scripted import GlanceAgent, ScriptedAgent  # noqa: E402
from deepeyes_gym.envs.core import DeepEyesEnv  # noqa: E402
from deepeyes_gym.envs.suites.realx import build_suite_dir, generator_fingerprint, load_suite, train_stream  # noqa: E402

SCRIPTED_TARGET = 0.95
NO_TOOL_TARGET = 0.15


@dataclass
class EpisodeRecord:
    task_id: str
    family: str
    domain: str
    capabilities: list[str]
    accuracy: float
    answer: str | None
    turns: int
    tools: list[str]
    seconds: float
    image_search_top1: bool | None = None  # gold image ranked first by the engine
    image_search_top5: bool | None = None
    error: str | None = None  # first tool error observation of a failed episode


@dataclass
class AgentResult:
    agent: str
    episodes: list[EpisodeRecord] = field(default_factory=list)
    seconds: float = 0.0

    def accuracy(self, pred: Any = None) -> tuple[float, int]:
        eps = [e for e in self.episodes if pred is None or pred(e)]
        return (float(np.mean([e.accuracy for e in eps])) if eps else float("nan")), len(eps)


def run_agent(env: DeepEyesEnv, agent: Agent, indices: Sequence[int], max_turns: int) -> AgentResult:
    out = AgentResult(agent.name)
    start = time.perf_counter()
    for i in indices:
        t0 = time.perf_counter()
        _, info = env.reset(options={"task_index": int(i)})
        step_info: dict[str, Any] = {}
        for _ in range(max_turns):
            action = agent.act(env.messages(), info)
            _, _, term, trunc, step_info = env.step(action)
            if term or trunc:
                break
        ep = env.episode
        task = ep.task
        rec = EpisodeRecord(
            task_id=task.id, family=str(task.metadata.get("family")), domain=task.domain,
            capabilities=sorted(task.capabilities), accuracy=float(step_info.get("accuracy", 0.0)),
            answer=ep.prediction, turns=len(ep.turns), tools=[t for t in ep.tools_used],
            seconds=time.perf_counter() - t0,
        )
        if rec.accuracy < 1:
            rec.error = next((t.observation[:300] for t in ep.turns if t.error and t.observation), None)
        gold = task.metadata.get("gold_image_id")
        for turn in ep.turns:
            if turn.tool == "image_search" and gold:
                ids = list(turn.metadata.get("image_ids") or [])
                rec.image_search_top1 = bool(ids) and ids[0] == gold
                rec.image_search_top5 = gold in ids[:5]
        out.episodes.append(rec)
    out.seconds = time.perf_counter() - start
    return out


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def measure_generation(seed: int) -> dict[str, Any]:
    """First-use build time vs cache load time, and byte-identity of two builds of one seed."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        suite = load_suite("eval", cache_dir=tmp, seed=seed)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        load_suite("eval", cache_dir=tmp, seed=seed)
        cached = time.perf_counter() - t0
        digest_a = _digest(Path(suite.root))
        other = Path(tmp) / "second"
        t0 = time.perf_counter()
        build_suite_dir(other, seed)
        second_build = time.perf_counter() - t0
        digest_b = _digest(other)
        n_files = sum(1 for p in Path(suite.root).rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in Path(suite.root).rglob("*") if p.is_file())
    return {
        "first_use_s": round(first, 3), "cached_load_s": round(cached, 4),
        "speedup_cached_vs_build": round(first / max(cached, 1e-9), 1), "second_build_s": round(second_build, 3),
        "identical_builds": digest_a == digest_b, "digest": digest_a, "files": n_files, "bytes": size,
    }


def summarise(res: AgentResult) -> dict[str, Any]:
    acc, n = res.accuracy()
    groups: dict[str, dict[str, Any]] = {}
    for key, getter in (("family", lambda e: [e.family]), ("domain", lambda e: [e.domain]),
                        ("capability", lambda e: e.capabilities)):
        buckets: dict[str, list[float]] = defaultdict(list)
        for e in res.episodes:
            for g in getter(e):
                buckets[g].append(e.accuracy)
        groups[key] = {g: {"accuracy": round(float(np.mean(v)), 4), "n": len(v)} for g, v in sorted(buckets.items())}
    all3 = [e.accuracy for e in res.episodes if len(e.capabilities) == 3]
    groups["capability"]["all three"] = {"accuracy": round(float(np.mean(all3)), 4) if all3 else None, "n": len(all3)}
    tools: dict[str, int] = defaultdict(int)
    for e in res.episodes:
        for t in e.tools:
            tools[t] += 1
    img = [e for e in res.episodes if e.image_search_top1 is not None]
    return {
        "agent": res.agent, "accuracy": round(acc, 4), "n": n, "seconds": round(res.seconds, 2),
        "episodes_per_s": round(n / max(res.seconds, 1e-9), 2),
        "mean_turns": round(float(np.mean([e.turns for e in res.episodes])), 2) if n else None,
        "tool_calls": dict(sorted(tools.items())),
        "episodes_using_tools": sum(1 for e in res.episodes if e.tools),
        "image_search": {"episodes": len(img), "gold_top1": sum(e.image_search_top1 for e in img),
                         "gold_top5": sum(bool(e.image_search_top5) for e in img)} if img else None,
        "by": groups,
        "failures": [{"task_id": e.task_id, "family": e.family, "answer": e.answer, "error": e.error}
                     for e in res.episodes if e.accuracy < 1][:50],
    }


def render_markdown(report: dict[str, Any]) -> str:
    lines = ["# Tool necessity on the bundled RealX-style suite", ""]
    m = report["meta"]
    lines += [f"Generator {m['generator']}, seed {m['seed']}, {m['n_tasks']} tasks, "
              f"{m['python']} on {m['machine']}; measured {m['date']}.", ""]
    g = report.get("generation")
    if g:
        lines += ["## Generation", "",
                  "| first use (build) | cached load | speed-up | second build | byte-identical | files | size |",
                  "|---|---|---|---|---|---|---|",
                  f"| {g['first_use_s']} s | {g['cached_load_s']} s | {g['speedup_cached_vs_build']}x | "
                  f"{g['second_build_s']} s | {g['identical_builds']} | {g['files']} | {g['bytes'] / 1e6:.1f} MB |", ""]
    agents = report["agents"]
    lines += ["## Accuracy", "", "| agent | accuracy | target | pass | episodes | mean turns | tool calls | s/episode |",
              "|---|---|---|---|---|---|---|---|"]
    for name, s in agents.items():
        target = report["targets"][name]
        lines.append(f"| {name} | {s['accuracy']:.1%} | {target} | {s['pass']} | {s['n']} | {s['mean_turns']} | "
                     f"{sum(s['tool_calls'].values())} | {s['seconds'] / max(s['n'], 1):.3f} |")
    lines.append("")
    for key in ("capability", "family", "domain"):
        names = list(agents)
        groups = sorted({g for s in agents.values() for g in s["by"][key]})
        lines += [f"### By {key}", "", "| " + key + " | n | " + " | ".join(names) + " |",
                  "|---|---|" + "---|" * len(names)]
        for grp in groups:
            cells = []
            n = None
            for s in agents.values():
                cell = s["by"][key].get(grp)
                n = cell["n"] if cell else n
                cells.append(f"{cell['accuracy']:.1%}" if cell and cell["accuracy"] is not None else "-")
            lines.append(f"| {grp} | {n} | " + " | ".join(cells) + " |")
        lines.append("")
    tr = report.get("train_stream") or {}
    rows = [(k, v) for k, v in tr.items() if isinstance(v, dict)]
    if rows:
        lines += ["## Train stream (same agents, first tasks of the seeded stream)", "",
                  "| agent | accuracy | tasks |", "|---|---|---|"]
        lines += [f"| {k} | {v['accuracy']:.1%} | {v['n']} |" for k, v in rows]
        lines += ["", f"Generating a train task takes {tr['generation_s_per_task']} s on average.", ""]
    sc = agents.get("scripted", {})
    if sc.get("image_search"):
        im = sc["image_search"]
        lines += [f"Image search (scripted episodes): gold emblem ranked first in {im['gold_top1']}/{im['episodes']}, "
                  f"in the top 5 in {im['gold_top5']}/{im['episodes']}.", ""]
    for name, s in agents.items():
        if name == "scripted" and s["failures"]:
            lines += [f"Scripted failures: " + ", ".join(f"{f['task_id']} ({f['family']})" for f in s["failures"]), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="evaluate a seeded subset of this many tasks")
    ap.add_argument("--agents", default="scripted,direct,glance")
    ap.add_argument("--skip-generation", action="store_true", help="do not time a fresh build")
    ap.add_argument("--train", type=int, default=100, help="also run the agents on this many train-stream tasks")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)

    generation = None if args.skip_generation else measure_generation(args.seed)
    suite = load_suite("eval", seed=args.seed)
    indices = list(range(len(suite.tasks)))
    if args.limit is not None and args.limit < len(indices):
        indices = sorted(np.random.default_rng(args.seed).permutation(len(indices))[: args.limit].tolist())
    makers = {"scripted": ScriptedAgent, "direct": lambda: DirectAnswerAgent(seed=args.seed), "glance": GlanceAgent}
    targets = {"scripted": f">= {SCRIPTED_TARGET:.0%}", "direct": f"<= {NO_TOOL_TARGET:.0%}", "glance": f"<= {NO_TOOL_TARGET:.0%}"}
    env = DeepEyesEnv(suite.tasks, tool_kwargs=suite.tool_kwargs(), shuffle=False)
    agents: dict[str, Any] = {}
    try:
        for name in args.agents.split(","):
            res = run_agent(env, makers[name](), indices, env.max_turns)
            s = summarise(res)
            s["pass"] = s["accuracy"] >= SCRIPTED_TARGET if name == "scripted" else s["accuracy"] <= NO_TOOL_TARGET
            agents[name] = s
            print(f"{name}: accuracy {s['accuracy']:.1%} over {s['n']} tasks in {s['seconds']:.1f} s")
    finally:
        env.close()
    train: dict[str, Any] = {}
    if args.train > 0:
        stream = train_stream(seed=args.seed, world_seed=args.seed)
        t0 = time.perf_counter()
        train_tasks = [stream[i] for i in range(args.train)]
        gen_s = time.perf_counter() - t0
        tenv = DeepEyesEnv(train_tasks, tool_kwargs=stream.tool_kwargs(), shuffle=False)
        try:
            for name in args.agents.split(","):
                s = summarise(run_agent(tenv, makers[name](), range(len(train_tasks)), tenv.max_turns))
                train[name] = {"accuracy": s["accuracy"], "n": s["n"], "by_capability": s["by"]["capability"],
                               "failures": s["failures"][:20]}
                print(f"train stream, {name}: accuracy {s['accuracy']:.1%} over {s['n']} tasks")
        finally:
            tenv.close()
        train["generation_s_per_task"] = round(gen_s / args.train, 4)
    report = {
        "meta": {"generator": generator_fingerprint(), "seed": args.seed, "n_tasks": len(indices),
                 "python": platform.python_version(), "machine": platform.machine(),
                 "date": time.strftime("%Y-%m-%d %H:%M")},
        "targets": {k: v for k, v in targets.items() if k in agents},
        "generation": generation,
        "agents": agents,
        "train_stream": train,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tool_necessity.json").write_text(json.dumps(report, indent=1))
    (out / "tool_necessity.md").write_text(render_markdown(report))
    print(f"wrote {out / 'tool_necessity.json'} and {out / 'tool_necessity.md'}")
    return report


if __name__ == "__main__":
    main()
