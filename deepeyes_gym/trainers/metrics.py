"""Metrics sinks: JSONL always; TensorBoard and Weights & Biases when installed and asked for."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["MetricsLogger", "read_metrics"]

log = logging.getLogger(__name__)


class MetricsLogger:
    """``log(step, metrics)`` appends one JSON line to ``out_dir/metrics.jsonl`` (flushed at once,
    so a crash keeps every finished step) and forwards to the optional sinks."""

    def __init__(self, out_dir: str | Path, *, sinks: Sequence[str] = (), run_name: str = "run",
                 config: Mapping[str, Any] | None = None):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._tb = self._wandb = None
        if "tensorboard" in sinks:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(out_dir) / "tb"))
            except ImportError:
                log.warning("tensorboard is not installed: metrics go to JSONL only")
        if "wandb" in sinks:
            try:
                import wandb

                self._wandb = wandb.init(project="deepeyes-gym", name=run_name, config=dict(config or {}))
            except ImportError:
                log.warning("wandb is not installed: metrics go to JSONL only")

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        row = {"step": step, "time": round(time.time(), 3)}
        for k, v in metrics.items():
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            row[k] = v
        self._fh.write(json.dumps(row, default=float) + "\n")
        self._fh.flush()
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k not in ("step", "time")}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl (a torn last line is skipped); the last row per step wins."""
    rows: dict[int, dict[str, Any]] = {}
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    for line in p.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[int(row["step"])] = row
    return [rows[k] for k in sorted(rows)]
