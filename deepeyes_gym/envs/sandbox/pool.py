"""The warm worker pool: one per :class:`SandboxConfig` per process, shared by every tool with it.

A background thread keeps ``max(pool_size, open sessions)`` ready workers, so taking one costs a
deque pop; each episode's worker is killed at the end and never reused. The isolation level is
chosen here, once per process: the strongest that starts and passes :func:`verify_facts`.
"""

from __future__ import annotations

import atexit
import collections
import fcntl
import logging
import os
import shutil
import sys
import threading
import time
import warnings
from typing import Any

from . import protocol as P
from .config import ISOLATION_LEVELS, SandboxConfig
from .handles import (
    ForkServer,
    SandboxError,
    SandboxIsolationWarning,
    SandboxStartError,
    WorkerDied,
    WorkerHandle,
    WorkerTimeout,
)

__all__ = [
    "SandboxError",
    "SandboxStartError",
    "WorkerDied",
    "WorkerTimeout",
    "SandboxIsolationWarning",
    "WorkerHandle",
    "WorkerPool",
    "acquire_pool",
    "isolation_prerequisites",
    "release_pool",
    "resolved_level",
    "shutdown_all_pools",
    "verify_facts",
]

log = logging.getLogger(__name__)

F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20
MAX_IDLE = 16
_uid_lock = threading.Lock()
_uid_counter = 0


def _next_uid(cfg: SandboxConfig) -> int:
    """A dedicated uid per worker, so RLIMIT_NPROC and kill(-1) only ever concern that worker."""
    global _uid_counter
    base = cfg.uid_base if cfg.uid_base is not None else 1_900_000_000 + (os.getpid() % 4096) * 8192
    with _uid_lock:
        _uid_counter = (_uid_counter + 1) % 8192
        return base + _uid_counter


# ---- the pool ---------------------------------------------------------------------------------


