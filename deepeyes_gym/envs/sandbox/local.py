"""A per-episode session on a local sandbox worker taken from the warm pool."""

from __future__ import annotations

import os
import signal
import threading
import time
import weakref
from typing import Any, Sequence

import numpy as np

from ..turns import clip_middle
from . import protocol as P
from .base import ExecResult, SandboxBackend
from .config import SandboxConfig
from .images import SharedImages, release_images, share_images
from .pool import SandboxError, Waiter, WorkerDied, WorkerHandle, WorkerPool, WorkerTimeout, acquire_pool, release_pool

__all__ = ["LocalSandbox", "SandboxAborted"]


class _LoadFailed(Exception):
    """The worker could not bind the input images."""


class SandboxAborted(SandboxError):
    """The episode was aborted while its session was starting."""


class _State:
    """Everything the finalizer needs (kept apart from the sandbox so GC can collect it)."""

    def __init__(self, pool: WorkerPool | None) -> None:
        self.pid = os.getpid()  # a forked child must not touch the parent's worker or pool
        self.pool: WorkerPool | None = pool
        self.worker: WorkerHandle | None = None
        self.waiter: Waiter | None = None  # set while waiting for a worker (abort cancels it)
        self.images: SharedImages | None = None

    def drop_worker(self) -> None:
        w, self.worker = self.worker, None
        if w is not None and self.pool is not None:
            self.pool.discard(w)
        elif w is not None:
            w.kill()

    def drop_images(self) -> None:
        entry, self.images = self.images, None
        if entry is not None:
            release_images(entry)

    def close(self) -> None:
        if self.pid != os.getpid():
            return  # forgotten at fork; the parent closes its own
        self.drop_worker()
        self.drop_images()
        pool, self.pool = self.pool, None
        if pool is not None:
            release_pool(pool)


_INSTANCES: "weakref.WeakSet[LocalSandbox]" = weakref.WeakSet()


