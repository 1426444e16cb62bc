"""Main loop of one sandbox worker (shipped as source; runs after isolation is in place)."""

from __future__ import annotations

import fcntl
import mmap
import os
import random
import signal
import socket
import sys
import time
from typing import Any

from . import protocol as P
from .runtime import Runtime


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _kill_strays() -> None:
    """Stop processes the cell started (only ever called as a dedicated unprivileged uid).

    ``kill(-1)`` reaches every process this uid may signal except ourselves and init; one pass can
    miss a child forked while it runs (a fork bomb), so repeat until nothing is left (bounded).
    """
    for _ in range(200):
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            break  # nothing left to signal
        except OSError:
            break
        _reap()
        time.sleep(0.001)
    _reap()


def _reseed() -> None:
    """Forked from one template: give every worker its own random state."""
    random.seed()
    np = sys.modules.get("numpy")
    if np is not None:
        try:
            np.random.seed(int.from_bytes(os.urandom(4), "little"))
        except Exception:
            pass


def _load(rt: Runtime, meta: dict[str, Any], blob: Any, chan: socket.socket | None) -> list[str]:
    """Bind input images; their pixels come in a sealed memfd passed over the image channel."""
    size = int(meta.get("shm", 0))
    if not size:
        return rt.load_images(meta.get("images", []), blob)
    if chan is None:
        raise ValueError("images were sent through shared memory but this worker has no image channel")
    _, fds, _, _ = socket.recv_fds(chan, 16, 1)
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise ValueError("the image channel carried no memory file")
    try:
        mm = mmap.mmap(fds[0], size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    finally:
        os.close(fds[0])
    # the images map the (sealed) memory file: the mapping lives as long as they do
    return rt.load_images(meta.get("images", []), mm, shared=True)


def main(req_fd: int, resp_fd: int, chan_fd: int | None, facts: dict[str, Any], opts: dict[str, Any]) -> None:
    """Serve EXEC/LOAD/PING frames until the parent closes the request pipe.

    ``chan_fd`` is a unix socket on which the parent passes the (sealed, shared) memory file that
    holds the input images: one fd hand-off instead of many pipe round trips.
    """
    # protocol fds out of the way of code that plays with low fds; not inherited across exec
    req = fcntl.fcntl(req_fd, fcntl.F_DUPFD_CLOEXEC, 200)
    resp = fcntl.fcntl(resp_fd, fcntl.F_DUPFD_CLOEXEC, 200)
    os.close(req_fd)
    os.close(resp_fd)
    chan = None
    if chan_fd is not None:
        chan = socket.socket(fileno=fcntl.fcntl(chan_fd, fcntl.F_DUPFD_CLOEXEC, 200))
        os.close(chan_fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    rt = Runtime(
        max_output_chars=int(opts.get("max_output_chars", 10_000)),
        max_images=int(opts.get("max_images", 10)),
        max_image_pixels=int(opts.get("max_image_pixels", 4096 * 4096)),
        show_open_figures=bool(opts.get("show_open_figures", True)),
        fd_capture=True,
    )
    rt.install_matplotlib_hooks()
    _reseed()
    if opts.get("sched_batch", True):
        try:  # CPU-bound background work: no wake-up preemption of the env/trainer, fewer switches
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        except (AttributeError, OSError):
            pass
    kill_strays = bool(opts.get("kill_strays"))
    me = os.getpid()
    P.send_frame(resp, P.READY, facts)
    while True:
        try:
            kind, meta, blob = P.recv_frame(req)
        except (EOFError, OSError, P.ProtocolError):
            os._exit(0)
        try:
            if kind == P.EXEC:
                code = bytes(blob).decode("utf-8", "replace")
                rmeta, blobs = rt.run(code, meta.get("timeout"))
                if os.getpid() != me:  # a process forked by the cell: it must not answer
                    os._exit(0)
                if kill_strays:
                    _kill_strays()
                P.send_frame(resp, P.RESULT, rmeta, blobs)
            elif kind == P.LOAD:
                names = _load(rt, meta, blob, chan)
                P.send_frame(resp, P.LOADED, {"names": names})
            elif kind == P.PING:
                P.send_frame(resp, P.PONG, {})
            else:
                P.send_frame(resp, P.FAILED, {"error": f"unexpected frame {kind}"})
        except (BrokenPipeError, P.ProtocolError):
            os._exit(0)
        except BaseException as exc:  # e.g. MemoryError while loading images
            if os.getpid() != me:
                os._exit(0)
            try:
                P.send_frame(resp, P.FAILED, {"error": f"{type(exc).__name__}: {exc}"})
            except OSError:
                os._exit(1)
