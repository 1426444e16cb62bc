"""Parent-side handles: the fork server process and one worker's pipes (untrusted peer).

The fork server is started as ``python -I -B -c <shipped sources>`` (the worker side never reads
the project checkout) and driven over a ``SOCK_SEQPACKET`` socket; each worker gets a request
pipe, a reply pipe and an image channel (a unix socket that carries the sealed memfd of its input
images), passed with ``SCM_RIGHTS``.

Both handles belong to the process that made them: in a forked child they only close their copies
of the fds, they never signal or shut down what the parent still uses.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from . import jail
from . import protocol as P
from .cgroups import WorkerCgroup
from .config import SandboxConfig

__all__ = [
    "SandboxError",
    "SandboxStartError",
    "WorkerDied",
    "WorkerTimeout",
    "SandboxIsolationWarning",
    "ForkServer",
    "WorkerHandle",
    "host_probes",
]

log = logging.getLogger(__name__)

_SHIPPED = ("protocol", "runtime", "jail", "worker", "forkserver")
_BOOT = """import sys, types
_S = {sources}
_p = types.ModuleType("_dgsbx"); _p.__path__ = []; sys.modules["_dgsbx"] = _p
for _n in {order!r}:
    _m = types.ModuleType("_dgsbx." + _n); _m.__package__ = "_dgsbx"; _m.__file__ = "<sandbox/" + _n + ".py>"
    sys.modules[_m.__name__] = _m; setattr(_p, _n, _m)
    exec(compile(_S[_n], _m.__file__, "exec"), _m.__dict__)
sys.modules["_dgsbx.forkserver"].main(sys.argv[1])
"""


class SandboxError(RuntimeError):
    """The sandbox could not do what was asked (start a worker, reach the fork server...)."""


class SandboxStartError(SandboxError):
    """A fork server or worker failed to start (or this isolation level is unavailable)."""


class WorkerDied(SandboxError):
    """The worker process exited or closed its channel."""


class WorkerTimeout(SandboxError):
    """The worker did not answer before the deadline."""


class SandboxIsolationWarning(UserWarning):
    """Emitted once per process when the sandbox runs below the strongest isolation level."""


def _payload() -> str:
    here = Path(__file__).parent
    sources = {name: (here / f"{name}.py").read_text(encoding="utf-8") for name in _SHIPPED}
    return _BOOT.format(sources=repr(sources), order=_SHIPPED)


def _checkout_root() -> Path | None:
    """The project checkout this package is imported from (None for a site-packages install)."""
    root = Path(__file__).resolve().parents[3]
    if any((root / m).exists() for m in (".git", "pyproject.toml", "setup.cfg", "setup.py")):
        return root
    return None


def host_probes() -> list[str]:
    """Host files a namespace-level worker must not see (checked by every worker at start).

    Files, not directories: a venv inside the checkout (``<checkout>/.venv``) is bound into the
    worker's root, which makes an empty ``<checkout>`` directory exist there, legitimately.
    """
    probes = [str(Path(__file__).resolve()), "/etc/shadow"]
    root = _checkout_root()
    if root is not None:
        probes += [str(root / m) for m in (".git", "pyproject.toml", "setup.cfg", "setup.py") if (root / m).exists()]
    return probes


def _python_paths() -> list[str]:
    """Host paths the worker's interpreter needs: prefixes and site-packages, never source trees."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable))}
    for p in sys.path:
        if p and os.path.isdir(p) and os.path.basename(p.rstrip("/")) in ("site-packages", "dist-packages"):
            paths.add(p)
    return sorted(paths)


def _base_env() -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMEXPR_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }
    return env


# ---- fork server ------------------------------------------------------------------------------


