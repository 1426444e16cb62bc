"""Lossless episode files: every text unclipped, every image a PNG file referenced by path.

An :class:`EpisodeStore` is a directory with ``episodes.jsonl`` (one episode a line) and
``images/`` (PNG files named by content hash, so the 16 samples of a task share its input image).
It is the input format of the SFT trainer and of re-scoring stored rollouts without the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from .episode import Episode, Turn
from .task import Task
from .turns import Message

__all__ = ["EpisodeStore", "episode_to_dict", "episode_from_dict"]

FORMAT_VERSION = 1
_TASK_FIELDS = ("id", "question", "answer", "answer_kind", "options", "domain", "reference_solution", "source")


def _plain(obj: Any) -> Any:
    """JSON-safe copy of tool metadata and task extras (numpy scalars/arrays, sets, tuples)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return f"<array shape={list(obj.shape)} dtype={obj.dtype}>"
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return repr(obj)


class EpisodeStore:
    """Append episodes to, and read them back from, one directory."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.path = self.root / "episodes.jsonl"

    # ------------------------------------------------------------------ images
    def _save_image(self, arr: np.ndarray) -> str:
        arr = np.ascontiguousarray(arr)
        digest = hashlib.sha1(arr.tobytes() + repr(arr.shape).encode()).hexdigest()
        rel = f"images/{digest[:2]}/{digest}.png"
        path = self.root / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            Image.fromarray(arr).save(tmp, format="PNG")
            os.replace(tmp, path)
        return rel

    def _load_image(self, rel: str) -> np.ndarray:
        with Image.open(self.root / rel) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        arr.setflags(write=False)
        return arr

    # ------------------------------------------------------------------ episodes
    def append(self, episode: Episode, *, key: str | None = None, extra: dict[str, Any] | None = None) -> None:
        """Write one episode (a line) and its images; ``extra`` is stored beside it as is."""
        self.root.mkdir(parents=True, exist_ok=True)
        line = episode_to_dict(episode, self._save_image)
        line["key"], line["extra"] = key, _plain(extra or {})
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")

    def __iter__(self) -> Iterator[tuple[str | None, Episode, dict[str, Any]]]:
        """(key, episode, extra) for every stored episode; a torn last line is skipped."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    d = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash mid-write
                yield d.get("key"), episode_from_dict(d, self._load_image), d.get("extra", {})

    def load(self) -> list[Episode]:
        return [ep for _, ep, _ in self]


def episode_to_dict(ep: Episode, save_image) -> dict[str, Any]:
    """A JSON-safe dict of the episode; ``save_image(array) -> str`` stores each image."""
    task = ep.task
    prompt_images = [save_image(a) for a in (ep.prompt.images if ep.prompt else ())]
    return {
        "format": FORMAT_VERSION,
        "task": {
            **{f: _plain(getattr(task, f)) for f in _TASK_FIELDS},
            "capabilities": sorted(task.capabilities),
            "metadata": _plain(task.metadata),
            "images": prompt_images,
        },
        "system_prompt": ep.system_prompt,
        "prompt": {"text": ep.prompt.text, "images": prompt_images} if ep.prompt else None,
        "turns": [
            {
                **{f.name: _plain(getattr(t, f.name)) for f in dataclasses.fields(Turn)
                   if f.name != "observation_images"},
                "observation_images": [save_image(a) for a in t.observation_images],
            }
            for t in ep.turns
        ],
        "prediction": ep.prediction,
        "terminated": ep.terminated,
        "truncated": ep.truncated,
        "stop_reason": ep.stop_reason,
        "reward": ep.reward,
        "reward_breakdown": _plain(ep.reward_breakdown),
    }


def episode_from_dict(d: dict[str, Any], load_image) -> Episode:
    """The inverse of :func:`episode_to_dict`; ``load_image(path) -> array`` reads each image."""
    if d.get("format") != FORMAT_VERSION:
        raise ValueError(f"unknown episode format {d.get('format')!r} (this version reads {FORMAT_VERSION})")
    t = d["task"]
    images = tuple(load_image(p) for p in t["images"])
    task = Task(
        **{f: t[f] for f in _TASK_FIELDS},
        images=images,
        capabilities=frozenset(t["capabilities"]),
        metadata=t["metadata"],
    )
    prompt = Message("user", d["prompt"]["text"], images) if d.get("prompt") else None
    turns = []
    for td in d["turns"]:
        fields = {k: v for k, v in td.items() if k != "observation_images"}
        turns.append(Turn(**fields, observation_images=tuple(load_image(p) for p in td["observation_images"])))
    return Episode(
        task=task, system_prompt=d["system_prompt"], prompt=prompt, turns=turns, prediction=d["prediction"],
        terminated=d["terminated"], truncated=d["truncated"], stop_reason=d["stop_reason"], reward=d["reward"],
        reward_breakdown=d["reward_breakdown"],
    )
