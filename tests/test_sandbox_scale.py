"""The sandbox at rollout-batch scale: prewarm and pipelined spawning, the idle memory budget,
async acquire, abort, and one shared read-only copy of a task's images per task."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from deepeyes_gym.envs.sandbox import LocalSandbox, SandboxAborted, SandboxConfig, images
from deepeyes_gym.envs.sandbox.base import ExecResult, SandboxBackend
from deepeyes_gym.envs.tools.base import ToolContext, ToolError
from deepeyes_gym.envs.tools.python import PythonTool
from test_sandbox_node import private_node  # noqa: F401  (fixture)
from procs import alive

pytestmark = pytest.mark.filterwarnings("ignore::deepeyes_gym.envs.sandbox.SandboxIsolationWarning")


def _img(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _until(cond, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def _md5(img: Image.Image) -> str:
    return hashlib.md5(img.tobytes()).hexdigest()


# ---- pool sizing -------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_prewarm_pipelines_spawns_and_is_not_capped_at_16():
    sb = LocalSandbox(SandboxConfig(pool_size=0, idle_memory_mb=4096, max_output_chars=4101))
    try:
        pool = sb.pool
        assert pool.prewarm(24, timeout=100) == 24
        st = pool.stats()
        assert st["idle"] == 24 and st["idle_cap"] >= 24 and st["worker_bytes_measured"]
        assert st["peak_in_flight"] >= 2  # several spawn requests were outstanding at once
        idle = list(pool._idle)
        assert len({w.pid for w in idle}) == 24 and all(w.alive() for w in idle)
        pool.prewarm(0)  # back to max(pool_size, sessions) = 1: the others are freed
        assert _until(lambda: pool.stats()["idle"] == 1)
        assert _until(lambda: sum(alive(w.pid) for w in idle) == 1)
    finally:
        sb.close()


@pytest.mark.timeout(120)
def test_idle_workers_are_bounded_by_the_memory_budget():
    sb = LocalSandbox(SandboxConfig(pool_size=0, idle_memory_mb=12, max_output_chars=4102), timeout=10)
    try:
        pool = sb.pool
        pool.prewarm(10, timeout=60)
        st = pool.stats()
        cap = (12 << 20) // st["worker_bytes"]
        assert st["worker_bytes_measured"] and st["idle_budget_bytes"] == 12 << 20
        assert st["idle_cap"] == max(1, cap) < 10 and st["idle"] <= st["idle_cap"]
        # the budget bounds idle workers only: sessions beyond it still get theirs
        extra = [LocalSandbox(sb.config, timeout=10) for _ in range(st["idle_cap"] + 2)]
        for e in extra:
            e.start([])
        assert all("ok" in e.run("print('ok')").stdout for e in extra)
        for e in extra:
            e.close()
    finally:
        sb.close()


# ---- async acquire -----------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_async_acquire_waits_without_blocking_the_event_loop():
    sb = LocalSandbox(SandboxConfig(pool_size=0, max_output_chars=4103), timeout=10)
    pool = sb.pool
    img = _img(40, 30, seed=3)

    async def main():
        tasks = [asyncio.ensure_future(pool.acquire_async(timeout=60)) for _ in range(6)]
        await asyncio.sleep(0)  # one loop turn: a blocking acquire would have finished them all
        pending_after_one_turn = sum(not t.done() for t in tasks)
        workers = await asyncio.gather(*tasks)
        await sb.start_async([img], key="async-task")
        return pending_after_one_turn, workers

    try:
        pending, workers = asyncio.run(main())
        assert pending >= 5  # at most the one idle worker was handed out at once
        assert len({w.pid for w in workers}) == 6 and all(w.alive() for w in workers)
        for w in workers:
            pool.discard(w)
        assert sb.run("print(image_1.size)").stdout.strip() == "(40, 30)"
    finally:
        sb.close()


# ---- abort -------------------------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_abort_kills_a_running_cell_without_waiting_for_it():
    t = PythonTool(timeout=60, pool_size=1, max_output_chars=4104)
    ctx = ToolContext(task_id="abort", images=[_img(8, 8)])
    try:
        t.start_episode(ctx)
        pid = t.backend.worker_pid
        out: dict = {}
        th = threading.Thread(target=lambda: out.update(r=t.execute("import time\ntime.sleep(60)", ctx)))
        th.start()
        time.sleep(0.3)  # let the cell start (an abort before it runs is covered too)
        t.abort()  # from another thread, while execute() holds the tool's lock: must not wait for it
        th.join(20)
        assert not th.is_alive(), "abort waited for the running cell"
        assert out["r"].metadata["status"] == "aborted" and out["r"].error == "the episode was aborted"
        assert _until(lambda: not alive(pid), 5)
        with pytest.raises(ToolError, match="aborted"):  # the aborted episode runs nothing more
            t.execute("print(1)", ctx)
        t.start_episode(ctx)  # the next episode starts normally
        assert "(8, 8)" in t.execute("print(image_1.size)", ctx).text
    finally:
        t.close()


@pytest.mark.timeout(60)
def test_abort_cancels_a_wait_for_a_worker():
    sb = LocalSandbox(SandboxConfig(pool_size=0, max_output_chars=4105), timeout=5)
    pool = sb.pool
    pool._launch = lambda: None  # no worker will ever come up
    while pool.stats()["idle"] or pool.stats()["spawning"]:
        if pool.stats()["idle"]:
            pool.discard(pool.acquire())
        time.sleep(0.01)
    err: list = []
    th = threading.Thread(target=lambda: err.append(pytest.raises(SandboxAborted, sb.start, [_img(4, 4)], key="w")))
    try:
        th.start()
        assert _until(lambda: pool.stats()["waiting"] == 1)
        sb.abort()
        th.join(20)
        assert not th.is_alive() and err and pool.stats()["waiting"] == 0
        del pool._launch
        sb.start([_img(4, 4)])
        assert sb.run("print(image_1.size)").stdout.strip() == "(4, 4)"
    finally:
        sb.close()


class _Gate(SandboxBackend):
    """A backend whose cells wait for a gate (to hold a running slot as long as a test needs)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.running = threading.Event()

    def start(self, images):
        pass

    def run(self, code, timeout=None):
        self.running.set()
        self.gate.wait(30)
        return ExecResult(stdout="ran")

    def end(self):
        pass


