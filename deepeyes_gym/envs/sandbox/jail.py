"""Kernel-level isolation applied to each new worker (Linux; stdlib + ctypes, shipped as source).

The fork server calls these after ``fork()`` and before any untrusted byte runs:

* :func:`make_plan` (once, at fork-server start) lists what the worker may see: the system
  libraries, the interpreter and its site-packages, a few generated ``/etc`` files, a minimal
  ``/dev``, a fresh ``/proc``, and a private size-capped ``/tmp``. Nothing else of the host exists
  for the worker (the project checkout, home directories, ``/etc/shadow``, sockets in ``/run``).
* the fork server forks each worker's init into a new PID namespace; :func:`enter_namespaces` +
  :func:`build_root` then create new mount/network/IPC/UTS namespaces, build that read-only root
  on a tmpfs and ``pivot_root`` into it.
* :func:`drop_privileges` applies rlimits, switches to an unprivileged uid (so RLIMIT_NPROC counts)
  and sets ``no_new_privs``.
* :func:`join_session_keyring` gives the worker a new, empty kernel session keyring (the env
  process's keys are out of reach) and :func:`deny_key_syscalls` installs a seccomp filter that
  makes ``add_key``/``request_key``/``keyctl`` fail, so episodes cannot pass values through keys.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import resource
import stat
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
KEYCTL_JOIN_SESSION_KEYRING = 1

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "arm64": 41, "ppc64le": 203, "s390x": 217, "riscv64": 41}
# (audit arch, add_key, request_key, keyctl) for the seccomp filter
_KEY_SYSCALLS = {"x86_64": (0xC000003E, 248, 249, 250), "aarch64": (0xC00000B7, 217, 218, 219),
                 "arm64": (0xC00000B7, 217, 218, 219)}
# /proc files that show other users' keys or every process on the machine: an empty file instead
MASKED_PROC = ("keys", "key-users", "timer_list", "sched_debug")

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "mime.types")
DEV_NODES = ("null", "zero", "full", "random", "urandom")

_libc: Any = None


def libc() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        _libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        _libc.unshare.argtypes = [ctypes.c_int]
        _libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return _libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(libc().mount(_b(src), _b(dst), _b(fstype), flags, _b(data)), f"mount {src or fstype} on {dst}")


def unshare(flags: int) -> None:
    _check(libc().unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(libc().setns(fd, nstype), "setns")


def set_pdeathsig(sig: int) -> None:
    _check(libc().prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def set_no_new_privs() -> None:
    _check(libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def pivot_root(new_root: str) -> None:
    """Make ``new_root`` the root and detach the old one (runc's ``pivot_root(".", ".")`` idiom)."""
    nr = _SYS_PIVOT_ROOT.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"pivot_root syscall number unknown for {platform.machine()}")
    old = os.open("/", os.O_DIRECTORY | os.O_RDONLY)
    new = os.open(new_root, os.O_DIRECTORY | os.O_RDONLY)
    try:
        os.fchdir(new)
        _check(libc().syscall(nr, b".", b"."), "pivot_root")
        os.fchdir(old)
        _check(libc().umount2(b".", MNT_DETACH), "umount old root")
        os.chdir("/")
    finally:
        os.close(old)
        os.close(new)


