"""Evaluation: the concurrent, resumable runner, summaries, reports, plots and the HTML viewer.

This package imports only ``envs`` and ``agents`` (never ``trainers``)::

    from deepeyes_gym.benchmarks import evaluate
    result = evaluate("DeepEyes-RealX-v0", ["scripted", "direct"], "runs/baselines")
    print(result.table)
"""

from .evaluate import AgentSpec, Evaluation, evaluate
from .records import read_records
from .report import PUBLISHED, comparison_table, render_report
from .runner import RunAborted, RunConfig, RunResult, load_run, run_eval
from .summary import bootstrap_ci, summarize
from .viewer import render_viewer, write_viewer

__all__ = [
    "AgentSpec", "Evaluation", "evaluate", "read_records", "PUBLISHED", "comparison_table", "render_report",
    "RunAborted", "RunConfig", "RunResult", "load_run", "run_eval", "bootstrap_ci", "summarize",
    "render_viewer", "write_viewer",
]
