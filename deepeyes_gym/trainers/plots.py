"""Learning curves of a training run (metrics.jsonl) as one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .metrics import read_metrics

__all__ = ["plot_run", "DEFAULT_CURVES"]

DEFAULT_CURVES = (
    "reward", "accuracy", "format_rate", "tool_calls_per_traj", "tool_success_rate", "response_len",
    "entropy", "approx_kl", "clipfrac_low", "clipfrac_high", "mismatch_mean_abs", "filtered_group_frac",
    "loss", "grad_norm", "lr",
)


def plot_run(run_dir: str | Path, out: str | Path | None = None, curves: Sequence[str] = DEFAULT_CURVES) -> Path:
    """Draw every metric of ``curves`` that the run logged, one panel each, against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}: metrics.jsonl has no rows")
    present = [c for c in curves if any(isinstance(r.get(c), (int, float)) for r in rows)]
    if not present:
        raise ValueError(f"{run_dir}: none of {list(curves)} was logged")
    cols = min(3, len(present))
    nrows = -(-len(present) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.8 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, present):
        pts = [(r["step"], r[name]) for r in rows if isinstance(r.get(name), (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 40 else None)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
