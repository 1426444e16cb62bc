"""RL math as small pure torch functions, registered by name (the shared DAPO spec's formulas).

Every function documents its formula and is unit-tested against hand-computed vectors. An
:class:`Algorithm` bundles an advantage estimator, the loss settings and the sampling rules; DAPO,
GRPO, Dr.GRPO, PPO-clip (value-free), RLOO and REINFORCE++ are registered, and a user's own
registers the same way (``register_algorithm``, ``register_advantage``).

Shapes: rewards are flat ``[B]`` with the G samples of a group contiguous; per-token tensors are
``[B, T]`` with a 0/1 ``mask`` (1 on the policy's own tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Literal

import torch
from torch import Tensor

__all__ = [
    "group_advantages", "policy_loss", "overlong_penalty", "filter_groups", "truncated_is_weights",
    "entropy_from_logits", "register_advantage", "ADVANTAGES", "Algorithm", "register_algorithm",
    "get_algorithm", "ALGORITHMS", "LossAgg",
]

LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]
AdvantageFn = Callable[[Tensor, float], Tensor]  # (rewards [n_groups, G], eps) -> advantages [n_groups, G]

ADVANTAGES: dict[str, AdvantageFn] = {}


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator: register ``fn(grouped_rewards [n_groups, G], eps) -> [n_groups, G]``."""

    def deco(fn: AdvantageFn) -> AdvantageFn:
        if name in ADVANTAGES:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGES[name] = fn
        return fn

    return deco


@register_advantage("grpo")
def _grpo(r: Tensor, eps: float) -> Tensor:
    """Â_i = (R_i − mean_G R) / (std_G R + eps), std UNBIASED (n−1), as torch.std and verl.
    A group of one has no spread: Â = 0."""
    if r.shape[1] < 2:
        return torch.zeros_like(r)
    return (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + eps)


@register_advantage("drgrpo")
def _drgrpo(r: Tensor, eps: float) -> Tensor:
    """Dr.GRPO: Â_i = R_i − mean_G R (no std division, which biases towards easy/hard groups)."""
    return r - r.mean(dim=1, keepdim=True)


@register_advantage("rloo")
def _rloo(r: Tensor, eps: float) -> Tensor:
    """RLOO: Â_i = R_i − mean_{j≠i} R_j = G/(G−1) · (R_i − mean_G R). A group of one: Â = 0."""
    g = r.shape[1]
    if g < 2:
        return torch.zeros_like(r)
    return (r - r.mean(dim=1, keepdim=True)) * g / (g - 1)


@register_advantage("reinforce_pp")
def _reinforce_pp(r: Tensor, eps: float) -> Tensor:
    """REINFORCE++ (with group baseline, as verl's reinforce_plus_plus_baseline):
    a_i = R_i − mean_G R, then whitened over the whole batch: Â = (a − mean_B a) / (std_B a + eps)."""
    a = r - r.mean(dim=1, keepdim=True)
    flat = a.flatten()
    if flat.numel() < 2:
        return torch.zeros_like(a)
    return (a - flat.mean()) / (flat.std() + eps)


