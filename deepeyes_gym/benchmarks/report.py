"""Markdown reports: one run, or several agents side by side, next to the published numbers.

Published numbers are DeepEyesV2's (arXiv 2511.05271), as collected in the project's protocol
notes. They apply to the real benchmarks; when an env id runs the bundled procedural RealX-style
suite instead of the real RealX-Bench, the report says so: the column is there for scale.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

__all__ = ["PUBLISHED", "published_for", "render_report", "render_comparison", "comparison_table"]

# benchmark -> {model/reference: accuracy in %}
PUBLISHED: dict[str, dict[str, float]] = {
    "V*": {"DeepEyesV2-7B": 81.8, "Qwen2.5-VL-7B": 78.5},
    "HRBench-4K": {"DeepEyesV2-7B": 77.9, "Qwen2.5-VL-7B": 71.6},
    "HRBench-8K": {"DeepEyesV2-7B": 73.8, "Qwen2.5-VL-7B": 67.9},
    "MME-RealWorld": {"DeepEyesV2-7B": 64.9, "Qwen2.5-VL-7B": 57.3},
    "MathVista": {"DeepEyesV2-7B": 71.9, "Qwen2.5-VL-7B": 68.3},
    "MathVerse": {"DeepEyesV2-7B": 52.7, "Qwen2.5-VL-7B": 45.6},
    "MMSearch": {"DeepEyesV2-7B": 63.7, "Qwen2.5-VL-7B (with search)": 52.2},
    "RealX-Bench": {"DeepEyesV2-7B": 28.3, "best model": 46.0, "humans": 70.0},
}
SOURCE = "DeepEyesV2 paper (arXiv 2511.05271)"

_PATTERNS = (  # normalised env id (lower case, alphanumerics only) -> benchmark
    (r"realx", "RealX-Bench"),
    (r"hrbench4k|hr4k", "HRBench-4K"),
    (r"hrbench8k|hr8k", "HRBench-8K"),
    (r"mmerealworld|mmerw", "MME-RealWorld"),
    (r"mathvista", "MathVista"),
    (r"mathverse", "MathVerse"),
    (r"mmsearch", "MMSearch"),
    (r"vstar|v\*", "V*"),
)


def published_for(env_id: str | None) -> str | None:
    """The benchmark an env id evaluates, if DeepEyesV2 published a number for it."""
    if not env_id:
        return None
    norm = re.sub(r"[^a-z0-9*]", "", env_id.lower())
    if "train" in norm or "toy" in norm:
        return None
    for pattern, bench in _PATTERNS:
        if re.search(pattern, norm):
            return bench
    return None


def _pct(x: Any) -> str:
    return "—" if x is None or x != x else f"{100 * float(x):.1f}"


def _duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def _acc_cell(stats: Mapping[str, Any] | None) -> str:
    if not stats or not stats.get("n"):
        return "—"
    lo, hi = stats.get("ci95", [None, None])
    ci = f" [{_pct(lo)}, {_pct(hi)}]" if lo is not None and lo == lo else ""
    return f"{_pct(stats['mean'])}{ci}"


def _is_bundled(meta: Mapping[str, Any] | None) -> bool:
    kwargs = (meta or {}).get("env_kwargs") or {}
    return not any(k in kwargs for k in ("data_path", "path", "data_dir"))


def _published_note(bench: str, meta: Mapping[str, Any] | None) -> str:
    note = f"Published numbers: {SOURCE}, on {bench}."
    if bench == "RealX-Bench" and _is_bundled(meta):
        note += (
            " This run used the bundled procedural RealX-style suite (fictional facts, same "
            "capability mix), not the real RealX-Bench: the published column gives scale, not a "
            "like-for-like comparison (pass `data_path=` to evaluate the real benchmark)."
        )
    return note


def comparison_table(
    summaries: Mapping[str, Mapping[str, Any]], *, meta: Mapping[str, Any] | None = None, ci: bool = True
) -> str:
    """One Markdown table: rows are metrics, columns our agents, then published references."""
    names = list(summaries)
    env_id = next((s.get("env_id") for s in summaries.values() if s.get("env_id")), None)
    bench = published_for(env_id)
    pub = PUBLISHED.get(bench, {}) if bench else {}
    cell = _acc_cell if ci else (lambda s: _pct(s.get("mean")) if s and s.get("n") else "—")
    header = ["Metric"] + names + [f"{k} (paper)" for k in pub]
    rows: list[list[str]] = []

    def add(label: str, values: list[str], published: list[str] | None = None) -> None:
        rows.append([label] + values + (published or ["—"] * len(pub)))

    add("Accuracy (%)", [cell(s.get("accuracy")) for s in summaries.values()], [f"{v:.1f}" for v in pub.values()])
    caps = sorted({c for s in summaries.values() for c in s.get("by_capability", {})})
    for c in caps:
        add(f"  {c}", [cell(s.get("by_capability", {}).get(c)) for s in summaries.values()])
    if any("integration" in s for s in summaries.values()):
        add("  all three (integration)", [cell(s.get("integration")) for s in summaries.values()])
    domains = sorted({d for s in summaries.values() for d in s.get("by_domain", {})})
    if len(domains) > 1:
        for d in domains:
            add(f"  domain: {d}", [cell(s.get("by_domain", {}).get(d)) for s in summaries.values()])
    add("Format OK (%)", [_pct(s.get("format_ok_rate")) for s in summaries.values()])
    add("Episodes using a tool (%)", [_pct(s.get("tool_use", {}).get("any_tool_rate")) for s in summaries.values()])
    add("Tool calls / episode", [f"{s.get('tool_use', {}).get('calls_per_episode', 0):.2f}" for s in summaries.values()])
    add("Turns / episode", [f"{s['turns']['mean']:.2f}" if s.get("turns", {}).get("mean") is not None else "—"
                            for s in summaries.values()])
    add("Episodes (errors)", [f"{s.get('n_episodes', 0)} ({s.get('n_errors', 0)})" for s in summaries.values()])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    table = "\n".join(lines)
    if bench:
        table += "\n\n" + _published_note(bench, meta)
    return table


def _group_table(title: str, groups: Mapping[str, Mapping[str, Any]]) -> list[str]:
    if not groups:
        return []
    out = [f"### {title}", "", "| Group | n | Accuracy % [95% CI] |", "|---|---:|---:|"]
    out += [f"| {g} | {s['n']} | {_acc_cell(s)} |" for g, s in groups.items()]
    return out + [""]


def render_report(summary: Mapping[str, Any], meta: Mapping[str, Any] | None = None,
                  plots: Sequence[str] = ()) -> str:
    """The Markdown report of one run."""
    meta = meta or {}
    agent = summary.get("agent") or meta.get("agent")
    lines = [
        f"# {summary.get('env_id')} — {agent}",
        "",
        f"{summary['n_episodes']} episodes on {summary['n_tasks']} tasks"
        + (f" × {summary['samples']} samples" if summary.get("samples", 1) > 1 else "")
        + f"; {summary['n_errors']} errored, {summary['n_truncated']} hit the turn budget.",
        "",
        "Accuracy in %, with 95% bootstrap confidence intervals; errored episodes count as wrong.",
        "",
        "## Overview",
        "",
        comparison_table({agent: summary}, meta=meta),
        "",
        "## Accuracy by group",
        "",
    ]
    lines += _group_table("By capability", summary.get("by_capability", {}))
    lines += _group_table("By capability combination", summary.get("by_capability_combo", {}))
    lines += _group_table("By domain", summary.get("by_domain", {}))
    lines += _group_table("By task family", summary.get("by_family", {}))
    tu = summary.get("tool_use", {})
    lines += ["## Tool use", "", f"Episodes using any tool: {_pct(tu.get('any_tool_rate'))}%; "
              f"tool calls per episode: {tu.get('calls_per_episode', 0):.2f}; "
              f"invalid turns: {_pct(tu.get('invalid_turn_rate'))}%.", ""]
    if tu.get("per_tool"):
        lines += ["| Tool | Episodes using it % | Calls | Calls / episode | Error rate % | Latency p50 / p95 (ms) |",
                  "|---|---:|---:|---:|---:|---:|"]
        lat = summary.get("timing", {}).get("tool_latency_s", {})
        for tool, s in tu["per_tool"].items():
            l = lat.get(tool, {})
            lat_s = f"{1000 * l['p50']:.1f} / {1000 * l['p95']:.1f}" if l.get("n") else "—"
            lines.append(f"| {tool} | {_pct(s['episode_rate'])} | {s['calls']} | {s['calls_per_episode']:.2f} | "
                         f"{_pct(s['error_rate'])} | {lat_s} |")
        lines.append("")
    if tu.get("by_capability"):
        tools = list(tu.get("per_tool", {}))
        lines += ["Share of episodes using each tool, per capability category (%):", "",
                  "| Category | n | any tool | " + " | ".join(tools) + " |",
                  "|---|---:|---:|" + "---:|" * len(tools)]
        for cap, row in tu["by_capability"].items():
            lines.append(f"| {cap} | {row['n']} | {_pct(row['any_tool'])} | "
                         + " | ".join(_pct(row.get(t)) for t in tools) + " |")
        lines.append("")
    turns = summary.get("turns", {})
    if turns.get("histogram"):
        lines += ["## Turns", "", f"Mean {turns['mean']:.2f}, median {turns['median']:g}, max {turns['max']}.", "",
                  "| Turns | " + " | ".join(turns["histogram"]) + " |",
                  "|---|" + "---:|" * len(turns["histogram"]),
                  "| Episodes | " + " | ".join(str(v) for v in turns["histogram"].values()) + " |", ""]
    timing = summary.get("timing", {})
    if timing:
        def row(name: str, p: Mapping[str, Any], to_seconds: float = 1.0) -> str:
            if not p.get("n"):
                return f"| {name} | — | — | — |"
            return "| " + " | ".join([name] + [_duration(p[k] * to_seconds) for k in ("p50", "p95", "max")]) + " |"

        lines += ["## Latency", "", "| | p50 | p95 | max |", "|---|---:|---:|---:|",
                  row("episode wall time", timing.get("episode_wall_s", {})),
                  row("agent time per episode", timing.get("agent_s_per_episode", {})),
                  row("reset", timing.get("reset_s", {})),
                  row("env overhead per step (excl. tools)", timing.get("env_overhead_ms_per_step", {}), 1e-3), ""]
        run = timing.get("run")
        if run:
            lines += [f"This call ran {run['new_episodes']} episodes in {_duration(run['wall_s'])} at concurrency "
                      f"{run['concurrency']} ({run['resumed_episodes']} were already done).", ""]
    if summary.get("top_errors"):
        lines += ["## Errors", ""] + [f"- {e['count']}× {e['error']}" for e in summary["top_errors"]] + [""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def render_comparison(summaries: Mapping[str, Mapping[str, Any]], meta: Mapping[str, Any] | None = None,
                      plots: Sequence[str] = ()) -> str:
    """The Markdown report comparing several agents on one env."""
    env_id = next((s.get("env_id") for s in summaries.values() if s.get("env_id")), "?")
    lines = [f"# {env_id}: {' vs '.join(summaries)}", "",
             "Accuracy in %, with 95% bootstrap confidence intervals; errored episodes count as wrong. "
             "Per-agent reports, trajectories (viewer.html) and plots are in each agent's folder.", "",
             comparison_table(summaries, meta=meta), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)
