"""Sandboxed, stateful Python sessions for the code tool.

* :class:`LocalSandbox`: one isolated worker per episode, forked from a pre-warmed fork server
  (numpy, PIL and matplotlib already imported) and confined by kernel namespaces, a dedicated uid
  and rlimits; see :func:`isolation_report` for what is enforced on this machine.
* :class:`RemoteSandbox`: the same interface over a SandboxFusion-style HTTP endpoint.

Workers come from a per-process warm pool (:class:`WorkerPool`: pipelined spawning, ``prewarm``,
async acquire, a memory budget for idle workers); uids and the budget of running cells are
node-wide (:mod:`.node`, :mod:`.admission`), so several env processes on one machine stay correct.
"""

from .base import ExecResult, SandboxBackend
from .config import ISOLATION_LEVELS, SandboxConfig
from .isolation import IsolationReport, isolation_report
from .local import LocalSandbox, SandboxAborted
from .pool import (
    SandboxError,
    SandboxIsolationWarning,
    SandboxStartError,
    WorkerPool,
    isolation_prerequisites,
    shutdown_all_pools,
)
from .remote import RemoteSandbox

__all__ = [
    "ExecResult",
    "SandboxBackend",
    "SandboxConfig",
    "ISOLATION_LEVELS",
    "IsolationReport",
    "isolation_report",
    "isolation_prerequisites",
    "LocalSandbox",
    "SandboxAborted",
    "WorkerPool",
    "RemoteSandbox",
    "SandboxError",
    "SandboxStartError",
    "SandboxIsolationWarning",
    "shutdown_all_pools",
]
