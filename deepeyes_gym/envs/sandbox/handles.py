"""Parent-side handles: the fork server process and one worker's pipes (untrusted peer).

The fork server is started as ``python -I -B -c <shipped sources>`` (the worker side never reads
the project checkout) and driven over a ``SOCK_SEQPACKET`` socket; each worker gets a request
pipe, a reply pipe and a shared memory file, passed with ``SCM_RIGHTS``.
"""

from __future__ import annotations

import collections
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
from typing import Any, Sequence

from . import jail
from . import protocol as P
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
    """Handle on a running fork server process."""

    def __init__(self, cfg: SandboxConfig, level: str) -> None:
        self.cfg = cfg
        self.level = level
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
        self._replies: collections.deque[dict[str, Any]] = collections.deque()
        self._spawn_lock = threading.Lock()
        self.alive = True
        self.info = self._first_message(cfg.start_timeout)
        self._reader = threading.Thread(target=self._read_loop, name="sandbox-forkserver", daemon=True)
        self._reader.start()

    def _first_message(self, timeout: float) -> dict[str, Any]:
        r, _, _ = select.select([self.sock], [], [], timeout)
        msg = self.sock.recv(65536) if r else b""
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
            with self._cond:
                if m.get("op") == "exited":
                    self.exit_status[int(m["pid"])] = int(m["status"])
                    while len(self.exit_status) > 4096:
                        self.exit_status.popitem(last=False)
                elif m.get("op") == "spawned":
                    self._replies.append(m)
                self._cond.notify_all()
        with self._cond:
            self.alive = False
            self._cond.notify_all()

    def spawn(self, uid: int, fds: Sequence[int], timeout: float) -> int:
        """Ask for one worker with the given pipe ends; return its (monitor) pid."""
        with self._spawn_lock:
            try:
                socket.send_fds(self.sock, [json.dumps({"op": "spawn", "uid": uid, "drop_uid": self.drop_uid}).encode()], list(fds))
            except OSError as exc:
                raise SandboxStartError(f"fork server unreachable: {exc}") from None
            deadline = time.monotonic() + timeout
            with self._cond:
                while not self._replies:
                    left = deadline - time.monotonic()
                    if not self.alive or left <= 0:
                        raise SandboxStartError(f"fork server did not answer: {self.log_tail()}")
                    self._cond.wait(left)
                reply = self._replies.popleft()
        if "error" in reply:
            raise SandboxStartError(str(reply["error"]))
        return int(reply["pid"])

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


# ---- worker handle ----------------------------------------------------------------------------


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class WorkerHandle:
    """Parent's end of one worker: non-blocking pipes with deadlines, and a pidfd to kill it."""

    def __init__(self, server: ForkServer, pid: int, req_w: int, resp_r: int, shm: int, uid: int) -> None:
        self.server = server
        self.pid = pid
        self.uid = uid
        self.req_w = req_w
        self.resp_r = resp_r
        self.shm = shm  # memory file shared with the worker (input images), written only by us
        self.pending: list[int] = []  # frame kinds the worker still owes us (pipelined LOADED)
        self.pidfd = _pidfd_open(pid)
        self.facts: dict[str, Any] = {}
        self.dead = False
        self._signalled = False
        os.set_blocking(req_w, False)
        os.set_blocking(resp_r, False)
        self._rpoll = select.poll()
        self._rpoll.register(resp_r, select.POLLIN)
        self._wpoll = select.poll()
        self._wpoll.register(req_w, select.POLLOUT)
        if self.pidfd is not None:
            self._rpoll.register(self.pidfd, select.POLLIN)
            self._wpoll.register(self.pidfd, select.POLLIN)

    # -- liveness -----------------------------------------------------------------------------

    def alive(self) -> bool:
        if self.dead:
            return False
        if self.pidfd is not None and select.select([self.pidfd], [], [], 0)[0]:
            return False
        # an idle worker never writes unprompted: readable means EOF (or garbage)
        return not select.select([self.resp_r], [], [], 0)[0]

    def terminate(self) -> None:
        """SIGKILL the worker's monitor (its whole PID namespace goes with it). Any thread may call
        this; the fds stay open for the owner, who closes them with :meth:`kill`."""
        if self._signalled:
            return
        self._signalled = True
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)
        except (OSError, AttributeError):
            pass

    def kill(self) -> None:
        """Terminate and release the fds (only the owner of the handle may call this)."""
        if self.dead:
            return
        self.terminate()
        self.dead = True
        for fd in (self.req_w, self.resp_r, self.shm, self.pidfd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def exit_status(self, timeout: float = 0.5) -> int | None:
        return self.server.wait_exit_status(self.pid, timeout)

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
