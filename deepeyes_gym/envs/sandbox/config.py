"""Configuration of the local code sandbox."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SandboxConfig", "ISOLATION_LEVELS", "DEFAULT_PRELOAD"]

# strongest first; "auto" picks the first that works on this machine
ISOLATION_LEVELS = ("bwrap", "unshare", "rlimits")

# Imported once in the fork server and shared copy-on-write by every worker. numpy.random is
# loaded lazily by numpy 2 (~5 ms per fresh worker otherwise); the PIL modules are what model code
# reaches for (crops, boxes, contrast).
DEFAULT_PRELOAD = (
    "numpy", "numpy.random", "PIL.Image", "PIL.ImageDraw", "PIL.ImageOps", "PIL.ImageFilter",
    "PIL.ImageEnhance", "matplotlib.pyplot",
)


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and start-up settings shared by every worker of one pool.

    Workers are forked from a fork server created with these settings, so two tools with equal
    configs share one pool (and one fork server). Per-call time limits are not part of it.
    """

    isolation: str = "auto"  # "auto" | "bwrap" | "unshare" | "rlimits"
    memory_limit_mb: int = 4096  # RLIMIT_AS of a worker (address space, not RSS)
    max_file_size_mb: int = 64  # RLIMIT_FSIZE: largest file a cell may write
    tmp_size_mb: int = 64  # size of the private /tmp (namespace levels)
    max_processes: int = 64  # RLIMIT_NPROC for the worker's dedicated uid (processes + threads)
    max_open_files: int = 256
    max_output_chars: int = 10_000  # per stream; head and tail are kept around a note
    max_images: int = 10  # images returned per cell (protocol: at most 10)
    max_image_pixels: int = 4096 * 4096  # larger returned images are downscaled in the worker
    show_open_figures: bool = True  # like Jupyter's inline backend: figures open at cell end come back
    sched_batch: bool = True  # run cells as SCHED_BATCH: CPU-bound background work never preempts the env
    preload: tuple[str, ...] = DEFAULT_PRELOAD
    extra_paths: tuple[str, ...] = ()  # extra host paths made visible read-only to workers
    pool_size: int = 2  # idle workers kept ready (grows to the number of open sessions, up to 16)
    start_timeout: float = 60.0  # seconds for the fork server / a worker to come up
    uid_base: int | None = None  # first dedicated uid for workers (default: derived from the pid)
    env: tuple[tuple[str, str], ...] = field(default=())  # extra environment variables for cells

    def __post_init__(self) -> None:
        if self.isolation not in ("auto",) + ISOLATION_LEVELS:
            raise ValueError(f"isolation must be 'auto' or one of {ISOLATION_LEVELS}, got {self.isolation!r}")
        for name in ("memory_limit_mb", "max_file_size_mb", "tmp_size_mb", "max_processes", "max_open_files",
                     "max_output_chars", "max_image_pixels"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0 <= self.max_images <= 10:
            raise ValueError("max_images must be between 0 and 10 (protocol limit)")
        if self.pool_size < 0:
            raise ValueError("pool_size must be >= 0")
