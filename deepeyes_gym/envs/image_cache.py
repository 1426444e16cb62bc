"""Decoded input images shared by the episodes of one task.

An RL step runs G samples of each task at once (DeepEyesV2: 16), each in its own env. Without a
cache every one of them decodes the task's images from file or bytes again and copies them to an
array again: for a 2000×2000 PNG that is tens of milliseconds and 12 MB per sample. The cache keeps
the decoded PIL images and their read-only arrays per task, bounded in bytes (LRU), process-wide.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
from PIL import Image

from .task import Task

__all__ = ["TaskImages", "task_images", "DEFAULT_CACHE_BYTES"]

DEFAULT_CACHE_BYTES = int(os.environ.get("DEEPEYES_GYM_IMAGE_CACHE_MB", "512")) * 2**20


class TaskImages:
    """A task's images: ``pil`` for tools (never modified in place) and ``arrays`` for
    observations (H×W×3 uint8, read-only), decoded once."""

    __slots__ = ("pil", "arrays", "nbytes")

    def __init__(self, pil: list[Image.Image]):
        self.pil = pil
        arrays = []
        for im in pil:
            a = np.asarray(im.convert("RGB") if im.mode != "RGB" else im, dtype=np.uint8)
            a.setflags(write=False)
            arrays.append(a)
        self.arrays = tuple(arrays)
        self.nbytes = sum(a.nbytes for a in self.arrays) * 2  # PIL buffer + array


def _fingerprint(ref: Any) -> Any:
    """A cheap identity of an image reference (paths by name and mtime, bytes by size and head)."""
    if isinstance(ref, (str, os.PathLike)):
        s = os.fspath(ref)
        try:
            return ("path", s, os.stat(s).st_mtime_ns)
        except OSError:
            return ("str", len(s), s[:64], s[-64:])
    if isinstance(ref, (bytes, bytearray, memoryview)):
        b = bytes(ref[:64])
        return ("bytes", len(ref), b, bytes(ref[-64:]))
    return ("object", id(ref))  # arrays, PIL images, structs: identity only


class _Cache:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[Any, TaskImages] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, task: Task) -> TaskImages:
        key = (task.source, task.id, tuple(_fingerprint(r) for r in task.images))
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        value = TaskImages(task.load_images())  # decode outside the lock; a race decodes twice
        with self._lock:
            if key not in self._items and value.nbytes <= self.capacity:
                self._items[key] = value
                self._bytes += value.nbytes
                while self._bytes > self.capacity:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.nbytes
        return value


_CACHE = _Cache(DEFAULT_CACHE_BYTES)


def task_images(task: Task) -> TaskImages:
    """The task's decoded images, from the process-wide cache (raises TaskImageError as
    ``Task.load_images`` does)."""
    return _CACHE.get(task)
