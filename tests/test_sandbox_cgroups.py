"""Where worker cgroups can be made (cgroup v1, delegated cgroup v2, neither), on fake cgroup trees,
and the real groups on this machine: made per worker, removed after the episode."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from deepeyes_gym.envs.sandbox.cgroups import cgroup_support, detect
from deepeyes_gym.envs.tools.base import ToolContext
from deepeyes_gym.envs.tools.python import PythonTool

pytestmark = pytest.mark.filterwarnings("ignore::deepeyes_gym.envs.sandbox.SandboxIsolationWarning")


def _mountinfo(*mounts: tuple[str, str, str, str]) -> str:
    """(fstype, root, mount point, super options) -> /proc/self/mountinfo lines."""
    return "".join(f"{30 + i} 25 0:{26 + i} {root} {mp} rw,nosuid - {fs} cgroup {opts}\n"
                   for i, (fs, root, mp, opts) in enumerate(mounts))


def _tree(base: Path, files: dict[str, str]) -> None:
    for rel, content in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)


def test_v2_with_the_memory_controller_delegated_to_our_parent(tmp_path):
    mp = tmp_path / "cg2"
    _tree(mp, {"app/cgroup.subtree_control": "memory pids\n", "app/cgroup.controllers": "memory pids\n",
               "app/leaf/cgroup.controllers": "memory pids\n", "app/leaf/cgroup.subtree_control": ""})
    sup = detect(_mountinfo(("cgroup2", "/", str(mp), "rw")), "0::/app/leaf\n")
    assert sup.version == "v2" and sup.bases["v2"] == str(mp / "app" / f"deepeyes-sandbox-{os.getpid()}")
    assert (Path(sup.bases["v2"]) / "cgroup.subtree_control").read_text() == "+memory +pids"
    cg = sup.create("w7", 512 << 20, 66)
    d = Path(sup.bases["v2"]) / "w7"
    assert (d / "memory.max").read_text() == str(512 << 20)
    for f in d.iterdir():  # a real cgroup dir has no removable files; the fake one must be emptied
        f.unlink()
    assert cg.remove() and not d.exists()


def test_v2_not_delegated_says_why(tmp_path):
    mp = tmp_path / "cg2"
    _tree(mp, {"cgroup.subtree_control": "", "user/cgroup.controllers": "cpu\n", "user/cgroup.subtree_control": ""})
    sup = detect(_mountinfo(("cgroup2", "/", str(mp), "rw")), "0::/user\n")
    assert sup.version is None and "not delegated" in sup.why_not


def test_v1_memory_and_pids_hierarchies_and_stale_groups_are_swept(tmp_path):
    mem, pids = tmp_path / "memory", tmp_path / "pids"
    stale = mem / "job" / "deepeyes-sandbox-999999999"  # a dead env process's groups
    (stale / "w5").mkdir(parents=True)
    pids.mkdir()
    sup = detect(_mountinfo(("cgroup", "/", str(mem), "rw,memory"), ("cgroup", "/", str(pids), "rw,pids")),
                 "8:pids:/\n4:memory:/job\n0::/\n")
    assert sup.version == "v1" and set(sup.bases) == {"memory", "pids"}
    assert sup.bases["memory"].startswith(str(mem / "job" / "deepeyes-sandbox-"))
    assert not stale.exists()


def test_no_cgroup_mount_says_why():
    sup = detect("", "0::/\n")
    assert sup.version is None and "no cgroup file system is mounted" in sup.why_not
    assert sup.describe().startswith("no memory cgroup")


@pytest.mark.timeout(60)
def test_each_worker_gets_a_group_that_goes_with_it():
    sup = cgroup_support()
    if sup.version is None:
        pytest.skip(f"no memory cgroup here: {sup.why_not}")
    t = PythonTool(timeout=10, pool_size=1, memory_limit_mb=768, max_output_chars=5151)
    ctx = ToolContext(task_id="cg", images=[])
    try:
        t.start_episode(ctx)
        r = t.execute("print(open('/proc/self/cgroup').read())", ctx)
        uid = t.backend._state.worker.uid
        group = Path(sup.bases["v2" if sup.version == "v2" else "memory"]) / f"w{uid}"
        assert group.is_dir() and f"w{uid}" in r.text
        limit = "memory.max" if sup.version == "v2" else "memory.limit_in_bytes"
        assert (group / limit).read_text().strip() == str(768 << 20)
        t.end_episode()
        deadline = time.monotonic() + 10
        while group.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not group.exists(), "the worker's cgroup outlived its episode"
    finally:
        t.close()
