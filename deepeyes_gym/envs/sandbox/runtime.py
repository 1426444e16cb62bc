"""The notebook-like execution engine that runs inside a sandbox worker.

Stdlib only at import time (numpy, PIL and matplotlib are imported lazily, normally preloaded by the
fork server), because this file is shipped into the worker as source text: the worker never reads
the project checkout. The parent also imports it to measure the in-process floor in the benchmark.

Semantics follow a Jupyter cell: variables persist across cells; the value of a trailing expression
is displayed; ``plt.show()`` / ``display(obj)`` / figures left open at the end of the cell come back
as RGB images; stdout and stderr are captured (Python-level and file-descriptor-level) and
truncated keeping the head and the tail.
"""

from __future__ import annotations

import ast
import builtins
import codecs
import io
import linecache
import os
import signal
import sys
import time
import traceback
from typing import Any, Callable

__all__ = ["Runtime", "CodeTimeout", "FigureError", "TRUNCATION_NOTE", "MAX_ASPECT"]

TRUNCATION_NOTE = "\n...[{n} characters truncated]...\n"
MAX_ASPECT = 200  # protocol: a returned image's long side is at most 200x its short side


class FigureError(Exception):
    """A figure could not be drawn (too large for memory or for Agg); it has been closed."""


class CodeTimeout(BaseException):
    """Raised inside user code when the soft time limit fires (BaseException: `except Exception`
    retry loops in user code do not swallow it)."""


class _BinaryView:
    """``sys.stdout.buffer`` stand-in: decodes bytes (invalid UTF-8 becomes U+FFFD)."""

    def __init__(self, owner: "_Capture") -> None:
        self._owner = owner
        self._dec = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._owner.write(self._dec.decode(data))
        return len(data)

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True


