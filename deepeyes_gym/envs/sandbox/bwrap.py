"""The ``bwrap`` isolation level: the fork server itself runs inside a bubblewrap jail.

The jail shows the fork server only what a worker's root is built from (system libraries, the
interpreter and its site-packages, a few ``/etc`` files) with no network, so even the trusted side
never touches the rest of the host; inside it every worker still gets its own namespaces, root,
uid and rlimits exactly as at the ``unshare`` level (defence in depth). PID namespaces stay
per-worker so the pids the fork server reports are valid for the parent.
"""

from __future__ import annotations

import shutil
from typing import Any

from .jail import make_plan

__all__ = ["bwrap_command"]


def bwrap_command(zcfg: dict[str, Any]) -> list[str]:
    """The ``bwrap ...`` prefix that jails the fork server described by ``zcfg``."""
    exe = shutil.which("bwrap")
    if exe is None:
        raise FileNotFoundError("bubblewrap (bwrap) is not installed")
    args = [exe, "--die-with-parent", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--dev", "/dev", "--proc", "/proc"]
    for op in make_plan(zcfg["python_paths"], zcfg["hide"], zcfg["extra_paths"]):
        kind = op[0]
        if kind == "bind":
            args += ["--ro-bind", op[1], op[2]]
        elif kind == "tmpfs" and op[1] == "/tmp":
            args += ["--tmpfs", "/tmp"]
        elif kind == "symlink" and not op[2].startswith("/dev/"):
            args += ["--symlink", op[1], op[2]]
        # dev nodes and /proc come from --dev/--proc; generated files are written per worker
    return args + ["--chdir", "/", "--"]
