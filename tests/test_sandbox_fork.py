"""Pools belong to one process: a forked child (AsyncVectorEnv with ``fork``, after the parent
already used an env) starts its own sandbox and never touches the parent's."""

from __future__ import annotations

import os
import time

import gymnasium as gym
import numpy as np
import pytest

from deepeyes_gym.envs import DeepEyesEnv, Task
from procs import alive

pytestmark = pytest.mark.filterwarnings("ignore::deepeyes_gym.envs.sandbox.SandboxIsolationWarning")

KW = {"python": {"timeout": 10, "hard_timeout_grace": 2, "max_output_chars": 6661}}


def code(src: str) -> str:
    return f"<think>run it</think>\n<code>\n```python\n{src}\n```\n</code>"


def make_env() -> DeepEyesEnv:
    img = np.zeros((24, 32, 3), dtype=np.uint8)
    tasks = [Task(id=f"f{i}", question="What is shown?", answer="nothing", images=[img]) for i in range(2)]
    return DeepEyesEnv(tasks, tools=("python",), tool_kwargs=KW, shuffle=False)


@pytest.mark.timeout(120)
def test_async_vector_env_with_fork_after_the_parent_used_an_env():
    parent = make_env()
    try:
        parent.reset(seed=0)
        obs, *_ = parent.step(code("x = 'parent-value'\nprint('set')"))
        assert "set" in obs["text"]
        worker = parent.tools["python"].backend.worker_pid
        server = parent.tools["python"].backend.pool.server.proc.pid

        venv = gym.vector.AsyncVectorEnv([make_env, make_env], context="fork", shared_memory=False)
        try:
            venv.reset_async(seed=0)
            venv.reset_wait(timeout=60)
            venv.step_async([code("print('x' in globals())")] * 2)
            obs, *_ = venv.step_wait(timeout=60)
            assert all("False" in t for t in obs["text"]), obs["text"]
            venv.step_async([code("y = 'child'\nprint('set in child')")] * 2)
            obs, *_ = venv.step_wait(timeout=60)
            assert all("set in child" in t for t in obs["text"]), obs["text"]
        finally:
            venv.close()

        assert alive(worker) and alive(server), "closing the forked envs killed the parent's sandbox"
        obs, *_ = parent.step(code("print(x, 'y' in globals())"))
        assert "parent-value False" in obs["text"], obs["text"]
        assert parent.tools["python"].backend.worker_pid == worker
    finally:
        parent.close()


@pytest.mark.timeout(60)
def test_a_forked_child_gets_its_own_pool_and_leaves_the_parents_alone():
    env = make_env()
    try:
        env.reset(seed=0)
        env.step(code("z = 1"))
        backend = env.tools["python"].backend
        parent_pool, worker = backend.pool, backend.worker_pid
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: uses the same env object, then exits through its finalizers
            os.close(r)
            try:
                env.reset(seed=1)
                obs, *_ = env.step(code("print('z' in globals())"))
                child_pool = env.tools["python"].backend.pool
                ok = "False" in obs["text"] and child_pool is not parent_pool and child_pool.owner == os.getpid()
                os.write(w, b"ok" if ok else obs["text"].encode()[:200])
                env.close()
            except BaseException as exc:  # pragma: no cover - reported to the parent
                os.write(w, repr(exc).encode()[:200])
            os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            msg = f.read()
        os.waitpid(pid, 0)
        assert msg == b"ok", msg
        time.sleep(0.2)
        assert alive(worker) and backend.pool is parent_pool and not parent_pool.closed
        obs, *_ = env.step(code("print(z)"))
        assert "1" in obs["text"]
    finally:
        env.close()