class LocalSandbox(SandboxBackend):
    """Stateful Python session per episode in an isolated, pre-warmed local worker.

    ``timeout`` is the soft per-cell limit (the cell is interrupted, the session survives);
    ``timeout + hard_timeout_grace`` is the hard one (the worker is killed and replaced by a fresh
    one with the input images reloaded). A worker that dies for any reason is replaced the same way;
    nothing here raises because of what the code did. :meth:`abort` (any thread) kills the worker
    without waiting for the running cell or the session's lock.
    """

    def __init__(self, config: SandboxConfig | None = None, *, timeout: float = 60.0, hard_timeout_grace: float = 2.0) -> None:
        if timeout <= 0 or hard_timeout_grace <= 0:
            raise ValueError("timeout and hard_timeout_grace must be positive")
        self.config = config or SandboxConfig()
        self.timeout = float(timeout)
        self.grace = float(hard_timeout_grace)
        self._state = _State(acquire_pool(self.config))
        self._finalizer = weakref.finalize(self, _State.close, self._state)
        self._lock = threading.RLock()
        self._aborted = threading.Event()
        cfg = self.config
        self._max_blob = 2 * (4 * cfg.max_output_chars + 4096) + cfg.max_images * cfg.max_image_pixels * 3
        _INSTANCES.add(self)

    @property
    def isolation_level(self) -> str:
        return self._state.pool.level if self._state.pool is not None else "closed"

    @property
    def pool(self) -> WorkerPool:
        """This process's warm pool for the sandbox's config."""
        return self._pool()

    @property
    def worker_pid(self) -> int | None:
        """Outer pid of the current worker's process tree (None between episodes)."""
        w = self._state.worker
        return w.pid if w is not None else None

    # ---- session lifecycle ------------------------------------------------------------------

    def start(self, images: Sequence[Any] = (), *, key: str | None = None) -> None:
        """Begin a session with ``images`` as ``image_1``...; episodes that pass the same ``key``
        (task id) and image objects share one read-only copy of the pixels."""
        with self._lock:
            self.end()
            self._aborted.clear()
            self._state.images = share_images(key, images)
            self._fresh_worker()

    async def start_async(self, images: Sequence[Any] = (), *, key: str | None = None) -> None:
        """:meth:`start` for asyncio code: waits for a worker without blocking a thread (cancel
        the task to stop waiting)."""
        self.end()
        self._aborted.clear()
        pool = self._pool()
        self._state.images = share_images(key, images)
        w = await pool.acquire_async()
        with self._lock:
            self._take(pool, w)

    def end(self) -> None:
        with self._lock:
            self._adopt()  # a forked child forgets the parent's worker here instead of killing it
            self._state.drop_worker()
            self._state.drop_images()

    def abort(self) -> None:
        """From any thread: kill the episode's worker now. A running cell returns an "aborted"
        result at once, a start waiting for a worker raises :class:`SandboxAborted`; no lock is
        taken. The next :meth:`start` begins normally."""
        self._aborted.set()
        w = self._state.worker
        if w is not None:
            w.terminate()
        waiter, pool = self._state.waiter, self._state.pool
        if waiter is not None and pool is not None:
            pool.cancel(waiter)

    def close(self) -> None:
        with self._lock:
            self._finalizer()

    def _adopt(self) -> None:
        """In a forked child: start over on this process's own pool; the parent's pool, worker
        and shared images are the parent's to use and to kill."""
        if self._state.pid != os.getpid():
            closed = self._state.pool is None
            self._finalizer.detach()
            self._state = _State(None if closed else acquire_pool(self.config))
            self._finalizer = weakref.finalize(self, _State.close, self._state)

    def _pool(self) -> WorkerPool:
        self._adopt()
        if self._state.pool is None:
            raise SandboxError("the sandbox is closed")
        return self._state.pool

    def _set_waiter(self, waiter: Waiter) -> None:
        self._state.waiter = waiter
        if self._aborted.is_set():  # aborted before the waiter was visible
            self._pool().cancel(waiter)

    def _fresh_worker(self) -> WorkerHandle:
        """Take a warm worker for the session (its input images go with its first cell)."""
        pool = self._pool()
        try:
            w = pool.acquire(on_wait=self._set_waiter)
        except SandboxError:
            if self._aborted.is_set():
                raise SandboxAborted("the episode was aborted") from None
            raise
        finally:
            self._state.waiter = None
        return self._take(pool, w)

    def _take(self, pool: WorkerPool, w: WorkerHandle) -> WorkerHandle:
        """Make ``w`` the session's worker. Its images are handed over with its first cell (they
        are mapped, not copied, so that costs the cell little), which keeps a reset free of any
        round trip to the worker."""
        self._state.worker = w
        if self._aborted.is_set():  # abort() may have looked before the worker was ours
            self._state.drop_worker()
            raise SandboxAborted("the episode was aborted")
        entry = self._state.images
        w.images_due = entry is not None and entry.fd is not None
        return w

    def _send_images(self, w: WorkerHandle, deadline: float) -> None:
        """Pass the task's sealed memfd and the LOAD frame (pipelined: LOADED is read before the
        cell's result)."""
        entry = self._state.images
        assert entry is not None and entry.fd is not None
        w.send_fd(entry.fd)
        w.send(P.LOAD, {"images": entry.specs, "shm": entry.size}, (), deadline)
        w.pending.append(P.LOADED)
        w.images_due = False

    def _settle(self, w: WorkerHandle, deadline: float) -> None:
        """Read the acknowledgements the worker still owes (images bound) before a result."""
        while w.pending:
            kind, meta, _ = w.recv((P.LOADED, P.FAILED), 0, deadline)
            w.pending.pop(0)
            if kind == P.FAILED:
                raise _LoadFailed(str(meta.get("error"))[:500])

    def _restart(self) -> str:
        """Replace the worker; return a sentence for the model saying what happened to its state."""
        self._state.drop_worker()
        n = len(self._state.images.specs) if self._state.images is not None else 0
        names = ", ".join(f"image_{i}" for i in range(1, n + 1))
        try:
            self._fresh_worker()
        except SandboxError as exc:
            return f"The Python session could not be restarted yet ({exc}); it will be retried at the next cell."
        reloaded = f" The input images were reloaded as {names}." if names else ""
        return "The Python session was restarted: all variables and imports are lost." + reloaded

    # ---- running cells ------------------------------------------------------------------------

    def run(self, code: str, timeout: float | None = None) -> ExecResult:
        with self._lock:
            return self._run(code, self.timeout if timeout is None else float(timeout))

    def _run(self, code: str, timeout: float) -> ExecResult:
        t0 = time.perf_counter()
        if self._aborted.is_set():
            self._state.drop_worker()
            return _aborted(t0)
        if self._state.worker is None:
            try:
                self._fresh_worker()
            except SandboxAborted:
                return _aborted(t0)
            except SandboxError as exc:
                return ExecResult(stderr=f"SandboxError: {exc}\n", status="crashed", seconds=time.perf_counter() - t0)
        w = self._state.worker
        assert w is not None
        deadline = time.monotonic() + timeout + self.grace
        try:
            if w.images_due:
                self._send_images(w, deadline)
            w.send(P.EXEC, {"timeout": timeout}, [code.encode("utf-8", "replace")], deadline)
            self._settle(w, deadline + self.config.start_timeout)
            kind, meta, blob = w.recv((P.RESULT, P.FAILED), self._max_blob, deadline)
            if kind == P.FAILED:
                raise P.ProtocolError(f"worker error: {str(meta.get('error'))[:300]}")
            res = self._parse(meta, blob)
        except (_LoadFailed, WorkerTimeout, WorkerDied, P.ProtocolError, ValueError, KeyError, TypeError) as exc:
            if self._aborted.is_set():  # killed by abort(): no restart, the episode is over
                self._state.drop_worker()
                return _aborted(t0)
            return self._recover(exc, w, timeout, t0)
        res.seconds = time.perf_counter() - t0
        return res

    def _recover(self, exc: Exception, w: WorkerHandle, timeout: float, t0: float) -> ExecResult:
        """The worker failed a cell: restart it and tell the model what happened."""
        status, exit_status = "crashed", None
        if isinstance(exc, WorkerDied):
            exit_status = w.exit_status(0.5)
        note = self._restart()
        if isinstance(exc, _LoadFailed):
            msg = f"SandboxError: the input images could not be loaded into the Python session ({exc}). {note}\n"
        elif isinstance(exc, WorkerTimeout):
            status = "killed"
            msg = (f"TimeoutError: the code did not stop at the {timeout:g} s time limit and was killed "
                   f"after {timeout + self.grace:g} s. {note}\n")
        elif isinstance(exc, WorkerDied):
            msg = f"The Python process running the code {_describe_exit(exit_status)}. {note}\n"
        else:
            msg = f"SandboxError: the Python process sent an invalid reply ({exc}). {note}\n"
        return ExecResult(stderr=msg, status=status, restarted=True, exit_status=exit_status,
                          seconds=time.perf_counter() - t0)

    def _parse(self, meta: dict[str, Any], blob: bytearray) -> ExecResult:
        """Validate a RESULT frame from the (untrusted) worker and turn it into an ExecResult."""
        cfg = self.config
        max_text = 4 * cfg.max_output_chars + 4096
        n_out = _bounded_int(meta["stdout"], max_text)
        n_err = _bounded_int(meta["stderr"], max_text)
        dims = meta["images"]
        if not isinstance(dims, list) or len(dims) > cfg.max_images:
            raise ValueError("bad image list")
        sizes = []
        for d in dims:
            if not isinstance(d, list) or len(d) != 2:
                raise ValueError("bad image size")
            iw, ih = _bounded_int(d[0], cfg.max_image_pixels), _bounded_int(d[1], cfg.max_image_pixels)
            if iw < 1 or ih < 1 or iw * ih > cfg.max_image_pixels:
                raise ValueError(f"bad image size {iw}x{ih}")
            sizes.append((iw, ih))
        if n_out + n_err + sum(iw * ih * 3 for iw, ih in sizes) != len(blob):
            raise ValueError("payload length does not match its header")
        # the worker already truncates to max_output_chars; a misbehaving one cannot exceed this cap
        stdout = clip_middle(bytes(blob[:n_out]).decode("utf-8", "replace"), cfg.max_output_chars + 200)[0]
        stderr = clip_middle(bytes(blob[n_out : n_out + n_err]).decode("utf-8", "replace"), cfg.max_output_chars + 200)[0]
        images = []
        off = n_out + n_err
        for iw, ih in sizes:
            images.append(np.frombuffer(blob, np.uint8, iw * ih * 3, off).reshape(ih, iw, 3))
            off += iw * ih * 3
        status = meta.get("status")
        return ExecResult(
            stdout=stdout,
            stderr=stderr,
            images=images,
            status=status if status in ("ok", "error", "timeout") else "error",
            stdout_truncated=_bounded_int(meta.get("stdout_truncated", 0), 1 << 62),
            stderr_truncated=_bounded_int(meta.get("stderr_truncated", 0), 1 << 62),
            images_dropped=_bounded_int(meta.get("images_dropped", 0), 1 << 62),
        )


def _bounded_int(v: Any, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= hi:
        raise ValueError(f"bad integer field {v!r}")
    return v


def _aborted(t0: float) -> ExecResult:
    return ExecResult(stderr="The episode was aborted: its Python session was stopped.\n", status="aborted",
                      seconds=time.perf_counter() - t0)


def _describe_exit(status: int | None) -> str:
    if status is None:
        return "stopped unexpectedly"
    if status > 128:
        try:
            name = signal.Signals(status - 128).name
        except ValueError:
            name = f"signal {status - 128}"
        hint = " (for example for using too much memory)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {status}"


def _forget_locks_in_child() -> None:
    """A lock held by a parent thread at fork would never be released in the child."""
    for sb in list(_INSTANCES):
        sb._lock = threading.RLock()


os.register_at_fork(after_in_child=_forget_locks_in_child)
