"""Node-wide sandbox state: one directory per machine (and user) that every env process shares.

Several env processes on one machine (Ray actors, vector envs) must not hand two workers the same
uid, and must share one budget of running cells. Both live under :func:`node_dir`: a directory
owned by this user and writable by nobody else (``/run/deepeyes-gym-sandbox`` for root).
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
import tempfile
import threading
from pathlib import Path

__all__ = ["NODE_DIR_ENV", "node_dir", "next_uid", "UID_BASE", "UID_SPAN"]

NODE_DIR_ENV = "DEEPEYES_GYM_SANDBOX_DIR"  # override (tests, or a node-local disk for Ray)
UID_BASE = 1_900_000_000  # far above any real account; below (uid_t)-1 and the overflow ids
UID_SPAN = 2_000_000_000  # uids handed out before the node-wide counter wraps
_BLOCK = 256  # uids a process claims at a time (one flock per 256 workers)


def node_dir() -> Path:
    """The node-wide state directory (created 0700; refused if someone else could write it)."""
    explicit = os.environ.get(NODE_DIR_ENV)
    euid = os.geteuid()
    if explicit:
        path = explicit
    elif euid == 0 and os.access("/run", os.W_OK):
        path = "/run/deepeyes-gym-sandbox"
    else:
        path = os.path.join(tempfile.gettempdir(), f"deepeyes-gym-sandbox-{euid}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != euid or st.st_mode & 0o022:
        raise PermissionError(f"sandbox state directory {path} must be a directory owned by uid {euid} "
                              f"and writable by no one else (set {NODE_DIR_ENV} to use another)")
    return Path(path)


class _UidBlocks:
    """Fresh uids from a node-wide counter: no two processes, and no two episodes, share one.

    The counter (a file under :func:`node_dir`, advanced under ``flock``) only moves forward, so a
    uid that an earlier episode used (and may have left kernel keys or processes under) is not
    handed out again until ``span`` uids later.
    """

    def __init__(self, base: int, span: int) -> None:
        self.base, self.span = base, span
        self.next = self.end = 0
        self.lock = threading.Lock()

    def take(self) -> int:
        with self.lock:
            if self.next >= self.end:
                self.next = self._claim()
                self.end = self.next + _BLOCK
            uid = self.next
            self.next += 1
            return uid

    def _claim(self) -> int:
        path = node_dir() / f"uids-{self.base}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 8, 0)
            n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0
            if n + _BLOCK > self.span:
                n = 0  # wrapped: the oldest uids are the longest gone
            os.pwrite(fd, struct.pack("<Q", n + _BLOCK), 0)
            return self.base + n
        finally:
            os.close(fd)  # releases the flock


_BLOCKS: dict[int, _UidBlocks] = {}
_BLOCKS_LOCK = threading.Lock()


def next_uid(base: int | None = None) -> int:
    """A uid no worker on this node has had since the counter last wrapped."""
    b = UID_BASE if base is None else int(base)
    span = UID_SPAN if base is None else 1 << 24
    with _BLOCKS_LOCK:
        blocks = _BLOCKS.get(b)
        if blocks is None:
            blocks = _BLOCKS[b] = _UidBlocks(b, span)
    return blocks.take()


def _forget_blocks_in_child() -> None:
    """A forked child must not hand out the rest of its parent's block (the parent still does)."""
    global _BLOCKS_LOCK
    _BLOCKS.clear()
    _BLOCKS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_blocks_in_child)
