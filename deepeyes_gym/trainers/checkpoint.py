"""Checkpoints a run resumes from exactly: weights, optimizer, scheduler, RNG states, data position."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "copy_model_files"]

_STATE = "trainer_state.pt"
# Files beside the weights that a model dir needs to load again (tokenizer, processor, configs).
_MODEL_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                "chat_template.json", "preprocessor_config.json", "generation_config.json", "vocab.json",
                "merges.txt", "added_tokens.json")


def copy_model_files(src: str | Path, dst: str | Path) -> None:
    """Copy the non-weight files of a model dir (save_pretrained writes config and weights)."""
    for name in _MODEL_FILES:
        if (Path(src) / name).exists() and not (Path(dst) / name).exists():
            shutil.copy2(Path(src) / name, Path(dst) / name)


def save_checkpoint(out_dir: str | Path, step: int, model: torch.nn.Module, optimizer: Any, scheduler: Any, *,
                    model_src: str | Path, extra: dict[str, Any] | None = None,
                    generators: dict[str, torch.Generator] | None = None) -> Path:
    """Write ``out_dir/checkpoint-STEP`` atomically (a temp dir renamed into place)."""
    final = Path(out_dir) / f"checkpoint-{step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "model", safe_serialization=True)
    copy_model_files(model_src, tmp / "model")
    torch.save({
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
        "extra": extra or {},
    }, tmp / _STATE)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    (Path(out_dir) / "latest").write_text(final.name)
    return final


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    marker = Path(out_dir) / "latest"
    if not marker.exists():
        return None
    path = Path(out_dir) / marker.read_text().strip()
    return path if (path / _STATE).exists() else None


def load_checkpoint(path: str | Path, optimizer: Any, scheduler: Any,
                    generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Restore optimizer, scheduler and RNG states (the model is loaded from ``path/model``).
    Returns ``{"step", "extra"}``."""
    state = torch.load(Path(path) / _STATE, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    for k, g in (generators or {}).items():
        if k in state["generators"]:
            g.set_state(state["generators"][k])
    return {"step": int(state["step"]), "extra": state["extra"]}


def write_json(path: str | Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=str))
