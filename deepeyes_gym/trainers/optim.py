"""AdamW with linear warm-up then cosine (or constant) decay, on the trainable parameters only."""

from __future__ import annotations

import math
from typing import Literal

import torch

__all__ = ["make_optimizer", "lr_lambda"]


def lr_lambda(step: int, total: int, warmup: int, schedule: Literal["cosine", "constant"] = "cosine",
              min_ratio: float = 0.0) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float],
                   total_steps: int, warmup_steps: int, schedule: Literal["cosine", "constant"] = "cosine"):
    """(optimizer, scheduler) over parameters with ``requires_grad``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_lambda(s, total_steps, warmup_steps, schedule))
    return opt, sched