class ForkServer:
    """Handle on a running fork server process.

    Spawns are pipelined: :meth:`request_spawn` sends a tagged request and returns at once; the
    reader thread passes each ``spawned`` reply to ``on_spawned`` (set by the pool).
    """

    def __init__(self, cfg: SandboxConfig, level: str, on_spawned: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.cfg = cfg
        self.level = level
        self.owner = os.getpid()
        self.on_spawned = on_spawned
        # host dir for the root mountpoint (unshare) or the per-worker dirs (rlimits); a bwrap-jailed
        # fork server uses its jail's own /tmp instead (it could not clean a host dir up)
        self.workdir = tempfile.mkdtemp(prefix="deepeyes-sandbox-") if level != "bwrap" else None
        self._log = tempfile.TemporaryFile(prefix="deepeyes-sandbox-log-")  # unlinked: never left behind
        try:
            self._start(cfg, level)
        except BaseException as exc:
            self._cleanup_files()
            if isinstance(exc, SandboxStartError):
                raise
            raise SandboxStartError(f"fork server ({level}) could not be started: {type(exc).__name__}: {exc}") from exc

    def _cleanup_files(self) -> None:
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._log.close()

    def _start(self, cfg: SandboxConfig, level: str) -> None:
        if self.workdir:
            os.chmod(self.workdir, 0o711)  # rlimits level: worker uids must reach their own subdir
        self.drop_uid = level != "rlimits" or (os.geteuid() == 0 and jail.paths_world_readable(_python_paths()))
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        zcfg = {
            "level": level,
            "ctrl_fd": child.fileno(),
            "python_paths": _python_paths(),
            "extra_paths": list(cfg.extra_paths),
            "hide": host_probes(),
            "root_dir": os.path.join(self.workdir, "root") if self.workdir else "/tmp/.sandbox-root",
            "work_root": self.workdir,
            "tmp_size": cfg.tmp_size_mb << 20,
            "tmp_inodes": cfg.tmp_inodes,
            "preload": list(cfg.preload),
            "limits": {
                "as": cfg.memory_limit_mb << 20,
                "fsize": cfg.max_file_size_mb << 20,
                "nproc": cfg.max_processes if self.drop_uid else 0,
                "nofile": cfg.max_open_files,
                "core": 0,
            },
            "runtime": {
                "max_output_chars": cfg.max_output_chars,
                "max_images": cfg.max_images,
                "max_image_pixels": cfg.max_image_pixels,
                "show_open_figures": cfg.show_open_figures,
                "sched_batch": cfg.sched_batch,
            },
            "worker_env": {**_base_env(), **dict(cfg.env)},
        }
        env = _base_env()
        env["HOME"] = os.environ.get("HOME", "/tmp")  # matplotlib's font cache (trusted side)
        cmd = [sys.executable, "-I", "-B", "-c", _payload(), json.dumps(zcfg)]
        if level == "bwrap":
            from .bwrap import bwrap_command

            cmd = bwrap_command(zcfg) + cmd
        try:
            self.proc = subprocess.Popen(
                cmd, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                env=env, cwd=self.workdir or "/", start_new_session=True,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self.sock = parent
        self.exit_status: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self.alive = True
        self.info = self._first_message(cfg.start_timeout)
        self._reader = threading.Thread(target=self._read_loop, name="sandbox-forkserver", daemon=True)
        self._reader.start()

    def _first_message(self, timeout: float) -> dict[str, Any]:
        poller = select.poll()  # not select(): with hundreds of workers our fds pass FD_SETSIZE
        poller.register(self.sock, select.POLLIN)
        msg = self.sock.recv(65536) if poller.poll(int(timeout * 1000)) else b""
        if not msg:
            self.close()
            raise SandboxStartError(f"fork server ({self.level}) did not start: {self.log_tail()}")
        info = json.loads(msg)
        if info.get("threads", 1) > 1:
            log.warning("sandbox fork server has %s threads after preloading; forking may be unsafe", info["threads"])
        return info

    def log_tail(self, n: int = 2000) -> str:
        try:
            size = os.fstat(self._log.fileno()).st_size
            data = os.pread(self._log.fileno(), n, max(0, size - n)).decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            data = ""
        return data or f"exit status {self.proc.poll()}"

    def _read_loop(self) -> None:
        while True:
            try:
                msg = self.sock.recv(65536)
            except OSError:
                msg = b""
            if not msg:
                break
            try:
                m = json.loads(msg)
            except ValueError:
                continue
            if m.get("op") == "spawned" and self.on_spawned is not None:
                self.on_spawned(m)
            with self._cond:
                if m.get("op") == "exited":
                    self.exit_status[int(m["pid"])] = int(m["status"])
                    while len(self.exit_status) > 4096:
                        self.exit_status.popitem(last=False)
                self._cond.notify_all()
        with self._cond:
            self.alive = False
            self._cond.notify_all()
        if self.on_spawned is not None:
            self.on_spawned({"op": "gone"})

    def next_request_id(self) -> int:
        return next(self._ids)

    def request_spawn(self, rid: int, uid: int, fds: Sequence[int], n_cgroups: int) -> None:
        """Ask for one worker with the given fds (pipe ends, image channel, cgroup.procs); its
        ``spawned`` reply will carry ``rid``. May block while the fork server's queue is full:
        call it holding no lock that takers of workers need."""
        req = {"op": "spawn", "id": rid, "uid": uid, "drop_uid": self.drop_uid, "cgroups": n_cgroups}
        with self._send_lock:
            if not self.alive:
                raise SandboxStartError(f"fork server is gone: {self.log_tail()}")
            try:
                socket.send_fds(self.sock, [json.dumps(req).encode()], list(fds))
            except OSError as exc:
                raise SandboxStartError(f"fork server unreachable: {exc}") from None

    def wait_exit_status(self, pid: int, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while pid not in self.exit_status and self.alive:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self.exit_status.get(pid)

    def close(self) -> None:
        if os.getpid() != self.owner:
            self.forget()
            return
        with self._cond:
            self.alive = False
            self._cond.notify_all()
        try:  # EOF for the fork server (it kills its workers and exits) and for our reader thread
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._cleanup_files()

    def forget(self) -> None:
        """In a forked child: close our copies of the fds; the fork server stays the parent's."""
        self.alive = False
        self.on_spawned = None
        for f in (self.sock, self._log):
            try:
                f.close()  # close(2) only: a shutdown() would cut the parent's channel too
            except (OSError, ValueError):
                pass
        self.proc.returncode = 0  # not our child: never wait for it


# ---- worker handle ----------------------------------------------------------------------------


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class WorkerHandle:
    """Parent's end of one worker: non-blocking pipes with deadlines, and a pidfd to kill it.

    Made before the worker exists (spawns are pipelined); :meth:`set_pid` completes it when the
    fork server's reply arrives. ``terminate`` may be called from any thread at any time (abort);
    only the owner closes the fds (:meth:`kill`).
    """

    def __init__(self, server: ForkServer, req_w: int, resp_r: int, chan: socket.socket, uid: int,
                 cgroup: WorkerCgroup | None = None) -> None:
        self.server = server
        self.pid: int | None = None
        self.uid = uid
        self.req_w = req_w
        self.resp_r = resp_r
        self.chan = chan  # carries the sealed memfd of the input images (written only by us)
        self.cgroup = cgroup
        self.owner = os.getpid()
        self.pending: list[int] = []  # frame kinds the worker still owes us (pipelined LOADED)
        self.images_due = False  # the session's images go to the worker with its first cell
        self.pidfd: int | None = None
        self.facts: dict[str, Any] = {}
        self.greeting: tuple[int, dict[str, Any]] | None = None  # READY/FAILED read before the pid was known
        self.spawn_id: int | None = None
        self.started = time.monotonic()
        self.dead = False
        self._signalled = False
        self._lock = threading.Lock()  # terminate (any thread) vs kill (owner): never signal a closed pidfd
        os.set_blocking(req_w, False)
        os.set_blocking(resp_r, False)
        self._rpoll = select.poll()
        self._rpoll.register(resp_r, select.POLLIN)
        self._wpoll = select.poll()
        self._wpoll.register(req_w, select.POLLOUT)

    def set_pid(self, pid: int) -> None:
        with self._lock:
            self.pid = pid
            if self.dead:
                return
            self.pidfd = _pidfd_open(pid)
            if self.pidfd is not None:
                self._rpoll.register(self.pidfd, select.POLLIN)
                self._wpoll.register(self.pidfd, select.POLLIN)
            if self._signalled:  # terminated before we knew whom to signal
                self._signalled = False
                self._signal()

    # -- liveness -----------------------------------------------------------------------------

    def alive(self) -> bool:
        if self.dead or self._signalled:
            return False
        # the pidfd is readable once the worker exited; an idle worker never writes unprompted, so
        # a readable reply pipe means EOF (or garbage). poll, not select: fds may pass FD_SETSIZE
        return not self._rpoll.poll(0)

    def terminate(self) -> None:
        """SIGKILL the worker's monitor (its whole PID namespace goes with it). Any thread may call
        this; the fds stay open for the owner, who closes them with :meth:`kill`. A no-op in a
        forked child: the worker is the parent's."""
        with self._lock:
            if self._signalled or self.dead:
                return
            self._signalled = True
            self._signal()

    def _signal(self) -> None:
        if os.getpid() != self.owner or self.pid is None:
            return
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)
        except (OSError, AttributeError):
            pass

    def kill(self) -> None:
        """Terminate and release the fds (only the owner of the handle may call this)."""
        self.terminate()
        self.close_fds()

    def close_fds(self) -> None:
        with self._lock:
            if self.dead:
                return
            self.dead = True
            fds = [self.req_w, self.resp_r, self.pidfd]
        for fd in fds:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        try:
            self.chan.close()
        except OSError:
            pass

    def exit_status(self, timeout: float = 0.5) -> int | None:
        return None if self.pid is None else self.server.wait_exit_status(self.pid, timeout)

    # -- I/O ------------------------------------------------------------------------------------

    def _wait(self, poller: Any, fd: int, deadline: float | None) -> None:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        events = poller.poll(None if left is None else int(left * 1000) + 1)
        if not events:
            raise WorkerTimeout("worker did not answer in time")
        for efd, ev in events:
            if efd == fd:
                return  # ready (or hung up: the next syscall tells)
        raise WorkerDied("worker process exited")

    def send_fd(self, fd: int) -> None:
        """Pass ``fd`` (a sealed memfd) to the worker over its image channel."""
        try:
            socket.send_fds(self.chan, [b"I"], [fd])
        except OSError as exc:
            raise WorkerDied(f"worker image channel closed ({exc.__class__.__name__})") from None

    def send(self, kind: int, meta: dict[str, Any], blobs: Sequence[Any] = (), deadline: float | None = None) -> None:
        if self.dead:
            raise WorkerDied("worker is gone")
        meta_b = json.dumps(meta, separators=(",", ":")).encode()
        total = sum(len(b) for b in blobs)
        bufs: list[Any] = [P.encode_header(kind, meta_b, total), meta_b]
        bufs.extend(memoryview(b).cast("B") for b in blobs if len(b))
        while bufs:
            try:
                n = os.writev(self.req_w, bufs)
            except BlockingIOError:
                self._wait(self._wpoll, self.req_w, deadline)
                continue
            except (BrokenPipeError, ConnectionResetError, OSError) as exc:
                raise WorkerDied(f"worker channel closed ({exc.__class__.__name__})") from None
            while bufs and n >= len(bufs[0]):
                n -= len(bufs[0])
                bufs.pop(0)
            if n:
                bufs[0] = memoryview(bufs[0])[n:]

    def _read_into(self, buf: Any, deadline: float | None) -> None:
        view = memoryview(buf)
        got = 0
        while got < len(view):
            try:
                k = os.readv(self.resp_r, [view[got:]])
            except BlockingIOError:
                self._wait(self._rpoll, self.resp_r, deadline)
                continue
            except OSError as exc:
                raise WorkerDied(f"worker channel error ({exc})") from None
            if k == 0:
                raise WorkerDied("worker closed its channel")
            got += k

    def recv(self, allowed: Sequence[int], max_blob: int, deadline: float | None = None) -> tuple[int, dict[str, Any], bytearray]:
        """Read one frame; every length is bounded before it is read (untrusted peer)."""
        if self.dead:
            raise WorkerDied("worker is gone")
        head = bytearray(P.HEADER_SIZE)
        self._read_into(head, deadline)
        kind, meta_len, blob_len = P.check_header(bytes(head), allowed, max_blob)
        meta_raw = bytearray(meta_len)
        self._read_into(meta_raw, deadline)
        meta = P.decode_meta(bytes(meta_raw))
        blob = bytearray(blob_len)
        self._read_into(blob, deadline)
        return kind, meta, blob
