"""Node-wide, FIFO-fair admission of running cells (client side).

Cells are CPU-bound: running more of them than there are cores only time-slices them. The budget
must be per machine, not per process (several env processes share the cores), and fair: a short
cell queues behind the cells that asked before it, never behind one that re-asks faster. Both come
from one small daemon per node (:mod:`.admission_server`), reached through one connection per
process; a waiter blocks on an event of its own, so :meth:`Ticket.cancel` (an aborted episode)
frees its thread at once. If the daemon cannot be started, the process falls back to a local FIFO
budget and logs why.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .node import node_dir

__all__ = ["Ticket", "AdmissionCancelled", "admit", "admission_mode"]

log = logging.getLogger(__name__)

_SERVER_SOURCE = Path(__file__).with_name("admission_server.py")


class AdmissionCancelled(Exception):
    """The wait for a slot was cancelled (the episode was aborted)."""


class Ticket:
    """One request for a running-cell slot: wait for it, then release it (or cancel the wait)."""

    def __init__(self, client: "_Client", rid: str, cap: int) -> None:
        self._client = client
        self.id = rid
        self.cap = cap
        self._event = threading.Event()
        self.granted = False
        self.cancelled = False
        self.released = False

    def wait(self) -> None:
        """Block until granted; raise :class:`AdmissionCancelled` if cancelled meanwhile."""
        self._event.wait()
        if self.cancelled:
            raise AdmissionCancelled("the wait for a running slot was cancelled")

    def cancel(self) -> None:
        """From any thread: stop waiting (or give the slot back if it was granted)."""
        self._client.finish(self, cancel=True)

    def release(self) -> None:
        self._client.finish(self, cancel=False)

    def __enter__(self) -> "Ticket":
        self.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Client:
    """The process's connection to the node daemon (or, failing that, a local FIFO budget)."""

    def __init__(self, directory: Path | None) -> None:
        self.dir = directory
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.waiting: dict[str, Ticket] = {}  # sent "A", not yet granted
        self.sock: socket.socket | None = None
        self.reader: threading.Thread | None = None
        # local fallback
        self.local = directory is None
        self.running: dict[int, int] = collections.defaultdict(int)
        self.queue: dict[int, collections.deque[Ticket]] = collections.defaultdict(collections.deque)

    # ---- requests ---------------------------------------------------------------------------

    def request(self, cap: int) -> Ticket:
        t = Ticket(self, str(next(self.ids)), cap)
        with self.lock:
            if not self.local:
                try:
                    self._ensure_connected()
                    self.waiting[t.id] = t
                    self._send(f"A {t.id} {cap}\n")
                    return t
                except OSError as exc:
                    self.waiting.pop(t.id, None)
                    self._fall_back(exc)
            self.queue[cap].append(t)
            self._pump_local(cap)
        return t

    def finish(self, t: Ticket, cancel: bool) -> None:
        with self.lock:
            if t.released or (t.cancelled and not t.granted):
                return
            if not t.granted and not cancel:
                raise RuntimeError("release() of a slot that was never granted")
            if t.granted:
                t.released = True
            else:
                t.cancelled = True
                t._event.set()
            if self.local:
                if t.granted:
                    self.running[t.cap] -= 1
                self._pump_local(t.cap)
            else:
                self.waiting.pop(t.id, None)
                try:
                    self._send(f"{'C' if cancel else 'R'} {t.id}\n")
                except OSError:
                    pass  # the daemon is gone and forgot us already

    # ---- daemon connection ------------------------------------------------------------------

    def _ensure_connected(self) -> None:
        if self.sock is not None:
            return
        assert self.dir is not None
        path = str(self.dir / "admission.sock")
        deadline = time.monotonic() + 10.0
        spawned_at = -1.0
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                s.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if time.monotonic() > deadline:
                    raise OSError(f"the node's admission daemon did not come up at {path}") from None
                if time.monotonic() - spawned_at > 1.0:  # a dying daemon may still hold the lock
                    self._spawn_daemon()
                    spawned_at = time.monotonic()
                time.sleep(0.01)
        self.sock = s
        self.reader = threading.Thread(target=self._read_loop, args=(s,), name="sandbox-admission", daemon=True)
        self.reader.start()

    def _spawn_daemon(self) -> None:
        subprocess.run([sys.executable, "-I", "-B", "-c", _SERVER_SOURCE.read_text(), str(self.dir)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       cwd="/", timeout=30, check=False)

    def _send(self, line: str) -> None:
        assert self.sock is not None
        self.sock.sendall(line.encode())

    def _read_loop(self, sock: socket.socket) -> None:
        buf = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                parts = line.decode("ascii", "replace").split()
                if len(parts) == 2 and parts[0] == "G":
                    self._granted(parts[1])
        self._reconnect(sock)

    def _granted(self, rid: str) -> None:
        with self.lock:
            t = self.waiting.pop(rid, None)
            if t is None:  # cancelled meanwhile: give it back
                try:
                    self._send(f"R {rid}\n")
                except OSError:
                    pass
                return
            t.granted = True
            t._event.set()

    def _reconnect(self, dead: socket.socket) -> None:
        """The daemon went away: queue the waiters again at a new one (granted slots it forgot)."""
        with self.lock:
            if self.sock is not dead:
                return
            dead.close()
            self.sock = None
            waiting = sorted(self.waiting.values(), key=lambda t: int(t.id))
            if not waiting:
                return
            try:
                self._ensure_connected()
                for t in waiting:
                    self._send(f"A {t.id} {t.cap}\n")
            except OSError as exc:
                self._fall_back(exc)
                for t in waiting:
                    self.queue[t.cap].append(t)
                    self._pump_local(t.cap)

    # ---- local fallback ---------------------------------------------------------------------

    def _fall_back(self, exc: BaseException) -> None:
        if not self.local:
            log.warning("node-wide cell admission unavailable (%s); this process uses its own budget", exc)
        self.local = True
        self.waiting.clear()

    def _pump_local(self, cap: int) -> None:
        q = self.queue[cap]
        while self.running[cap] < cap and q:
            t = q.popleft()
            if t.cancelled:
                continue
            self.running[cap] += 1
            t.granted = True
            t._event.set()


_CLIENT: tuple[int, _Client] | None = None
_CLIENT_LOCK = threading.Lock()


def _client() -> _Client:
    global _CLIENT
    with _CLIENT_LOCK:
        if _CLIENT is None or _CLIENT[0] != os.getpid():  # a forked child gets its own connection
            try:
                directory: Path | None = node_dir()
            except OSError as exc:
                log.warning("no node-wide sandbox state directory (%s); cell admission is per process", exc)
                directory = None
            _CLIENT = (os.getpid(), _Client(directory))
        return _CLIENT[1]


def admit(capacity: int) -> Ticket:
    """Queue for one of ``capacity`` running-cell slots shared by every process on this node
    that uses the same capacity; ``with admit(n): ...`` waits, runs, releases."""
    if capacity <= 0:
        raise ValueError("capacity must be positive")
    return _client().request(int(capacity))


def admission_mode() -> str:
    """"node" (shared with every process on this machine) or "process" (the fallback), after
    making sure the node's daemon answers."""
    c = _client()
    with c.lock:
        if not c.local:
            try:
                c._ensure_connected()
            except OSError as exc:
                c._fall_back(exc)
    return "process" if c.local else "node"


def _forget_in_child() -> None:
    """Close our copy of the parent's connection: the daemon must see the parent leave when it
    does (a copy held here would keep its slots taken)."""
    global _CLIENT_LOCK
    _CLIENT_LOCK = threading.Lock()
    if _CLIENT is not None and _CLIENT[1].sock is not None:
        try:
            _CLIENT[1].sock.close()
        except OSError:
            pass


os.register_at_fork(after_in_child=_forget_in_child)
