"""The fork server: preloads numpy/PIL/matplotlib once, then forks one isolated worker per request.

Started by the parent as ``python -I -B -c <shipped sources> <json config>`` and driven over a
``SOCK_SEQPACKET`` control socket: each ``spawn`` request carries the worker's request and reply
pipe ends, its image channel and (where the parent made one) its cgroups' ``cgroup.procs``
(``SCM_RIGHTS``) and gets the worker's pid back, tagged with the request's id so the parent can
keep many spawns in flight; ``exited`` events report worker exit statuses.
The fork server never runs untrusted code. Process tree per worker (namespace levels)::

    fork server ─ init (pid 1 of a new PID namespace; its host pid is what the parent kills;
                        builds the root, reaps)
                    └─ worker (unprivileged uid, runs the cells)

The death of init makes the kernel kill every process left in its PID namespace: nothing the
cells start survives the episode. If the parent dies, the control socket closes and the fork
server exits; every init has ``PR_SET_PDEATHSIG`` set, so the same chain takes every worker down.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
from typing import Any, NoReturn

from . import jail
from . import protocol as P
from . import worker


def _code(status: int) -> int:
    """Exit code to propagate up the chain: the child's code, or 128 + the signal that killed it."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1


def _preload(names: list[str]) -> tuple[list[str], dict[str, str]]:
    ok, failed = [], {}
    for name in names:
        try:
            importlib.import_module(name)
            ok.append(name)
        except Exception as exc:  # optional extras may be missing
            failed[name] = f"{type(exc).__name__}: {exc}"
    if "matplotlib.pyplot" in sys.modules:
        try:  # what a typical cell does, once: fonts, glyph caches, Agg buffers, resampling code
            import matplotlib.pyplot as plt
            import numpy as np
            from PIL import Image

            img = Image.fromarray(np.zeros((1000, 1000, 3), dtype=np.uint8)).crop((0, 0, 400, 400)).resize((800, 800))
            fig = plt.figure()
            plt.imshow(img)
            plt.plot([0, 1], [0, 1])
            plt.title("warm-up 0123456789")
            plt.xlabel("x")
            plt.legend(["a"])
            fig.canvas.draw()
            plt.close("all")
        except Exception as exc:
            failed["matplotlib warm-up"] = f"{type(exc).__name__}: {exc}"
    if "PIL.Image" in sys.modules:
        sys.modules["PIL.Image"].init()
    # Move everything loaded so far out of the collector's reach: a forked worker's GC passes would
    # otherwise touch (and copy-on-write) every page of the inherited heap.
    gc.collect()
    gc.freeze()
    return ok, failed


