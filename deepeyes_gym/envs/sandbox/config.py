"""Configuration of the local code sandbox."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SandboxConfig", "ISOLATION_LEVELS", "DEFAULT_PRELOAD", "MIN_MEMORY_MB"]

# strongest first; "auto" picks the first that works on this machine
ISOLATION_LEVELS = ("bwrap", "unshare", "rlimits")

# Imported once in the fork server and shared copy-on-write by every worker. numpy.random is
# loaded lazily by numpy 2 (~5 ms per fresh worker otherwise); the PIL modules are what model code
# reaches for (crops, boxes, contrast).
DEFAULT_PRELOAD = (
    "numpy", "numpy.random", "PIL.Image", "PIL.ImageDraw", "PIL.ImageOps", "PIL.ImageFilter",
    "PIL.ImageEnhance", "matplotlib.pyplot",
)

# A worker is a fork of the fork server: its address space starts at the fork server's (~300 MiB
# with numpy, PIL and matplotlib mapped), so a smaller RLIMIT_AS leaves no room for any cell.
# The pool also checks the real figure against the limit when it starts.
MIN_MEMORY_MB = 512


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and start-up settings shared by every worker of one pool.

    Workers are forked from a fork server created with these settings, so two tools with equal
    configs share one pool (and one fork server). Per-call time limits are not part of it.
    """

    isolation: str = "auto"  # "auto" | "bwrap" | "unshare" | "rlimits"
    # per worker: RLIMIT_AS of each process, and (where a memory cgroup can be made) the resident
    # memory of the whole episode, its children, memfds and /tmp files included
    memory_limit_mb: int = 4096
    max_file_size_mb: int = 64  # RLIMIT_FSIZE: largest file a cell may write
    tmp_size_mb: int = 64  # size of the private /tmp (namespace levels)
    tmp_inodes: int = 16384  # files the private /tmp may hold (each costs kernel memory)
    max_processes: int = 64  # RLIMIT_NPROC for the worker's dedicated uid (and pids.max of its cgroup)
    max_open_files: int = 256
    max_output_chars: int = 10_000  # per stream; head and tail are kept around a note
    max_images: int = 10  # images returned per cell (protocol: at most 10)
    max_image_pixels: int = 4096 * 4096  # larger returned images are downscaled in the worker
    show_open_figures: bool = True  # like Jupyter's inline backend: figures open at cell end come back
    sched_batch: bool = True  # run cells as SCHED_BATCH: CPU-bound background work never preempts the env
    preload: tuple[str, ...] = DEFAULT_PRELOAD
    extra_paths: tuple[str, ...] = ()  # extra host paths made visible read-only to workers
    pool_size: int = 2  # idle workers kept ready (grows with open sessions and prewarm(n))
    # memory the idle workers of this pool may hold (None: a quarter of the machine's RAM); the
    # pool never keeps more idle workers than fit, whatever the sessions or prewarm(n) ask for
    idle_memory_mb: int | None = None
    use_cgroup: bool = True  # a memory + pids cgroup per worker where this machine allows one
    start_timeout: float = 60.0  # seconds for the fork server / a worker to come up
    uid_base: int | None = None  # first dedicated uid for workers (default: a node-wide range)
    env: tuple[tuple[str, str], ...] = field(default=())  # extra environment variables for cells

    def __post_init__(self) -> None:
        if self.isolation not in ("auto",) + ISOLATION_LEVELS:
            raise ValueError(f"isolation must be 'auto' or one of {ISOLATION_LEVELS}, got {self.isolation!r}")
        for name in ("memory_limit_mb", "max_file_size_mb", "tmp_size_mb", "tmp_inodes", "max_processes",
                     "max_open_files", "max_output_chars", "max_image_pixels"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.memory_limit_mb < MIN_MEMORY_MB:
            raise ValueError(
                f"memory_limit_mb={self.memory_limit_mb} is too small for the sandbox runtime: a worker "
                f"starts with numpy, PIL and matplotlib mapped (~300 MiB of address space); use at least "
                f"{MIN_MEMORY_MB}")
        if not 0 <= self.max_images <= 10:
            raise ValueError("max_images must be between 0 and 10 (protocol limit)")
        if self.pool_size < 0:
            raise ValueError("pool_size must be >= 0")
        if self.idle_memory_mb is not None and self.idle_memory_mb < 0:
            raise ValueError("idle_memory_mb must be >= 0")
