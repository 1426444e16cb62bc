"""A tiny suite generated in code: fast, dependency-free tasks for tests and smoke runs.

Each task shows a large canvas with a few small coloured squares; the question asks how many
squares of one colour there are, so a downscaled glance is not enough but a crop or a pixel count
is. The full RealX-style suite lives in ``suites.realx``.
"""

from __future__ import annotations

import numpy as np

from ..task import Task

__all__ = ["toy_tasks"]

_COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220)}


def toy_tasks(n: int = 12, seed: int = 0, size: tuple[int, int] = (640, 480)) -> list[Task]:
    rng = np.random.default_rng(seed)
    tasks = []
    for i in range(n):
        w, h = size
        img = np.full((h, w, 3), 245, dtype=np.uint8)
        counts = {}
        occupied: list[tuple[int, int]] = []
        for name, rgb in _COLOURS.items():
            k = int(rng.integers(1, 6))
            counts[name] = k
            for _ in range(k):
                while True:  # non-overlapping squares
                    x, y = int(rng.integers(0, w - 12)), int(rng.integers(0, h - 12))
                    if all(abs(x - ox) > 14 or abs(y - oy) > 14 for ox, oy in occupied):
                        break
                occupied.append((x, y))
                img[y : y + 10, x : x + 10] = rgb
        colour = list(_COLOURS)[int(rng.integers(len(_COLOURS)))]
        tasks.append(
            Task(
                id=f"toy-{seed}-{i}",
                question=f"How many {colour} squares are in the image? Answer with a number.",
                answer=str(counts[colour]),
                images=[img],
                answer_kind="numeric",
                domain="toy",
                capabilities={"perception"},
                source="toy",
                metadata={"family": "toy_count", "colour": colour},
            )
        )
    return tasks