class ForkServer:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.level: str = cfg["level"]
        self.ctrl = socket.socket(fileno=int(cfg["ctrl_fd"]))
        self.pid = os.getpid()
        self.children: dict[int, dict[str, Any]] = {}
        self.plan = None
        # children check this pipe (EOF = we died) right after arming PR_SET_PDEATHSIG
        self.alive_r, self._alive_w = os.pipe()
        self.pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        # the env process's kernel keys must not even reach the fork server (each worker also
        # joins a keyring of its own)
        try:
            jail.join_session_keyring()
            self.keyring = "fresh"
        except OSError as exc:
            self.keyring = f"unchanged ({exc})"
        if self.level != "rlimits":
            self.plan = jail.make_plan(cfg["python_paths"], cfg["hide"], cfg["extra_paths"])
            os.makedirs(cfg["root_dir"], exist_ok=True)

    # ---- control channel ------------------------------------------------------------------------

    def send(self, msg: dict[str, Any]) -> None:
        try:
            self.ctrl.send(json.dumps(msg).encode())
        except OSError:
            pass

    def serve(self) -> None:
        ok, failed = _preload(self.cfg["preload"])
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a Python handler so the wakeup fd fires
        self.wake = (wake_r, wake_w)
        threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
        self.send({"op": "ready", "pid": self.pid, "preloaded": ok, "failed": failed, "threads": threads,
                   "python": sys.version.split()[0], "vm_size": _vm_size(), "keyring": self.keyring})
        parent_gone = False
        poller = select.poll()  # not select(): the control fd keeps the parent's number (> 1024 with many workers)
        poller.register(self.ctrl, select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        ctrl_fd = self.ctrl.fileno()
        try:
            while True:
                r = {fd for fd, _ in poller.poll()}
                if wake_r in r:
                    try:
                        while os.read(wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                    self.reap()
                if ctrl_fd in r:
                    try:
                        msg, fds, _, _ = socket.recv_fds(self.ctrl, 65536, 8)
                    except OSError:  # ECONNRESET: the parent died with our replies unread
                        msg, fds = b"", []
                    if not msg:  # the parent closed us, or died: clean up its work dir too
                        parent_gone = True
                        break
                    req = json.loads(msg)
                    if req.get("op") == "spawn":
                        self.spawn(req, fds)
                    else:
                        for fd in fds:
                            os.close(fd)
                        if req.get("op") == "exit":
                            break
        finally:
            self.shutdown()
            if parent_gone and self.cfg.get("work_root"):
                shutil.rmtree(self.cfg["work_root"], ignore_errors=True)

    # ---- workers ----------------------------------------------------------------------------------

    def spawn(self, req: dict[str, Any], fds: list[int]) -> None:
        if len(fds) != 3 + int(req.get("cgroups", 0)):
            for fd in fds:
                os.close(fd)
            self.send({"op": "spawned", "id": req.get("id"), "error": "unexpected number of fds"})
            return
        uid = req.get("uid")
        tmpdir = None
        try:
            if self.level == "rlimits":
                tmpdir = tempfile.mkdtemp(prefix="w", dir=self.cfg["work_root"])
                if req.get("drop_uid"):
                    os.chown(tmpdir, uid, uid)
                os.chmod(tmpdir, 0o700)
                pid = os.fork()
            else:
                pid = self._fork_into_new_pid_ns()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            if tmpdir:
                shutil.rmtree(tmpdir, ignore_errors=True)
            self.send({"op": "spawned", "id": req.get("id"), "error": f"fork failed: {exc}"})
            return
        if pid == 0:
            try:
                self._child(req, fds, tmpdir)
            except BaseException as exc:
                try:
                    P.send_frame(fds[1], P.FAILED, {"error": f"sandbox setup failed: {type(exc).__name__}: {exc}"})
                except BaseException:
                    pass
            os._exit(70)
        for fd in fds:
            os.close(fd)
        self.children[pid] = {"tmpdir": tmpdir, "uid": uid if req.get("drop_uid") else None}
        self.send({"op": "spawned", "id": req.get("id"), "pid": pid})

    def _fork_into_new_pid_ns(self) -> int:
        """Fork a child that is PID 1 of a new PID namespace, then point our own future children
        back at our namespace (so the next spawn can do the same: no intermediate process)."""
        jail.unshare(jail.CLONE_NEWPID)
        try:
            pid = os.fork()
        except BaseException:
            jail.setns(self.pidns, jail.CLONE_NEWPID)
            raise
        if pid:
            jail.setns(self.pidns, jail.CLONE_NEWPID)
        return pid

    def _worker_env(self, home: str) -> None:
        os.environ.clear()
        os.environ.update(self.cfg["worker_env"])
        os.environ.update({"HOME": home, "TMPDIR": home, "MPLCONFIGDIR": os.path.join(home, ".matplotlib"),
                           "USER": "sandbox", "LOGNAME": "sandbox"})

    def _child(self, req: dict[str, Any], fds: list[int], tmpdir: str | None) -> NoReturn:
        """In the fresh child: the worker itself (rlimits level) or the namespace init."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in self.wake:
            os.close(fd)
        self.ctrl.close()
        jail.set_pdeathsig(signal.SIGKILL)
        # the fork server died before the signal was armed? (getppid() is 0 in a new PID namespace)
        os.close(self._alive_w)
        alive = select.poll()
        alive.register(self.alive_r, select.POLLIN)
        if alive.poll(0):
            os._exit(1)
        os.close(self.alive_r)
        os.close(self.pidns)  # no handle on the fork server's PID namespace may reach a worker
        for fd in fds[3:]:  # join the episode's cgroups first: everything below is accounted
            os.write(fd, b"0")
            os.close(fd)
        del fds[3:]
        jail.close_fds_except({0, 1, 2, *fds})
        os.setsid()
        uid = req.get("uid")
        limits = self.cfg["limits"]
        opts = dict(self.cfg["runtime"])
        if self.level == "rlimits":
            assert tmpdir is not None
            jail.apply_limits(limits)
            if req.get("drop_uid"):
                jail.drop_privileges(uid, uid)
                opts["kill_strays"] = True
            jail.set_no_new_privs()
            key_facts = _confine_keys()
            os.chdir(tmpdir)
            self._worker_env(tmpdir)
            facts = jail.self_facts(self.cfg["hide"])
            facts.update(key_facts)
            facts.update(level=self.level, tmp=tmpdir)
            worker.main(fds[0], fds[1], fds[2], facts, opts)
            os._exit(0)
        self._init(uid, fds, limits, opts)

    def _init(self, uid: int, fds: list[int], limits: dict[str, int], opts: dict[str, Any]) -> NoReturn:
        """PID 1 of the worker's namespaces: build the root, start the worker, reap until it exits.

        When it exits (or is killed by the parent), the kernel kills whatever is left in its PID
        namespace.
        """
        jail.enter_namespaces()
        jail.build_root(self.cfg["root_dir"], self.plan or [], int(self.cfg["tmp_size"]), uid,
                        int(self.cfg.get("tmp_inodes", 16384)))
        jail.pivot_root(self.cfg["root_dir"])
        socket.sethostname("sandbox")
        pid = os.fork()
        if pid == 0:
            jail.apply_limits(limits)
            jail.drop_privileges(uid, uid)
            jail.set_no_new_privs()
            key_facts = _confine_keys()
            os.chdir("/tmp")
            self._worker_env("/tmp")
            opts["kill_strays"] = True
            facts = jail.self_facts(self.cfg["hide"])
            facts.update(key_facts)
            facts.update(level=self.level, tmp="/tmp")
            worker.main(fds[0], fds[1], fds[2], facts, opts)
            os._exit(0)
        for fd in fds:
            os.close(fd)
        while True:  # reap everything (orphans get re-parented to us) until the worker is gone
            try:
                got, status = os.waitpid(-1, 0)
            except InterruptedError:
                continue
            except ChildProcessError:
                os._exit(1)
            if got == pid:
                os._exit(_code(status))

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            info = self.children.pop(pid, None)
            if info is not None:
                self._cleanup(pid, info)
            self.send({"op": "exited", "pid": pid, "status": _code(status)})

    def _cleanup(self, pid: int, info: dict[str, Any]) -> None:
        """Rlimits level: stop what the worker left behind, then wipe its temp dir."""
        if self.level != "rlimits":
            return  # the PID namespace took everything down with it
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        uid = info.get("uid")
        if uid:  # a dedicated uid: kill(-1) as that uid reaches processes that left the group
            sweeper = os.fork()
            if sweeper == 0:
                try:
                    os.setresuid(uid, uid, uid)
                    os.kill(-1, signal.SIGKILL)
                except BaseException:
                    pass
                os._exit(0)
            try:
                os.waitpid(sweeper, 0)
            except ChildProcessError:
                pass
        if info.get("tmpdir"):
            shutil.rmtree(info["tmpdir"], ignore_errors=True)

    def shutdown(self) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for pid, info in list(self.children.items()):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self._cleanup(pid, info)
        self.children.clear()


def _confine_keys() -> dict[str, str]:
    """A fresh session keyring, then the seccomp filter against the key syscalls (in this order:
    the filter forbids the call that joins). Reported as facts; failures are reported, not fatal,
    where the kernel lacks the feature. Also makes the worker the first choice of the OOM killer
    (in its memory cgroup and on the machine): untrusted code goes before the env or its init."""
    facts = {}
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    try:
        jail.join_session_keyring()
        facts["session_keyring"] = "fresh"
    except OSError as exc:
        facts["session_keyring"] = f"inherited ({exc})"
    try:
        jail.deny_key_syscalls()
        facts["seccomp"] = "add_key, request_key, keyctl denied"
    except OSError as exc:
        facts["seccomp"] = f"not installed ({exc})"
    return facts


def _vm_size() -> int:
    """Our address space in bytes (every worker starts with it: a floor for RLIMIT_AS)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) << 10
    except (OSError, ValueError):
        pass
    return 0


def main(cfg_json: str) -> None:
    ForkServer(json.loads(cfg_json)).serve()
