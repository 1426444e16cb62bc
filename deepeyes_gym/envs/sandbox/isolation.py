"""What isolation the local sandbox actually enforces on this machine (measured, not assumed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .admission import admission_mode
from .cgroups import cgroup_support
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
    pool: dict[str, Any] = field(default_factory=dict)  # warm pool: idle workers, memory budget

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
        if self.pool:
            p = self.pool
            lines.append(f"Warm pool: {p['idle']} idle, target {p['target']}, at most {p['idle_cap']} idle within "
                         f"{p['idle_budget_bytes'] >> 20} MiB ({p['worker_bytes'] / 2**20:.1f} MiB per idle worker"
                         f"{'' if p['worker_bytes_measured'] else ', estimated'}); running cells admitted "
                         f"{'node-wide' if p.get('admission') == 'node' else 'per process'}")
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
        stats = pool.stats()
    finally:
        release_pool(pool)
    stats["admission"] = admission_mode()
    skipped = list((resolved_level(cfg.isolation) or (level, []))[1])
    rep = IsolationReport(level=level, requested=cfg.isolation, skipped=skipped, facts=facts, pool=stats)
    en, no = rep.enforced, rep.not_enforced
    lim = facts.get("rlimits", {})
    uid = facts.get("uid")
    if level in ("bwrap", "unshare"):
        en.append("own PID namespace per episode: the code sees only its own processes, all of them die with the episode")
        en.append(f"own network namespace: no network (interfaces: {', '.join(facts.get('net_interfaces') or []) or 'none'}, down)")
        en.append("own mount namespace with a minimal read-only root: the host file system, the project checkout "
                  "and /etc/shadow are not visible (checked by every worker)")
        en.append(f"private writable /tmp of {cfg.tmp_size_mb} MiB and at most {cfg.tmp_inodes} files, gone with the worker")
        en.append("own IPC and UTS namespaces; /proc/keys, /proc/key-users, /proc/timer_list, /proc/sched_debug masked")
        if level == "bwrap":
            en.append("the fork server itself runs inside a bubblewrap jail")
        else:
            no.append("bubblewrap is not used, so the fork server (trusted code, never runs cells) is not jailed")
    else:
        no.append("host file system visible to the code (read access as its uid), including the project checkout if readable")
        no.append("network not isolated")
        no.append("no PID namespace: processes that leave the worker's session survive until swept at episode end")
        no.append("/proc/key-users shows every uid's key counts (no private /proc at this level)")
        en.append("private working directory (cwd, TMPDIR, HOME) wiped at episode end")
    if uid not in (None, 0):
        en.append(f"dedicated unprivileged uid {uid} per worker, fresh from a node-wide counter (never shared by two "
                  f"workers, not reused by a later episode), no capabilities, no_new_privs={facts.get('NoNewPrivs')}")
        en.append(f"process/thread limit (RLIMIT_NPROC) {lim.get('nproc')}")
    sup = cgroup_support() if cfg.use_cgroup else None
    pids_capped = sup is not None and (sup.version == "v2" or "pids" in sup.bases)
    if uid in (None, 0):
        why = "" if dropped else " (the interpreter is not readable by other uids)"
        if pids_capped:
            no.append(f"code runs as root{why}: RLIMIT_NPROC is ignored (the episode's pids cgroup still caps its processes)")
        else:
            no.append(f"code runs as root{why}: RLIMIT_NPROC is ignored, so a fork bomb is not contained")
    en.append(f"address-space limit (RLIMIT_AS) {_mib(lim.get('as'))} per process, file-size limit (RLIMIT_FSIZE) "
              f"{_mib(lim.get('fsize'))}, open files {lim.get('nofile')}")
    if sup is not None and sup.version is not None:
        en.append(f"memory cgroup per episode: {cfg.memory_limit_mb} MiB for everything the episode holds (children, "
                  f"memfds, /tmp files included) and at most {cfg.max_processes + 2} tasks; {sup.describe()}")
    else:
        why = "use_cgroup=False" if sup is None else sup.why_not
        no.append(f"memory is capped per process as address space (RLIMIT_AS), not for the whole episode: no memory "
                  f"cgroup ({why}); children and memfds can together exceed memory_limit_mb")
    en.append("per-cell soft time limit (interrupt, session kept) and hard limit (kill, fresh session)")
    if str(facts.get("session_keyring", "")).startswith("fresh"):
        en.append("own empty kernel session keyring per worker (the env process's keys are out of reach)")
    else:
        no.append(f"kernel session keyring: {facts.get('session_keyring', 'not checked')}")
    if facts.get("Seccomp") == "2":
        en.append(f"seccomp filter: {facts.get('seccomp')} (no values passed between episodes through kernel keys)")
    else:
        no.append(f"seccomp filter for the key syscalls: {facts.get('seccomp', 'not installed')}")
    no.append("no general seccomp system-call filter (only the key syscalls are denied)")
    no.append("episodes share one kernel: load, memory pressure and timing stay observable across them "
              "(low-bandwidth covert channels are not closed)")
    if not facts.get("ns_handles"):
        en.append("no handle on a host namespace is open in the worker")
    return rep
