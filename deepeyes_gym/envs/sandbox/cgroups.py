"""A memory + pids cgroup per worker, so ``memory_limit_mb`` bounds the whole episode.

RLIMIT_AS caps each process's address space, but a cell can still hold memory outside it: in
memfds, in /tmp files, in children that each get their own RLIMIT_AS. A memory cgroup counts all
of it. The parent creates one group per worker (under its own cgroup, so any limit placed on the
env process still holds) and passes the group's ``cgroup.procs`` to the fork server; the worker's
init joins it before anything else runs, and every process of the episode inherits it.

Supported: cgroup v1 (``memory`` and ``pids`` hierarchies mounted writable) and cgroup v2 where
the memory controller is delegated to us (our cgroup, or its parent when we sit in a leaf, has
``memory`` in ``cgroup.subtree_control`` and is writable). Elsewhere :func:`cgroup_support` says
why not, and the isolation report lists it as not enforced.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["CgroupSupport", "WorkerCgroup", "cgroup_support", "detect"]

log = logging.getLogger(__name__)

_PREFIX = "deepeyes-sandbox-"


@dataclass
class CgroupSupport:
    """Where this process may create worker cgroups (``version`` None: nowhere, see ``why_not``)."""

    version: str | None  # "v1" | "v2" | None
    bases: dict[str, str] = field(default_factory=dict)  # controller ("memory", "pids" or "v2") -> our dir
    why_not: str = ""

    def describe(self) -> str:
        if self.version is None:
            return f"no memory cgroup: {self.why_not}"
        where = ", ".join(f"{k}: {v}" for k, v in sorted(self.bases.items()))
        return f"cgroup {self.version} ({where})"

    def create(self, name: str, memory_bytes: int, pids_max: int) -> "WorkerCgroup":
        """Make the group for one worker (raises OSError if the kernel refuses)."""
        assert self.version is not None
        dirs: list[str] = []
        try:
            if self.version == "v2":
                d = os.path.join(self.bases["v2"], name)
                os.mkdir(d, 0o755)
                dirs.append(d)
                _write(d, "memory.max", str(memory_bytes))
                _write(d, "memory.swap.max", "0", optional=True)
                _write(d, "pids.max", str(pids_max), optional=True)  # present when pids is delegated too
            else:
                d = os.path.join(self.bases["memory"], name)
                os.mkdir(d, 0o755)
                dirs.append(d)
                _write(d, "memory.limit_in_bytes", str(memory_bytes))
                _write(d, "memory.memsw.limit_in_bytes", str(memory_bytes), optional=True)  # no swap either
                if "pids" in self.bases:
                    p = os.path.join(self.bases["pids"], name)
                    os.mkdir(p, 0o755)
                    dirs.append(p)
                    _write(p, "pids.max", str(pids_max))
        except OSError:
            WorkerCgroup(self.version, dirs).remove()
            raise
        return WorkerCgroup(self.version, dirs)


@dataclass
class WorkerCgroup:
    """One worker's group(s): one dir for v2, one per hierarchy (memory, pids) for v1."""

    version: str
    dirs: list[str]

    def open_procs(self) -> list[int]:
        """Write-only fds on each ``cgroup.procs``: the worker's init writes "0" to join."""
        fds: list[int] = []
        try:
            for d in self.dirs:
                fds.append(os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC))
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    def remove(self) -> bool:
        """Delete the group once its processes are gone; False while some are still exiting.

        v2 kills what is left (``cgroup.kill``, race-free); on v1 the worker's PID namespace (or
        the fork server's uid sweep at the rlimits level) has already killed everything, and
        killing by pid from ``cgroup.procs`` could hit a recycled pid, so v1 just waits.
        """
        left = []
        for d in self.dirs:
            if self.version == "v2":
                _write(d, "cgroup.kill", "1", optional=True)
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    log.debug("cannot remove cgroup %s: %s", d, exc)
                left.append(d)
        self.dirs = left
        return not left


def _read(d: str, name: str) -> str:
    try:
        with open(os.path.join(d, name)) as f:
            return f.read()
    except OSError:
        return ""


def _write(d: str, name: str, value: str, optional: bool = False) -> None:
    path = os.path.join(d, name)
    if optional and not os.path.exists(path):
        return
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError:
        if not optional:
            raise


# ---- detection --------------------------------------------------------------------------------


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """(fstype, mount root, mount point, super options) of every cgroup mount."""
    out = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        a, b = left.split(), right.split()
        if len(a) < 5 or len(b) < 3 or b[0] not in ("cgroup", "cgroup2"):
            continue
        unescape = lambda s: s.replace("\\040", " ")  # noqa: E731
        out.append((b[0], unescape(a[3]), unescape(a[4]), set(b[2].split(","))))
    return out


