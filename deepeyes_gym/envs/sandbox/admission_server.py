"""The node's cell-admission daemon: one FIFO budget of running cells for every env process.

Stdlib only: the client starts it as ``python -I -B -c <this file's source> <state dir>``. It
listens on ``<state dir>/admission.sock`` (the directory is private to this user), holds an
exclusive ``flock`` on ``<state dir>/admission.lock`` for its whole life (so at most one serves a
node) and exits after a while without clients.

Line protocol on a stream socket, one connection per client process::

    client: "A <id> <capacity>"   queue for a slot of the budget of that capacity
            "R <id>"              release a granted slot
            "C <id>"              cancel a queued request (or release, if already granted)
    daemon: "G <id>"              granted

Requests are granted strictly in arrival order per budget. A client that disconnects (or dies)
releases everything it held and leaves the queue, so a crashed env process never leaks a slot.
"""

from __future__ import annotations

import collections
import fcntl
import os
import selectors
import socket
import sys
import time

IDLE_EXIT_S = 30.0


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.granted: dict[str, int] = {}  # id -> capacity of its budget
        self.queued: set[str] = set()
        self.open = True


class Server:
    def __init__(self, directory: str) -> None:
        self.lock_fd = os.open(os.path.join(directory, "admission.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if another daemon serves
        path = os.path.join(directory, "admission.sock")
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.listener.bind(path)
        finally:
            os.umask(old)
        self.listener.listen(1024)
        self.path = path
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ)
        self.running: dict[int, int] = collections.defaultdict(int)  # capacity -> running cells
        self.queues: dict[int, collections.deque] = collections.defaultdict(collections.deque)
        self.conns: dict[socket.socket, _Conn] = {}

    def serve(self) -> None:
        idle_since = time.monotonic()
        while True:
            events = self.sel.select(timeout=5.0)
            for key, _ in events:
                if key.fileobj is self.listener:
                    self._accept()
                else:
                    self._read(self.conns[key.fileobj])  # type: ignore[index]
            if self.conns:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > IDLE_EXIT_S:
                try:  # still holding the lock: no new daemon binds meanwhile
                    os.unlink(self.path)
                except OSError:
                    pass
                return

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        sock.settimeout(2.0)  # a client that stops reading is dropped, it cannot stall the node
        self.conns[sock] = _Conn(sock)
        self.sel.register(sock, selectors.EVENT_READ)

    def _read(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(c)
            return
        c.buf += data
        *lines, c.buf = c.buf.split(b"\n")
        for line in lines:
            parts = line.decode("ascii", "replace").split()
            if parts:
                self._handle(c, parts)

    def _handle(self, c: _Conn, parts: list[str]) -> None:
        op, rid = parts[0], parts[1] if len(parts) > 1 else ""
        if op == "A" and len(parts) == 3 and parts[2].isdigit() and int(parts[2]) > 0:
            cap = int(parts[2])
            c.queued.add(rid)
            self.queues[cap].append((c, rid))
            self._pump(cap)
        elif op in ("R", "C"):
            c.queued.discard(rid)  # a queued entry is skipped when it reaches the head
            cap = c.granted.pop(rid, None)
            if cap is not None:
                self.running[cap] -= 1
                self._pump(cap)

    def _pump(self, cap: int) -> None:
        q = self.queues[cap]
        while self.running[cap] < cap and q:
            c, rid = q.popleft()
            if not c.open or rid not in c.queued:
                continue
            c.queued.discard(rid)
            c.granted[rid] = cap
            self.running[cap] += 1
            try:
                c.sock.sendall(f"G {rid}\n".encode())
            except OSError:
                self._drop(c)

    def _drop(self, c: _Conn) -> None:
        if not c.open:
            return
        c.open = False
        self.conns.pop(c.sock, None)
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()
        caps = set(c.granted.values())
        for cap in c.granted.values():
            self.running[cap] -= 1
        c.granted.clear()
        c.queued.clear()
        for cap in caps:
            self._pump(cap)


def main(directory: str) -> None:
    if os.fork():  # detach: the client waits for this first process only
        os._exit(0)
    os.setsid()
    try:
        server = Server(directory)
    except OSError:  # another daemon holds the lock (it serves), or the directory is unusable
        os._exit(0)
    server.serve()


if __name__ == "__main__":
    main(sys.argv[1])
