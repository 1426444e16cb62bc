"""One rollout episode as the trainer consumes it, and its lossless save/load.

A :class:`Trajectory` is token-level: ``prompt_ids + response_ids`` is exactly the sequence the
policy was conditioned on and sampled, ``response_mask`` says which ids were sampled, and the
images (the fitted pixels the model saw) come with their processed tensors so the trainer never
re-processes them. Saved as one parquet file (one row per trajectory) plus one PNG per image;
pixel tensors are stored as raw bytes, so a load gives back identical tensors without needing
the image processor that made them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["TurnStats", "Trajectory", "save_trajectories", "load_trajectories"]


@dataclass
class TurnStats:
    """One assistant turn: what the policy did and what the tool cost."""

    n_tokens: int  # sampled tokens
    finish_reason: str
    gen_s: float = 0.0  # this turn's generation wall time (queueing in the backend included)
    tool: str | None = None
    latency_s: float = 0.0  # the tool's wall time, as the env measured it
    n_images: int = 0  # images the tool returned
    error: str | None = None


@dataclass
class Trajectory:
    """One episode of a rollout (see the module doc). ``error`` is None for a usable trajectory;
    otherwise the episode failed (policy error, env error, invariant broken, time-out, abort)
    and the token fields hold what was collected until then: trainers drop such trajectories."""

    uid: str  # f"{task_id}:{sample}"
    group: str  # task id: GRPO/DAPO advantage groups
    sample: int
    prompt_ids: list[int] = field(default_factory=list)
    response_ids: list[int] = field(default_factory=list)
    response_mask: list[int] = field(default_factory=list)  # 1 sampled, 0 template/prefill/tool output
    logprobs: list[float] = field(default_factory=list)  # sampling logprobs; 0.0 where mask == 0
    images: list[Any] = field(default_factory=list)  # PIL images in token order (fitted)
    pixel_values: Any = None  # torch.Tensor, every image's patches in token order (None: no image)
    image_grid_thw: Any = None  # torch.Tensor [n_images, 3]
    reward: float = 0.0
    reward_breakdown: dict[str, Any] = field(default_factory=dict)
    accuracy: float = 0.0
    turns: list[TurnStats] = field(default_factory=list)
    stop_reason: str | None = None
    error: str | None = None
    weight_version: int = 0
    seed: int | None = None  # the episode's seed (env reset; sampling seeds derive from it)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    @property
    def input_ids(self) -> list[int]:
        return [*self.prompt_ids, *self.response_ids]

    @property
    def n_sampled(self) -> int:
        return int(sum(self.response_mask))

    @property
    def mm_inputs(self) -> dict[str, Any]:
        """What a forward pass over :attr:`input_ids` takes (``{}`` without images)."""
        if self.pixel_values is None:
            return {}
        return {"pixel_values": self.pixel_values, "image_grid_thw": self.image_grid_thw}


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return repr(x)


def _tensor_bytes(t: Any) -> tuple[bytes | None, str | None, list[int] | None]:
    if t is None:
        return None, None, None
    a = t.detach().cpu().contiguous().numpy()
    return a.tobytes(), a.dtype.str, list(a.shape)


def _tensor_from(raw: bytes | None, dtype: str | None, shape: list[int] | None) -> Any:
    if raw is None:
        return None
    import torch

    return torch.from_numpy(np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy())


def save_trajectories(trajectories: Sequence[Trajectory], directory: str | Path) -> Path:
    """Write ``trajectories.parquet`` and ``images/<row>_<k>.png`` under ``directory``; returns
    the parquet path. Lossless: :func:`load_trajectories` gives back equal ids, mask, logprobs
    (float64), image pixels and processed tensors (raw bytes, dtype and shape)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(directory)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[Any]] = {k: [] for k in (
        "uid", "group", "sample", "prompt_ids", "response_ids", "response_mask", "logprobs", "image_files",
        "pixel_values", "pixel_values_dtype", "pixel_values_shape", "image_grid_thw", "image_grid_thw_dtype",
        "image_grid_thw_shape", "reward", "reward_breakdown", "accuracy", "turns", "stop_reason", "error",
        "weight_version", "seed", "wall_s",
    )}
    for r, t in enumerate(trajectories):
        files = []
        for k, im in enumerate(t.images):
            name = f"images/{r:06d}_{k:03d}.png"
            im.save(root / name, format="PNG")  # lossless; the fitted RGB pixels
            files.append(name)
        pv, grid = _tensor_bytes(t.pixel_values), _tensor_bytes(t.image_grid_thw)
        for key, value in (
            ("uid", t.uid), ("group", t.group), ("sample", t.sample), ("prompt_ids", list(t.prompt_ids)),
            ("response_ids", list(t.response_ids)), ("response_mask", list(t.response_mask)),
            ("logprobs", [float(x) for x in t.logprobs]), ("image_files", files),
            ("pixel_values", pv[0]), ("pixel_values_dtype", pv[1]), ("pixel_values_shape", pv[2]),
            ("image_grid_thw", grid[0]), ("image_grid_thw_dtype", grid[1]), ("image_grid_thw_shape", grid[2]),
            ("reward", float(t.reward)), ("reward_breakdown", json.dumps(t.reward_breakdown, default=_json_default)),
            ("accuracy", float(t.accuracy)), ("turns", json.dumps([asdict(s) for s in t.turns])),
            ("stop_reason", t.stop_reason), ("error", t.error), ("weight_version", int(t.weight_version)),
            ("seed", t.seed), ("wall_s", float(t.wall_s)),
        ):
            rows[key].append(value)
    schema = pa.schema([
        ("uid", pa.string()), ("group", pa.string()), ("sample", pa.int64()),
        ("prompt_ids", pa.list_(pa.int64())), ("response_ids", pa.list_(pa.int64())),
        ("response_mask", pa.list_(pa.int8())), ("logprobs", pa.list_(pa.float64())),
        ("image_files", pa.list_(pa.string())),
        ("pixel_values", pa.large_binary()), ("pixel_values_dtype", pa.string()), ("pixel_values_shape", pa.list_(pa.int64())),
        ("image_grid_thw", pa.binary()), ("image_grid_thw_dtype", pa.string()), ("image_grid_thw_shape", pa.list_(pa.int64())),
        ("reward", pa.float64()), ("reward_breakdown", pa.string()), ("accuracy", pa.float64()), ("turns", pa.string()),
        ("stop_reason", pa.string()), ("error", pa.string()), ("weight_version", pa.int64()), ("seed", pa.int64()),
        ("wall_s", pa.float64()),
    ])
    path = root / "trajectories.parquet"
    pq.write_table(pa.Table.from_pydict(rows, schema=schema), path)
    return path