def _own_paths(proc_cgroup: str) -> dict[str, str]:
    """Controller (or "" for v2) -> this process's cgroup path."""
    out = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for ctl in parts[1].split(",") if parts[1] else [""]:
            out[ctl] = parts[2]
    return out


def _host_dir(root: str, mountpoint: str, path: str) -> str | None:
    """The directory of cgroup ``path`` under a mount of hierarchy subtree ``root``."""
    if root != "/" and not (path == root or path.startswith(root.rstrip("/") + "/")):
        return None  # our cgroup is outside what this mount shows
    rel = path[len(root):] if root != "/" else path
    return os.path.normpath(mountpoint + "/" + rel.lstrip("/"))


def _usable(d: str | None) -> bool:
    return d is not None and os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK)


def _own_dir(parent: str, setup: Callable[[str], None] | None = None) -> str:
    """Create this process's ``deepeyes-sandbox-<pid>`` under ``parent``; sweep dead processes' ones."""
    for name in os.listdir(parent):
        if name.startswith(_PREFIX) and name[len(_PREFIX):].isdigit() and not _pid_alive(int(name[len(_PREFIX):])):
            stale = os.path.join(parent, name)
            for sub in os.listdir(stale):
                if os.path.isdir(os.path.join(stale, sub)):
                    try:
                        os.rmdir(os.path.join(stale, sub))
                    except OSError:
                        pass
            try:
                os.rmdir(stale)
            except OSError:
                pass
    d = os.path.join(parent, f"{_PREFIX}{os.getpid()}")
    os.makedirs(d, exist_ok=True)
    if setup is not None:
        setup(d)
    return d


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def detect(mountinfo: str, proc_cgroup: str) -> CgroupSupport:
    """Find where worker groups can be made, given /proc/self/mountinfo and /proc/self/cgroup."""
    mounts = _mounts(mountinfo)
    own = _own_paths(proc_cgroup)
    reasons = []
    # cgroup v2 with the memory controller delegated to us
    for fstype, root, mp, _ in mounts:
        if fstype != "cgroup2" or "" not in own:
            continue
        d = _host_dir(root, mp, own[""])
        if d is None:
            continue
        candidates = [d, os.path.dirname(d)]  # our cgroup, or its parent when we sit in a leaf
        base = next((c for c in candidates if _usable(c) and "memory" in _read(c, "cgroup.subtree_control").split()), None)
        if base is None:
            reasons.append(f"cgroup v2 at {mp}: the memory controller is not delegated to {d} "
                           f"(controllers: {_read(d, 'cgroup.controllers').strip() or 'none'})")
            continue
        try:
            mine = _own_dir(base, lambda x: _write(x, "cgroup.subtree_control", "+memory +pids"))
        except OSError as exc:
            reasons.append(f"cgroup v2 at {mp}: cannot create worker groups under {base}: {exc}")
            continue
        return CgroupSupport("v2", {"v2": mine})
    # cgroup v1 memory (+ pids) hierarchies
    bases: dict[str, str] = {}
    for ctl in ("memory", "pids"):
        for fstype, root, mp, opts in mounts:
            if fstype == "cgroup" and ctl in opts and ctl in own:
                d = _host_dir(root, mp, own[ctl])
                if _usable(d):
                    try:
                        bases[ctl] = _own_dir(d)  # type: ignore[arg-type]
                    except OSError as exc:
                        reasons.append(f"cgroup v1 {ctl} at {mp}: {exc}")
                    break
                reasons.append(f"cgroup v1 {ctl} hierarchy at {mp} is not writable")
                break
    if "memory" in bases:
        return CgroupSupport("v1", bases)
    if not mounts:
        reasons.append("no cgroup file system is mounted")
    return CgroupSupport(None, {}, "; ".join(reasons) or "no writable memory cgroup found")


_SUPPORT: tuple[int, CgroupSupport] | None = None
_LOCK = threading.Lock()


def cgroup_support() -> CgroupSupport:
    """What this process can do (detected once per process; a forked child detects again)."""
    global _SUPPORT
    with _LOCK:
        if _SUPPORT is None or _SUPPORT[0] != os.getpid():
            try:
                with open("/proc/self/mountinfo") as f:
                    mi = f.read()
                with open("/proc/self/cgroup") as f:
                    cg = f.read()
                sup = detect(mi, cg)
            except OSError as exc:
                sup = CgroupSupport(None, {}, f"cannot read the cgroup configuration: {exc}")
            _SUPPORT = (os.getpid(), sup)
        return _SUPPORT[1]


def _remove_own_dirs() -> None:
    if _SUPPORT is not None and _SUPPORT[0] == os.getpid():
        for d in _SUPPORT[1].bases.values():
            try:
                os.rmdir(d)
            except OSError:
                pass


def _reset_lock_in_child() -> None:
    global _LOCK
    _LOCK = threading.Lock()  # the child detects again (pid check) and makes its own groups


os.register_at_fork(after_in_child=_reset_lock_in_child)
