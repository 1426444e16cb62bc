"""Cold-start SFT (the paper's stage 1): supervised training on curated tool-using trajectories.

Reads like the algorithm box: load episodes → render them with the policy's renderer (prompt and
tool outputs masked) → for each epoch, shuffled batches → token-mean cross-entropy over the batch's
loss tokens (split into one-example micro-batches, normalised by the batch's token count so the
split does not change the loss) → AdamW with warm-up, cosine decay and grad clipping → checkpoint.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import copy_model_files, latest_checkpoint, load_checkpoint, save_checkpoint, write_json
from .examples import Example, episode_to_example, load_episodes
from .metrics import MetricsLogger
from .optim import make_optimizer

__all__ = ["SFTConfig", "SFTResult", "train_sft", "freeze_vision_tower"]

log = logging.getLogger(__name__)


@dataclass
class SFTConfig:
    """Cold-start SFT. Defaults are the DeepEyesV2 paper's (lr 1e-5, cosine, 3 epochs, batch 128,
    vision tower frozen)."""

    model: str = ""
    """Model directory (a Hugging Face checkpoint: Qwen2.5-VL or a text Qwen2); "tiny" builds a
    random-weight Qwen2.5-VL on the spot (smoke runs)."""
    data: list[str] = field(default_factory=list)
    """Episode stores (an eval run folder or its episodes/), or DeepEyesV2 SFT JSON files."""
    out_dir: str = "runs/sft"
    """Where checkpoints, metrics.jsonl and the final model go."""
    only_correct: bool = True
    """Keep only stored episodes whose accuracy is 1 (curated files are taken as they are)."""
    lr: float = 1e-5
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    epochs: int = 3
    """Passes over the data."""
    batch_size: int = 128
    """Examples per optimizer step (the loss is the token mean over the whole batch)."""
    warmup_ratio: float = 0.03
    """Fraction of optimizer steps with linear warm-up."""
    schedule: str = "cosine"
    """Learning-rate decay after warm-up: cosine or constant."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    freeze_vision: bool = True
    """Freeze the vision tower (the paper does)."""
    max_length: int = 16384
    """Longest example in tokens; longer ones are skipped with a warning."""
    max_pixels: int | None = None
    """Per-image pixel cap applied before rendering (None: the processor's)."""
    seed: int = 0
    """Seed of the data order and of torch."""
    save_every: int = 0
    """Checkpoint every N optimizer steps (0: only at the end)."""
    resume: bool = False
    """Continue from out_dir's latest checkpoint."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms (bitwise repeatable on CPU)."""
    log_to: list[str] = field(default_factory=list)
    """Extra metric sinks: tensorboard, wandb."""
    device: str | None = None
    """cpu, cuda, ... (None: cuda when available)."""


@dataclass
class SFTResult:
    out_dir: Path
    final_model: Path
    steps: int
    n_examples: int
    losses: list[float]


def freeze_vision_tower(model: torch.nn.Module) -> int:
    """Stop gradients into the vision encoder and its merger; returns how many tensors froze."""
    n = 0
    for name, p in model.named_parameters():
        if ".visual." in f".{name}" or name.startswith("visual."):
            p.requires_grad_(False)
            n += 1
    return n


def build_examples(cfg: SFTConfig, renderer: Any) -> list[Example]:
    examples = []
    for source, ep in load_episodes(cfg.data, only_correct=cfg.only_correct):
        try:
            examples.append(episode_to_example(ep, renderer, max_length=cfg.max_length, source=source))
        except ValueError as exc:  # too long, or an episode that cannot be rendered: skip it, say so
            log.warning("skipping an episode of %s (%s): %s", source, ep.task.id, exc)
    if not examples:
        raise ValueError(f"no usable SFT examples in {cfg.data}")
    return examples


def example_loss_sum(model: torch.nn.Module, ex: Example) -> torch.Tensor:
    """Σ −log p over the example's loss tokens (the caller divides by the batch's count)."""
    from ..agents.hf import sequence_logprobs

    ids = torch.tensor(ex.ids)
    mask = torch.tensor(ex.mask)
    return -sequence_logprobs(model, ids, ex.mm_inputs or None, mask).sum()


def train_sft(cfg: SFTConfig) -> SFTResult:
    from ..agents.hf import load_model
    from ..agents.render.qwen25vl import Qwen25VLRenderer

    from ..agents.tiny import model_dir as resolve_model

    if not cfg.model:
        raise ValueError("SFTConfig.model: give a model directory")
    cfg.model = str(resolve_model(cfg.model))
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", asdict(cfg))

    renderer = Qwen25VLRenderer.from_pretrained(cfg.model, max_pixels=cfg.max_pixels)
    examples = build_examples(cfg, renderer)
    ckpt = latest_checkpoint(out) if cfg.resume else None
    model = load_model(ckpt / "model" if ckpt else cfg.model, device=cfg.device)
    model.train()
    if cfg.freeze_vision:
        log.info("froze %d vision tensors", freeze_vision_tower(model))
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    opt, sched = make_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas),
                                total_steps=total, warmup_steps=int(cfg.warmup_ratio * total),
                                schedule=cfg.schedule)
    order = torch.Generator().manual_seed(cfg.seed)
    step = 0
    if ckpt is not None:
        step = load_checkpoint(ckpt, opt, sched, {"order": order})["step"]
        log.info("resumed from %s at step %d", ckpt, step)
    metrics = MetricsLogger(out, sinks=cfg.log_to, run_name=out.name, config=asdict(cfg))
    losses: list[float] = []
    try:
        while step < total:
            epoch, in_epoch = divmod(step, steps_per_epoch)
            perm = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed + epoch)).tolist()
            batch = [examples[i] for i in perm[in_epoch * cfg.batch_size:(in_epoch + 1) * cfg.batch_size]]
            t0 = time.perf_counter()
            n_tok = sum(ex.n_loss_tokens for ex in batch)
            opt.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for ex in batch:  # micro-batches of one: the batch's token count normalises each
                loss = example_loss_sum(model, ex) / max(n_tok, 1)
                loss.backward()
                loss_sum += loss.item()
            grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0
                         else torch.tensor(0.0))
            opt.step()
            sched.step()
            step += 1
            losses.append(loss_sum)
            metrics.log(step, {"loss": loss_sum, "epoch": epoch, "lr": sched.get_last_lr()[0],
                               "grad_norm": float(grad_norm), "tokens": n_tok, "examples": len(batch),
                               "step_s": time.perf_counter() - t0})
            if cfg.save_every and step % cfg.save_every == 0 and step < total:
                save_checkpoint(out, step, model, opt, sched, model_src=cfg.model, generators={"order": order})
    finally:
        metrics.close()
    final = out / "final"
    model.save_pretrained(final, safe_serialization=True)
    copy_model_files(cfg.model, final)
    save_checkpoint(out, step, model, opt, sched, model_src=cfg.model, generators={"order": order})
    return SFTResult(out, final, step, len(examples), losses)
