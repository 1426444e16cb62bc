"""What every sandbox backend (local or remote) returns, and the interface it implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image

__all__ = ["ExecResult", "SandboxBackend", "image_specs"]


@dataclass
class ExecResult:
    """Outcome of one code cell.

    ``status``: "ok" | "error" (an exception in the code: normal stderr) | "timeout" (soft time
    limit: the session survived) | "killed" (hard time limit: the session was restarted) |
    "crashed" (the worker died or misbehaved: the session was restarted) | "aborted" (the episode
    was aborted: no session any more).
    """

    stdout: str = ""
    stderr: str = ""
    images: list[np.ndarray] = field(default_factory=list)  # HxWx3 uint8
    status: str = "ok"
    restarted: bool = False  # a fresh session (variables lost, input images reloaded)
    exit_status: int | None = None  # of a worker that died
    seconds: float = 0.0
    stdout_truncated: int = 0  # characters dropped from the middle
    stderr_truncated: int = 0
    images_dropped: int = 0


class SandboxBackend(abc.ABC):
    """A stateful code session per episode: start, run cells, end; close releases everything."""

    @abc.abstractmethod
    def start(self, images: Sequence[Image.Image]) -> None:
        """Begin a fresh session with ``images`` bound as ``image_1``... (original resolution)."""

    @abc.abstractmethod
    def run(self, code: str, timeout: float | None = None) -> ExecResult:
        """Run one cell in the current session (starting an empty one if needed)."""

    @abc.abstractmethod
    def end(self) -> None:
        """Drop the current session; no state may survive into the next ``start``."""

    def abort(self) -> None:
        """From any thread: end the session now, without waiting for a running cell (which then
        returns an "aborted" result). The default waits like :meth:`end`."""
        self.end()

    def close(self) -> None:
        """Release every resource (idempotent)."""
        self.end()

    @property
    def isolation_level(self) -> str:
        return "remote"


def image_specs(images: Sequence[Any]) -> list[tuple[dict[str, Any], bytes]]:
    """Raw pixels of input images for the worker: RGB/RGBA/L kept, other modes converted to RGB."""
    out = []
    for img in images:
        if isinstance(img, np.ndarray):
            img = Image.fromarray(np.ascontiguousarray(img))
        if not isinstance(img, Image.Image):
            raise TypeError(f"input images must be PIL images or arrays, got {type(img).__name__}")
        if img.mode not in ("RGB", "RGBA", "L"):
            img = img.convert("RGB")
        out.append(({"w": img.width, "h": img.height, "mode": img.mode}, img.tobytes()))
    return out
