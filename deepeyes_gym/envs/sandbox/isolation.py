"""What isolation the local sandbox actually enforces on this machine (measured, not assumed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import ISOLATION_LEVELS, SandboxConfig
from .pool import acquire_pool, release_pool, resolved_level

__all__ = ["IsolationReport", "isolation_report"]


@dataclass
class IsolationReport:
    """The isolation level in force, what it enforces and what it could not enforce here."""

    level: str  # "bwrap" | "unshare" | "rlimits"
    requested: str
    enforced: list[str] = field(default_factory=list)
    not_enforced: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # stronger levels that were unavailable, and why
    facts: dict[str, Any] = field(default_factory=dict)  # as reported by a live worker

    @property
    def strongest(self) -> str:
        return ISOLATION_LEVELS[0]

    @property
    def is_strongest(self) -> bool:
        return self.level == self.strongest

    def format(self) -> str:
        lines = [f"Code sandbox isolation level: {self.level} (requested: {self.requested}; strongest: {self.strongest})"]
        if self.skipped:
            lines.append("Stronger levels not used:")
            lines += [f"  - {s}" for s in self.skipped]
        lines.append("Enforced:")
        lines += [f"  + {s}" for s in self.enforced]
        lines.append("Not enforced:")
        lines += [f"  - {s}" for s in self.not_enforced] or ["  (nothing)"]
        return "\n".join(lines)


def _mib(v: Any) -> str:
    return f"{int(v) >> 20} MiB" if isinstance(v, int) and v >= 0 else "unlimited"


def isolation_report(config: SandboxConfig | None = None) -> IsolationReport:
    """Start (or reuse) the pool for ``config`` and report what its workers are confined by.

    The facts come from a live worker (its uid, capabilities, visible network interfaces and host
    paths, rlimits), so the report says what holds, not what was intended.
    """
    cfg = config or SandboxConfig()
    pool = acquire_pool(cfg)
    try:
        level = pool.level
        facts = dict(pool.facts)
        dropped = pool.server.drop_uid if pool.server is not None else False
    finally:
        release_pool(pool)
    skipped = list((resolved_level(cfg.isolation) or (level, []))[1])
    rep = IsolationReport(level=level, requested=cfg.isolation, skipped=skipped, facts=facts)
    en, no = rep.enforced, rep.not_enforced
    lim = facts.get("rlimits", {})
    uid = facts.get("uid")
    if level in ("bwrap", "unshare"):
        en.append("own PID namespace per episode: the code sees only its own processes, all of them die with the episode")
        en.append(f"own network namespace: no network (interfaces: {', '.join(facts.get('net_interfaces') or []) or 'none'}, down)")
        en.append("own mount namespace with a minimal read-only root: the host file system, the project checkout "
                  "and /etc/shadow are not visible (checked by every worker)")
        en.append(f"private writable /tmp of {cfg.tmp_size_mb} MiB, gone with the worker")
        en.append("own IPC and UTS namespaces")
        if level == "bwrap":
            en.append("the fork server itself runs inside a bubblewrap jail")
        else:
            no.append("bubblewrap is not used, so the fork server (trusted code, never runs cells) is not jailed")
    else:
        no.append("host file system visible to the code (read access as its uid), including the project checkout if readable")
        no.append("network not isolated")
        no.append("no PID namespace: processes that leave the worker's session survive until swept at episode end")
        en.append("private working directory (cwd, TMPDIR, HOME) wiped at episode end")
    if uid not in (None, 0):
        en.append(f"dedicated unprivileged uid {uid} per worker, no capabilities, no_new_privs={facts.get('NoNewPrivs')}")
        en.append(f"process/thread limit (RLIMIT_NPROC) {lim.get('nproc')}")
    else:
        why = "" if dropped else " (the interpreter is not readable by other uids)"
        no.append(f"code runs as root{why}: RLIMIT_NPROC is ignored, so a fork bomb is not contained")
    en.append(f"address-space limit (RLIMIT_AS) {_mib(lim.get('as'))}, file-size limit (RLIMIT_FSIZE) {_mib(lim.get('fsize'))}, "
              f"open files {lim.get('nofile')}")
    en.append("per-cell soft time limit (interrupt, session kept) and hard limit (kill, fresh session)")
    no.append("no seccomp system-call filter")
    no.append("memory is capped as address space (RLIMIT_AS), not as resident memory (no memory cgroup)")
    return rep
