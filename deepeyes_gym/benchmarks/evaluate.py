"""One call from agents × env to every artifact: JSONL, summary, report, plots, viewer.

With one agent, ``out_dir`` holds ``episodes.jsonl``, ``summary.json``, ``report.md``, the PNGs
and ``viewer.html``. With several, each agent gets ``out_dir/<label>/`` with those files, and
``out_dir`` itself holds the side-by-side ``report.md``, a combined ``summary.json`` and the
comparison plots.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..agents import Agent
from .report import comparison_table, render_comparison, render_report
from .runner import RunConfig, RunResult, run_eval
from .summary import summarize
from .viewer import write_viewer

__all__ = ["AgentSpec", "Evaluation", "evaluate", "write_artifacts"]

log = logging.getLogger(__name__)


@dataclass
class AgentSpec:
    """An agent to evaluate: registry ``name``, constructor ``kwargs``, and the ``label`` used for
    its folder and table column (defaults to the name). ``agent`` passes a ready instance."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    agent: Agent | None = None

    @property
    def tag(self) -> str:
        return self.label or self.name


@dataclass
class Evaluation:
    out_dir: Path
    summaries: dict[str, dict[str, Any]]  # label -> summary
    runs: dict[str, RunResult]
    report_path: Path
    table: str  # the Markdown side-by-side table
    warnings: list[str] = field(default_factory=list)


def write_artifacts(run: RunResult, summary: Mapping[str, Any], *, plots: bool = True,
                    viewer: bool = True, image_budget_mb: float = 40.0) -> list[str]:
    """Write summary.json, the PNGs, report.md and viewer.html of one run; return warnings."""
    out, warnings = run.out_dir, []
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    names: list[str] = []
    if plots:
        try:
            from .plots import write_plots

            names = write_plots({summary.get("agent") or run.meta.get("agent"): summary}, out)
        except ImportError as exc:
            warnings.append(f"plots skipped: {exc}")
    (out / "report.md").write_text(render_report(summary, run.meta, names))
    if viewer:
        title = f"{summary.get('env_id')} — {summary.get('agent')}"
        write_viewer(run.records, out / "viewer.html", title=title, image_budget_mb=image_budget_mb,
                     system_prompt=run.meta.get("system_prompt"))
    return warnings


def evaluate(
    env_id: str,
    agents: Sequence[AgentSpec | str],
    out_dir: str | os.PathLike[str],
    *,
    limit: int | None = None,
    samples: int = 1,
    concurrency: int = 8,
    resume: bool = False,
    seed: int = 0,
    env_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
    save_images: bool = True,
    plots: bool = True,
    viewer: bool = True,
    image_budget_mb: float = 40.0,
    max_consecutive_errors: int = 25,
) -> Evaluation:
    """Run every agent on ``env_id`` (resumably) and write all artifacts; see the module doc."""
    specs = [AgentSpec(a) if isinstance(a, str) else a for a in agents]
    if not specs:
        raise ValueError("give at least one agent")
    labels = [s.tag for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"agent labels must be unique, got {labels}; give each a label")
    out_dir = Path(out_dir)
    single = len(specs) == 1
    summaries: dict[str, dict[str, Any]] = {}
    runs: dict[str, RunResult] = {}
    warnings: list[str] = []
    for spec in specs:
        cfg = RunConfig(
            env_id=env_id, agent=spec.tag, out_dir=out_dir if single else out_dir / spec.tag, limit=limit,
            samples=samples, concurrency=concurrency, resume=resume, seed=seed, env_kwargs=dict(env_kwargs or {}),
            agent_kwargs=dict(spec.kwargs), save_images=save_images, progress=progress,
            max_consecutive_errors=max_consecutive_errors,
        )
        agent = spec.agent
        own = agent is None
        if own:
            from ..agents import make_agent

            agent = make_agent(spec.name, **spec.kwargs)
        try:
            run = run_eval(cfg, agent=agent)
        finally:
            if own:
                agent.close()
        summary = summarize(run.records, seed=seed)
        summary["agent"] = spec.tag
        summary["timing"]["run"] = {"wall_s": round(run.wall_s, 3), "new_episodes": run.n_new,
                                    "resumed_episodes": run.n_skipped, "concurrency": concurrency}
        warnings += write_artifacts(run, summary, plots=plots, viewer=viewer, image_budget_mb=image_budget_mb)
        summaries[spec.tag], runs[spec.tag] = summary, run
    meta = next(iter(runs.values())).meta
    table = comparison_table(summaries, meta=meta)
    if single:
        report_path = out_dir / "report.md"
    else:
        names: list[str] = []
        if plots:
            try:
                from .plots import write_plots

                names = write_plots(summaries, out_dir)
            except ImportError as exc:
                warnings.append(f"plots skipped: {exc}")
        (out_dir / "summary.json").write_text(json.dumps({"env_id": env_id, "agents": summaries}, indent=2,
                                                         ensure_ascii=False))
        report_path = out_dir / "report.md"
        report_path.write_text(render_comparison(summaries, meta, names))
    for w in dict.fromkeys(warnings):
        log.warning(w)
    return Evaluation(out_dir=out_dir, summaries=summaries, runs=runs, report_path=report_path, table=table,
                      warnings=list(dict.fromkeys(warnings)))