class _Capture(io.TextIOBase):
    """A write-only text stream keeping the first and the last ``limit // 2`` characters."""

    def __init__(self, limit: int, fileno: int) -> None:
        super().__init__()
        self._fileno = fileno
        self.head_cap = max(limit // 2, 0)
        self.tail_cap = max(limit - self.head_cap, 0)
        self._head: list[str] = []
        self._head_len = 0
        self._tail: list[str] = []
        self._tail_len = 0
        self.total = 0
        self.buffer = _BinaryView(self)

    # io.TextIOBase API
    encoding = "utf-8"
    errors = "replace"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:  # libraries writing to the raw fd land in the fd-level capture
        return self._fileno

    def write(self, s: Any) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        n = len(s)
        self.total += n
        if self._head_len < self.head_cap:
            take = s[: self.head_cap - self._head_len]
            self._head.append(take)
            self._head_len += len(take)
            s = s[len(take) :]
        if s and self.tail_cap:
            self._tail.append(s)
            self._tail_len += len(s)
            if self._tail_len > 2 * self.tail_cap:
                t = "".join(self._tail)[-self.tail_cap :]
                self._tail, self._tail_len = [t], len(t)
        return n

    def getvalue(self) -> tuple[str, int]:
        """Return ``(text, number of characters dropped)``."""
        tail = "".join(self._tail)[-self.tail_cap :] if self.tail_cap else ""
        dropped = self.total - self._head_len - len(tail)
        text = "".join(self._head)
        if dropped > 0:
            text += TRUNCATION_NOTE.format(n=dropped)
        return text + tail, max(dropped, 0)


class Runtime:
    """One notebook session: a namespace plus the machinery to run cells in it."""

    def __init__(
        self,
        *,
        max_output_chars: int = 10_000,
        max_images: int = 10,
        max_image_pixels: int = 4096 * 4096,
        show_open_figures: bool = True,
        fd_capture: bool = False,
    ) -> None:
        self.max_output_chars = max_output_chars
        self.max_images = max_images
        self.max_image_pixels = max_image_pixels
        self.show_open_figures = show_open_figures
        self.ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        self.ns["display"] = self.display
        self._cell = 0
        self._images: list[tuple[int, int, bytes]] = []
        self._dropped = 0
        self._armed = False
        self._alarm_handler = self._on_alarm  # one bound method, so identity checks work
        self._fds: dict[int, int] = {}
        if fd_capture:
            self._setup_fd_capture()

    # ---- images -----------------------------------------------------------------------------

    def load_images(self, specs: list[dict[str, Any]], blob: Any, shared: bool = False) -> list[str]:
        """Bind raw images as ``image_1``, ``image_2``, ... (PIL images at original resolution).

        A spec gives the size, the image mode, and optionally the raw layout in ``blob`` (``raw``,
        e.g. "RGBX" for RGB at 4 bytes a pixel) and its byte ``offset``. With ``shared`` (``blob``
        is the task's read-only shared mapping) images in PIL's own layout are mapped, not copied:
        the G episodes of a task hold one copy of its pixels, and an image is copied only when the
        code changes it (PIL copies read-only images before any in-place change).
        """
        from PIL import Image

        names = []
        mv = memoryview(blob)
        off = 0
        for i, spec in enumerate(specs, start=1):
            w, h, mode = int(spec["w"]), int(spec["h"]), str(spec["mode"])
            raw = str(spec.get("raw", mode))
            off = int(spec.get("offset", off))
            n = w * h * (4 if raw in ("RGBX", "RGBA") else len(raw))  # one byte per band otherwise
            img = _mapped(mode, raw, (w, h), blob, off) if shared else None
            if img is None:
                img = Image.frombytes(mode, (w, h), mv[off : off + n], "raw", raw)
            off += n
            self.ns[f"image_{i}"] = img
            names.append(f"image_{i}")
        return names

    def display(self, *objs: Any) -> None:
        """Show objects like Jupyter's ``display``: images come back, others print their repr."""
        for obj in objs:
            try:
                shown = self._add_image(obj)
            except Exception as exc:
                if _is_figure(obj):  # a figure that cannot be drawn must not fail every later cell
                    import matplotlib.pyplot as plt

                    plt.close(obj)
                    raise FigureError(f"the figure could not be drawn ({type(exc).__name__}: {_safe_str(exc)}); "
                                      "it was closed: use a smaller figsize or dpi") from None
                raise
            if not shown:
                print(repr(obj))

    def _add_image(self, obj: Any) -> bool:
        """Queue ``obj`` as a returned image if it is one; return False for non-images."""
        payload: Callable[[], Any] | None = None
        mod = type(obj).__module__ or ""
        if mod.startswith("PIL."):
            from PIL import Image

            if isinstance(obj, Image.Image):
                payload = lambda: obj  # noqa: E731
        elif _is_figure(obj):
            payload = lambda: self._figure_image(obj)  # noqa: E731
        elif mod == "numpy" and _looks_like_image_array(obj):
            payload = lambda: _array_image(obj)  # noqa: E731
        if payload is None:
            return False
        if len(self._images) >= self.max_images:
            self._dropped += 1
            return True
        img = payload()
        if img is None:
            return True
        w, h = img.size
        if w < 1 or h < 1:
            return True
        img = self._fit(img)
        if img.mode != "RGB":
            img = img.convert("RGB")
        self._images.append((img.size[0], img.size[1], img.tobytes()))
        return True

    def _fit(self, img: Any) -> Any:
        """Bring an image within the protocol's aspect ratio and the pixel budget (before it is
        copied for the parent, which would otherwise refuse it)."""
        w, h = img.size
        if max(w, h) > MAX_ASPECT * min(w, h):  # squash the long side, as the env would
            nw, nh = (min(w, MAX_ASPECT * h), h) if w > h else (w, min(h, MAX_ASPECT * w))
            print(f"[an image of {w}x{h} exceeds the {MAX_ASPECT}:1 aspect ratio limit and was resized to {nw}x{nh}]",
                  file=sys.stderr)
            img, (w, h) = img.resize((nw, nh)), (nw, nh)
        if w * h > self.max_image_pixels:
            s = (self.max_image_pixels / (w * h)) ** 0.5
            nw, nh = max(1, int(w * s)), max(1, int(h * s))
            while nw * nh > self.max_image_pixels:  # rounding a side up to 1 px must not overshoot
                nw, nh = max(1, nw - (nw >= nh)), max(1, nh - (nh > nw))
            img = img.copy()
            img.thumbnail((nw, nh))
        return img

    def _figure_image(self, fig: Any) -> Any:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from PIL import Image

        canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
        canvas.draw()
        rgba = canvas.buffer_rgba()
        w, h = canvas.get_width_height(physical=True)
        return Image.frombuffer("RGBA", (w, h), rgba, "raw", "RGBA", 0, 1)

    def _show(self, *args: Any, **kwargs: Any) -> None:
        """Replacement for ``plt.show``: every open figure becomes an image, then all close (also
        when one cannot be drawn: a figure left open would fail every later cell again)."""
        import matplotlib.pyplot as plt

        failed = []
        try:
            for num in plt.get_fignums():
                try:
                    self._add_image(plt.figure(num))
                except Exception as exc:
                    failed.append(f"figure {num} ({type(exc).__name__}: {_safe_str(exc)})")
        finally:
            plt.close("all")
        if failed:
            raise FigureError("could not draw " + ", ".join(failed) + "; the figures were closed: "
                              "use a smaller figsize or dpi")

    def install_matplotlib_hooks(self) -> None:
        """Route ``plt.show`` to :meth:`_show` (call after matplotlib is imported)."""
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].show = self._show

    # ---- running a cell ---------------------------------------------------------------------

    def run(self, code: str, timeout: float | None = None) -> tuple[dict[str, Any], list[bytes]]:
        """Run one cell; return ``(meta, blobs)`` = stdout bytes, stderr bytes, then RGB images."""
        self._cell += 1
        self._images, self._dropped = [], 0
        out = _Capture(self.max_output_chars, 1)
        err = _Capture(self.max_output_chars, 2)
        status = "ok"
        t0 = time.perf_counter()
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        self.install_matplotlib_hooks()
        if timeout:
            if signal.getsignal(signal.SIGALRM) is not self._alarm_handler:  # a cell may have replaced it
                signal.signal(signal.SIGALRM, self._alarm_handler)
            self._armed = True
            signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            try:
                status = self._execute(code, err, timeout)
                if self.show_open_figures and "matplotlib.pyplot" in sys.modules:
                    self._show()
            finally:
                self._armed = False
                if timeout:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except CodeTimeout:  # fired inside our own epilogue (figure rendering): still a timeout
            status = "timeout"
            err.write(_timeout_message(timeout))
        except BaseException as exc:  # never let a cell take the worker down
            status = "error"
            err.write(f"{type(exc).__name__}: {_safe_str(exc)}\n")
        finally:
            sys.stdout, sys.stderr = saved
        self._harvest_fds(out, err)
        if self._dropped:
            err.write(f"[{self._dropped} more image(s) not returned: at most {self.max_images} per cell]\n")
        stdout, out_cut = out.getvalue()
        stderr, err_cut = err.getvalue()
        out_b = stdout.encode("utf-8", "replace")
        err_b = stderr.encode("utf-8", "replace")
        meta = {
            "status": status,
            "stdout": len(out_b),
            "stderr": len(err_b),
            "stdout_truncated": out_cut,
            "stderr_truncated": err_cut,
            "images": [[w, h] for w, h, _ in self._images],
            "images_dropped": self._dropped,
            "seconds": time.perf_counter() - t0,
        }
        blobs = [out_b, err_b] + [px for _, _, px in self._images]
        self._images = []
        return meta, blobs

    def _execute(self, code: str, err: _Capture, timeout: float | None) -> str:
        filename = f"<cell {self._cell}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        try:
            tree = ast.parse(code, filename, "exec")
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            body = compile(tree, filename, "exec")
            last_code = compile(last, filename, "eval") if last is not None else None
        except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError) as exc:
            err.write("".join(traceback.format_exception_only(type(exc), exc)))
            return "error"
        try:
            exec(body, self.ns)
            if last_code is not None:
                value = eval(last_code, self.ns)
                if value is not None:
                    self.ns["_"] = value
                    if not self._add_image(value):
                        print(repr(value))
            return "ok"
        except CodeTimeout:
            err.write(_user_traceback(filename, sys.exc_info()[2]))
            err.write(_timeout_message(timeout))
            return "timeout"
        except SystemExit as exc:
            err.write(f"SystemExit: {_safe_str(exc)}\n(exiting is not possible here: the session and its variables are kept)\n")
            return "error"
        except BaseException as exc:
            err.write(_user_traceback(filename, exc.__traceback__))
            err.write("".join(traceback.format_exception_only(type(exc), exc)))
            return "error"

    def _on_alarm(self, signum: int, frame: Any) -> None:
        if self._armed:
            raise CodeTimeout()

    # ---- fd-level capture (output of subprocesses and C code) ----------------------------------

    def _setup_fd_capture(self) -> None:
        for fd in (1, 2):
            mfd = os.memfd_create(f"fd{fd}", 0)
            os.dup2(mfd, fd)
            os.close(mfd)
            self._fds[fd] = fd
        # unbuffered text streams on the fds, used between cells (e.g. by background threads)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), "utf-8", "replace", write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), "utf-8", "replace", write_through=True)

    def _harvest_fds(self, out: _Capture, err: _Capture) -> None:
        for fd, cap in ((1, out), (2, err)):
            if fd not in self._fds:
                continue
            try:
                size = os.fstat(fd).st_size
                if size <= 0:
                    continue
                limit = max(self.max_output_chars * 4, 4096)
                if size <= limit:
                    data = os.pread(fd, size, 0)
                    text = data.decode("utf-8", "replace")
                else:
                    half = limit // 2
                    head = os.pread(fd, half, 0).decode("utf-8", "replace")
                    tail = os.pread(fd, half, size - half).decode("utf-8", "replace")
                    text = head + TRUNCATION_NOTE.format(n=f"about {size - 2 * half} bytes") + tail
                cap.write(text)
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
            except OSError:  # the cell closed or replaced the fd: capture what we can next time
                pass


