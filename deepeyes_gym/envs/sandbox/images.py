"""Input images in shared memory: one sealed copy per task, mapped read-only by its workers.

An RL step runs G episodes of each task at once. Their workers all need the same pixels, so the
parent packs them once, straight from PIL's buffer into a memfd (no ``tobytes``/``asarray``
intermediate) in PIL's own pixel layout, seals it (nobody, a hostile worker included, can change
it afterwards) and hands the same fd to every worker of that task, which maps it: ``image_1`` of
all G workers is one copy of the pixels (an image is copied only when code changes it). The
memfd is closed when no episode uses it any more.

Entries are keyed by task id and the identity of the image objects: episodes that were given the
very same image objects (one decoded ``Task``, a loader cache) share; anything else gets its own
copy, so an entry never serves pixels other than the ones its episode was given.
"""

from __future__ import annotations

import fcntl
import os
import threading
from typing import Any, Sequence

import numpy as np
from PIL import Image

__all__ = ["SharedImages", "share_images", "release_images", "live_entries"]

_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
_ARRAY_MODES = {3: "RGB", 4: "RGBA"}  # channels -> mode


class SharedImages:
    """A task's input images in one sealed memfd: ``specs`` say how to cut ``size`` bytes up."""

    def __init__(self, key: tuple[Any, ...], objs: Sequence[Any], fd: int | None, specs: list[dict[str, Any]], size: int) -> None:
        self.key = key
        self.objs = list(objs)  # held while in use: identity is the cache key, ids must not be recycled
        self.fd = fd
        self.specs = specs
        self.size = size
        self.refs = 0
        self.ready = threading.Event()  # set once packed (the other episodes of the task wait for it)
        self.error: BaseException | None = None


def _pack(images: Sequence[Any]) -> tuple[int | None, list[dict[str, Any]], int]:
    """Write the raw pixels of ``images`` into a new sealed memfd (None when there are none)."""
    if not images:
        return None, [], 0
    fd = os.memfd_create("sandbox-images", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    specs: list[dict[str, Any]] = []
    try:
        for img in images:
            specs.append(_write_image(fd, img))
        size = os.fstat(fd).st_size
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd, specs, size


def _write_image(fd: int, img: Any) -> dict[str, Any]:
    """Append one image in PIL's own layout (RGB as RGBX, 4 bytes a pixel), so workers can map
    it instead of copying it; return its spec (size, mode, raw layout, byte offset)."""
    if isinstance(img, np.ndarray):
        arr = img if img.dtype == np.uint8 else np.clip(img, 0, 255).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        mode = "L" if arr.ndim == 2 else _ARRAY_MODES.get(arr.shape[2]) if arr.ndim == 3 else None
        if mode is None:
            raise TypeError(f"input image arrays must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
        img = Image.fromarray(np.ascontiguousarray(arr), mode)
    if not isinstance(img, Image.Image):
        raise TypeError(f"input images must be PIL images or arrays, got {type(img).__name__}")
    if img.mode not in ("RGB", "RGBA", "L"):
        img = img.convert("RGB")
    img.load()
    raw = "RGBX" if img.mode == "RGB" else img.mode
    offset = os.lseek(fd, 0, os.SEEK_CUR)
    try:  # PIL's raw encoder packs its buffer straight into the fd: the only copy
        enc = Image._getencoder(img.mode, "raw", raw)  # type: ignore[attr-defined]
        try:
            enc.setimage(img.im, (0, 0) + img.size)
            if enc.encode_to_file(fd, max(1 << 20, img.width * 4)) < 0:  # few GIL round trips
                raise OSError("PIL raw encoder failed")
        finally:
            enc.cleanup()
    except AttributeError:  # an older PIL without the C encoder API
        data = memoryview(img.tobytes("raw", raw))
        while data:
            data = data[os.write(fd, data):]
    return {"w": img.width, "h": img.height, "mode": img.mode, "raw": raw, "offset": offset}


_ENTRIES: dict[tuple[Any, ...], list[SharedImages]] = {}
_LOCK = threading.Lock()
# Packs run at most one per core: when a rollout step starts, B tasks pack at once; taking turns
# finishes half of them in half the time, where sharing the cores would finish all of them late.
_PACKING = threading.BoundedSemaphore(max(1, len(os.sched_getaffinity(0))))


def share_images(task_id: str | None, images: Sequence[Any]) -> SharedImages:
    """The shared copy of ``images`` for ``task_id``, packed by the first episode that asks (the
    others of the task wait for that one instead of packing their own)."""
    images = list(images)
    key = (task_id, tuple(_shape(im) for im in images))
    with _LOCK:
        e = next((x for x in _ENTRIES.get(key, ()) if len(x.objs) == len(images)
                  and all(a is b for a, b in zip(x.objs, images))), None)
        mine = e is None
        if e is None:
            e = SharedImages(key, images, None, [], 0)
            _ENTRIES.setdefault(key, []).append(e)
        e.refs += 1
    if not mine:
        e.ready.wait()
        if e.error is not None:
            raise e.error
        return e
    try:  # outside the lock: other tasks' resets go on meanwhile
        with _PACKING:
            e.fd, e.specs, e.size = _pack(images)
    except BaseException as exc:
        e.error = exc
        with _LOCK:
            group = _ENTRIES.get(key, [])
            if e in group:
                group.remove(e)
            if not group:
                _ENTRIES.pop(key, None)
        raise
    finally:
        e.ready.set()
    return e


def release_images(entry: SharedImages) -> None:
    """One episode is done with ``entry``; the last one closes the memfd."""
    with _LOCK:
        entry.refs -= 1
        if entry.refs > 0:
            return
        group = _ENTRIES.get(entry.key, [])
        if entry in group:
            group.remove(entry)
        if not group:
            _ENTRIES.pop(entry.key, None)
    entry.objs = []
    if entry.fd is not None:
        os.close(entry.fd)
        entry.fd = None


def live_entries() -> int:
    """Shared copies currently held (one per task in use)."""
    with _LOCK:
        return sum(len(g) for g in _ENTRIES.values())


def _shape(img: Any) -> tuple[Any, ...]:
    if isinstance(img, np.ndarray):
        return tuple(img.shape)
    return (getattr(img, "size", None), getattr(img, "mode", None))


def _forget_in_child() -> None:
    """A forked child starts with no shared copies (its copies of the parent's fds are closed)."""
    global _LOCK, _PACKING
    for group in _ENTRIES.values():
        for e in group:
            if e.fd is not None:
                try:
                    os.close(e.fd)
                except OSError:
                    pass
                e.fd = None
    _ENTRIES.clear()
    _LOCK = threading.Lock()
    _PACKING = threading.BoundedSemaphore(max(1, len(os.sched_getaffinity(0))))


os.register_at_fork(after_in_child=_forget_in_child)