def group_advantages(rewards: Tensor, group_size: int, estimator: str = "grpo", eps: float = 1e-6) -> Tensor:
    """Per-sequence advantages ``[B]`` from flat rewards ``[B]`` whose groups of ``group_size``
    are contiguous. ``estimator``: grpo | drgrpo | rloo | reinforce_pp (or a registered name)."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    try:
        fn = ADVANTAGES[estimator]
    except KeyError:
        raise KeyError(f"unknown advantage estimator {estimator!r}; registered: {sorted(ADVANTAGES)}") from None
    return fn(rewards.view(-1, group_size), eps).reshape(-1)


def filter_groups(rewards: Tensor, group_size: int) -> Tensor:
    """DAPO dynamic sampling: one bool per group, True where the rewards are not all equal
    (an all-equal group has zero advantage, hence zero gradient)."""
    g = torch.as_tensor(rewards, dtype=torch.float32).view(-1, group_size)
    return g.max(dim=1).values > g.min(dim=1).values


def overlong_penalty(lengths: Tensor, max_len: int, buffer_len: int, factor: float = 1.0) -> Tensor:
    """DAPO soft overlong punishment over the policy's own tokens |y|:
    0 if |y| ≤ L_max − L_cache; ((L_max − L_cache) − |y|) / L_cache if |y| ≤ L_max; −1 beyond;
    times ``factor``."""
    if not 0 < buffer_len <= max_len:
        raise ValueError("need 0 < buffer_len <= max_len")
    y = torch.as_tensor(lengths, dtype=torch.float32)
    soft = max_len - buffer_len
    pen = torch.clamp((soft - y) / buffer_len, min=-1.0, max=0.0)
    return factor * pen


def truncated_is_weights(train_logp: Tensor, rollout_logp: Tensor, cap: float = 2.0) -> Tensor:
    """Truncated importance weights for the rollout/trainer mismatch: w = min(π_train/π_rollout, C),
    per token, detached (a correction factor, not a path for gradients)."""
    return torch.exp(train_logp.detach() - rollout_logp).clamp(max=cap)


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    clip_c: float | None = None,
    agg: LossAgg = "token-mean",
    global_tokens: int | float | None = None,
    global_seqs: int | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The clipped surrogate with clip-higher, optional dual-clip, and a chosen aggregation.

    r = exp(logp − old_logp); per token ℓ = max(−Â·r, −Â·clip(r, 1−ε_low, 1+ε_high)); with dual-clip
    and Â < 0: ℓ = min(ℓ, −c·Â) (at most c·|Â|). ``is_weights`` multiplies ℓ (truncated IS).

    Aggregation (so a mini-batch split into micro-batches or ranks sums to the same loss, pass the
    whole mini-batch's counts as ``global_tokens`` / ``global_seqs``):
      token-mean:          Σ ℓ·m / N_tokens
      seq-mean-token-mean: Σ_seq (Σ_t ℓ·m / Σ_t m) / N_seqs
      seq-mean-token-sum:  Σ_seq (Σ_t ℓ·m) / N_seqs
    Metrics: approx_kl (k3 = (r−1) − log r), clipfrac (tokens where the clip bound is active),
    clipfrac_low / clipfrac_high, dual_clipfrac, ratio_max — masked means over this call's tokens.
    """
    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1).expand_as(logp)
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss_tok = torch.maximum(unclipped, clipped)
    dual = torch.zeros_like(mask, dtype=torch.bool)
    if clip_c is not None:
        if clip_c <= 1.0:
            raise ValueError("clip_c (dual-clip) must be > 1")
        cap = -adv * clip_c
        dual = (adv < 0) & (loss_tok > cap)
        loss_tok = torch.where(adv < 0, torch.minimum(loss_tok, cap), loss_tok)
    if is_weights is not None:
        loss_tok = loss_tok * is_weights
    masked = loss_tok * mask
    if agg == "token-mean":
        loss = masked.sum() / (global_tokens if global_tokens is not None else mask.sum().clamp(min=1))
    elif agg in ("seq-mean-token-mean", "seq-mean-token-sum"):
        per_seq = masked.sum(-1)
        if agg == "seq-mean-token-mean":
            per_seq = per_seq / mask.sum(-1).clamp(min=1)
        n_seqs = global_seqs if global_seqs is not None else logp.shape[0]
        loss = per_seq.sum() / max(n_seqs, 1)
    else:
        raise ValueError(f"unknown loss aggregation {agg!r}")
    with torch.no_grad():
        clip_active = clipped > unclipped
        metrics = {
            "approx_kl": float(_masked_mean((ratio - 1) - log_ratio, mask)),
            "clipfrac": float(_masked_mean(clip_active.to(mask.dtype), mask)),
            "clipfrac_low": float(_masked_mean((clip_active & (adv < 0)).to(mask.dtype), mask)),
            "clipfrac_high": float(_masked_mean((clip_active & (adv > 0)).to(mask.dtype), mask)),
            "dual_clipfrac": float(_masked_mean(dual.to(mask.dtype), mask)),
            "ratio_max": float((ratio * mask).max()) if mask.any() else 1.0,
        }
    return loss, metrics


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Per-position entropy H = logsumexp(z) − Σ softmax(z)·z, shape [..., T]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


# ---------------------------------------------------------------------- algorithms
@dataclass(frozen=True)
class Algorithm:
    """An estimator, the loss settings and the sampling rules, under one name."""

    name: str
    advantage: str = "grpo"
    """Registered advantage estimator."""
    clip_low: float = 0.2
    clip_high: float = 0.28
    clip_c: float | None = None
    """Dual-clip constant for negative advantages (None: off)."""
    loss_agg: LossAgg = "token-mean"
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal and refill to the target batch (DAPO)."""
    overlong_shaping: bool = False
    """Add the soft overlong penalty to the reward (DAPO)."""
    extras: dict[str, float] = field(default_factory=dict)

    def with_overrides(self, **kw) -> "Algorithm":
        return replace(self, **kw)


ALGORITHMS: dict[str, Algorithm] = {}


def register_algorithm(algo: Algorithm, *, overwrite: bool = False) -> Algorithm:
    if algo.advantage not in ADVANTAGES:
        raise KeyError(f"algorithm {algo.name!r} uses unknown advantage {algo.advantage!r}")
    if algo.name in ALGORITHMS and not overwrite:
        raise ValueError(f"algorithm {algo.name!r} is already registered (pass overwrite=True)")
    ALGORITHMS[algo.name] = algo
    return algo


def get_algorithm(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise KeyError(f"unknown algorithm {name!r}; registered: {sorted(ALGORITHMS)}") from None


register_algorithm(Algorithm("dapo", "grpo", 0.2, 0.28, None, "token-mean", dynamic_sampling=True, overlong_shaping=True))
register_algorithm(Algorithm("grpo", "grpo", 0.2, 0.2, None, "seq-mean-token-mean"))
register_algorithm(Algorithm("drgrpo", "drgrpo", 0.2, 0.2, None, "seq-mean-token-sum"))
register_algorithm(Algorithm("ppo", "grpo", 0.2, 0.2, 3.0, "token-mean"))  # PPO-clip, value-free baseline
register_algorithm(Algorithm("rloo", "rloo", 0.2, 0.2, None, "token-mean"))
register_algorithm(Algorithm("reinforce_pp", "reinforce_pp", 0.2, 0.2, None, "token-mean"))