def _mapped(mode: str, raw: str, size: tuple[int, int], buf: Any, offset: int) -> Any:
    """A read-only PIL image over ``buf`` (None where PIL cannot map this layout)."""
    if (mode, raw) not in (("RGB", "RGBX"), ("RGBA", "RGBA"), ("L", "L")):
        return None
    from PIL import Image

    try:  # what Image.frombuffer does for its mappable modes; RGB is stored as RGBX by PIL itself
        core = Image.core.map_buffer(buf, size, "raw", offset, (mode, 0, 1))
    except Exception:
        return None
    img = Image.new(mode, (0, 0))._new(core)
    img.readonly = 1
    return img


def _is_figure(obj: Any) -> bool:
    if not (type(obj).__module__ or "").startswith("matplotlib."):
        return False
    from matplotlib.figure import Figure

    return isinstance(obj, Figure)


def _looks_like_image_array(a: Any) -> bool:
    shape = getattr(a, "shape", ())
    return (
        str(getattr(a, "dtype", "")) == "uint8"
        and (len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4)))
        and min(shape[:2] or (0,)) > 0
    )


def _array_image(a: Any) -> Any:
    import numpy as np
    from PIL import Image

    a = np.ascontiguousarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    return Image.fromarray(a)


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException:
        return "<unprintable>"


def _timeout_message(timeout: float | None) -> str:
    return (
        f"TimeoutError: code execution exceeded the time limit of {timeout:g} s and was interrupted "
        "(the session and its variables are kept)\n"
    )


def _user_traceback(filename: str, tb: Any) -> str:
    """Format the traceback from the first frame of the user's cell on, without this module's frames
    (the alarm handler, ``display``)."""
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    if tb is None:
        return ""
    try:
        frames = [f for f in traceback.extract_tb(tb) if f.filename != _RUNTIME_FILE]
        return "".join(["Traceback (most recent call last):\n"] + traceback.format_list(frames))
    except BaseException:
        return ""


_RUNTIME_FILE = _user_traceback.__code__.co_filename
