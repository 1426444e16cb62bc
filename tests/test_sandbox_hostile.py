"""Hostile code against the defences added after the adversarial review, at every isolation level
this machine offers (bubblewrap and unshare where available; rlimits where the defence applies).

Kernel keys (session keyring, seccomp, uid reuse), the episode-wide memory cgroup, tmpfs inode
caps, namespace handles, and cells that break the image/figure paths.
"""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deepeyes_gym.envs.sandbox import isolation_prerequisites
from deepeyes_gym.envs.sandbox.cgroups import cgroup_support
from deepeyes_gym.envs.tools.base import ToolContext
from deepeyes_gym.envs.tools.python import PythonTool

pytestmark = pytest.mark.filterwarnings("ignore::deepeyes_gym.envs.sandbox.SandboxIsolationWarning")

AVAILABLE = [lv for lv, why in isolation_prerequisites().items() if why is None]
NAMESPACE_LEVELS = [lv for lv in AVAILABLE if lv in ("bwrap", "unshare")] or [
    pytest.param("unshare", marks=pytest.mark.skip(reason="no namespace isolation level works here"))]
ROOT = Path(__file__).resolve().parents[1]
SECRET = "env-process-secret-" + "71f3"  # split: the cells never contain it literally
_NR = {"x86_64": (248, 250), "aarch64": (217, 219)}.get(platform.machine())  # add_key, keyctl


def _tool(level: str, **kw) -> PythonTool:
    kw.setdefault("timeout", 10.0)
    return PythonTool(isolation=level, hard_timeout_grace=2.0, pool_size=1, **kw)


def _run(tool: PythonTool, code: str, ctx: ToolContext):
    return tool.execute(tool.parse(code), ctx)


def _stdout(text: str) -> str:
    return text.split("stdout:\n```\n", 1)[1].split("\n```", 1)[0]


