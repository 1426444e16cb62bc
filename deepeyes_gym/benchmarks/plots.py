"""PNG plots of one or several runs (matplotlib, Agg backend: no display needed).

matplotlib is an optional dependency (the ``eval`` extra); it is imported only when a plot is
drawn, and a missing install raises an ImportError that says how to get it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["plot_accuracy_by_capability", "plot_tool_use", "plot_turns", "write_plots"]


def _plt():
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(
            "plots need matplotlib: pip install 'deepeyes-gym[eval]' (or pip install matplotlib)"
        ) from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _grouped_bars(ax, labels: list[str], series: Mapping[str, list[float]],
                  errs: Mapping[str, list[tuple[float, float]]] | None = None) -> None:
    k = max(1, len(series))
    width = 0.8 / k
    x = np.arange(len(labels))
    for i, (name, vals) in enumerate(series.items()):
        pos = x - 0.4 + width * (i + 0.5)
        vals_arr = np.asarray(vals, dtype=float)
        yerr = None
        if errs and name in errs:
            lo = np.array([v - e[0] if e[0] == e[0] else 0.0 for v, e in zip(vals_arr, errs[name])])
            hi = np.array([e[1] - v if e[1] == e[1] else 0.0 for v, e in zip(vals_arr, errs[name])])
            yerr = np.clip(np.vstack([lo, hi]), 0, None)
        bars = ax.bar(pos, vals_arr, width, label=name, yerr=yerr, capsize=3)
        for b, v in zip(bars, vals_arr):
            if v == v:
                ax.annotate(f"{v:.0f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom",
                            fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x)
    tilt = len(labels) > 4 and max(len(l) for l in labels) > 4  # long labels only
    ax.set_xticklabels(labels, rotation=20 if tilt else 0, ha="right" if tilt else "center")
    if len(series) > 1:
        ax.legend(fontsize=8)


def plot_accuracy_by_capability(summaries: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Accuracy (%) overall, per capability and for all-three tasks, with 95% CIs."""
    plt = _plt()
    caps = sorted({c for s in summaries.values() for c in s.get("by_capability", {})})
    groups = ["overall"] + caps + (["all three"] if any("integration" in s for s in summaries.values()) else [])

    def stat(s: Mapping[str, Any], g: str) -> Mapping[str, Any]:
        if g == "overall":
            return s.get("accuracy", {})
        if g == "all three":
            return s.get("integration", {})
        return s.get("by_capability", {}).get(g, {})

    series = {n: [100 * stat(s, g).get("mean", float("nan")) for g in groups] for n, s in summaries.items()}
    errs = {n: [tuple(100 * v for v in stat(s, g).get("ci95", [float("nan")] * 2)) for g in groups]
            for n, s in summaries.items()}
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(groups) * max(1, len(summaries)) ** 0.5, 3.6))
    _grouped_bars(ax, groups, series, errs)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    env = next((s.get("env_id") for s in summaries.values()), "")
    ax.set_title(f"Accuracy by capability — {env}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_tool_use(summaries: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Share of episodes using each tool, per capability category (one panel per agent)."""
    plt = _plt()
    n = max(1, len(summaries))
    fig, axes = plt.subplots(1, n, figsize=(5.0 * n, 3.6), squeeze=False)
    for ax, (name, s) in zip(axes[0], summaries.items()):
        tu = s.get("tool_use", {})
        tools = list(tu.get("per_tool", {}))
        cats = list(tu.get("by_capability", {}))
        if not tools or not cats:
            ax.text(0.5, 0.5, "no tool calls", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
        else:
            series = {t: [100 * tu["by_capability"][c].get(t, 0.0) for c in cats] for t in tools}
            _grouped_bars(ax, cats, series)
            if len(series) == 1:
                ax.legend(list(series), fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("episodes using the tool (%)")
        ax.set_title(f"Tool use by category — {name}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_turns(summaries: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Histogram of assistant turns per episode."""
    plt = _plt()
    hi = max([int(k) for s in summaries.values() for k in s.get("turns", {}).get("histogram", {})] or [1])
    labels = [str(k) for k in range(1, hi + 1)]
    series = {n: [100 * s.get("turns", {}).get("histogram", {}).get(k, 0) / max(1, s.get("n_episodes", 1) - s.get("n_errors", 0))
                  for k in labels] for n, s in summaries.items()}
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * hi * max(1, len(summaries)) ** 0.5 + 2), 3.4))
    _grouped_bars(ax, labels, series)
    ax.set_xlabel("assistant turns in the episode")
    ax.set_ylabel("episodes (%)")
    ax.set_title("Turns per episode", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def write_plots(summaries: Mapping[str, Mapping[str, Any]], out_dir: str | Path) -> list[str]:
    """Draw all three plots into ``out_dir``; return their file names."""
    out_dir = Path(out_dir)
    names = []
    for fn, name in ((plot_accuracy_by_capability, "accuracy_by_capability.png"),
                     (plot_tool_use, "tool_use_by_category.png"), (plot_turns, "turns_histogram.png")):
        fn(summaries, out_dir / name)
        names.append(name)
    return names
