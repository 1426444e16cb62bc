"""Latency and throughput of the code sandbox, measured against baselines in the same run.

Backends, for two code turns (tiny: crop a 1000x1000 image to 200x200 and print its size; heavy:
crop 400x400 of a 2000x2000 image, resize, ``plt.imshow`` + ``plt.show()`` so an image comes back):

* ``sandbox``: the ``python`` tool on its local sandbox (what the env calls);
* ``inprocess``: the same execution engine run by ``exec`` in this process (the unsafe floor);
* ``subprocess``: a fresh ``python -c`` per call (numpy/PIL/matplotlib imported each time);
* ``jupyter``: one Jupyter kernel per episode (only if ``jupyter_client`` and ``ipykernel`` import).

Each turn exists in two variants: ``selfcontained`` (the code builds its input image, so a fresh
subprocess can run it too) and ``image_1`` (the code uses the preloaded input image, as the model
does). Backends are measured round-robin so load changes on the machine hit them alike. Also
measured: ``reset()`` of the tool from a warm pool, turns/s with 1 vs 8 concurrent episodes, and 16
parallel episodes (must finish, leave no worker process). Writes JSON + Markdown.

    python benchmarks/sandbox_latency.py [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import base64
import importlib
import importlib.util
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deepeyes_gym.envs.sandbox import isolation_report  # noqa: E402
from deepeyes_gym.envs.sandbox.runtime import Runtime  # noqa: E402
from deepeyes_gym.envs.tools.base import ToolContext  # noqa: E402
from deepeyes_gym.envs.tools.python import PythonTool, format_code_observation  # noqa: E402

_MAKE = "import numpy as np\nfrom PIL import Image\nimg = Image.fromarray(np.random.default_rng(0).integers(0, 256, ({n}, {n}, 3), dtype=np.uint8))\n"
TURNS = {
    ("tiny", "selfcontained"): _MAKE.format(n=1000) + "crop = img.crop((400, 400, 600, 600))\nprint(crop.size)\n",
    ("heavy", "selfcontained"): _MAKE.format(n=2000)
    + "import matplotlib.pyplot as plt\ncrop = img.crop((800, 800, 1200, 1200)).resize((800, 800))\nplt.imshow(crop)\nplt.show()\n",
    ("tiny", "image_1"): "crop = image_1.crop((400, 400, 600, 600))\nprint(crop.size)\n",
    ("heavy", "image_1"): "import matplotlib.pyplot as plt\ncrop = image_1.crop((800, 800, 1200, 1200)).resize((800, 800))\nplt.imshow(crop)\nplt.show()\n",
}
IMAGE_SIDE = {"tiny": 1000, "heavy": 2000}
ISSUE_REFERENCE = {  # quoted from the issue for scale; NOT measured by this script
    "heavy turn, DeepEyesV2-recommended sandbox server": "650 ms p50, 946 ms p95, 1.33 turns/s with 8 sessions",
}


def _image(side: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8))


def _stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]  # noqa: E731
    return {"p50_ms": 1000 * statistics.median(xs), "p95_ms": 1000 * q(0.95), "mean_ms": 1000 * statistics.fmean(xs), "n": len(xs)}


# ---- backends: each is "set up an episode with image(s)" + "run a turn" ------------------------


class InProcess:
    name = "inprocess"

    def start(self, img: Image.Image) -> None:
        self.rt = Runtime()
        spec = [{"w": img.width, "h": img.height, "mode": img.mode}]
        self.rt.load_images(spec, img.tobytes())
        importlib.import_module("matplotlib.pyplot")  # the sandbox preloads it too

    def run(self, code: str) -> int:
        meta, blobs = self.rt.run(code, timeout=None)
        imgs = [np.frombuffer(b, np.uint8).reshape(h, w, 3) for (w, h), b in zip(meta["images"], blobs[2:])]
        format_code_observation(blobs[0].decode(), blobs[1].decode(), len(imgs))
        return len(imgs)


class Sandbox:
    name = "sandbox"

    def __init__(self) -> None:
        self.tool = PythonTool(timeout=60)
        self.tool.warm_up()

    def start(self, img: Image.Image) -> None:
        self.tool.end_episode()
        self.tool.start_episode(ToolContext(task_id="bench", images=[img]))

    def run(self, code: str) -> int:
        r = self.tool.execute(code, ToolContext(task_id="bench", images=[]))
        assert r.error is None, r.text
        return len(r.images)


class FreshSubprocess:
    """``python -c`` per call: interpreter start + imports + the same engine, images on stdout."""

    name = "subprocess"
    _SCRIPT = (
        "import sys, json, numpy, PIL.Image, matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot\n"
        "{runtime}\nrt = Runtime()\nmeta, blobs = rt.run(sys.argv[1])\n"
        "sys.stdout.buffer.write(json.dumps(meta).encode() + b'\\n' + b''.join(blobs))\n"
    )

    def __init__(self) -> None:
        src = (ROOT / "deepeyes_gym/envs/sandbox/runtime.py").read_text()
        self.script = self._SCRIPT.format(runtime=src.replace("from __future__ import annotations", ""))

    def start(self, img: Image.Image) -> None:
        pass

    def run(self, code: str) -> int:
        p = subprocess.run([sys.executable, "-c", self.script, code], capture_output=True, timeout=120,
                           env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
        head, _, body = p.stdout.partition(b"\n")
        meta = json.loads(head)
        off = meta["stdout"] + meta["stderr"]
        n = 0
        for w, h in meta["images"]:
            np.frombuffer(body, np.uint8, w * h * 3, off).reshape(h, w, 3)
            off += w * h * 3
            n += 1
        return n


class Jupyter:
    """One IPython kernel per episode (jupyter_client); figures come back as PNG (inline backend)."""

    name = "jupyter"

    def __init__(self) -> None:
        for mod in ("jupyter_client", "ipykernel"):
            if importlib.util.find_spec(mod) is None:
                raise ImportError(f"{mod} is not installed")
        self.km = None
        self.start_seconds: list[float] = []

    def start(self, img: Image.Image) -> None:
        from jupyter_client.manager import KernelManager

        if self.km is not None:
            self.kc.stop_channels()
            self.km.shutdown_kernel(now=True)
        t0 = time.perf_counter()
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=1)
        b64 = base64.b64encode(buf.getvalue()).decode()
        self._exec("import io, base64\nimport numpy, matplotlib.pyplot\nfrom PIL import Image\n"
                   f"image_1 = Image.open(io.BytesIO(base64.b64decode('{b64}'))); image_1.load()")
        self.start_seconds.append(time.perf_counter() - t0)

    def _exec(self, code: str) -> list[np.ndarray]:
        msg_id = self.kc.execute(code, store_history=False)
        imgs = []
        while True:
            msg = self.kc.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            t, c = msg["msg_type"], msg["content"]
            if t in ("display_data", "execute_result") and "image/png" in c.get("data", {}):
                png = base64.b64decode(c["data"]["image/png"])
                imgs.append(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))
            elif t == "error":
                raise RuntimeError("\n".join(c["traceback"]))
            elif t == "status" and c["execution_state"] == "idle":
                return imgs

    def run(self, code: str) -> int:
        return len(self._exec(code))

    def close(self) -> None:
        if self.km is not None:
            self.kc.stop_channels()
            self.km.shutdown_kernel(now=True)


# ---- measurements ---------------------------------------------------------------------------


def measure_turns(backends: list[Any], n: dict[str, int], slow_every: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for (size, variant), code in TURNS.items():
        img = _image(IMAGE_SIDE[size])
        active = [b for b in backends if not (variant == "image_1" and b.name == "subprocess")]
        for b in active:
            b.start(img)
            b.run(code)  # warm-up
        times: dict[str, list[float]] = {b.name: [] for b in active}
        for i in range(n[size]):
            for b in active:
                if b.name == "subprocess" and i % slow_every:
                    continue
                t0 = time.perf_counter()
                b.run(code)
                times[b.name].append(time.perf_counter() - t0)
        key = f"{size}/{variant}"
        out[key] = {name: _stats(ts) for name, ts in times.items()}
        floor = out[key]["inprocess"]["p50_ms"]
        for name, s in out[key].items():
            s["ratio_to_floor_p50"] = s["p50_ms"] / floor
        print(f"  {key:20s} " + "  ".join(f"{k}={v['p50_ms']:.2f}ms" for k, v in out[key].items()), flush=True)
    return out


def measure_reset(tool: PythonTool, n: int) -> dict[str, Any]:
    from deepeyes_gym.envs.sandbox.pool import acquire_pool, release_pool

    out = {}
    pool = acquire_pool(tool.config)
    try:
        for side in (1000, 2000):
            ctx = ToolContext(task_id="bench", images=[_image(side)])
            ts = []
            for _ in range(n):
                tool.end_episode()
                deadline = time.monotonic() + 10
                while len(pool._idle) < pool.target and time.monotonic() < deadline:  # warm pool
                    time.sleep(0.005)
                t0 = time.perf_counter()
                tool.start_episode(ctx)
                ts.append(time.perf_counter() - t0)
            out[f"{side}x{side}"] = _stats(ts)
            print(f"  reset {side}x{side}: p50={out[f'{side}x{side}']['p50_ms']:.2f}ms", flush=True)
    finally:
        release_pool(pool)
    return out


def measure_throughput(concurrency: int, episodes: int, turns: int) -> dict[str, Any]:
    """``episodes`` episodes in total (reset + ``turns`` heavy turns each) over ``concurrency`` threads."""
    tools = [PythonTool(timeout=60) for _ in range(concurrency)]
    for t in tools:
        t.warm_up()
    img = _image(2000)
    code = TURNS[("heavy", "image_1")]
    per = [episodes // concurrency + (1 if i < episodes % concurrency else 0) for i in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)
    errors: list[str] = []

    def work(tool: PythonTool, k: int) -> None:
        ctx = ToolContext(task_id="bench", images=[img])
        barrier.wait()
        for _ in range(k):
            tool.start_episode(ctx)
            for _ in range(turns):
                r = tool.execute(code, ctx)
                if r.error or len(r.images) != 1:
                    errors.append(r.text[-300:])
            tool.end_episode()

    threads = [threading.Thread(target=work, args=(t, k)) for t, k in zip(tools, per)]
    for th in threads:
        th.start()
    time.sleep(0.5)  # let the pools settle before the clock starts
    barrier.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    for t in tools:
        t.close()
    n_turns = episodes * turns
    return {"concurrency": concurrency, "episodes": episodes, "turns": n_turns, "seconds": wall,
            "turns_per_s": n_turns / wall, "errors": errors[:3]}


def _inprocess_turns(turns: int) -> float:
    """Seconds for ``turns`` heavy image_1 turns executed in this process (no sandbox)."""
    backend = InProcess()
    backend.start(_image(2000))
    t0 = time.perf_counter()
    for _ in range(turns):
        backend.run(TURNS[("heavy", "image_1")])
    return time.perf_counter() - t0


def measure_machine_ceiling(turns: int) -> dict[str, Any]:
    """How far the machine itself scales the heavy turn: the unsafe in-process floor in 1 vs 2
    forked processes. No sandbox can beat this; the sandbox's 8-way speed-up is judged against it."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        one = pool.map(_inprocess_turns, [turns])[0]
    with ctx.Pool(2) as pool:
        t0 = time.perf_counter()
        pool.map(_inprocess_turns, [turns, turns])
        two = time.perf_counter() - t0
    return {"turns_per_s_1": turns / one, "turns_per_s_2": 2 * turns / two, "speedup": (2 * turns / two) / (turns / one)}


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def parallel_16(timeout: float = 300.0) -> dict[str, Any]:
    before = set(_descendants(os.getpid()))
    tools = [PythonTool(timeout=30) for _ in range(16)]
    img = _image(1000)
    done: list[int] = []
    errors: list[str] = []

    def work(i: int) -> None:
        ctx = ToolContext(task_id=f"p{i}", images=[img])
        try:
            for ep in range(2):
                tools[i].start_episode(ctx)
                tools[i].execute(f"x = {i * 10 + ep}", ctx)
                r = tools[i].execute("print(x)\n" + TURNS[("heavy", "image_1")], ctx)
                if r.error or f"{i * 10 + ep}" not in r.text or len(r.images) != 1:
                    errors.append(r.text[-300:])
                tools[i].end_episode()
            done.append(i)
        except Exception as exc:
            errors.append(repr(exc))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(max(0.0, timeout - (time.perf_counter() - t0)))
    wall = time.perf_counter() - t0
    for t in tools:
        t.close()
    time.sleep(0.5)
    left = [p for p in _descendants(os.getpid()) if p not in before]
    return {"episodes": 32, "finished_threads": len(done), "deadlock": len(done) != 16, "seconds": wall,
            "errors": errors[:3], "processes_left_after_close": len(left)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    ap.add_argument("--no-jupyter", action="store_true")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    n = {"tiny": 10, "heavy": 6} if args.quick else {"tiny": 60, "heavy": 30}
    rep = isolation_report()
    print(rep.format(), flush=True)
    backends: list[Any] = [InProcess(), Sandbox(), FreshSubprocess()]
    jupyter_note = "not measured (--no-jupyter)"
    if not args.no_jupyter:
        try:
            backends.append(Jupyter())
            import jupyter_client

            jupyter_note = f"jupyter_client {jupyter_client.__version__}"
        except ImportError as exc:
            jupyter_note = f"not measured: {exc}"
    print("turn latency:", flush=True)
    turns = measure_turns(backends, n, slow_every=4 if not args.quick else 3)
    jup = next((b for b in backends if b.name == "jupyter"), None)
    kernel_start = _stats(jup.start_seconds) if jup and jup.start_seconds else None
    if jup:
        jup.close()
    print("reset:", flush=True)
    reset = measure_reset(backends[1].tool, 8 if args.quick else 30)
    backends[1].tool.close()
    print("throughput:", flush=True)
    eps = 8 if args.quick else 24
    throughput = {}
    for turns_per_episode in (3, 9):  # a typical DeepEyesV2 episode, and its turn budget
        tp1 = measure_throughput(1, eps, turns_per_episode)
        tp8 = measure_throughput(8, eps, turns_per_episode)
        throughput[f"{turns_per_episode}_turns_per_episode"] = {
            "1": tp1, "8": tp8, "speedup": tp8["turns_per_s"] / tp1["turns_per_s"]}
        print(f"  {turns_per_episode} turns/episode: 1: {tp1['turns_per_s']:.2f} turns/s   "
              f"8: {tp8['turns_per_s']:.2f} turns/s", flush=True)
    ceiling = measure_machine_ceiling(12 if args.quick else 40)
    print(f"  machine ceiling (in-process floor, 1 vs 2 processes): {ceiling['speedup']:.2f}x", flush=True)
    for t in throughput.values():
        t["fraction_of_ceiling"] = t["speedup"] / ceiling["speedup"]
    print("16 parallel episodes:", flush=True)
    par = parallel_16()
    print(f"  {par}", flush=True)

    targets = {
        # The issue's two turns make their image in the cell (its quoted ~12 ms tiny floor includes
        # that); the image_1 rows are extra micro-turns on the preloaded image, reported as measured.
        "turn p50 <= 1.3x in-process floor (the issue's turns)": {
            k: v["sandbox"]["ratio_to_floor_p50"] <= 1.3 for k, v in turns.items() if k.endswith("selfcontained")},
        "turn p50 <= 1.3x in-process floor (extra image_1 micro-turns)": {
            k: v["sandbox"]["ratio_to_floor_p50"] <= 1.3 for k, v in turns.items() if k.endswith("image_1")},
        "reset p50 <= 20 ms (warm pool)": {k: v["p50_ms"] <= 20 for k, v in reset.items()},
        "8 concurrent >= 1.6x single-episode throughput": {k: v["speedup"] >= 1.6 for k, v in throughput.items()},
        "16 parallel: no deadlock, no process left": (not par["deadlock"]) and par["processes_left_after_close"] == 0,
    }
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "isolation": {"level": rep.level, "not_enforced": rep.not_enforced},
        "jupyter": jupyter_note,
        "turns": turns,
        "jupyter_kernel_start": kernel_start,
        "reset": reset,
        "throughput": throughput,
        "machine_ceiling": ceiling,
        "parallel_16": par,
        "targets_met": targets,
        "issue_reference_not_measured": ISSUE_REFERENCE,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sandbox_latency.json").write_text(json.dumps(result, indent=2))
    (out / "sandbox_latency.md").write_text(render_md(result))
    print((out / "sandbox_latency.md").read_text())


def render_md(r: dict[str, Any]) -> str:
    lines = ["# Code sandbox latency", "",
             f"Machine: {r['machine']['cpus']} CPUs, Python {r['machine']['python']}. Isolation level: "
             f"**{r['isolation']['level']}**. Jupyter baseline: {r['jupyter']}.", "",
             "## Code turns (ms; ratio = p50 / in-process p50, same run, round-robin)", "",
             "| turn | backend | p50 | p95 | ratio |", "|---|---|---:|---:|---:|"]
    for key, backends in r["turns"].items():
        for name, s in backends.items():
            lines.append(f"| {key} | {name} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | {s['ratio_to_floor_p50']:.2f}x |")
    lines += ["", "## reset() of the python tool from a warm pool (ms)", "", "| input image | p50 | p95 |", "|---|---:|---:|"]
    for k, s in r["reset"].items():
        lines.append(f"| {k} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} |")
    if r["jupyter_kernel_start"]:
        s = r["jupyter_kernel_start"]
        lines.append(f"| (Jupyter: new kernel + image per episode) | {s['p50_ms']:.0f} | {s['p95_ms']:.0f} |")
    lines += ["", "## Throughput (heavy image_1 turns; every episode = reset with a 2000x2000 image + N turns)", "",
              "| turns per episode | concurrent episodes | turns | seconds | turns/s | speed-up |",
              "|---:|---:|---:|---:|---:|---:|"]
    for key, t in r["throughput"].items():
        n = key.split("_")[0]
        for k in ("1", "8"):
            sp = f"{t['speedup']:.2f}x" if k == "8" else ""
            lines.append(f"| {n} | {k} | {t[k]['turns']} | {t[k]['seconds']:.2f} | {t[k]['turns_per_s']:.2f} | {sp} |")
    c = r["machine_ceiling"]
    lines += ["", f"Machine ceiling, same run: the unsafe in-process floor runs the heavy turn at "
              f"{c['turns_per_s_1']:.2f} turns/s in one process and {c['turns_per_s_2']:.2f} turns/s in two, "
              f"a {c['speedup']:.2f}x speed-up. The sandbox's 8-way speed-up is "
              + ", ".join(f"{t['fraction_of_ceiling']:.0%} of it ({k.split('_')[0]} turns/episode)"
                          for k, t in r["throughput"].items()) + "."]
    lines += ["",
              "## 16 parallel episodes", "", f"`{json.dumps(r['parallel_16'])}`", "", "## Targets", ""]
    for k, v in r["targets_met"].items():
        lines.append(f"- {k}: {json.dumps(v)}")
    lines += ["", "Reference numbers quoted in the issue (not measured here): "
              + "; ".join(f"{k}: {v}" for k, v in r["issue_reference_not_measured"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