class WorkerPool:
    """Warm workers for one config and isolation level, refilled by a background thread."""

    def __init__(self, cfg: SandboxConfig, level: str) -> None:
        self.cfg = cfg
        self.level = level
        self.server: ForkServer | None = None
        self.facts: dict[str, Any] = {}
        self.users = 0
        self.closed = False
        self._idle: collections.deque[WorkerHandle] = collections.deque()
        self._cond = threading.Condition()
        self._waiters = 0
        self._error: Exception | None = None
        self._failures = 0
        self._live: set[WorkerHandle] = set()  # every handle not yet killed (for shutdown)
        self._spawning: set[WorkerHandle] = set()  # owned by the spawner until READY
        self._thread = threading.Thread(target=self._spawn_loop, name=f"sandbox-pool-{level}", daemon=True)
        self._server_lock = threading.Lock()

    def start(self) -> None:
        """Start the fork server and one worker synchronously (proves the level works here)."""
        w = self._spawn_one()
        with self._cond:
            self._idle.append(w)
        self._thread.start()

    @property
    def target(self) -> int:
        return min(max(self.cfg.pool_size, self.users), MAX_IDLE)

    def _ensure_server(self) -> ForkServer:
        with self._server_lock:
            if self.closed:
                raise SandboxError("the sandbox pool is closed")
            if self.server is None or not self.server.alive or self.server.proc.poll() is not None:
                if self.server is not None:
                    self.server.close()
                self.server = ForkServer(self.cfg, self.level)
            return self.server

    def _spawn_one(self) -> WorkerHandle:
        server = self._ensure_server()
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        shm = os.memfd_create("sandbox-images", os.MFD_CLOEXEC)
        for fd in (req_w, resp_w):
            try:
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:  # unprivileged users may be capped below 1 MiB: the default still works
                pass
        uid = _next_uid(self.cfg)
        try:
            pid = server.spawn(uid, (req_r, resp_w, shm), self.cfg.start_timeout)
        except BaseException:
            for fd in (req_r, req_w, resp_r, resp_w, shm):
                os.close(fd)
            raise
        os.close(req_r)
        os.close(resp_w)
        w = WorkerHandle(server, pid, req_w, resp_r, shm, uid)
        with self._cond:
            self._live.add(w)
            self._spawning.add(w)
            if self.closed:
                w.terminate()
        try:
            kind, meta, _ = w.recv((P.READY, P.FAILED), 0, time.monotonic() + self.cfg.start_timeout)
        except SandboxError as exc:
            status = w.exit_status(0.2)
            self.discard(w)
            raise SandboxStartError(f"sandbox worker did not start ({exc}; exit status {status}); {server.log_tail(500)}") from None
        except P.ProtocolError as exc:
            self.discard(w)
            raise SandboxStartError(f"sandbox worker sent an invalid greeting: {exc}") from None
        if kind == P.FAILED:
            self.discard(w)
            raise SandboxStartError(str(meta.get("error", "sandbox worker failed to start"))[:2000])
        problems = verify_facts(self.level, meta)
        if problems:
            self.discard(w)
            raise SandboxStartError(f"isolation level {self.level!r} is not effective: " + "; ".join(problems))
        w.facts = meta
        self.facts = meta
        with self._cond:
            self._spawning.discard(w)
        return w

    def _spawn_loop(self) -> None:
        while True:
            with self._cond:
                while not self.closed and len(self._idle) >= self.target + self._waiters:
                    self._cond.wait()
                if self.closed:
                    return
            try:
                w = self._spawn_one()
            except Exception as exc:  # keep the thread alive; waiters see the error
                if self.closed:
                    return
                log.warning("sandbox worker start failed: %s", exc)
                with self._cond:
                    self._error = exc
                    self._failures += 1
                    self._cond.notify_all()
                    retry_at = time.monotonic() + min(0.05 * 2 ** self._failures, 5.0)
                    while not self.closed and time.monotonic() < retry_at:  # acquire() notifies often
                        self._cond.wait(retry_at - time.monotonic())
                continue
            with self._cond:
                if self.closed:
                    self.discard(w)
                    return
                self._idle.append(w)
                self._error, self._failures = None, 0
                self._cond.notify_all()

    def acquire(self, timeout: float | None = None) -> WorkerHandle:
        """Take a ready worker (waiting for the refill thread if none is idle)."""
        deadline = time.monotonic() + (self.cfg.start_timeout if timeout is None else timeout)
        with self._cond:
            if self.closed:
                raise SandboxError("the sandbox pool is closed")
            self._waiters += 1
            self._cond.notify_all()
            try:
                while True:
                    while self._idle:
                        w = self._idle.popleft()
                        if w.alive():
                            self._cond.notify_all()  # refill
                            return w
                        self.discard(w)
                    if self._error is not None and self._failures >= 2:
                        raise SandboxError(f"cannot start a sandbox worker: {self._error}")
                    left = deadline - time.monotonic()
                    if left <= 0 or self.closed:
                        raise SandboxError("no sandbox worker became ready in time")
                    self._cond.wait(left)
            finally:
                self._waiters -= 1

    def discard(self, w: WorkerHandle) -> None:
        """Kill a worker the caller owns (its episode is over, or it failed)."""
        w.kill()
        with self._cond:
            self._live.discard(w)
            self._spawning.discard(w)

    def shutdown(self) -> None:
        with self._cond:
            if self.closed:
                return
            self.closed = True
            idle = list(self._idle)
            others = [w for w in self._live if w not in self._idle]
            self._idle.clear()
            self._cond.notify_all()
        for w in idle:  # owned by the pool
            self.discard(w)
        for w in others:  # owned by a session or the spawner: signal only, the owner closes fds
            w.terminate()
        with self._server_lock:  # closing it also wakes a spawner waiting on it
            if self.server is not None:
                self.server.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)


def verify_facts(level: str, facts: dict[str, Any]) -> list[str]:
    """Check what a freshly started worker reports against what its level promises."""
    problems = []
    if level in ("bwrap", "unshare"):
        if facts.get("uid") == 0:
            problems.append("worker runs as uid 0")
        if facts.get("hidden_visible"):
            problems.append(f"host paths visible: {facts['hidden_visible']}")
        if facts.get("etc_shadow_readable"):
            problems.append("/etc/shadow is readable")
        if facts.get("net_interfaces") not in (["lo"], []):
            problems.append(f"network interfaces visible: {facts.get('net_interfaces')}")
        if facts.get("root_writable"):
            problems.append("root file system is writable")
    if facts.get("CapEff", "0" * 16).strip("0") and facts.get("uid") != 0:
        problems.append(f"worker kept capabilities {facts.get('CapEff')}")
    return problems


