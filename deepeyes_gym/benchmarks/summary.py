"""Summaries of a run's episode records: accuracy with bootstrap CIs, tool use, turns, latency.

Everything outside the ``"timing"`` key is a deterministic function of the records (the
bootstrap is seeded per group), so an interrupted-and-resumed run summarises exactly like an
uninterrupted one. Errored episodes (agent or env failure) count as wrong in ``accuracy`` and are
left out of ``accuracy_excluding_errors``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .records import dedupe_records

__all__ = ["summarize", "bootstrap_ci", "percentiles", "CAPABILITIES"]

CAPABILITIES = ("perception", "reasoning", "search")
N_BOOT = 2000


def bootstrap_ci(
    values: Sequence[float], *, n_boot: int = N_BOOT, alpha: float = 0.05, seed: int | Sequence[int] = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (seeded, so reproducible)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (float("nan"), float("nan"))
    if x.size == 1 or np.all(x == x[0]):
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (round(float(lo), 6), round(float(hi), 6))


def _acc_stats(values: Sequence[float], seed: int, n_boot: int) -> dict[str, Any]:
    """n, mean and CI of one group; every group uses the same seed (equal data, equal interval)."""
    n = len(values)
    mean = float(np.mean(values)) if n else float("nan")
    lo, hi = bootstrap_ci(values, n_boot=n_boot, seed=seed)
    return {"n": n, "mean": round(mean, 6), "ci95": [lo, hi]}


def percentiles(values: Iterable[float], qs: Sequence[int] = (50, 90, 95, 99)) -> dict[str, float]:
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return {"n": 0}
    out: dict[str, float] = {"n": int(x.size), "mean": round(float(x.mean()), 6)}
    for q, v in zip(qs, np.percentile(x, qs)):
        out[f"p{q}"] = round(float(v), 6)
    out["max"] = round(float(x.max()), 6)
    return out


def _tool_turns(rec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [t for t in rec.get("turns", ()) if t.get("tool")]


def summarize(
    records: Iterable[Mapping[str, Any]], *, seed: int = 0, n_boot: int = N_BOOT
) -> dict[str, Any]:
    """Summary dict of a run (see module doc). ``records`` may hold duplicates: one per key counts."""
    recs = dedupe_records(records)
    n = len(recs)
    acc = [float(r.get("accuracy") or 0.0) for r in recs]
    ok = [r for r in recs if r.get("status") == "ok"]
    first = recs[0] if recs else {}
    samples = max((int(r.get("sample", 0)) for r in recs), default=-1) + 1

    out: dict[str, Any] = {
        "env_id": first.get("env_id"),
        "agent": first.get("agent"),
        "n_episodes": n,
        "n_tasks": len({r.get("task_index") for r in recs}),
        "samples": samples,
        "n_errors": n - len(ok),
        "n_truncated": sum(1 for r in ok if r.get("truncated")),
        "n_no_answer": sum(1 for r in ok if r.get("prediction") is None),
        "accuracy": _acc_stats(acc, seed, n_boot),
        "accuracy_excluding_errors": _acc_stats(
            [float(r.get("accuracy") or 0.0) for r in ok], seed, n_boot
        ),
        "reward_mean": round(float(np.mean([float(r.get("reward") or 0.0) for r in ok])), 6) if ok else None,
        "format_ok_rate": round(float(np.mean([bool(r.get("format_ok")) for r in ok])), 6) if ok else None,
    }

    # ---------------------------------------------------------------- groups
    groups: dict[str, dict[str, list[float]]] = {"capability": defaultdict(list), "domain": defaultdict(list),
                                                 "family": defaultdict(list), "combo": defaultdict(list)}
    for r, a in zip(recs, acc):
        caps = list(r.get("capabilities") or [])
        for c in caps:
            groups["capability"][c].append(a)
        if r.get("domain") is not None:
            groups["domain"][str(r["domain"])].append(a)
        if r.get("family") is not None:
            groups["family"][str(r["family"])].append(a)
        groups["combo"]["+".join(sorted(caps)) or "none"].append(a)
    for gname, key in (("capability", "by_capability"), ("domain", "by_domain"), ("family", "by_family"),
                       ("combo", "by_capability_combo")):
        out[key] = {
            g: _acc_stats(v, seed, n_boot) for g, v in sorted(groups[gname].items())
        }
    integ = [a for r, a in zip(recs, acc) if set(CAPABILITIES) <= set(r.get("capabilities") or [])]
    if integ:
        out["integration"] = _acc_stats(integ, seed, n_boot)

    # ---------------------------------------------------------------- tool use
    tools = sorted({t["tool"] for r in recs for t in _tool_turns(r)})
    per_tool = {}
    for tool in tools:
        calls = [t for r in ok for t in _tool_turns(r) if t["tool"] == tool]
        used = sum(1 for r in ok if any(t["tool"] == tool for t in _tool_turns(r)))
        per_tool[tool] = {
            "episode_rate": round(used / len(ok), 6) if ok else 0.0,
            "calls": len(calls),
            "calls_per_episode": round(len(calls) / len(ok), 6) if ok else 0.0,
            "error_rate": round(sum(1 for t in calls if t.get("error")) / len(calls), 6) if calls else 0.0,
        }
    all_turns = [t for r in ok for t in r.get("turns", ())]
    by_cat: dict[str, dict[str, Any]] = {}
    for cap in sorted({c for r in ok for c in (r.get("capabilities") or [])}):
        cat = [r for r in ok if cap in (r.get("capabilities") or [])]
        row: dict[str, Any] = {"n": len(cat), "any_tool": round(
            sum(1 for r in cat if _tool_turns(r)) / len(cat), 6)}
        for tool in tools:
            row[tool] = round(sum(1 for r in cat if any(t["tool"] == tool for t in _tool_turns(r))) / len(cat), 6)
        by_cat[cap] = row
    out["tool_use"] = {
        "any_tool_rate": round(sum(1 for r in ok if _tool_turns(r)) / len(ok), 6) if ok else 0.0,
        "calls_per_episode": round(sum(len(_tool_turns(r)) for r in ok) / len(ok), 6) if ok else 0.0,
        "invalid_turn_rate": round(sum(1 for t in all_turns if t.get("kind") == "invalid") / len(all_turns), 6)
        if all_turns else 0.0,
        "per_tool": per_tool,
        "by_capability": by_cat,
    }

    # ---------------------------------------------------------------- turns
    n_turns = [int(r.get("n_turns") or len(r.get("turns", ()))) for r in ok]
    hist = Counter(n_turns)
    out["turns"] = {
        "mean": round(float(np.mean(n_turns)), 6) if n_turns else None,
        "median": float(np.median(n_turns)) if n_turns else None,
        "max": max(n_turns) if n_turns else None,
        "histogram": {str(k): hist[k] for k in sorted(hist)},
    }

    # ---------------------------------------------------------------- pass@k
    if samples > 1:
        by_task: dict[Any, list[float]] = defaultdict(list)
        for r, a in zip(recs, acc):
            by_task[r.get("task_index")].append(a)
        full = [v for v in by_task.values() if len(v) == samples]
        if full:
            out[f"pass_at_{samples}"] = round(float(np.mean([max(v) >= 1.0 for v in full])), 6)

    errors = Counter((r.get("error") or "")[:160] for r in recs if r.get("status") != "ok")
    out["top_errors"] = [{"error": e, "count": c} for e, c in errors.most_common(5)]

    # ---------------------------------------------------------------- timing (not deterministic)
    lat: dict[str, list[float]] = defaultdict(list)
    for r in ok:
        for t in _tool_turns(r):
            lat[t["tool"]].append(float(t.get("latency_s") or 0.0))
    overhead = [
        max(0.0, float(t.get("step_s") or 0.0) - float(t.get("latency_s") or 0.0)) * 1000.0
        for r in ok for t in r.get("turns", ())
    ]
    out["timing"] = {
        "tool_latency_s": {tool: percentiles(v) for tool, v in sorted(lat.items())},
        "episode_wall_s": percentiles(float(r["timing"]["wall_s"]) for r in recs if r.get("timing")),
        "agent_s_per_episode": percentiles(float(r["timing"]["agent_s"]) for r in recs if r.get("timing")),
        "reset_s": percentiles(float(r["timing"]["reset_s"]) for r in recs if r.get("timing")),
        "env_overhead_ms_per_step": percentiles(overhead),
    }
    return out
