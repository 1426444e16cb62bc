"""The warm worker pool: one per :class:`SandboxConfig` per process, shared by every tool with it.

A spawner thread keeps ``max(pool_size, open sessions, prewarm(n))`` workers ready, within a
memory budget (``idle_memory_mb``, reported by :meth:`WorkerPool.stats`). It keeps several spawn
requests in flight at the fork server and takes each worker's READY frame as it arrives, so a
burst of resets is limited by the machine, not by one worker's start-up at a time. Taking a
worker costs a deque pop (``acquire``; ``acquire_async`` for asyncio callers); each episode's
worker is killed at the end and never reused. The isolation level is chosen here, once per
process: the strongest that starts and passes :func:`verify_facts`.

Pools belong to the process that made them: a forked child (``AsyncVectorEnv`` with ``fork``)
forgets the parent's pools, closes its copies of their fds and starts its own.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import fcntl
import logging
import os
import select
import shutil
import socket
import sys
import threading
import time
import warnings
from typing import Any

from . import protocol as P
from .cgroups import WorkerCgroup, cgroup_support
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
from .node import next_uid

__all__ = [
    "SandboxError",
    "SandboxStartError",
    "WorkerDied",
    "WorkerTimeout",
    "SandboxIsolationWarning",
    "WorkerHandle",
    "WorkerPool",
    "Waiter",
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
DEFAULT_WORKER_BYTES = 8 << 20  # idle worker cost assumed until the first one is measured
# Refilling the idle pool waits until takes have paused this long (or until under a quarter of
# the target is left): a burst of resets (a rollout step) must not share the CPUs with the spawns
# that only prepare the next burst. Waiting callers are served at once regardless.
REFILL_QUIET_S = 0.1


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# Spawns in flight at once: the fork server forks one after another, the workers then set up in
# parallel, and much of a start-up is waiting (namespace set-up, wake-ups), not CPU: on 2 cores,
# 16 in flight start a worker every ~6 ms where one at a time took ~35 ms.
MAX_IN_FLIGHT = min(64, max(16, 4 * _usable_cpus()))


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) << 10
    except (OSError, ValueError):
        pass
    return 8 << 30


def _process_cost(pid: int) -> int:
    """Memory a process holds on its own: unique pages (USS) plus its page tables."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1]) << 10
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmPTE:"):
                    total += int(line.split()[1]) << 10
    except (OSError, ValueError):
        return 0
    return total