@pytest.mark.timeout(60)
def test_abort_cancels_a_wait_for_a_running_slot(private_node):
    held, queued = _Gate(), _Gate()
    holder, waiter = PythonTool(backend=held, max_running_cells=1), PythonTool(backend=queued, max_running_cells=1)
    ctx = ToolContext(task_id="slot", images=[])
    out: dict = {}

    def wait_for_slot():
        try:
            out["r"] = waiter.execute("print(1)", ctx)
        except ToolError as exc:
            out["err"] = str(exc)

    th1 = threading.Thread(target=lambda: holder.execute("x", ctx))
    th1.start()
    assert held.running.wait(20)
    th2 = threading.Thread(target=wait_for_slot)
    th2.start()
    assert _until(lambda: waiter._ticket is not None)
    waiter.abort()  # while its execute() waits for the slot, holding the tool's lock
    th2.join(20)
    assert not th2.is_alive() and "aborted" in out.get("err", "") and not queued.running.is_set()
    held.gate.set()
    th1.join(20)
    queued.gate.set()
    waiter.start_episode(ctx)  # the slot it never got is free: the next episode runs
    assert "ran" in waiter.execute("print(1)", ctx).text


# ---- shared input images -----------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_episodes_of_one_task_share_one_sealed_copy_of_its_images():
    img, same_id_other_pixels = _img(300, 200, seed=1), _img(300, 200, seed=2)
    cfg = SandboxConfig(pool_size=3, max_output_chars=4106)
    before = images.live_entries()
    a, b, c = (LocalSandbox(cfg, timeout=10) for _ in range(3))
    try:
        a.start([img], key="task-1")
        b.start([img], key="task-1")
        c.start([same_id_other_pixels], key="task-1")  # same task id, other objects: never mixed up
        assert a._state.images is b._state.images and c._state.images is not a._state.images
        assert images.live_entries() == before + 2
        fd = a._state.images.fd
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"x", 0)
        digest = "import hashlib\nprint(hashlib.md5(image_1.tobytes()).hexdigest())"
        assert a.run(digest).stdout.strip() == b.run(digest).stdout.strip() == _md5(img)
        assert c.run(digest).stdout.strip() == _md5(same_id_other_pixels)
        # the workers map the shared pixels; a change is copy-on-write, never seen by the other
        r = a.run("from PIL import ImageDraw\nprint(image_1.readonly)\nImageDraw.Draw(image_1).rectangle((0, 0, 9, 9), fill=(255, 0, 0))\nprint(image_1.getpixel((1, 1)))")
        assert r.stdout.split() == ["1", "(255,", "0,", "0)"], r.stdout + r.stderr
        assert b.run(digest).stdout.strip() == _md5(img)
        assert a.run("import os\nos._exit(3)").restarted  # a restart reloads from the shared copy
        assert a.run(digest).stdout.strip() == _md5(img)
        a.end()
        assert images.live_entries() == before + 2  # b still uses it
        b.end()
        c.end()
        assert images.live_entries() == before
    finally:
        for s in (a, b, c):
            s.close()


