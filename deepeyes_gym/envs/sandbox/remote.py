"""A thin client for a SandboxFusion-style ``/run_jupyter`` HTTP endpoint.

That endpoint runs a list of cells in a fresh Jupyter kernel per request, so the notebook state of
an episode is rebuilt by replaying the episode's earlier cells before the new one (only the new
cell's outputs are returned). Replay costs grow with the episode and code with side effects or
randomness may behave differently on replay: use the local sandbox where you can. Every field of
the response is treated as untrusted; a failing service becomes an error observation, never an
exception.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from typing import Any, Sequence

import numpy as np
import requests
from PIL import Image

from ..task import TaskImageError, load_image
from ..turns import clip_middle
from .base import ExecResult, SandboxBackend, image_specs

__all__ = ["RemoteSandbox"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class RemoteSandbox(SandboxBackend):
    """Per-episode session on a SandboxFusion-style service (``POST {endpoint}/run_jupyter``)."""

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = 60.0,
        memory_limit_mb: int = 4096,
        max_output_chars: int = 10_000,
        max_images: int = 10,
        max_image_pixels: int = 4096 * 4096,
        request_timeout: float | None = None,
        headers: dict[str, str] | None = None,
        session: requests.Session | None = None,
        max_response_bytes: int = 256 << 20,
    ) -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"remote sandbox endpoint must be an http(s) URL, got {endpoint!r}")
        self.url = endpoint.rstrip("/") + "/run_jupyter"
        self.timeout = float(timeout)
        self.memory_limit_mb = int(memory_limit_mb)
        self.max_output_chars = int(max_output_chars)
        self.max_images = int(max_images)
        self.max_image_pixels = int(max_image_pixels)
        self.request_timeout = request_timeout
        self.max_response_bytes = int(max_response_bytes)
        self._http = session or requests.Session()
        if headers:
            self._http.headers.update(headers)
        self._files: dict[str, str] = {}
        self._preamble: list[str] = []
        self._cells: list[str] = []

    def start(self, images: Sequence[Any] = ()) -> None:
        self.end()
        lines = []
        for i, (spec, raw) in enumerate(image_specs(images), start=1):
            buf = io.BytesIO()
            Image.frombytes(spec["mode"], (spec["w"], spec["h"]), raw).save(buf, format="PNG", compress_level=1)
            self._files[f"image_{i}.png"] = base64.b64encode(buf.getvalue()).decode()
            lines.append(f"image_{i} = _Image.open('image_{i}.png'); image_{i}.load()")
        if lines:
            self._preamble = ["from PIL import Image as _Image\n" + "\n".join(lines) + "\ndel _Image"]

    def end(self) -> None:
        self._files, self._preamble, self._cells = {}, [], []

    def run(self, code: str, timeout: float | None = None) -> ExecResult:
        timeout = self.timeout if timeout is None else float(timeout)
        cells = self._preamble + self._cells + [code]
        body = {
            "cells": cells,
            "cell_timeout": timeout,
            "total_timeout": timeout * len(cells) + 10,
            "memory_limit_MB": self.memory_limit_mb,
            "kernel": "python3",
            "files": self._files,
        }
        t0 = time.perf_counter()
        try:
            wait = self.request_timeout or (timeout * len(cells) + 30)
            with self._http.post(self.url, json=body, timeout=wait, stream=True) as resp:
                raw = resp.raw.read(self.max_response_bytes + 1, decode_content=True)
                if len(raw) > self.max_response_bytes:
                    raise ValueError("response too large")
                if resp.status_code != 200:
                    raise ValueError(f"HTTP {resp.status_code}: {raw[:300].decode('utf-8', 'replace')}")
            data = json.loads(raw)
        except (requests.RequestException, ValueError) as exc:
            return ExecResult(stderr=f"SandboxError: the remote sandbox is unavailable ({_short(exc)})\n",
                              status="crashed", seconds=time.perf_counter() - t0)
        res = self._parse(data, len(cells), timeout)
        if res.status in ("ok", "error"):
            self._cells.append(code)  # part of the state now (a failed cell may have run partly)
        res.seconds = time.perf_counter() - t0
        return res

    def _parse(self, data: Any, n_cells: int, timeout: float) -> ExecResult:
        if not isinstance(data, dict):
            return ExecResult(stderr="SandboxError: the remote sandbox sent an invalid reply\n", status="crashed")
        cells = data.get("cells")
        if data.get("status") != "Success" or not isinstance(cells, list) or len(cells) != n_cells:
            driver = data.get("driver") if isinstance(data.get("driver"), dict) else {}
            if driver.get("status") == "TimeLimitExceeded":
                return ExecResult(stderr=f"TimeoutError: code execution exceeded the time limit of {timeout:g} s\n",
                                  status="timeout")
            why = _short(data.get("message") or driver.get("stderr") or data.get("status"))
            return ExecResult(stderr=f"SandboxError: the remote sandbox failed ({why})\n", status="crashed")
        last = cells[-1] if isinstance(cells[-1], dict) else {}
        stdout = [_text(last.get("stdout"))]
        stderr = [_text(last.get("stderr"))]
        images: list[np.ndarray] = []
        dropped = 0
        for item in last.get("display") or []:
            bundle = item.get("data", item) if isinstance(item, dict) else {}
            if not isinstance(bundle, dict):
                continue
            png = bundle.get("image/png")
            if isinstance(png, str):
                if len(images) >= self.max_images:
                    dropped += 1
                    continue
                img = self._decode(png)
                if img is not None:
                    images.append(img)
            elif isinstance(bundle.get("text/plain"), str):
                stdout.append(bundle["text/plain"] + "\n")
        status = "ok"
        for err in last.get("error") or []:
            status = "error"
            if isinstance(err, dict) and isinstance(err.get("traceback"), list):
                stderr.append(_ANSI.sub("", "\n".join(map(str, err["traceback"]))) + "\n")
            elif isinstance(err, dict):
                stderr.append(f"{_text(err.get('ename'))}: {_text(err.get('evalue'))}\n")
            else:
                stderr.append(_text(err) + "\n")
        if dropped:
            stderr.append(f"[{dropped} more image(s) not returned: at most {self.max_images} per cell]\n")
        out, out_cut = clip_middle("".join(stdout), self.max_output_chars)
        err_text, err_cut = clip_middle("".join(stderr), self.max_output_chars)
        return ExecResult(stdout=out, stderr=err_text, images=images, status=status,
                          stdout_truncated=out_cut, stderr_truncated=err_cut, images_dropped=dropped)

    def _decode(self, b64: str) -> np.ndarray | None:
        try:
            img = load_image(base64.b64decode(b64, validate=False), max_pixels=4 * self.max_image_pixels)
        except (TaskImageError, ValueError):
            return None
        if img.width * img.height > self.max_image_pixels:
            s = (self.max_image_pixels / (img.width * img.height)) ** 0.5
            img = img.resize((max(1, int(img.width * s)), max(1, int(img.height * s))))
        return np.asarray(img, dtype=np.uint8)

    def close(self) -> None:
        self.end()
        self._http.close()


def _text(v: Any) -> str:
    return v if isinstance(v, str) else "" if v is None else str(v)


def _short(v: Any, n: int = 300) -> str:
    s = _text(v)
    return s if len(s) <= n else s[:n] + "..."