def load_trajectories(directory: str | Path) -> list[Trajectory]:
    """Read back what :func:`save_trajectories` wrote."""
    import pyarrow.parquet as pq
    from PIL import Image

    root = Path(directory)
    out = []
    for row in pq.read_table(root / "trajectories.parquet").to_pylist():
        images = []
        for name in row["image_files"]:
            with Image.open(root / name) as im:
                images.append(im.convert("RGB"))
        out.append(Trajectory(
            uid=row["uid"], group=row["group"], sample=row["sample"], prompt_ids=row["prompt_ids"],
            response_ids=row["response_ids"], response_mask=row["response_mask"], logprobs=row["logprobs"],
            images=images,
            pixel_values=_tensor_from(row["pixel_values"], row["pixel_values_dtype"], row["pixel_values_shape"]),
            image_grid_thw=_tensor_from(row["image_grid_thw"], row["image_grid_thw_dtype"], row["image_grid_thw_shape"]),
            reward=row["reward"], reward_breakdown=json.loads(row["reward_breakdown"]), accuracy=row["accuracy"],
            turns=[TurnStats(**s) for s in json.loads(row["turns"])], stop_reason=row["stop_reason"],
            error=row["error"], weight_version=row["weight_version"], seed=row["seed"], wall_s=row["wall_s"],
        ))
    return out
