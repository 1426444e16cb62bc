"""A per-episode session on a local sandbox worker taken from the warm pool."""

from __future__ import annotations

import os
import signal
import threading
import time
import weakref
from typing import Any, Sequence

import numpy as np

from . import protocol as P
from .base import ExecResult, SandboxBackend, image_specs
from .config import SandboxConfig
from .pool import SandboxError, WorkerDied, WorkerHandle, WorkerPool, WorkerTimeout, acquire_pool, release_pool

__all__ = ["LocalSandbox"]


class _LoadFailed(Exception):
    """The worker could not bind the input images."""


class _State:
    """Everything the finalizer needs (kept apart from the sandbox so GC can collect it)."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool: WorkerPool | None = pool
        self.worker: WorkerHandle | None = None
        self.images: list[tuple[dict[str, Any], bytes]] = []

    def drop_worker(self) -> None:
        w, self.worker = self.worker, None
        if w is not None and self.pool is not None:
            self.pool.discard(w)
        elif w is not None:
            w.kill()

    def close(self) -> None:
        self.drop_worker()
        pool, self.pool = self.pool, None
        if pool is not None:
            release_pool(pool)


class LocalSandbox(SandboxBackend):
    """Stateful Python session per episode in an isolated, pre-warmed local worker.

    ``timeout`` is the soft per-cell limit (the cell is interrupted, the session survives);
    ``timeout + hard_timeout_grace`` is the hard one (the worker is killed and replaced by a fresh
    one with the input images reloaded). A worker that dies for any reason is replaced the same way;
    nothing here raises because of what the code did.
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
        cfg = self.config
        self._max_blob = 2 * (4 * cfg.max_output_chars + 4096) + cfg.max_images * cfg.max_image_pixels * 3

    @property
    def isolation_level(self) -> str:
        return self._state.pool.level if self._state.pool is not None else "closed"

    @property
    def worker_pid(self) -> int | None:
        """Outer pid of the current worker's process tree (None between episodes)."""
        w = self._state.worker
        return w.pid if w is not None else None

    # ---- session lifecycle ------------------------------------------------------------------

    def start(self, images: Sequence[Any] = ()) -> None:
        with self._lock:
            self.end()
            self._state.images = image_specs(images)
            self._state.worker = self._fresh_worker()

    def end(self) -> None:
        with self._lock:
            self._state.drop_worker()

    def close(self) -> None:
        with self._lock:
            self._finalizer()

    def _pool(self) -> WorkerPool:
        if self._state.pool is None:
            raise SandboxError("the sandbox is closed")
        return self._state.pool

    def _fresh_worker(self) -> WorkerHandle:
        """Take a warm worker and hand it the input images.

        The pixels go through the worker's shared memory file in one write; the LOAD frame is
        pipelined: the worker binds ``image_1``... while the caller goes on, and the LOADED
        acknowledgement is read before the first cell's result.
        """
        pool = self._pool()
        w = pool.acquire()
        if self._state.images:
            try:
                total = sum(len(b) for _, b in self._state.images)
                os.ftruncate(w.shm, total)
                off = 0
                for _, raw in self._state.images:
                    off += os.pwrite(w.shm, raw, off)
                w.send(P.LOAD, {"images": [s for s, _ in self._state.images], "shm": total}, (),
                       time.monotonic() + self.config.start_timeout)
                w.pending.append(P.LOADED)
            except (OSError, SandboxError) as exc:
                pool.discard(w)
                raise SandboxError(f"could not send the input images to the sandbox: {exc}") from None
        return w

    def _settle(self, w: WorkerHandle, deadline: float) -> None:
        """Read the acknowledgements the worker still owes (images bound) before a result."""
        while w.pending:
            kind, meta, _ = w.recv((P.LOADED, P.FAILED), 0, deadline)
            w.pending.pop(0)
            if kind == P.FAILED:
                raise _LoadFailed(str(meta.get("error"))[:500])
            try:
                os.ftruncate(w.shm, 0)  # the worker holds its own copy now
            except OSError:
                pass

    def _restart(self) -> str:
        """Replace the worker; return a sentence for the model saying what happened to its state."""
        self._state.drop_worker()
        names = ", ".join(f"image_{i}" for i in range(1, len(self._state.images) + 1))
        try:
            self._state.worker = self._fresh_worker()
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
        if self._state.worker is None:
            try:
                self._state.worker = self._fresh_worker()
            except SandboxError as exc:
                return ExecResult(stderr=f"SandboxError: {exc}\n", status="crashed", seconds=time.perf_counter() - t0)
        w = self._state.worker
        deadline = time.monotonic() + timeout + self.grace
        try:
            w.send(P.EXEC, {"timeout": timeout}, [code.encode("utf-8", "replace")], deadline)
            self._settle(w, deadline + self.config.start_timeout)
            kind, meta, blob = w.recv((P.RESULT, P.FAILED), self._max_blob, deadline)
            if kind == P.FAILED:
                raise P.ProtocolError(f"worker error: {str(meta.get('error'))[:300]}")
            res = self._parse(meta, blob)
        except _LoadFailed as exc:
            note = self._restart()
            msg = f"SandboxError: the input images could not be loaded into the Python session ({exc}). {note}\n"
            return ExecResult(stderr=msg, status="crashed", restarted=True, seconds=time.perf_counter() - t0)
        except WorkerTimeout:
            note = self._restart()
            msg = (f"TimeoutError: the code did not stop at the {timeout:g} s time limit and was killed "
                   f"after {timeout + self.grace:g} s. {note}\n")
            return ExecResult(stderr=msg, status="killed", restarted=True, seconds=time.perf_counter() - t0)
        except WorkerDied:
            status = w.exit_status(0.5)
            note = self._restart()
            msg = f"The Python process running the code {_describe_exit(status)}. {note}\n"
            return ExecResult(stderr=msg, status="crashed", restarted=True, exit_status=status,
                              seconds=time.perf_counter() - t0)
        except (P.ProtocolError, ValueError, KeyError, TypeError) as exc:
            note = self._restart()
            msg = f"SandboxError: the Python process sent an invalid reply ({exc}). {note}\n"
            return ExecResult(stderr=msg, status="crashed", restarted=True, seconds=time.perf_counter() - t0)
        res.seconds = time.perf_counter() - t0
        return res

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
        stdout = _clip(bytes(blob[:n_out]).decode("utf-8", "replace"), cfg.max_output_chars)
        stderr = _clip(bytes(blob[n_out : n_out + n_err]).decode("utf-8", "replace"), cfg.max_output_chars)
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


def _clip(text: str, limit: int) -> str:
    """Parent-side cap (the worker already truncates; a misbehaving one cannot exceed this)."""
    slack = limit + 200
    if len(text) <= slack:
        return text
    half = limit // 2
    return text[:half] + f"\n...[{len(text) - 2 * half} characters truncated]...\n" + text[-half:]


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