@pytest.fixture(scope="module")
def host_key():
    """A key in the env process's session keyring (a fresh one, so the machine's is untouched)."""
    if _NR is None:
        pytest.skip(f"key syscall numbers unknown for {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(ctypes.c_long(_NR[1]), ctypes.c_long(1), None) < 0:  # KEYCTL_JOIN_SESSION_KEYRING
        pytest.skip(f"kernel keyrings unavailable: {os.strerror(ctypes.get_errno())}")
    payload = SECRET.encode()
    kid = libc.syscall(ctypes.c_long(_NR[0]), b"user", b"deepeyes-test", payload, ctypes.c_size_t(len(payload)),
                       ctypes.c_int(-3))  # KEY_SPEC_SESSION_KEYRING
    assert kid > 0, os.strerror(ctypes.get_errno())
    return kid


# A cell that looks for the key "deepeyes-test" in its keyrings and reads it, or adds one.
_KEYS = textwrap.dedent("""
    import ctypes, errno, platform
    libc = ctypes.CDLL(None, use_errno=True); libc.syscall.restype = ctypes.c_long
    ADD, CTL = {"x86_64": (248, 250), "aarch64": (217, 219)}[platform.machine()]
    def search(ring):
        kid = libc.syscall(ctypes.c_long(CTL), ctypes.c_long(10), ctypes.c_long(ring), b"user", b"deepeyes-test", ctypes.c_long(0))
        if kid < 0:
            return "none:" + errno.errorcode.get(ctypes.get_errno(), "?")
        buf = ctypes.create_string_buffer(256)
        n = libc.syscall(ctypes.c_long(CTL), ctypes.c_long(11), ctypes.c_long(kid), buf, ctypes.c_long(256))
        return "read:" + buf.raw[:max(n, 0)].decode(errors="replace")
    def add(ring, value):
        kid = libc.syscall(ctypes.c_long(ADD), b"user", b"deepeyes-test", value, ctypes.c_size_t(len(value)), ctypes.c_long(ring))
        return "added" if kid > 0 else "refused:" + errno.errorcode.get(ctypes.get_errno(), "?")
""")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("level", AVAILABLE)
def test_cells_cannot_read_or_pass_kernel_keys(level, host_key):
    t = _tool(level, max_output_chars=3001)
    ctx = ToolContext(task_id="keys", images=[])
    try:
        t.start_episode(ctx)
        r = _run(t, _KEYS + "print(search(-3), search(-5), search(-4))", ctx)  # session, user-session, user
        assert SECRET not in r.text and "read:" not in r.text, r.text
        # one episode tries to leave a value for the next through every keyring it has
        r = _run(t, _KEYS + "print(add(-3, b'from-episode-1'), add(-4, b'from-episode-1'), add(-5, b'from-episode-1'))", ctx)
        assert "added" not in r.text, r.text
        t.start_episode(ToolContext(task_id="keys2", images=[]))
        r = _run(t, _KEYS + "print(search(-3), search(-4), search(-5))", ctx)
        assert "from-episode-1" not in r.text and "read:" not in r.text, r.text
        facts = t.backend.pool.facts
        assert facts["session_keyring"] == "fresh" and facts["Seccomp"] == "2"
        if level != "rlimits":  # a private /proc: the per-uid key counts of other episodes are hidden
            assert _stdout(_run(t, "print(repr(open('/proc/key-users').read()))", ctx).text).strip() == "''"
    finally:
        t.close()


_UIDS = """
import sys, warnings
warnings.simplefilter("ignore")
from deepeyes_gym.envs.sandbox import LocalSandbox, SandboxConfig
sb = LocalSandbox(SandboxConfig(uid_base=int(sys.argv[1]), pool_size=1, max_output_chars=1717), timeout=10)
for _ in range(3):
    sb.start([])
    print(sb.run("import os; print('uid', os.getuid())").stdout.split()[1], flush=True)
sb.close()
"""


@pytest.mark.timeout(120)
def test_uids_never_collide_across_processes_or_episodes():
    """Two env processes with the same uid range (as two Ray actors would have) and three
    episodes each: six distinct uids, none reused."""
    if not {"bwrap", "unshare"} & set(AVAILABLE):
        pytest.skip("workers keep the env's uid at the levels available here")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    base = 1_950_000_000 + (os.getpid() % 1000) * 10_000
    procs = [subprocess.Popen([sys.executable, "-c", _UIDS, str(base)], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for _ in range(2)]
    outs = [p.communicate(timeout=100)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs) and all(len(o) == 3 for o in outs), outs
    uids = [int(u) for o in outs for u in o]
    assert len(set(uids)) == 6 and all(u >= base for u in uids), outs


@pytest.mark.timeout(120)
@pytest.mark.parametrize("level", AVAILABLE)
@pytest.mark.parametrize("how", ["memfds", "children"])
def test_memory_limit_bounds_the_whole_episode(level, how):
    """More than 1 GiB held in memfds, or by forked children (each within its own RLIMIT_AS),
    under a 512 MiB limit: refused or killed, and the session comes back."""
    sup = cgroup_support()
    if sup.version is None:
        pytest.skip(f"no memory cgroup here: {sup.why_not}")
    t = _tool(level, memory_limit_mb=512, timeout=20.0, max_output_chars=2999)
    ctx = ToolContext(task_id="mem", images=[])
    memfds = """
import os
fds = []
for i in range(20):  # each within RLIMIT_FSIZE (64 MiB)
    fd = os.memfd_create(f"m{i}")
    for _ in range(64):
        os.write(fd, b"x" * (1 << 20))
    fds.append(fd)
print("held", sum(os.fstat(fd).st_size for fd in fds) >> 20, "MiB")
"""
    children = """
import os, select, time
r, w = os.pipe()
for i in range(8):
    if os.fork() == 0:
        block = b"x" * (160 << 20)
        os.write(w, b"x")
        time.sleep(60)
        os._exit(0)
got = 0
while got < 8:
    if select.select([r], [], [], 0.2)[0]:
        got += len(os.read(r, 8))
    if os.waitpid(-1, os.WNOHANG)[0]:
        print("a child died")
        break
print("held", 160 * got, "MiB")
"""
    try:
        t.start_episode(ctx)
        r = _run(t, memfds if how == "memfds" else children, ctx)
        assert "held 1280 MiB" not in r.text, r.text
        assert "ok" in _run(t, "print('ok')", ctx).text
    finally:
        t.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("level", NAMESPACE_LEVELS)
def test_tmp_inode_cap(level):
    """Empty files cost no bytes of the /tmp size cap but kernel memory each: they are capped too."""
    t = _tool(level, timeout=20.0, max_output_chars=3003)
    ctx = ToolContext(task_id="inodes", images=[])
    code = """
import os
n = 0
try:
    for n in range(100000):
        open(f"/tmp/f{n}", "w").close()
    print("created all", n + 1)
except OSError as e:
    print("stopped at", n, e.strerror)
"""
    try:
        t.start_episode(ctx)
        r = _run(t, code, ctx)
        assert "created all" not in r.text and "No space left on device" in r.text, r.text
        assert int(r.text.split("stopped at ")[1].split()[0]) <= t.config.tmp_inodes
    finally:
        t.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("level", NAMESPACE_LEVELS)
def test_no_host_namespace_handle_in_the_worker(level):
    t = _tool(level, max_output_chars=3005)
    ctx = ToolContext(task_id="fds", images=[])
    try:
        t.start_episode(ctx)
        r = _run(t, "import os\nprint(sorted(os.readlink(f'/proc/self/fd/{f}') for f in os.listdir('/proc/self/fd')))", ctx)
        assert "pid:[" not in r.text and "mnt:[" not in r.text and "net:[" not in r.text, r.text
        assert t.backend.pool.facts["ns_handles"] == []
    finally:
        t.close()


def test_too_small_memory_limit_is_a_configuration_error():
    with pytest.raises(ValueError, match="memory_limit_mb=256 is too small"):
        PythonTool(memory_limit_mb=256)


@pytest.fixture(scope="module")
def tool():
    t = PythonTool(timeout=20.0, hard_timeout_grace=2.0, pool_size=1, max_output_chars=3007)
    yield t
    t.close()


@pytest.mark.timeout(60)
def test_display_of_an_extreme_aspect_image_keeps_the_session(tool):
    ctx = ToolContext(task_id="disp", images=[])
    tool.start_episode(ctx)
    pid = tool.backend.worker_pid
    r = _run(tool, "from PIL import Image\nkept = 1\ndisplay(Image.new('RGB', (1, 20_000_000)))\nprint('shown')", ctx)
    assert r.metadata["status"] == "ok" and not r.metadata["restarted"], r.text
    assert "shown" in r.text and "aspect ratio limit" in r.text and len(r.images) == 1
    h, w = r.images[0].shape[:2]
    assert max(h, w) <= 200 * min(h, w)
    assert "1" in _run(tool, "print(kept)", ctx).text and tool.backend.worker_pid == pid


@pytest.mark.timeout(60)
def test_figure_too_large_to_draw_is_closed_and_later_cells_work(tool):
    ctx = ToolContext(task_id="fig", images=[])
    tool.start_episode(ctx)
    r = _run(tool, "import matplotlib.pyplot as plt\nfig = plt.figure(figsize=(2000, 2000), dpi=100)\nplt.plot([1, 2])\nprint('made')", ctx)
    assert "made" in r.text and "FigureError" in r.text and r.metadata["status"] == "error"
    r = _run(tool, "import matplotlib.pyplot as plt\nprint('next', len(plt.get_fignums()))", ctx)
    assert r.metadata["status"] == "ok" and "next 0" in r.text and "Error" not in r.text, r.text
    r = _run(tool, "fig = plt.figure(figsize=(2000, 2000), dpi=100)\ndisplay(fig)", ctx)
    assert "FigureError" in r.text
    r = _run(tool, "plt.figure(figsize=(2, 1), dpi=50)\nplt.plot([1, 2])\nplt.show()\nprint(len(plt.get_fignums()))", ctx)
    assert r.metadata["status"] == "ok" and len(r.images) == 1 and "\n0\n" in r.text