@pytest.mark.timeout(60)
def test_the_tool_shares_images_by_task_id():
    img = _img(64, 48, seed=4)
    tools = [PythonTool(timeout=10, pool_size=2, max_output_chars=4107) for _ in range(2)]
    try:
        for t in tools:
            t.start_episode(ToolContext(task_id="group-7", images=[img]))
        assert tools[0].backend._state.images is tools[1].backend._state.images
        assert all("(64, 48)" in t.execute("print(image_1.size)", ToolContext("group-7", [img])).text for t in tools)
    finally:
        for t in tools:
            t.close()


@pytest.mark.timeout(120)
def test_prewarm_sandbox_fills_the_pool_that_envs_with_the_same_kwargs_use():
    from deepeyes_gym.envs.tools.python import _PINNED, prewarm_sandbox

    kw = {"timeout": 10, "max_output_chars": 4108, "pool_size": 0}
    assert prewarm_sandbox(5, wait=100, **kw) == 5
    pinned = _PINNED[-1]
    try:
        pool = pinned.backend.pool
        ready = {w.pid for w in pool._idle}
        t = PythonTool(**kw)  # what gym.make(..., tool_kwargs={"python": kw}) builds
        t.start_episode(ToolContext(task_id="p", images=[]))
        assert t.backend.pool is pool and t.backend.worker_pid in ready
        t.close()
        assert PythonTool(backend=_Gate()).prewarm(4) == 0  # nothing to prewarm for other backends
    finally:
        _PINNED.remove(pinned)
        pinned.close()


@pytest.mark.timeout(60)
def test_workers_whose_fds_pass_fd_setsize_still_work():
    """Hundreds of live workers put the parent's fds past 1024, where select() gives up."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if min(soft, hard) < 1400:
        pytest.skip(f"RLIMIT_NOFILE {soft} is too low to hold 1100 fds")
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        t = PythonTool(timeout=10, pool_size=1, max_output_chars=4109)
        ctx = ToolContext(task_id="fds", images=[_img(6, 5)])
        t.start_episode(ctx)
        assert t.backend._state.worker.resp_r > 1024
        assert "(6, 5)" in t.execute("print(image_1.size)", ctx).text
        t.start_episode(ctx)  # takes an idle worker: its liveness check must not use select()
        assert "(6, 5)" in t.execute("print(image_1.size)", ctx).text
        t.close()
    finally:
        for fd in filler:
            os.close(fd)
