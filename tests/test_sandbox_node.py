"""Node-wide sandbox state shared by env processes: one budget of running cells for the machine,
granted first come first served, cancellable, and freed by a process that dies holding a slot."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from deepeyes_gym.envs.sandbox import admission
from deepeyes_gym.envs.sandbox.admission import AdmissionCancelled, admit
from deepeyes_gym.envs.sandbox.base import ExecResult, SandboxBackend
from deepeyes_gym.envs.sandbox.node import NODE_DIR_ENV, node_dir
from deepeyes_gym.envs.tools.base import ToolContext
from deepeyes_gym.envs.tools.python import PythonTool

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def private_node(monkeypatch):
    """A node state directory (and admission daemon) of this test's own."""
    d = tempfile.mkdtemp(prefix="dgn-")  # short: it holds a unix socket
    monkeypatch.setenv(NODE_DIR_ENV, d)
    monkeypatch.setattr(admission, "_CLIENT", None)
    yield Path(d)
    client = admission._CLIENT
    if client is not None and client[1].sock is not None:
        client[1].sock.close()
    shutil.rmtree(d, ignore_errors=True)


def test_slots_are_granted_in_arrival_order(private_node):
    t1 = admit(1)
    t1.wait()
    t2, t3 = admit(1), admit(1)
    t1.release()
    t2.wait()
    assert not t3.granted
    t4 = admit(1)  # t2's owner asks again at once: it queues behind t3, it does not barge in
    t2.release()
    t3.wait()
    assert not t4.granted
    t3.release()
    t4.wait()
    t4.release()
    assert admission.admission_mode() == "node"


def test_a_cancelled_wait_frees_its_thread_and_takes_no_slot(private_node):
    t1 = admit(1)
    t1.wait()
    t2 = admit(1)
    threading.Timer(0.2, t2.cancel).start()  # e.g. env.abort() from the rollout engine
    with pytest.raises(AdmissionCancelled):
        t2.wait()
    t1.release()
    t3 = admit(1)
    t3.wait()  # the cancelled request did not keep the slot
    t3.release()


_HOLD = """
import sys, time
from deepeyes_gym.envs.sandbox.admission import admit
admit(1).wait()
print("holding", flush=True)
time.sleep(120)
"""


@pytest.mark.timeout(60)
def test_the_budget_is_node_wide_and_a_dead_holder_frees_its_slot(private_node):
    env = {**os.environ, NODE_DIR_ENV: str(private_node), "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", _HOLD], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert p.stdout.readline().strip() == "holding"
        t = admit(1)
        assert not t._event.wait(0.5), "another process's slot was granted twice"
        p.send_signal(signal.SIGKILL)  # an env process (Ray actor) dies holding the slot
        t.wait()
        t.release()
    finally:
        p.kill()
        p.wait()


_CELLS = """
import fcntl, os, sys, time
from deepeyes_gym.envs.sandbox.base import ExecResult, SandboxBackend
from deepeyes_gym.envs.tools.base import ToolContext
from deepeyes_gym.envs.tools.python import PythonTool
counter = sys.argv[1]

def bump(d):
    with open(counter, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        now, peak = (int(x) for x in f.read().split())
        now += d
        f.seek(0); f.truncate(); f.write(f"{now} {max(peak, now)}")

class Counted(SandboxBackend):
    def start(self, images): pass
    def end(self): pass
    def run(self, code, timeout=None):
        bump(1); time.sleep(0.05); bump(-1)
        return ExecResult(stdout="ok")

t = PythonTool(backend=Counted(), max_running_cells=1)
for _ in range(6):
    t.execute("x = 1", ToolContext("c", []))
print("done", flush=True)
"""


@pytest.mark.timeout(60)
def test_cells_of_two_env_processes_share_one_budget(private_node):
    counter = private_node / "counter"
    counter.write_text("0 0")
    env = {**os.environ, NODE_DIR_ENV: str(private_node), "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", _CELLS, str(counter)], stdout=subprocess.PIPE, text=True,
                              env=env, cwd=ROOT) for _ in range(2)]
    assert [p.communicate(timeout=50)[0].strip() for p in procs] == ["done", "done"]
    assert counter.read_text() == "0 1"  # never two cells at once across the processes


class _Logged(SandboxBackend):
    def __init__(self, name: str, log: list, seconds: float) -> None:
        self.name, self.log, self.seconds = name, log, seconds

    def start(self, images):
        pass

    def end(self):
        pass

    def run(self, code, timeout=None):
        self.log.append(self.name)
        time.sleep(self.seconds)
        return ExecResult(stdout="ok")


@pytest.mark.timeout(60)
def test_a_short_cell_is_not_starved_by_busy_envs(private_node):
    """The review's case: two envs run cells back to back on a 2-slot budget; a third env's
    print(1) must get the next free slot, not wait until they stop asking."""
    log: list[str] = []
    hogs = [PythonTool(backend=_Logged(f"hog{i}", log, 0.02), max_running_cells=2) for i in range(2)]
    short = PythonTool(backend=_Logged("short", log, 0.0), max_running_cells=2)
    ctx = ToolContext("fair", [])
    threads = [threading.Thread(target=lambda t=t: [t.execute("x", ctx) for _ in range(30)]) for t in hogs]
    for th in threads:
        th.start()
    while len(log) < 4:
        time.sleep(0.005)
    asked_at = len(log)
    short.execute("print(1)", ctx)
    started_at = log.index("short")
    for th in threads:
        th.join(30)
    # FIFO: at most the hogs' requests already queued (and one racing the request) go first
    assert started_at - asked_at <= 3, log


def test_node_dir_refuses_a_directory_others_can_write(monkeypatch):
    d = tempfile.mkdtemp(prefix="dgn-")
    try:
        os.chmod(d, 0o777)
        monkeypatch.setenv(NODE_DIR_ENV, d)
        with pytest.raises(PermissionError, match="writable by no one else"):
            node_dir()
    finally:
        shutil.rmtree(d)
