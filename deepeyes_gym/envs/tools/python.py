"""The DeepEyesV2 code tool: ``<code>```python ...```</code>`` runs in a stateful, isolated sandbox."""

from __future__ import annotations

import os
import threading
import weakref
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

from ..sandbox import ExecResult, LocalSandbox, RemoteSandbox, SandboxBackend, SandboxConfig, SandboxError
from ..sandbox.admission import AdmissionCancelled, Ticket, admit
from ..sandbox.config import DEFAULT_PRELOAD
from ..turns import IMAGE_TOKEN, neutralize_placeholders
from .base import Tool, ToolContext, ToolError, ToolResult

__all__ = ["PythonTool", "format_code_observation", "prewarm_sandbox"]


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def format_code_observation(stdout: str, stderr: str, n_images: int) -> str:
    """The DeepEyesV2 code observation: stdout and stderr fences, then one ``<image>`` per image."""
    text = f"Code execution result:\nstdout:\n```\n{stdout}\n```\n\nstderr:\n```\n{stderr}\n```\n\n"
    if n_images:
        text += "Images:\n" + IMAGE_TOKEN * n_images
    return text.strip()


class PythonTool(Tool):
    """Run model-written Python in a per-episode Jupyter-like session.

    The task's input images are bound as ``image_1``, ``image_2``, ... (PIL, original resolution)
    before the first cell (read-only views of one shared copy per task: PIL copies an image before
    changing it, except through ``img.load()[x, y] = v``, which needs ``img = img.copy()`` first);
    figures shown with ``plt.show()`` (or left open at the end of a cell)
    and images passed to ``display(...)`` come back, at most ``max_images_per_turn`` per cell.

    Args:
        timeout: soft per-cell time limit in seconds (the cell is interrupted, variables are kept).
        hard_timeout_grace: extra seconds before a cell that ignores the interrupt is killed (the
            session then restarts with the images reloaded).
        backend: ``"local"`` (default), ``"sandbox_fusion"`` (needs ``endpoint``), an ``http(s)://``
            URL of a SandboxFusion-style service, or a :class:`SandboxBackend` instance.
        isolation: ``"auto"`` (strongest available), ``"bwrap"``, ``"unshare"`` or ``"rlimits"``.
        memory_limit_mb, max_file_size_mb, tmp_size_mb, max_processes: worker limits.
        max_output_chars: per stream; the head and the tail are kept around a truncation note.
        pool_size: warm workers kept ready by the process-wide pool (see also :meth:`prewarm`).
        idle_memory_mb: memory the pool's idle workers may hold (default: a quarter of the RAM).
        preload: modules imported once in the fork server (shared by all workers).
        max_running_cells: cells that may run at once on this machine, counted over every process
            that uses the same number (the rest queue first come, first served, their time limits
            not yet started); default: the number of usable CPUs for the local backend, no limit
            for remote ones; 0 = no limit.

    :meth:`abort` (any thread) ends the episode at once: a running cell returns, its worker is
    killed, a cell waiting for its turn stops waiting.
    """

    name = "python"
    description = (
        "Run Python code in a stateful Jupyter-like session. The input images are preloaded as "
        "image_1, image_2, ... (PIL images at original resolution). Variables persist across turns "
        "of one episode. Show images with plt.show() or display(img); print() what you need to see."
    )
    parameters = {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "Python code to execute"}},
        "required": ["code"],
    }
    action_kind = "code"

    def __init__(
        self,
        *,
        timeout: float = 60.0,
        hard_timeout_grace: float = 2.0,
        backend: str | SandboxBackend = "local",
        endpoint: str | None = None,
        isolation: str = "auto",
        memory_limit_mb: int = 4096,
        max_file_size_mb: int = 64,
        tmp_size_mb: int = 64,
        max_processes: int = 64,
        max_output_chars: int = 10_000,
        max_images_per_turn: int = 10,
        max_image_pixels: int = 4096 * 4096,
        show_open_figures: bool = True,
        pool_size: int = 2,
        idle_memory_mb: int | None = None,
        preload: Sequence[str] = DEFAULT_PRELOAD,
        extra_paths: Sequence[str] = (),
        max_code_chars: int = 200_000,
        remote_options: Mapping[str, Any] | None = None,
        max_running_cells: int | None = None,
    ) -> None:
        self.timeout = float(timeout)
        self.hard_timeout_grace = float(hard_timeout_grace)
        self.max_code_chars = int(max_code_chars)
        self.config = SandboxConfig(
            isolation=isolation,
            memory_limit_mb=memory_limit_mb,
            max_file_size_mb=max_file_size_mb,
            tmp_size_mb=tmp_size_mb,
            max_processes=max_processes,
            max_output_chars=max_output_chars,
            max_images=max_images_per_turn,
            max_image_pixels=max_image_pixels,
            show_open_figures=show_open_figures,
            preload=tuple(preload),
            extra_paths=tuple(extra_paths),
            pool_size=pool_size,
            idle_memory_mb=idle_memory_mb,
        )
        if isinstance(backend, str) and backend.startswith(("http://", "https://")):
            backend, endpoint = "sandbox_fusion", backend
        if isinstance(backend, str) and backend not in ("local", "sandbox_fusion"):
            raise ValueError(f"unknown sandbox backend {backend!r}: use 'local', 'sandbox_fusion' or a URL")
        if backend == "sandbox_fusion" and not endpoint:
            raise ValueError("the 'sandbox_fusion' backend needs an endpoint URL")
        self._backend_spec = backend
        self._endpoint = endpoint
        self._remote_options = dict(remote_options or {})
        self._backend: SandboxBackend | None = backend if isinstance(backend, SandboxBackend) else None
        # Cells are CPU-bound: running more of them at once than there are cores only time-slices
        # them (cache thrash), so local cells queue for a core, node-wide and in arrival order.
        # Remote sandboxes are not bound by this machine's cores. 0 = no limit. Time limits start
        # when the cell starts running.
        if max_running_cells is None:
            max_running_cells = _usable_cpus() if backend == "local" else 0
        if max_running_cells < 0:
            raise ValueError("max_running_cells must be >= 0")
        self.max_running_cells = int(max_running_cells)
        self._active = False
        self._closed = False
        self._aborted = threading.Event()
        self._ticket: Ticket | None = None  # this episode's place in the admission queue
        self._lock = threading.RLock()
        _INSTANCES.add(self)

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def backend(self) -> SandboxBackend:
        """The sandbox backend (the local pool is started on first use)."""
        with self._lock:
            if self._closed:
                raise ToolError("the python tool is closed")
            if self._backend is None:
                if self._backend_spec == "local":
                    self._backend = LocalSandbox(self.config, timeout=self.timeout, hard_timeout_grace=self.hard_timeout_grace)
                else:
                    assert self._endpoint is not None
                    cfg = self.config
                    self._backend = RemoteSandbox(
                        self._endpoint, timeout=self.timeout, memory_limit_mb=cfg.memory_limit_mb,
                        max_output_chars=cfg.max_output_chars, max_images=cfg.max_images,
                        max_image_pixels=cfg.max_image_pixels, **self._remote_options,
                    )
            return self._backend

    @property
    def isolation_level(self) -> str:
        return self.backend.isolation_level

    def warm_up(self) -> None:
        """Start the sandbox now (otherwise the first episode pays the fork-server start-up)."""
        _ = self.backend

    def prewarm(self, n: int, wait: float | None = None) -> int:
        """Keep ``n`` workers ready for the coming resets (e.g. a rollout batch's B x G) and wait
        up to ``wait`` s for them (default: the start timeout); return how many are ready. The
        pool's memory budget (``idle_memory_mb``) caps ``n``. Local backend only (0 for remote)."""
        backend = self.backend
        if not isinstance(backend, LocalSandbox):
            return 0
        return backend.pool.prewarm(n, wait)

    def start_episode(self, ctx: ToolContext) -> None:
        """Take a fresh worker and bind ``ctx.images`` as ``image_1``, ``image_2``, ...; episodes of
        one task (``ctx.task_id``, same image objects) share one read-only copy of the pixels."""
        with self._lock, self._starting():
            backend = self.backend
            if isinstance(backend, LocalSandbox):
                backend.start(list(ctx.images or ()), key=ctx.task_id)
            else:
                backend.start(list(ctx.images or ()))

    async def start_episode_async(self, ctx: ToolContext) -> None:
        """:meth:`start_episode` for asyncio code: no thread waits for a worker (local backend;
        a remote backend starts synchronously, it only records the images)."""
        backend = self.backend
        with self._starting():
            if isinstance(backend, LocalSandbox):
                await backend.start_async(list(ctx.images or ()), key=ctx.task_id)
            else:
                backend.start(list(ctx.images or ()))

    @contextmanager
    def _starting(self) -> Iterator[None]:
        """An episode's start: a new episode is not aborted; a sandbox that cannot start is a
        ToolError (the episode runs no code) and leaves the tool inactive."""
        self._aborted.clear()
        try:
            yield
        except SandboxError as exc:
            self._active = False
            raise ToolError(f"the Python sandbox could not start: {exc}") from None
        self._active = True

    def end_episode(self) -> None:
        with self._lock:
            self._active = False
            if self._backend is not None:
                self._backend.end()

    def abort(self) -> None:
        """From any thread: end the episode now, without waiting for its running cell or lock."""
        self._aborted.set()
        ticket = self._ticket
        if ticket is not None:
            ticket.cancel()
        if self._backend is not None:
            self._backend.abort()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._active = False
            if self._backend is not None:
                self._backend.close()

    # ---- calls -----------------------------------------------------------------------------

    def parse(self, arguments: Any) -> str:
        if isinstance(arguments, Mapping):  # the tool-call form {"code": "..."}
            extra = [k for k in arguments if k != "code"]
            if extra or "code" not in arguments:
                raise ToolError("'python' takes exactly one argument: code")
            arguments = arguments["code"]
        if not isinstance(arguments, str):
            raise ToolError(f"the code must be a string, got {type(arguments).__name__}")
        if not arguments.strip():
            raise ToolError("the code block is empty")
        if len(arguments) > self.max_code_chars:
            raise ToolError(f"the code is too long ({len(arguments)} characters, limit {self.max_code_chars})")
        return arguments

    def execute(self, args: Any, ctx: ToolContext) -> ToolResult:
        code = self.parse(args)
        with self._lock:
            if self._aborted.is_set():
                raise ToolError("the episode was aborted")
            if not self._active:
                self.start_episode(ctx)
            if not self.max_running_cells:
                return self.to_tool_result(self.backend.run(code, self.timeout))
            ticket = self._ticket = admit(self.max_running_cells)
            try:
                if self._aborted.is_set():  # abort() may have missed the ticket
                    ticket.cancel()
                ticket.wait()
                res = self.backend.run(code, self.timeout)
            except AdmissionCancelled:
                raise ToolError("the episode was aborted") from None
            finally:
                self._ticket = None
                ticket.cancel()  # releases the slot (or the place in the queue)
        return self.to_tool_result(res)

    def to_tool_result(self, res: ExecResult) -> ToolResult:
        stdout = neutralize_placeholders(res.stdout)  # printed "<image>" must not pass for an image
        stderr = neutralize_placeholders(res.stderr)
        text = format_code_observation(stdout, stderr, len(res.images))
        error = None
        if res.status == "timeout":
            error = f"timeout after {self.timeout:g} s (session kept)"
        elif res.status == "killed":
            error = "hard timeout: the worker was killed and the session restarted"
        elif res.status == "aborted":
            error = "the episode was aborted"
        elif res.status == "crashed":
            error = "the sandbox worker died or failed: " + (res.stderr.strip().splitlines() or ["unknown"])[-1][:300]
        meta = {
            "status": res.status,
            "restarted": res.restarted,
            "exit_status": res.exit_status,
            "seconds": res.seconds,
            "stdout_truncated": res.stdout_truncated,
            "stderr_truncated": res.stderr_truncated,
            "images_dropped": res.images_dropped,
            "isolation": self._backend.isolation_level if self._backend is not None else None,
        }
        return ToolResult(text=text, images=list(res.images), error=error, metadata=meta)


_INSTANCES: "weakref.WeakSet[PythonTool]" = weakref.WeakSet()
_PINNED: list[PythonTool] = []


def prewarm_sandbox(n: int, *, wait: float | None = None, **python_tool_kwargs: Any) -> int:
    """Start the local sandbox pool that envs made with ``tool_kwargs={"python": kwargs}`` will
    use, keep ``n`` workers ready in it, and return how many are ready after up to ``wait`` s.

    The pool stays up (and refilled to ``n``) for the rest of the process, so the first resets
    of a rollout batch do not wait for workers to start::

        prewarm_sandbox(8 * 16, wait=120)             # before making 128 envs with defaults
    """
    tool = PythonTool(**python_tool_kwargs)
    _PINNED.append(tool)
    return tool.prewarm(n, wait)


def _forget_locks_in_child() -> None:
    """A lock held by a parent thread at fork would never be released in the child."""
    for tool in list(_INSTANCES):
        tool._lock = threading.RLock()
        tool._ticket = None


os.register_at_fork(after_in_child=_forget_locks_in_child)