def worker_cost(init_pid: int) -> int:
    """Memory one idle worker holds: its init and the worker process (0 if unreadable)."""
    try:
        with open(f"/proc/{init_pid}/task/{init_pid}/children") as f:
            kids = [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        kids = []
    return _process_cost(init_pid) + sum(_process_cost(k) for k in kids)


class Waiter:
    """One caller waiting for a worker: a thread (``event``) or an asyncio task (``future``)."""

    __slots__ = ("event", "loop", "future", "worker", "error", "cancelled")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.event = threading.Event()
        self.loop = loop
        self.future: asyncio.Future[WorkerHandle] | None = loop.create_future() if loop is not None else None
        self.worker: WorkerHandle | None = None
        self.error: Exception | None = None
        self.cancelled = False


# ---- the pool ---------------------------------------------------------------------------------


class WorkerPool:
    """Warm workers for one config and isolation level, refilled by a background thread."""

    def __init__(self, cfg: SandboxConfig, level: str) -> None:
        self.cfg = cfg
        self.level = level
        self.owner = os.getpid()
        self.server: ForkServer | None = None
        self.facts: dict[str, Any] = {}
        self.users = 0
        self.closed = False
        self.prewarm_target = 0
        self.peak_in_flight = 0  # most spawn requests outstanding at once (pipelining, for stats)
        self.worker_bytes = DEFAULT_WORKER_BYTES
        self._measured = False
        self.budget_bytes = (cfg.idle_memory_mb << 20) if cfg.idle_memory_mb is not None else _mem_total() // 4
        self._idle: collections.deque[WorkerHandle] = collections.deque()
        self._waitq: collections.deque[Waiter] = collections.deque()
        self._cond = threading.Condition()
        self._error: Exception | None = None
        self._failures = 0
        self._ever_ready = False
        self._retry_at = 0.0
        self._last_take = 0.0
        self._dozing = False  # the spawner waits with no timeout: a take must wake it to refill
        self._live: set[WorkerHandle] = set()  # every handle not yet killed (for shutdown)
        self._pending: dict[int, WorkerHandle] = {}  # spawn request id -> handle, until READY
        self._cg_trash: list[WorkerCgroup] = []  # groups of killed workers, removed once empty
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._server_lock = threading.Lock()
        self._thread = threading.Thread(target=self._spawn_loop, name=f"sandbox-pool-{level}", daemon=True)

    def start(self) -> None:
        """Start the fork server and one worker (proves the level works here); on failure the pool
        is shut down and the error raised.

        The spawner thread starts the fork server, not the caller: bwrap's ``--die-with-parent``
        (PR_SET_PDEATHSIG) fires when the *thread* that started it exits, and a caller's thread
        (an env's reset in a thread pool) may be short-lived.
        """
        try:
            self._thread.start()
            w = self.acquire(self.cfg.start_timeout)
            self._deliver(w)
        except BaseException:
            self.shutdown()
            raise

    # ---- sizing --------------------------------------------------------------------------------

    @property
    def idle_cap(self) -> int:
        """Idle workers the memory budget holds."""
        return max(1, self.budget_bytes // max(1, self.worker_bytes))

    @property
    def target(self) -> int:
        """Idle workers to keep ready."""
        return min(max(self.cfg.pool_size, self.users, self.prewarm_target), self.idle_cap)

    def prewarm(self, n: int, timeout: float | None = None) -> int:
        """Keep ``n`` idle workers ready from now on (within the memory budget) and wait up to
        ``timeout`` seconds (default: the start timeout; 0: do not wait) for them; return how
        many are idle now."""
        if n < 0:
            raise ValueError("n must be >= 0")
        deadline = time.monotonic() + (self.cfg.start_timeout if timeout is None else timeout)
        with self._cond:
            self.prewarm_target = int(n)
        self._wake()
        with self._cond:
            while not self.closed and len(self._idle) < min(n, self.target):
                left = deadline - time.monotonic()
                if left <= 0 or (self._error is not None and self._failures >= 2):
                    break
                self._cond.wait(min(left, 0.5))
            return len(self._idle)

    def stats(self) -> dict[str, Any]:
        """What the pool holds and may hold (for reports and benchmarks)."""
        with self._cond:
            return {"level": self.level, "idle": len(self._idle), "spawning": len(self._pending),
                    "live": len(self._live), "waiting": len(self._waitq), "target": self.target,
                    "idle_cap": self.idle_cap, "worker_bytes": self.worker_bytes, "worker_bytes_measured": self._measured,
                    "idle_budget_bytes": self.budget_bytes, "users": self.users, "prewarm": self.prewarm_target,
                    "peak_in_flight": self.peak_in_flight}

    # ---- taking workers ------------------------------------------------------------------------

    def _pop_idle(self) -> WorkerHandle | None:
        """An idle worker for a caller that would be first in line (caller holds the lock; no
        syscall here: a lock held across one makes hundreds of threads queue for the GIL)."""
        if self.closed:
            raise SandboxError("the sandbox pool is closed")
        if self._idle and not self._waitq:  # never jump the queue
            self._last_take = time.monotonic()
            return self._idle.popleft()
        if self._error is not None and self._failures >= 2:
            if isinstance(self._error, ValueError):
                raise self._error
            raise SandboxError(f"cannot start a sandbox worker: {self._error}")
        return None

    def _take_idle(self, waiter: Waiter) -> WorkerHandle | None:
        """A live idle worker, or None after queueing ``waiter`` (the lock is not held)."""
        while True:
            with self._cond:
                w = self._pop_idle()
                if w is None:
                    self._waitq.append(waiter)
                    break
                dozing = self._dozing
            if w.alive():
                if dozing:  # otherwise it refills on its own once the burst of takes is over
                    self._wake()
                return w
            self.discard(w)
        self._wake()
        return None

    def acquire(self, timeout: float | None = None, on_wait: Any = None) -> WorkerHandle:
        """Take a ready worker, waiting (first come, first served) for one if none is idle.

        ``on_wait(waiter)`` is called before blocking, so another thread can :meth:`cancel` it.
        """
        waiter = Waiter()
        w = self._take_idle(waiter)
        if w is not None:
            return w
        if on_wait is not None:
            on_wait(waiter)
        waiter.event.wait(self.cfg.start_timeout if timeout is None else timeout)
        with self._cond:
            if waiter.worker is not None:
                return waiter.worker
            waiter.cancelled = True
            if waiter in self._waitq:
                self._waitq.remove(waiter)
        raise waiter.error or SandboxError("no sandbox worker became ready in time")

    async def acquire_async(self, timeout: float | None = None) -> WorkerHandle:
        """:meth:`acquire` for asyncio code: waits on a future, no thread is blocked."""
        waiter = Waiter(asyncio.get_running_loop())
        w = self._take_idle(waiter)
        if w is not None:
            return w
        assert waiter.future is not None
        try:
            return await asyncio.wait_for(waiter.future, self.cfg.start_timeout if timeout is None else timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            with self._cond:
                waiter.cancelled = True
                if waiter in self._waitq:
                    self._waitq.remove(waiter)
            if isinstance(exc, asyncio.TimeoutError):
                raise SandboxError("no sandbox worker became ready in time") from None
            raise

    def cancel(self, waiter: Waiter) -> None:
        """Stop a waiting :meth:`acquire` (from any thread): it raises at once."""
        with self._cond:
            if waiter.worker is not None or waiter.cancelled:
                return
            waiter.cancelled = True
            waiter.error = SandboxError("the episode was aborted while waiting for a sandbox worker")
            if waiter in self._waitq:
                self._waitq.remove(waiter)
        waiter.event.set()

    def _deliver(self, w: WorkerHandle) -> None:
        """Hand a ready worker to the first waiter, or keep it idle."""
        with self._cond:
            while self._waitq:
                waiter = self._waitq.popleft()
                if waiter.cancelled:
                    continue
                if waiter.loop is not None:
                    try:
                        waiter.loop.call_soon_threadsafe(self._hand_async, waiter, w)
                        return
                    except RuntimeError:  # its event loop is closed
                        continue
                waiter.worker = w
                waiter.event.set()
                return
            self._idle.append(w)
            self._cond.notify_all()

    def _hand_async(self, waiter: Waiter, w: WorkerHandle) -> None:
        assert waiter.future is not None
        if waiter.cancelled or waiter.future.done():
            self._deliver(w)  # it gave up meanwhile: next in line
        else:
            waiter.future.set_result(w)

    def _fail_waiters(self, exc: Exception) -> None:
        """Caller holds the lock."""
        while self._waitq:
            waiter = self._waitq.popleft()
            waiter.error = exc
            if waiter.loop is not None and waiter.future is not None:
                fut = waiter.future
                try:
                    waiter.loop.call_soon_threadsafe(lambda f=fut: f.done() or f.set_exception(exc))
                except RuntimeError:
                    pass
            waiter.event.set()
        self._cond.notify_all()

    def discard(self, w: WorkerHandle) -> None:
        """Kill a worker the caller owns (its episode is over, or it failed)."""
        w.kill()
        with self._cond:
            self._forget_handle(w)
        self._wake()

    def _discard_locked(self, w: WorkerHandle) -> None:
        w.kill()
        self._forget_handle(w)

    def _forget_handle(self, w: WorkerHandle) -> None:
        self._live.discard(w)
        if w.spawn_id is not None:
            self._pending.pop(w.spawn_id, None)
        if w.cgroup is not None:
            self._cg_trash.append(w.cgroup)
            w.cgroup = None

    # ---- spawning ------------------------------------------------------------------------------

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # already signalled (or closed)

    def _ensure_server(self) -> ForkServer:
        with self._server_lock:
            if self.closed:
                raise SandboxError("the sandbox pool is closed")
            if self.server is None or not self.server.alive or self.server.proc.poll() is not None:
                if self.server is not None:
                    self.server.close()
                self.server = ForkServer(self.cfg, self.level, self._on_spawned)
                vm = int(self.server.info.get("vm_size") or 0)
                if vm and vm + (64 << 20) > self.cfg.memory_limit_mb << 20:
                    raise ValueError(
                        f"memory_limit_mb={self.cfg.memory_limit_mb} is too small: every worker starts with the "
                        f"sandbox runtime's {vm >> 20} MiB of address space and needs room for the cells; "
                        f"use at least {(vm + (192 << 20)) >> 20}")
            return self.server

    def _launch(self) -> None:
        """Send one spawn request (the fork server answers later; READY comes on the pipe)."""
        server = self._ensure_server()
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        chan, chan_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for fd in (req_w, resp_w):
            try:
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:  # unprivileged users may be capped below 1 MiB: the default still works
                pass
        uid = next_uid(self.cfg.uid_base)
        child_fds = [req_r, resp_w, chan_child.fileno()]
        cg = None
        try:
            sup = cgroup_support() if self.cfg.use_cgroup else None
            if sup is not None and sup.version is not None:
                try:
                    cg = sup.create(f"w{uid}", self.cfg.memory_limit_mb << 20, self.cfg.max_processes + 2)
                    cg_fds = cg.open_procs()
                except OSError as exc:
                    if cg is not None:
                        self._cg_trash.append(cg)
                    raise SandboxStartError(f"could not create the worker's cgroup: {exc}") from None
                child_fds += cg_fds
            w = WorkerHandle(server, req_w, resp_r, chan, uid, cg)
            w.spawn_id = server.next_request_id()
            with self._cond:  # registered before the request goes out: the reply finds it
                self._pending[w.spawn_id] = w
                self._live.add(w)
                self.peak_in_flight = max(self.peak_in_flight, len(self._pending))
            try:  # not under the lock: the send blocks while the fork server's queue is full
                server.request_spawn(w.spawn_id, uid, child_fds, len(child_fds) - 3)
            except BaseException:
                with self._cond:
                    self._pending.pop(w.spawn_id, None)
                    self._live.discard(w)
                w.cgroup = None  # cleaned up below
                raise
        except BaseException:
            for fd in (req_w, resp_r):
                os.close(fd)
            chan.close()
            if cg is not None:
                self._cg_trash.append(cg)
            raise
        finally:  # the fork server got its own copies (or never will)
            os.close(req_r)
            os.close(resp_w)
            chan_child.close()
            for fd in child_fds[3:]:
                os.close(fd)

    def _on_spawned(self, reply: dict[str, Any]) -> None:
        """Reader thread of the fork server: a spawn was answered, or the server is gone."""
        with self._cond:
            if reply.get("op") == "gone":
                for w in self._pending.values():
                    if w.greeting is None:
                        w.greeting = (P.FAILED, {"error": "the fork server exited"})
            else:
                w = self._pending.get(int(reply.get("id", -1)))
                if w is not None:
                    if "error" in reply:
                        w.greeting = (P.FAILED, {"error": str(reply["error"])})
                    else:
                        w.set_pid(int(reply["pid"]))
        self._wake()

    def _spawn_loop(self) -> None:
        while True:
            with self._cond:
                if self.closed:
                    break
                now = time.monotonic()
                quiet = (self._waitq or now - self._last_take >= REFILL_QUIET_S
                         or 4 * len(self._idle) < self.target)
                want = (self.target if quiet else 0) + len(self._waitq)
                n = max(0, min(want - len(self._idle) - len(self._pending), MAX_IN_FLIGHT - len(self._pending)))
                if now < self._retry_at:
                    n = 0
                extra = [self._idle.pop() for _ in range(max(0, len(self._idle) - self.target)) if not self._waitq]
            for w in extra:  # the target went down (sessions closed, prewarm lowered): free memory
                self.discard(w)
            for _ in range(n):
                try:
                    self._launch()
                except Exception as exc:  # keep the thread alive; waiters see the error
                    if self.closed:
                        break
                    self._spawn_failed(exc)
                    break
            self._collect()
            self._sweep_cgroups()
        with self._cond:
            pending = list(self._pending.values())
        for w in pending:
            self.discard(w)

    def _collect(self) -> None:
        """Wait for READY frames (or a wake-up), then finish or fail the spawns in flight."""
        with self._cond:
            pending = list(self._pending.values())
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        by_fd = {}
        for w in pending:
            if w.greeting is None and not w.dead:
                poller.register(w.resp_r, select.POLLIN)
                by_fd[w.resp_r] = w
        now = time.monotonic()
        if pending:
            timeout = max(0.0, min(min(w.started for w in pending) + self.cfg.start_timeout - now, 1.0))
        elif self._cg_trash or now < self._retry_at:
            timeout = 0.2
        elif now - self._last_take < REFILL_QUIET_S:  # refill once the burst of takes is over
            timeout = REFILL_QUIET_S - (now - self._last_take)
        else:
            timeout = None
        with self._cond:
            self._dozing = timeout is None and not self._last_take > now  # a take since `now`: go round again
        if self._dozing:
            events = poller.poll(None)
        else:
            events = poller.poll(0 if timeout is None else int(timeout * 1000) + 1)
        self._dozing = False
        for fd, _ in events:
            if fd == self._wake_r:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
            elif fd in by_fd:
                w = by_fd[fd]
                try:  # the READY frame is written in one go: it is all there once readable
                    kind, meta, _ = w.recv((P.READY, P.FAILED), 0, time.monotonic() + 1.0)
                    w.greeting = (kind, meta)
                except (SandboxError, P.ProtocolError) as exc:
                    w.greeting = (P.FAILED, {"error": str(exc), "died": True})
        now = time.monotonic()
        for w in pending:
            if w.greeting is not None and (w.pid is not None or w.greeting[0] == P.FAILED):
                self._finish(w)
            elif now - w.started > self.cfg.start_timeout:
                self._fail(w, SandboxStartError(f"sandbox worker did not start in {self.cfg.start_timeout:g} s"))

    def _finish(self, w: WorkerHandle) -> None:
        assert w.greeting is not None
        kind, meta = w.greeting
        if kind == P.FAILED:
            server = w.server
            if meta.get("died"):
                status = w.exit_status(0.2)
                msg = f"sandbox worker did not start ({meta.get('error')}; exit status {status}); {server.log_tail(500)}"
            else:
                msg = str(meta.get("error", "sandbox worker failed to start"))[:2000]
            self._fail(w, SandboxStartError(msg))
            return
        problems = verify_facts(self.level, meta)
        if problems:
            self._fail(w, SandboxStartError(f"isolation level {self.level!r} is not effective: " + "; ".join(problems)))
            return
        w.facts = meta
        with self._cond:
            if w.spawn_id is not None:
                self._pending.pop(w.spawn_id, None)
            self.facts = meta
            self._error, self._failures, self._ever_ready = None, 0, True
            closed = self.closed
        if closed:
            self.discard(w)
            return
        if not self._measured and w.pid is not None:
            cost = worker_cost(w.pid)
            if cost:
                self.worker_bytes, self._measured = cost, True
        self._deliver(w)

    def _fail(self, w: WorkerHandle, exc: Exception) -> None:
        self.discard(w)
        if not self.closed:
            self._spawn_failed(exc)

    def _spawn_failed(self, exc: Exception) -> None:
        log.warning("sandbox worker start failed: %s", exc)
        with self._cond:
            self._error = exc
            self._failures += 1
            self._retry_at = time.monotonic() + min(0.05 * 2 ** self._failures, 5.0)
            if not self._ever_ready or self._failures >= 2:  # a configuration error stays one
                err = exc if isinstance(exc, ValueError) else SandboxError(f"cannot start a sandbox worker: {exc}")
                self._fail_waiters(err)
            self._cond.notify_all()

    def _sweep_cgroups(self) -> None:
        with self._cond:
            trash, self._cg_trash = self._cg_trash, []
        left = [cg for cg in trash if not cg.remove()]
        if left:
            with self._cond:
                self._cg_trash.extend(left)

    # ---- shutdown ------------------------------------------------------------------------------

    def shutdown(self) -> None:
        with self._cond:
            if self.closed:
                return
            self.closed = True
            idle = list(self._idle)
            others = [w for w in self._live if w not in self._idle]
            self._idle.clear()
            self._fail_waiters(SandboxError("the sandbox pool is closed"))
        for w in idle:  # owned by the pool
            self.discard(w)
        for w in others:  # owned by a session or the spawner: signal only, the owner closes fds
            w.terminate()
        self._wake()
        with self._server_lock:  # closing it also kills every worker it forked
            if self.server is not None:
                self.server.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        with self._cond:
            trash, self._cg_trash = self._cg_trash, []
            trash += [w.cgroup for w in others if w.cgroup is not None]
        _LEFTOVER_CGROUPS.extend(cg for cg in trash if not cg.remove())
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def forget(self) -> None:
        """In a forked child: drop the parent's pool without touching its processes or locks
        (threads that held them do not exist here); only our copies of its fds are closed."""
        self.closed = True
        for w in list(self._live) + list(self._idle):
            w.close_fds()
        if self.server is not None:
            self.server.forget()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


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
    if facts.get("ns_handles"):
        problems.append(f"worker holds namespace handles {facts['ns_handles']}")
    return problems


# ---- process-wide registry --------------------------------------------------------------------

_POOLS: dict[SandboxConfig, WorkerPool] = {}
_REG_LOCK = threading.Lock()
_LEVELS: dict[str, tuple[str, list[str]]] = {}  # requested -> (level, why stronger ones were skipped)
_WARNED: set[str] = set()
_LEFTOVER_CGROUPS: list[WorkerCgroup] = []


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
    """Get (creating on first use) this process's pool for ``cfg`` and register one user of it."""
    with _REG_LOCK:
        pool = _POOLS.get(cfg)
        if pool is None or pool.closed:
            pool = _create_pool(cfg)
            _POOLS[cfg] = pool
        with pool._cond:
            pool.users += 1
            dozing = pool._dozing
    if dozing:  # a higher target: it refills once the burst is over (no syscall under the lock)
        pool._wake()
    return pool


def release_pool(pool: WorkerPool) -> None:
    """Unregister one user; the last one shuts the pool (and its fork server) down."""
    if pool.owner != os.getpid():
        return  # a forked child's copy of a parent's pool: forgotten at fork
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


def _remove_leftover_cgroups() -> None:
    """At exit: the groups of workers killed last are empty a moment later."""
    deadline = time.monotonic() + 2.0
    while _LEFTOVER_CGROUPS and time.monotonic() < deadline:
        _LEFTOVER_CGROUPS[:] = [cg for cg in _LEFTOVER_CGROUPS if not cg.remove()]
        if _LEFTOVER_CGROUPS:
            time.sleep(0.05)
    from .cgroups import _remove_own_dirs

    _remove_own_dirs()


def _forget_pools_in_child() -> None:
    global _REG_LOCK
    for pool in list(_POOLS.values()):
        pool.forget()
    _POOLS.clear()
    _LEFTOVER_CGROUPS.clear()
    _REG_LOCK = threading.Lock()


atexit.register(_remove_leftover_cgroups)
atexit.register(shutdown_all_pools)  # atexit runs last-registered first: pools, then their cgroups
os.register_at_fork(after_in_child=_forget_pools_in_child)