# ---- process-wide registry --------------------------------------------------------------------

_POOLS: dict[SandboxConfig, WorkerPool] = {}
_REG_LOCK = threading.Lock()
_LEVELS: dict[str, tuple[str, list[str]]] = {}  # requested -> (level, why stronger ones were skipped)
_WARNED: set[str] = set()


def _level_prerequisite(level: str) -> str | None:
    """Why ``level`` cannot work here without trying (None if it may)."""
    if not sys.platform.startswith("linux"):
        return "the local sandbox needs Linux (use a remote backend elsewhere)"
    if level == "bwrap":
        if shutil.which("bwrap") is None:
            return "bubblewrap (bwrap) is not installed"
        if os.geteuid() != 0:
            return "the bwrap level needs root (it nests per-worker namespaces inside bwrap)"
    if level == "unshare" and os.geteuid() != 0:
        return "creating mount/PID/network namespaces and dropping to a dedicated uid needs root"
    return None


def isolation_prerequisites() -> dict[str, str | None]:
    """Each isolation level, strongest first, with why it cannot work here (None: it may).

    Cheap (starts nothing): :func:`isolation_report` says what a live worker actually got.
    """
    return {level: _level_prerequisite(level) for level in ISOLATION_LEVELS}


def _create_pool(cfg: SandboxConfig) -> WorkerPool:
    requested = cfg.isolation
    candidates = ISOLATION_LEVELS if requested == "auto" else (requested,)
    if requested in _LEVELS:  # already resolved in this process: skip the probing
        candidates = (_LEVELS[requested][0],)
    skipped: list[str] = list(_LEVELS.get(requested, ("", []))[1])
    for level in candidates:
        why = _level_prerequisite(level)
        if why is None:
            pool = WorkerPool(cfg, level)
            try:
                pool.start()
            except SandboxError as exc:
                pool.shutdown()
                why = str(exc)
            else:
                _LEVELS.setdefault(requested, (level, skipped))
                _warn_if_weaker(level, skipped)
                return pool
        skipped.append(f"{level}: {why}")
        if requested != "auto":
            raise SandboxStartError(f"isolation level {level!r} is not available: {why}")
    raise SandboxStartError("no sandbox isolation level works here: " + "; ".join(skipped))


def _warn_if_weaker(level: str, skipped: list[str]) -> None:
    if level == ISOLATION_LEVELS[0] or level in _WARNED:
        return
    _WARNED.add(level)
    msg = (f"code sandbox isolation level is {level!r}, not the strongest ({ISOLATION_LEVELS[0]!r}): "
           + "; ".join(skipped)
           + ". Call deepeyes_gym.envs.sandbox.isolation_report() for what is and is not enforced.")
    if level == "rlimits":
        msg = "UNSAFE: " + msg + " Untrusted code can read host files and use the network."
    warnings.warn(msg, SandboxIsolationWarning, stacklevel=4)  # once per level and process


def acquire_pool(cfg: SandboxConfig) -> WorkerPool:
    """Get (creating on first use) the shared pool for ``cfg`` and register one user of it."""
    with _REG_LOCK:
        pool = _POOLS.get(cfg)
        if pool is None or pool.closed:
            pool = _create_pool(cfg)
            _POOLS[cfg] = pool
        with pool._cond:
            pool.users += 1
            pool._cond.notify_all()
        return pool


def release_pool(pool: WorkerPool) -> None:
    """Unregister one user; the last one shuts the pool (and its fork server) down."""
    with _REG_LOCK:
        pool.users -= 1
        if pool.users > 0:
            return
        if _POOLS.get(pool.cfg) is pool:
            del _POOLS[pool.cfg]
    pool.shutdown()


def resolved_level(requested: str) -> tuple[str, list[str]] | None:
    return _LEVELS.get(requested)


def shutdown_all_pools() -> None:
    with _REG_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for p in pools:
        p.shutdown()


atexit.register(shutdown_all_pools)
