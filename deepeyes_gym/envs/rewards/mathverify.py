"""Symbolic answer checking with math-verify (sympy) under a time-out that cannot block.

math-verify and sympy can run for minutes on pathological input (``9^{9^{9^9}}``, huge
factorials), and math-verify's own time-out uses ``signal.alarm``: main thread only, and blind
to C-level big-integer arithmetic. So the work runs in persistent helper processes
(``_mathverify_worker.py``) that the caller waits on with a deadline; a helper that misses it is
killed and replaced in the background. One verification therefore returns within its time-out
(plus a few milliseconds of pipe I/O) once it holds a helper. Waiting for a free helper (all busy
with other threads) and the one-off start of a helper (importing sympy, about a second) are
bounded separately (each holder is itself bounded; ``startup_timeout_s``).

The parent never imports sympy or math-verify; when math-verify is not installed, every call
answers ``status="unavailable"`` (the rules in :mod:`.answers` then leave the pair undecided).
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass

__all__ = ["MathVerifier", "MathVerifyResult", "math_equal", "default_verifier", "set_default_verifier"]

_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_mathverify_worker.py")
_TIMEOUT, _DEAD = object(), object()


@dataclass(frozen=True)
class MathVerifyResult:
    """Outcome of one check.

    ``equal``: True/False when math-verify parsed both sides and compared them, else None.
    ``status``: ``ok``, ``unparsed`` (math-verify found no expression), ``timeout``, ``error``
    (the helper failed or crashed), ``unavailable`` (math-verify missing or the helper cannot
    start).
    """

    equal: bool | None
    status: str
    elapsed_s: float = 0.0
    detail: str = ""


class _Worker:
    """One helper process and the thread that reads its answers."""

    def __init__(self, python: str, memory_limit_mb: int):
        self.proc = subprocess.Popen(
            [python, "-u", _WORKER, str(int(memory_limit_mb))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            close_fds=True,
        )
        self.lines: queue.SimpleQueue = queue.SimpleQueue()
        self.ready: bool | None = None
        self.error = ""
        self._ids = 0
        threading.Thread(target=self._read, name="mathverify-reader", daemon=True).start()

    def _read(self) -> None:
        try:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.put(line)
        except (OSError, ValueError):
            pass
        finally:
            self.lines.put(None)

    def _next(self, deadline: float):
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return _TIMEOUT
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                return _TIMEOUT
            if line is None:
                return _DEAD
            try:
                return json.loads(line)
            except ValueError:
                continue  # stray output: skip it

    def wait_ready(self, timeout_s: float) -> bool:
        if self.ready is None:
            msg = self._next(time.monotonic() + timeout_s)
            if msg is _TIMEOUT:
                self.error = f"the math-verify helper did not start within {timeout_s:g} s"
                return False
            if msg is _DEAD or not isinstance(msg, dict):
                self.ready, self.error = False, "the math-verify helper exited at start-up"
            else:
                self.ready = bool(msg.get("ready"))
                self.error = str(msg.get("error", ""))
        return bool(self.ready)

    def ask(self, gold: str, pred: str, timeout_s: float):
        self._ids += 1
        rid = self._ids
        deadline = time.monotonic() + timeout_s
        try:
            assert self.proc.stdin is not None
            # The helper's own alarm fires first so that it usually answers "timeout" and lives on.
            req = {"id": rid, "gold": gold, "pred": pred, "timeout": timeout_s * 0.8}
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            return _DEAD
        while True:
            msg = self._next(deadline)
            if msg is _TIMEOUT or msg is _DEAD:
                return msg
            if isinstance(msg, dict) and msg.get("id") == rid:
                return msg

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        # Reap in the background: never block the caller on the dying process.
        threading.Thread(target=self.proc.wait, name="mathverify-reaper", daemon=True).start()


_LIVE: "weakref.WeakSet[MathVerifier]" = weakref.WeakSet()


class MathVerifier:
    """A pool of math-verify helper processes answering ``gold == pred?`` with a hard time-out.

    Args:
        timeout_s: the most one verification may take once it holds a helper.
        max_workers: helpers started on demand (each about 100 MB with sympy loaded).
        startup_timeout_s: how long the first call waits for a helper to import sympy.
        memory_limit_mb: address-space cap of a helper (POSIX), 0 for none.
        python: interpreter for the helpers (default: this one).

    Thread-safe; also a context manager (``close()`` kills the helpers).
    """

    def __init__(
        self,
        timeout_s: float = 2.0,
        *,
        max_workers: int = 2,
        startup_timeout_s: float = 60.0,
        memory_limit_mb: int = 2048,
        python: str | None = None,
    ):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers!r}")
        self.timeout_s = float(timeout_s)
        self.max_workers = int(max_workers)
        self.startup_timeout_s = float(startup_timeout_s)
        self.memory_limit_mb = int(memory_limit_mb)
        self.python = python or sys.executable
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._count = 0
        self._closed = False
        self._unavailable = ""
        self._pid = os.getpid()
        self.restarts = 0  # helpers killed for missing their deadline (for reports)
        _LIVE.add(self)

    # ----------------------------------------------------------------- pool
    def _check_fork(self) -> None:
        if os.getpid() != self._pid:  # forked child: the parent's helpers are not ours
            with self._cond:
                self._idle, self._count, self._pid = [], 0, os.getpid()

    def _spawn(self) -> _Worker | None:
        try:
            return _Worker(self.python, self.memory_limit_mb)
        except OSError as exc:
            self._unavailable = f"cannot start the math-verify helper: {exc}"
            return None

    def _acquire(self) -> _Worker | None:
        with self._cond:
            while True:
                if self._closed or self._unavailable:
                    return None
                if self._idle:
                    return self._idle.pop()
                if self._count < self.max_workers:
                    self._count += 1
                    break
                self._cond.wait()
        w = self._spawn()
        if w is None:
            with self._cond:
                self._count -= 1
                self._cond.notify_all()
        return w

    def _release(self, w: _Worker | None) -> None:
        """Return a live helper to the pool, or give up its slot (w=None)."""
        with self._cond:
            if w is not None and not self._closed:
                self._idle.append(w)
            else:
                if w is not None:
                    w.kill()
                self._count -= 1
            self._cond.notify()

    def _replace(self, dead: _Worker) -> None:
        dead.kill()
        self.restarts += 1
        fresh = None if self._closed else self._spawn()  # starts importing sympy right away
        self._release(fresh)

    # ----------------------------------------------------------------- API
    @property
    def available(self) -> bool:
        return not self._unavailable

    def warmup(self) -> bool:
        """Start one helper and wait until it is ready; False when math-verify is unusable."""
        self._check_fork()
        w = self._acquire()
        if w is None:
            return False
        ok = w.wait_ready(self.startup_timeout_s)
        if not ok and w.ready is False:
            self._unavailable = w.error or "math-verify is not usable"
        self._release(w if ok else None)
        return ok

    def verify(self, gold: str, pred: str, *, timeout_s: float | None = None) -> MathVerifyResult:
        """Is ``pred`` mathematically equal to ``gold``? (Order matters to math-verify.)"""
        self._check_fork()
        timeout = self.timeout_s if timeout_s is None else float(timeout_s)
        if self._unavailable:
            return MathVerifyResult(None, "unavailable", 0.0, self._unavailable)
        w = self._acquire()
        if w is None:
            return MathVerifyResult(None, "unavailable", 0.0, self._unavailable or "verifier closed")
        if not w.wait_ready(self.startup_timeout_s):
            if w.ready is False:  # math-verify missing: remember, do not retry every call
                self._unavailable = w.error or "math-verify is not usable"
            detail = w.error
            self._release(None)
            w.kill()
            return MathVerifyResult(None, "unavailable", 0.0, detail)
        start = time.monotonic()
        msg = w.ask(str(gold), str(pred), timeout)
        elapsed = time.monotonic() - start
        if msg is _TIMEOUT or msg is _DEAD:
            self._replace(w)
            status = "timeout" if msg is _TIMEOUT else "error"
            detail = "killed after its deadline" if msg is _TIMEOUT else "the helper process died"
            return MathVerifyResult(None, status, elapsed, detail)
        self._release(w)
        eq = msg.get("equal")
        return MathVerifyResult(
            None if eq is None else bool(eq), str(msg.get("status", "error")), elapsed,
            str(msg.get("detail", "")),
        )

    def close(self) -> None:
        """Kill the helpers; later calls answer ``unavailable``."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._cond.notify_all()
        for w in idle:
            w.kill()

    def __enter__(self) -> "MathVerifier":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; helpers also exit when their stdin closes
        try:
            self.close()
        except Exception:
            pass


@atexit.register
def _close_all() -> None:
    for v in list(_LIVE):
        v.close()


_default: MathVerifier | None = None
_default_lock = threading.Lock()


def default_verifier() -> MathVerifier:
    """The process-wide verifier used by :func:`math_equal` (created on first use)."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = MathVerifier()
        return _default


def set_default_verifier(verifier: MathVerifier) -> None:
    """Replace the process-wide verifier (e.g. with another time-out)."""
    global _default
    with _default_lock:
        _default = verifier


def math_equal(gold: str, pred: str, *, timeout_s: float | None = None) -> MathVerifyResult:
    """Check ``pred`` against ``gold`` with the default verifier."""
    return default_verifier().verify(gold, pred, timeout_s=timeout_s)
