"""The python code tool on the local sandbox: notebook semantics, protocol output, hostile code.

Every test is bounded (pytest-timeout plus small sandbox limits). Tests that need namespace
isolation are skipped, with the level named, where the machine only allows a weaker level.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import struct
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepeyes_gym.envs.sandbox import SandboxIsolationWarning
from deepeyes_gym.envs.tools.base import ToolContext, ToolError
from deepeyes_gym.envs.tools.python import PythonTool, format_code_observation
from procs import alive

MARKER = "checkout-secret-" + "5c1e7d"  # split so the code sent to the sandbox never contains it
TIMEOUT = 1.5
GRACE = 1.0
MAX_PROCS = 32

pytestmark = pytest.mark.filterwarnings("ignore::deepeyes_gym.envs.sandbox.SandboxIsolationWarning")


def _img(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


@pytest.fixture(scope="module")
def tool():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SandboxIsolationWarning)
        t = PythonTool(timeout=TIMEOUT, hard_timeout_grace=GRACE, max_processes=MAX_PROCS, memory_limit_mb=2048,
                       max_file_size_mb=16, tmp_size_mb=32, max_output_chars=4000, pool_size=2)
        t.warm_up()
    yield t
    t.close()


@pytest.fixture
def ctx(tool):
    c = ToolContext(task_id="t1", images=[_img(64, 48), _img(20, 10, "L", seed=1)])
    tool.start_episode(c)
    yield c
    tool.end_episode()


def run(tool: PythonTool, code: str, ctx: ToolContext):
    return tool.execute(tool.parse(code), ctx)


def level(tool: PythonTool) -> str:
    return tool.isolation_level


def needs_namespaces(tool: PythonTool) -> None:
    if level(tool) not in ("bwrap", "unshare"):
        pytest.skip(f"not enforced at isolation level {level(tool)!r} (see isolation_report())")


def _wait_dead(pids: list[int], seconds: float = 5.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        living = [p for p in pids if alive(p)]
        if not living:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


# ---- protocol output ------------------------------------------------------------------------


def test_observation_template_is_exact():
    assert format_code_observation("hi\n", "", 0) == "Code execution result:\nstdout:\n```\nhi\n\n```\n\nstderr:\n```\n\n```"
    assert format_code_observation("", "err", 2) == (
        "Code execution result:\nstdout:\n```\n\n```\n\nstderr:\n```\nerr\n```\n\nImages:\n<image><image>"
    )


@pytest.mark.timeout(30)
def test_print_and_template(tool, ctx):
    r = run(tool, "print('hello', 6 * 7)", ctx)
    assert r.text == format_code_observation("hello 42\n", "", 0)
    assert r.error is None and r.images == [] and r.metadata["status"] == "ok"


@pytest.mark.timeout(30)
def test_input_images_original_resolution(tool, ctx):
    r = run(tool, "print(image_1.size, image_1.mode, image_2.size, image_2.mode)\nprint(list(image_1.getdata())[:2])", ctx)
    assert "(64, 48) RGB (20, 10) L" in r.text
    expected = [tuple(int(v) for v in px) for px in np.asarray(ctx.images[0])[0, :2]]
    assert str(expected) in r.text


@pytest.mark.timeout(30)
def test_plt_show_and_display_return_images(tool, ctx):
    code = (
        "import matplotlib.pyplot as plt\n"
        "plt.figure(figsize=(2, 1), dpi=50)\nplt.imshow(image_1)\nplt.show()\n"
        "display(image_1.crop((0, 0, 16, 8)))\n"
        "import numpy as np\ndisplay(np.zeros((5, 7, 3), dtype=np.uint8))\n"
    )
    r = run(tool, code, ctx)
    assert [im.shape for im in r.images] == [(50, 100, 3), (8, 16, 3), (5, 7, 3)]
    assert all(im.dtype == np.uint8 for im in r.images)
    assert r.text.endswith("Images:\n<image><image><image>")
    np.testing.assert_array_equal(r.images[1], np.asarray(ctx.images[0].crop((0, 0, 16, 8))))


@pytest.mark.timeout(30)
def test_open_figures_and_image_cap(tool, ctx):
    r = run(tool, "import matplotlib.pyplot as plt\nfor i in range(12):\n    plt.figure(figsize=(1, 1), dpi=20)\n", ctx)
    assert len(r.images) == 10 and r.text.count("<image>") == 10
    assert "2 more image(s) not returned" in r.text
    assert run(tool, "import matplotlib.pyplot as plt\nprint(len(plt.get_fignums()))", ctx).text.count("\n0\n") == 1


@pytest.mark.timeout(30)
def test_trailing_expression_and_image_token_neutralised(tool, ctx):
    r = run(tool, "print('<image>')\n1 + 1", ctx)
    assert "[image]\n2\n" in r.text and "<image>" not in r.text and r.images == []


def test_parse_rejects_bad_code(tool):
    for bad in (None, 3, "", "   \n", b"print(1)"):
        with pytest.raises(ToolError):
            tool.parse(bad)
    assert tool.parse({"code": "x=1"}) == "x=1"
    with pytest.raises(ToolError):
        tool.parse({"code": "x=1", "other": 2})


# ---- notebook state -------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_state_persists_across_turns(tool, ctx):
    run(tool, "import math\nx = 20\ndef f(v):\n    return v + x", ctx)
    r = run(tool, "print(f(22), math.pi > 3)", ctx)
    assert "42 True" in r.text


@pytest.mark.timeout(30)
def test_no_state_across_episodes(tool, ctx):
    run(tool, "secret = 'leak'\nimport json\njson.dumps = None\nopen('/tmp/left-behind', 'w').write('x')", ctx)
    pid1 = tool.backend.worker_pid
    tool.start_episode(ToolContext(task_id="t2", images=[]))
    assert tool.backend.worker_pid != pid1
    r = run(tool, "import os, json\nprint(json.dumps([1]), os.path.exists('/tmp/left-behind'), 'image_1' in globals())\nsecret", ctx)
    assert "[1] False False" in r.text and "NameError" in r.text
    assert not _wait_dead([pid1]), "the previous episode's worker is still alive"


@pytest.mark.timeout(30)
def test_delete_image_1(tool, ctx):
    assert run(tool, "del image_1", ctx).metadata["status"] == "ok"
    r = run(tool, "print(image_1.size)", ctx)
    assert "NameError" in r.text and r.metadata["status"] == "error"
    assert "(20, 10)" in run(tool, "print(image_2.size)", ctx).text
    tool.start_episode(ctx)
    assert "(64, 48)" in run(tool, "print(image_1.size)", ctx).text


# ---- time limits ----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_infinite_loop_soft_timeout_keeps_session(tool, ctx):
    run(tool, "kept = 'yes'", ctx)
    pid = tool.backend.worker_pid
    t0 = time.monotonic()
    r = run(tool, "while True:\n    pass", ctx)
    assert time.monotonic() - t0 < TIMEOUT + GRACE
    assert r.metadata["status"] == "timeout" and "TimeoutError" in r.text and r.error
    assert not r.metadata["restarted"] and tool.backend.worker_pid == pid
    assert "yes" in run(tool, "print(kept)", ctx).text


@pytest.mark.timeout(30)
def test_ignored_alarm_busy_loop_hard_kill_fresh_worker(tool, ctx):
    run(tool, "lost = 1", ctx)
    pid = tool.backend.worker_pid
    t0 = time.monotonic()
    r = run(tool, "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass", ctx)
    assert time.monotonic() - t0 < TIMEOUT + GRACE + 3
    assert r.metadata["status"] == "killed" and r.metadata["restarted"]
    assert "was killed" in r.text and "restarted" in r.text and "image_1" in r.text
    assert tool.backend.worker_pid != pid and not _wait_dead([pid])
    r = run(tool, "print(image_1.size, 'lost' in globals())", ctx)
    assert "(64, 48) False" in r.text


@pytest.mark.timeout(30)
def test_swallowed_timeout_in_except_loop_is_killed(tool, ctx):
    r = run(tool, "import time\nwhile True:\n    try:\n        time.sleep(10)\n    except BaseException:\n        pass", ctx)
    assert r.metadata["status"] == "killed"
    assert "ok" in run(tool, "print('ok')", ctx).text


# ---- resource limits ------------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_fork_bomb_is_contained(tool, ctx):
    if run(tool, "import os\nprint(os.getuid())", ctx).text.split("```\n")[1].startswith("0\n"):
        pytest.skip(f"worker runs as root at level {level(tool)!r}: RLIMIT_NPROC is ignored")
    r = run(tool, "import os\nn = 0\nwhile True:\n    try:\n        pid = os.fork()\n    except OSError as e:\n        print('stopped after', n, e)\n        break\n    if pid == 0:\n        import time\n        time.sleep(60)\n    n += 1", ctx)
    assert "Resource temporarily unavailable" in r.text
    n = int(r.text.split("stopped after ")[1].split()[0])
    assert 0 < n < MAX_PROCS
    # the real thing: every child forks too and swallows errors; the worker must come back
    r = run(tool, "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", ctx)
    assert r.metadata["status"] in ("timeout", "killed")
    r = run(tool, "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))", ctx)
    if level(tool) in ("bwrap", "unshare"):
        assert "[1, 2]" in r.text  # only init and the worker are left in its PID namespace


@pytest.mark.timeout(30)
def test_allocate_50_gb(tool, ctx):
    r = run(tool, "x = bytearray(50 * 10**9)", ctx)
    assert "MemoryError" in r.text and r.metadata["status"] == "error"
    r = run(tool, "import numpy as np\ny = np.ones(50 * 10**9 // 8)", ctx)
    assert "Unable to allocate" in r.text or "MemoryError" in r.text
    assert "alive" in run(tool, "print('alive')", ctx).text


@pytest.mark.timeout(30)
def test_write_10_gb(tool, ctx):
    code = "f = open('big.bin', 'wb')\nchunk = b'0' * (1 << 20)\nfor i in range(10 * 1024):\n    f.write(chunk)"
    t0 = time.monotonic()
    r = run(tool, code, ctx)
    assert time.monotonic() - t0 < TIMEOUT + GRACE + 3
    assert "File too large" in r.text or "No space left" in r.text
    r = run(tool, "import os\nprint(os.path.getsize('big.bin') <= 32 * 2**20)", ctx)
    assert "True" in r.text


@pytest.mark.timeout(30)
def test_print_100_mb(tool, ctx):
    t0 = time.monotonic()
    r = run(tool, "print('x' * (100 * 1024 * 1024))\nprint('end')", ctx)
    assert time.monotonic() - t0 < TIMEOUT + GRACE + 3
    assert r.metadata["stdout_truncated"] > 100 * 1024 * 1024 - 5000
    assert len(r.text) < 6000 and "characters truncated" in r.text and r.text.count("x") > 1000
    assert "end" in r.text  # the tail is kept


@pytest.mark.timeout(30)
def test_non_utf8_output(tool, ctx):
    r = run(tool, "import sys, os\nsys.stdout.buffer.write(b'a\\xff\\xfeb\\n')\nos.write(1, b'fd\\x80\\n')\nos.write(2, b'\\xc3')\nprint('\\udcff')", ctx)
    assert r.metadata["status"] == "ok"
    r.text.encode("utf-8")  # valid text
    assert "a\ufffd\ufffdb" in r.text and "fd\ufffd" in r.text


@pytest.mark.timeout(30)
def test_sys_exit_keeps_session(tool, ctx):
    run(tool, "still = 'here'", ctx)
    pid = tool.backend.worker_pid
    r = run(tool, "import sys\nsys.exit(2)", ctx)
    assert "SystemExit: 2" in r.text and not r.metadata["restarted"]
    r = run(tool, "exit()\n", ctx)  # the site builtin: SystemExit(None)
    assert "SystemExit" in r.text and "exiting is not possible here" in r.text
    assert r.metadata["status"] == "error" and not r.metadata["restarted"]
    assert "here" in run(tool, "print(still)", ctx).text and tool.backend.worker_pid == pid


@pytest.mark.timeout(30)
def test_os_exit_restarts_with_message(tool, ctx):
    pid = tool.backend.worker_pid
    r = run(tool, "import os\nos._exit(3)", ctx)
    assert r.metadata["status"] == "crashed" and r.metadata["exit_status"] == 3
    assert "exited with status 3" in r.text and "restarted" in r.text
    assert tool.backend.worker_pid != pid
    assert "(64, 48)" in run(tool, "print(image_1.size)", ctx).text


@pytest.mark.timeout(30)
def test_kill_parent(tool, ctx):
    server_pid = tool.backend._state.pool.server.proc.pid
    r = run(tool, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('after')", ctx)
    assert alive(os.getpid()) and alive(server_pid)
    assert "ok" in run(tool, "print('ok')", ctx).text
    assert r.metadata["status"] in ("ok", "error", "crashed")


@pytest.mark.timeout(60)
def test_fork_server_death_is_survived():
    t = _private_tool(max_output_chars=2468)
    c = ToolContext(task_id="z", images=[_img(12, 8)])
    try:
        t.start_episode(c)
        t.execute("a = 1", c)
        server = t.backend._state.pool.server.proc  # the fork server (or bwrap around it)
        worker = t.backend.worker_pid
        os.kill(server.pid, 9)
        server.wait(5)
        assert not _wait_dead([worker]), "the worker outlived its fork server"
        r = t.execute("print('after')", c)
        assert r.metadata["status"] == "crashed" and r.metadata["restarted"]
        r = t.execute("print(image_1.size, 'a' in globals())", c)
        assert "(12, 8) False" in r.text and t.backend._state.pool.server.proc.pid != server.pid
    finally:
        t.close()


# ---- confinement ----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_no_network_to_host_listener(tool, ctx):
    needs_namespaces(tool)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    try:
        r = run(tool, f"import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))\nprint('connected')", ctx)
        assert "connected" not in r.text.split("stderr")[0]
        assert "unreachable" in r.text or "refused" in r.text
        srv.settimeout(0.2)
        with pytest.raises(socket.timeout):
            srv.accept()
    finally:
        srv.close()


@pytest.mark.timeout(30)
def test_host_files_are_hidden(tool, ctx):
    needs_namespaces(tool)
    here = str(Path(__file__).resolve())
    r = run(tool, f"print(open({here!r}).read())", ctx)
    assert MARKER not in r.text and ("No such file" in r.text or "Permission denied" in r.text)
    r = run(tool, "print(open('/etc/shadow').read())", ctx)
    assert "root:" not in r.text and "Error" in r.text
    checkout = str(Path(__file__).resolve().parents[1])
    # only a venv inside the checkout (CI's layout) may appear there, nothing of the project
    r = run(tool, f"import os\np = {checkout!r}\nprint(sorted(os.listdir(p)) if os.path.isdir(p) else 'absent')", ctx)
    listing = r.text.split("```\n")[1].split("\n")[0]
    assert listing == "absent" or set(eval(listing)) <= {".venv", "venv"}, listing
    for name in ("deepeyes_gym", "tests", "setup.cfg", ".git"):
        assert f"'{name}'" not in listing
    r = run(tool, "import os\nprint(os.getuid() != 0, open('/proc/self/status').read().split('CapEff:')[1].split()[0])", ctx)
    assert "True 0000000000000000" in r.text


@pytest.mark.timeout(30)
def test_untrusted_bytes_from_worker(tool, ctx):
    """A cell that writes garbage, or a forged header with a huge length, to the reply pipe."""
    garbage = "import os\nfor fd in range(3, 300):\n    try:\n        os.write(fd, b'garbage' * 8)\n    except OSError:\n        pass\n"
    r = run(tool, garbage, ctx)
    assert r.metadata["status"] == "crashed" and "invalid reply" in r.text and r.metadata["restarted"]
    forged = struct.pack("<4sBIQ", b"DGS1", 3, 2, 1 << 40) + b"{}"
    code = f"import os\nfor fd in range(3, 300):\n    try:\n        os.write(fd, {forged!r})\n    except OSError:\n        pass\nimport time\ntime.sleep(0.2)"
    r = run(tool, code, ctx)
    assert r.metadata["status"] == "crashed" and "too large" in r.text
    assert "(64, 48)" in run(tool, "print(image_1.size)", ctx).text


# ---- lifecycle ------------------------------------------------------------------------------


def _private_tool(**kw) -> PythonTool:
    # a distinct config gets its own pool (and fork server), so closing it must leave nothing
    return PythonTool(timeout=TIMEOUT, hard_timeout_grace=GRACE, pool_size=1, **kw)


@pytest.mark.timeout(60)
def test_no_process_left_after_close_or_gc():
    t = _private_tool(max_output_chars=1234)
    c = ToolContext(task_id="x", images=[_img(8, 8)])
    t.start_episode(c)
    assert "2" in t.execute("print(1 + 1)", c).text
    pool = t.backend._state.pool
    pids = [t.backend.worker_pid, pool.server.proc.pid] + [w.pid for w in list(pool._idle)]
    t.close()
    assert not _wait_dead(pids), "workers or fork server survived close()"
    assert "closed" in str(pytest.raises(ToolError, lambda: t.backend).value)

    t2 = _private_tool(max_output_chars=4321)
    t2.start_episode(c)
    t2.execute("print(1)", c)
    pool = t2.backend._state.pool
    pids = [t2.backend.worker_pid, pool.server.proc.pid]
    del t2, pool
    gc.collect()
    assert not _wait_dead(pids), "workers or fork server survived garbage collection"


_ORPHAN_SCRIPT = """
import sys, time, warnings
warnings.simplefilter("ignore")
from deepeyes_gym.envs.tools.python import PythonTool
from deepeyes_gym.envs.tools.base import ToolContext
t = PythonTool(timeout=5, pool_size=1)
c = ToolContext(task_id="x", images=[])
t.start_episode(c)
t.execute("print(1)", c)
pool = t.backend._state.pool
print(pool.server.workdir or "-", pool.server.proc.pid, t.backend.worker_pid, flush=True)
time.sleep(60)
"""


@pytest.mark.timeout(60)
def test_parent_killed_leaves_nothing_behind():
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT], stdout=subprocess.PIPE, env=env, cwd=root)
    try:
        workdir, server, worker = p.stdout.readline().decode().split()
        assert (workdir == "-" or os.path.isdir(workdir)) and alive(int(server)) and alive(int(worker))
    finally:
        p.kill()  # SIGKILL: no atexit, no finalizers
        p.wait()
    assert not _wait_dead([int(server), int(worker)]), "fork server or worker outlived a killed parent"
    deadline = time.monotonic() + 5
    while workdir != "-" and os.path.exists(workdir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workdir == "-" or not os.path.exists(workdir)


@pytest.mark.timeout(90)
def test_16_concurrent_sessions_independent_no_deadlock_no_leak(tool):
    import threading

    errors: list[str] = []
    used: list[int] = []

    def work(i: int) -> None:
        t = PythonTool(timeout=TIMEOUT, hard_timeout_grace=GRACE, max_processes=MAX_PROCS, memory_limit_mb=2048,
                       max_file_size_mb=16, tmp_size_mb=32, max_output_chars=4000, pool_size=2)
        try:
            c = ToolContext(task_id=f"c{i}", images=[_img(10 + i, 10)])
            for ep in range(2):
                t.start_episode(c)
                used.append(t.backend.worker_pid)
                t.execute(f"v = {i * 100 + ep}", c)
                r = t.execute("print(v, image_1.size, 'w' in globals())", c)
                if f"{i * 100 + ep} ({10 + i}, 10) False" not in r.text:
                    errors.append(r.text)
                t.execute("w = 1", c)
                t.end_episode()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))
        finally:
            t.close()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(75)
    assert not any(th.is_alive() for th in threads), "deadlock"
    assert not errors, errors[:2]
    assert len(set(used)) == 32  # a fresh worker per episode
    assert not _wait_dead(used), "workers of finished episodes are still alive"


def test_json_metadata_is_serialisable(tool, ctx):
    r = run(tool, "print(1)", ctx)
    json.dumps(r.metadata)
    assert r.metadata["isolation"] == level(tool)


def test_running_cells_are_admitted_up_to_the_limit():
    """Cells queue for a slot: never more than max_running_cells run at once across tools."""
    import threading as th

    from deepeyes_gym.envs.sandbox import ExecResult, SandboxBackend

    state = {"now": 0, "peak": 0}
    lock = th.Lock()

    class Probe(SandboxBackend):
        def start(self, images):
            pass

        def run(self, code, timeout=None):
            with lock:
                state["now"] += 1
                state["peak"] = max(state["peak"], state["now"])
            th.Event().wait(0.05)
            with lock:
                state["now"] -= 1
            return ExecResult(stdout="ok")

        def end(self):
            pass

    tools = [PythonTool(backend=Probe(), max_running_cells=2) for _ in range(6)]
    ctx = ToolContext("t", [])
    threads = [th.Thread(target=lambda t=t: [t.execute("x = 1", ctx) for _ in range(3)]) for t in tools]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert state["peak"] == 2
    assert PythonTool(backend=Probe()).max_running_cells == 0  # not local: no limit by default
    with pytest.raises(ValueError):
        PythonTool(max_running_cells=-1)
