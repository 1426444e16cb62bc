"""Isolation levels: which one runs here (named in the test id), its report, and the weaker ones."""

from __future__ import annotations

import os
import shutil
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from deepeyes_gym.envs.sandbox import (
    ISOLATION_LEVELS,
    SandboxConfig,
    SandboxIsolationWarning,
    SandboxStartError,
    isolation_prerequisites,
    isolation_report,
)
from deepeyes_gym.envs.sandbox import pool as sandbox_pool
from deepeyes_gym.envs.tools.base import ToolContext
from deepeyes_gym.envs.tools.python import PythonTool

pytestmark = pytest.mark.filterwarnings("ignore::deepeyes_gym.envs.sandbox.SandboxIsolationWarning")

# the strongest level whose prerequisites hold on this machine (the one "auto" should reach)
EXPECTED = next(lv for lv, why in isolation_prerequisites().items() if why is None)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("expected", [EXPECTED])
def test_isolation_level_and_report(expected):
    rep = isolation_report()
    print("\n" + rep.format())
    assert rep.level in ISOLATION_LEVELS
    if rep.level != expected:  # a fallback must say why the expected level failed
        assert any(s.startswith(expected) for s in rep.skipped), rep.skipped
    text = rep.format()
    assert f"level: {rep.level}" in text and "Not enforced" in text and "seccomp" in text
    if not rep.is_strongest:
        assert rep.skipped and any("bwrap" in s for s in rep.skipped)
    if rep.level in ("bwrap", "unshare"):
        f = rep.facts
        assert f["uid"] != 0 and f["CapEff"].strip("0") == "" and f["NoNewPrivs"] == "1"
        assert f["net_interfaces"] == ["lo"] and f["hidden_visible"] == [] and not f["root_writable"]
        assert f["rlimits"]["nproc"] == SandboxConfig().max_processes


def test_weaker_level_warns_once(monkeypatch):
    monkeypatch.setattr(sandbox_pool, "_WARNED", set())
    with pytest.warns(SandboxIsolationWarning, match="UNSAFE"):
        sandbox_pool._warn_if_weaker("rlimits", ["bwrap: missing", "unshare: not root"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sandbox_pool._warn_if_weaker("rlimits", ["bwrap: missing"])  # second time: silent
        sandbox_pool._warn_if_weaker("bwrap", [])  # the strongest never warns


@pytest.mark.timeout(60)
def test_rlimits_level_works_and_says_what_it_lacks():
    cfg = SandboxConfig(isolation="rlimits", pool_size=1, max_output_chars=999)
    rep = isolation_report(cfg)
    assert rep.level == "rlimits"
    assert any("network not isolated" in s for s in rep.not_enforced)
    if rep.facts["uid"] == 0:  # RLIMIT_NPROC does not hold for root: only a pids cgroup caps a fork bomb
        capped = any("pids cgroup still caps" in s for s in rep.not_enforced)
        assert capped or any("fork bomb is not contained" in s for s in rep.not_enforced)
        assert not capped or any("memory cgroup per episode" in s for s in rep.enforced)
    tool = PythonTool(isolation="rlimits", timeout=1.0, hard_timeout_grace=1.0, pool_size=1, max_output_chars=999)
    ctx = ToolContext(task_id="r", images=[Image.fromarray(np.zeros((4, 6, 3), np.uint8))])
    try:
        tool.start_episode(ctx)
        r = tool.execute("import os\nv = 5\nprint(image_1.size, os.getcwd())", ctx)
        assert "(6, 4)" in r.text
        workdir = r.text.split("(6, 4) ")[1].split("\n")[0]
        assert workdir != os.getcwd() and os.path.isdir(workdir)
        assert tool.execute("while True: pass", ctx).metadata["status"] == "timeout"
        assert "5" in tool.execute("print(v)", ctx).text
        assert "MemoryError" in tool.execute("x = bytearray(50 * 10**9)", ctx).text
        tool.end_episode()
        deadline = time.monotonic() + 5
        while os.path.exists(workdir) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(workdir), "the private working directory was not wiped"
    finally:
        tool.close()


@pytest.mark.timeout(60)
def test_unavailable_explicit_level_raises():
    missing = [lv for lv, why in isolation_prerequisites().items() if why is not None]
    if not missing:
        pytest.skip("every isolation level is available here")
    tool = PythonTool(isolation=missing[0])
    with pytest.raises(SandboxStartError, match=missing[0]):
        tool.warm_up()
    tool.close()


@pytest.mark.timeout(90)
@pytest.mark.skipif(shutil.which("bwrap") is None or os.geteuid() != 0, reason="bubblewrap not installed (or not root)")
def test_bwrap_level():
    tool = PythonTool(isolation="bwrap", timeout=1.0, hard_timeout_grace=1.0, pool_size=1)
    ctx = ToolContext(task_id="b", images=[Image.fromarray(np.zeros((4, 6, 3), np.uint8))])
    try:
        tool.start_episode(ctx)
        assert tool.isolation_level == "bwrap"
        r = tool.execute("import os\nprint(image_1.size, os.getuid() != 0, os.path.exists('/etc/shadow'))", ctx)
        assert "(6, 4) True False" in r.text
        assert tool.execute("while True: pass", ctx).metadata["status"] == "timeout"
    finally:
        tool.close()


def test_config_and_fact_checks():
    with pytest.raises(ValueError):
        SandboxConfig(isolation="chroot")
    with pytest.raises(ValueError):
        SandboxConfig(max_images=11)
    with pytest.raises(ValueError):
        SandboxConfig(memory_limit_mb=0)
    good = {"uid": 1234, "CapEff": "0" * 16, "net_interfaces": ["lo"], "hidden_visible": [],
            "etc_shadow_readable": False, "root_writable": False}
    assert sandbox_pool.verify_facts("unshare", good) == []
    for bad in ({"uid": 0}, {"net_interfaces": ["lo", "eth0"]}, {"hidden_visible": ["/work"]},
                {"etc_shadow_readable": True}, {"root_writable": True}, {"CapEff": "00000000a80425fb"}):
        assert sandbox_pool.verify_facts("unshare", {**good, **bad}), bad