# ---- the plan: what the worker can see --------------------------------------------------------


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def make_plan(python_paths: list[str], hide: list[str], extra_paths: list[str]) -> list[list[Any]]:
    """Return the mount operations that build a worker's root, in application order.

    ``python_paths`` are host paths the interpreter needs (prefixes, site-packages); those that
    contain a hidden path (e.g. the project checkout itself on ``sys.path``) are skipped, paths
    inside a hidden tree (a ``.venv`` in the checkout) are kept: only that subtree becomes visible.
    """
    ops: list[list[Any]] = []
    links: list[list[Any]] = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            links.append(["symlink", os.readlink(d), d])
        elif os.path.isdir(d):
            ops.append(["bind", d, d])
    ops.append(["tmpfs", "/tmp", 0, 0o1777, 0])  # size and inode cap from the config
    ops.append(["tmpfs", "/dev/shm", 16 << 20, 0o1777, 1024])
    for name in DEV_NODES:
        if os.path.exists(f"/dev/{name}"):
            ops.append(["dev", name])
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        links.append(["symlink", target, f"/dev/{name}"])
    covered = [op[2] for op in ops if op[0] == "bind"]
    wanted: list[str] = []
    for p in list(python_paths) + list(extra_paths):
        if not p or not os.path.isabs(p) or not os.path.exists(p):
            continue
        real = os.path.realpath(p)
        if any(_under(h, real) for h in hide):  # would expose a hidden tree (e.g. the checkout)
            continue
        if real == "/" or any(_under(real, c) for c in covered):
            continue
        wanted.append(real)
        if os.path.islink(os.path.normpath(p)):  # e.g. a prefix that is a symlink to elsewhere
            links.append(["symlink", real, os.path.normpath(p)])
    wanted = sorted(set(wanted), key=lambda s: (s.count("/"), s))
    kept: list[str] = []
    for p in wanted:
        if not any(_under(p, k) for k in kept):
            kept.append(p)
    ops.extend(["bind", p, p] for p in kept)
    for name in ETC_FILES:
        p = f"/etc/{name}"
        if os.path.exists(p):
            ops.append(["bind", os.path.realpath(p), p])
    ops.append(["file", "/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n", 0o644])
    ops.append(["file", "/etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644])
    ops.append(["file", "/etc/hosts", "127.0.0.1 localhost sandbox\n::1 localhost\n", 0o644])
    ops.append(["file", "/etc/hostname", "sandbox\n", 0o644])
    ops.append(["proc", "/proc"])
    return ops + links


def _mkdirs(root: str, path: str, mode: int = 0o755) -> str:
    target = root + path
    os.makedirs(target, mode=mode, exist_ok=True)
    return target


def _src_flags(src: str) -> int:
    """Mount flags that must be kept when remounting a bind (locked in user namespaces)."""
    st = os.statvfs(src)
    flags = 0
    for st_flag, ms_flag in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC)):
        if st.f_flag & st_flag:
            flags |= ms_flag
    return flags


def build_root(root: str, plan: list[list[Any]], tmp_size: int, uid: int | None = None, tmp_inodes: int = 16384) -> None:
    """Apply ``plan`` on a fresh tmpfs at ``root`` (in the current, private mount namespace).

    ``uid`` gets a ``sandbox`` entry in the generated ``/etc/passwd`` (``getpass``, ``pwd`` work).
    Every tmpfs has an inode cap: an empty file costs no bytes of ``size`` but ~1 KiB of kernel
    memory, so without one a cell could pin hundreds of MiB with empty files.
    """
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID, "size=4m,mode=0755,nr_inodes=4096")
    for op in plan:
        kind = op[0]
        if kind == "bind":
            src, dst = op[1], op[2]
            if os.path.isdir(src):
                target = _mkdirs(root, dst)
            else:
                _mkdirs(root, os.path.dirname(dst))
                target = root + dst
                open(target, "a").close()
            mount(src, target, None, MS_BIND | MS_REC)
            mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | _src_flags(src))
        elif kind == "tmpfs":
            dst, size, mode = op[1], op[2] or tmp_size, op[3]
            inodes = (op[4] if len(op) > 4 else 0) or tmp_inodes
            target = _mkdirs(root, dst)
            mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={int(size)},mode={mode:o},nr_inodes={int(inodes)}")
        elif kind == "dev":
            _mkdirs(root, "/dev")
            target = f"{root}/dev/{op[1]}"
            open(target, "a").close()
            mount(f"/dev/{op[1]}", target, None, MS_BIND)
            mount(None, target, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NOEXEC | _src_flags(f"/dev/{op[1]}"))
        elif kind == "file":
            _mkdirs(root, os.path.dirname(op[1]))
            content = op[2]
            if op[1] == "/etc/passwd" and uid is not None:
                content += f"sandbox:x:{uid}:{uid}:sandbox:/tmp:/bin/sh\n"
            fd = os.open(root + op[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, op[3])
            try:
                os.write(fd, content.encode())
            finally:
                os.close(fd)
        elif kind == "proc":
            target = _mkdirs(root, op[1], 0o555)
            mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            for name in MASKED_PROC:
                if os.path.exists(f"{target}/{name}"):
                    mount("/dev/null", f"{target}/{name}", None, MS_BIND)
        elif kind == "symlink":
            path = root + op[2]
            if not os.path.lexists(path):
                _mkdirs(root, os.path.dirname(op[2]))
                os.symlink(op[1], path)
    mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID)


def enter_namespaces() -> None:
    """New mount, network, IPC and UTS namespaces (the PID namespace is made by the fork server)."""
    unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)


