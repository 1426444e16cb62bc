"""The remote (SandboxFusion-style ``/run_jupyter``) backend against a small local HTTP server.

The server behaves like the real service: each request runs all its cells in a fresh Python
process (here: the sandbox's own execution engine), with the request's files in the working
directory, and answers per-cell stdout/stderr/display/error. Markers in a cell make it fail in
the ways a real service can.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import base64
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepeyes_gym.envs.sandbox import RemoteSandbox
from deepeyes_gym.envs.tools.base import ToolContext
from deepeyes_gym.envs.tools.python import PythonTool
from httpserver import LocalServer, QuietHandler, free_port

RUNTIME = Path(__file__).resolve().parents[1] / "deepeyes_gym" / "envs" / "sandbox" / "runtime.py"

# Runs the cells of one request in a fresh interpreter, like a kernel per request.
_KERNEL = r"""
import base64, importlib.util, io, json, sys
spec = importlib.util.spec_from_file_location("rt", sys.argv[1]); rt_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rt_mod)
import matplotlib; matplotlib.use("Agg")
from PIL import Image
rt = rt_mod.Runtime()
req = json.load(sys.stdin)
out = []
for cell in req["cells"]:
    meta, blobs = rt.run(cell)
    display, off = [], 2
    for w, h in meta["images"]:
        buf = io.BytesIO(); Image.frombytes("RGB", (w, h), blobs[off]).save(buf, format="PNG"); off += 1
        display.append({"image/png": base64.b64encode(buf.getvalue()).decode(), "text/plain": "<Figure>"})
    err = blobs[1].decode()
    error = [{"ename": "Error", "evalue": "", "traceback": ["\x1b[0;31m" + err]}] if meta["status"] == "error" else []
    out.append({"stdout": blobs[0].decode(), "stderr": "" if error else err, "display": display, "error": error})
print(json.dumps(out))
"""


class _Handler(QuietHandler):
    requests: list[dict] = []

    def do_POST(self):  # noqa: N802
        req = self.json_body()
        type(self).requests.append(req)
        if self.path != "/run_jupyter":
            return self.reply(404, b"not found")
        joined = "\n".join(req["cells"])
        if "#HTTP500" in joined:
            return self.reply(500, b"internal error")
        if "#GARBAGE" in joined:
            return self.reply(200, b"<html>not json")
        if "#TIMEOUT" in joined:
            body = {"status": "Failed", "message": "", "driver": {"status": "TimeLimitExceeded"}, "cells": []}
            return self.reply(200, json.dumps(body).encode())
        with tempfile.TemporaryDirectory() as d:
            for name, b64 in req.get("files", {}).items():
                Path(d, name).write_bytes(base64.b64decode(b64))
            p = subprocess.run([sys.executable, "-c", _KERNEL, str(RUNTIME)], input=json.dumps(req).encode(),
                               capture_output=True, cwd=d, timeout=60,
                               env={**os.environ, "MPLBACKEND": "Agg", "OPENBLAS_NUM_THREADS": "1"})
        if p.returncode != 0:
            body = {"status": "SandboxError", "message": p.stderr.decode()[-500:], "cells": []}
        else:
            body = {"status": "Success", "message": "", "driver": {"status": "Finished"}, "cells": json.loads(p.stdout)}
        self.reply(200, json.dumps(body).encode())


@pytest.fixture(scope="module")
def server():
    with LocalServer(_Handler) as srv:
        yield srv.base


def _ctx() -> ToolContext:
    img = Image.fromarray(np.arange(30 * 20 * 3, dtype=np.uint8).reshape(20, 30, 3))
    return ToolContext(task_id="r", images=[img])


@pytest.mark.timeout(120)
def test_remote_state_images_and_errors(server):
    tool = PythonTool(backend=server, timeout=20)
    ctx = _ctx()
    tool.start_episode(ctx)
    assert tool.isolation_level == "remote"
    r = tool.execute("x = 41", ctx)
    assert r.error is None and r.metadata["status"] == "ok"
    _Handler.requests.clear()
    r = tool.execute("print(x + 1, image_1.size, image_1.getpixel((1, 0)))", ctx)
    assert "42 (30, 20) (3, 4, 5)" in r.text  # state by replay; the image at original resolution
    assert len(_Handler.requests[0]["cells"]) == 3 and "image_1.png" in _Handler.requests[0]["files"]
    r = tool.execute("import matplotlib.pyplot as plt\nplt.figure(figsize=(2, 1), dpi=40)\nplt.plot([1, 2])\nplt.show()", ctx)
    assert [im.shape for im in r.images] == [(40, 80, 3)] and r.images[0].dtype == np.uint8
    assert r.text.endswith("Images:\n<image>")
    r = tool.execute("1 / 0", ctx)
    assert "ZeroDivisionError" in r.text and "\x1b[" not in r.text and r.metadata["status"] == "error"
    tool.start_episode(ctx)  # a new episode replays nothing of the old one
    assert "NameError" in tool.execute("print(x)", ctx).text
    tool.close()


@pytest.mark.timeout(120)
def test_remote_failures_become_observations(server):
    tool = PythonTool(backend="sandbox_fusion", endpoint=server, timeout=20)
    ctx = _ctx()
    tool.start_episode(ctx)
    tool.execute("y = 7", ctx)
    r = tool.execute("#TIMEOUT\nwhile True: pass", ctx)
    assert r.metadata["status"] == "timeout" and "TimeoutError" in r.text and r.error
    for marker in ("#GARBAGE", "#HTTP500"):
        r = tool.execute(f"{marker}\nprint(1)", ctx)
        assert r.metadata["status"] == "crashed" and "remote sandbox is unavailable" in r.text
    assert "7" in tool.execute("print(y)", ctx).text  # failed cells were not added to the replay
    tool.close()


@pytest.mark.timeout(30)
def test_remote_unreachable_endpoint():
    sb = RemoteSandbox(f"http://127.0.0.1:{free_port()}", timeout=2, request_timeout=5)  # nothing listens there
    sb.start([])
    r = sb.run("print(1)")
    assert r.status == "crashed" and "unavailable" in r.stderr
    with pytest.raises(ValueError):
        RemoteSandbox("ftp://example")
    with pytest.raises(ValueError):
        PythonTool(backend="sandbox_fusion")


def test_remote_rejects_malformed_replies():
    sb = RemoteSandbox("http://127.0.0.1:9", max_images=1)
    assert sb._parse([], 1, 1.0).status == "crashed"
    assert sb._parse({"status": "Success", "cells": [{}]}, 2, 1.0).status == "crashed"
    png = Image.new("RGB", (3, 2))
    import io

    buf = io.BytesIO()
    png.save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    cell = {"stdout": 5, "stderr": None, "display": [{"image/png": b64}, {"image/png": b64}, {"image/png": "%%%"}, "x"],
            "error": ["boom"]}
    r = sb._parse({"status": "Success", "cells": [cell]}, 1, 1.0)
    assert r.stdout == "5" and len(r.images) == 1 and r.images[0].shape == (2, 3, 3)
    assert r.images_dropped == 2 and "boom" in r.stderr and r.status == "error"