def apply_limits(limits: dict[str, int]) -> None:
    """Set hard and soft rlimits (bytes / counts); 0 or missing means unchanged."""
    table = {
        "as": resource.RLIMIT_AS,
        "fsize": resource.RLIMIT_FSIZE,
        "nproc": resource.RLIMIT_NPROC,
        "nofile": resource.RLIMIT_NOFILE,
        "core": resource.RLIMIT_CORE,
    }
    for key, res in table.items():
        if key in limits and (limits[key] or key == "core"):
            v = int(limits[key])
            resource.setrlimit(res, (v, v))


def drop_privileges(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` for good (real, effective and saved ids; no supplementary groups)."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise OSError(errno.EPERM, "could not drop privileges")


def join_session_keyring() -> None:
    """Replace the inherited kernel session keyring by a new anonymous one (keyctl with NULL)."""
    lc = libc()
    lc.syscall.restype = ctypes.c_long
    nr = _KEY_SYSCALLS.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"keyctl syscall number unknown for {platform.machine()}")
    if lc.syscall(ctypes.c_long(nr[3]), ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING), None) < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"keyctl(KEYCTL_JOIN_SESSION_KEYRING): {os.strerror(e)}")


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def deny_key_syscalls() -> None:
    """Seccomp filter: ``add_key``, ``request_key`` and ``keyctl`` fail with EPERM; so does every
    syscall of a foreign ABI (i386 ``int 0x80``, x32), whose numbers the filter does not know.

    Needs ``no_new_privs`` (or root); inherited by every child, and cannot be removed.
    """
    nrs = _KEY_SYSCALLS.get(platform.machine())
    if nrs is None:
        raise OSError(errno.ENOSYS, f"no seccomp filter for {platform.machine()}")
    arch, add_key, request_key, keyctl = nrs
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, JMP|JEQ|K, JMP|JGE|K, RET|K
    allow, deny = 0x7FFF0000, 0x00050000 | errno.EPERM  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO
    prog = [
        (ld, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, arch),
        (ret, 0, 0, deny),
        (ld, 0, 0, 0),  # seccomp_data.nr
        (jge, 4, 0, 0x40000000),  # x32 ABI on x86_64
        (jeq, 3, 0, add_key),
        (jeq, 2, 0, request_key),
        (jeq, 1, 0, keyctl),
        (ret, 0, 0, allow),
        (ret, 0, 0, deny),
    ]
    filters = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), filters)
    _check(libc().prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0), "prctl(PR_SET_SECCOMP)")


def close_fds_except(keep: set[int]) -> None:
    """Close every inherited fd not in ``keep`` (the fork server's namespace handles, pipes, logs)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def paths_world_readable(paths: list[str]) -> bool:
    """True when every path (and each of its ancestors) can be traversed by any uid."""
    for p in paths:
        if not os.path.exists(p):
            continue
        cur = os.path.realpath(p)
        while True:
            try:
                mode = os.stat(cur).st_mode
            except OSError:
                return False
            if stat.S_ISDIR(mode) and not (mode & stat.S_IXOTH and mode & stat.S_IROTH):
                return False
            if cur == "/":
                break
            cur = os.path.dirname(cur)
    return True


def self_facts(hidden: list[str]) -> dict[str, Any]:
    """What the worker can observe about its own confinement (reported to the parent)."""
    facts: dict[str, Any] = {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid()}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("CapEff:", "NoNewPrivs:", "Seccomp:")):
                    k, v = line.split(":", 1)
                    facts[k] = v.strip()
    except OSError:
        facts["proc"] = False
    try:
        with open("/proc/net/dev") as f:
            facts["net_interfaces"] = sorted(ln.split(":")[0].strip() for ln in f.readlines()[2:])
    except OSError:
        facts["net_interfaces"] = None
    facts["hidden_visible"] = [h for h in hidden if os.path.exists(h)]
    facts["etc_shadow_readable"] = os.access("/etc/shadow", os.R_OK)
    try:
        fd = os.open("/.sandbox-write-probe", os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
        os.unlink("/.sandbox-write-probe")
        facts["root_writable"] = True
    except OSError:
        facts["root_writable"] = False
    try:
        links = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")]
    except OSError:
        links = []
    kinds = ("pid", "mnt", "net", "user", "uts", "ipc", "cgroup", "time")
    facts["ns_handles"] = sorted(ln for ln in links if ln.split(":")[0] in kinds)  # must stay empty
    facts["rlimits"] = {
        k: resource.getrlimit(v)[0]
        for k, v in (("as", resource.RLIMIT_AS), ("fsize", resource.RLIMIT_FSIZE), ("nproc", resource.RLIMIT_NPROC), ("nofile", resource.RLIMIT_NOFILE))
    }
    return facts
