"""Code turns through DeepEyesEnv with the python tool on the local sandbox."""

from __future__ import annotations

import time

import numpy as np
import pytest

from deepeyes_gym.envs import DeepEyesEnv, Task
from procs import alive

pytestmark = pytest.mark.filterwarnings("ignore::deepeyes_gym.envs.sandbox.SandboxIsolationWarning")


def code(src: str) -> str:
    return f"<think>run it</think>\n<code>\n```python\n{src}\n```\n</code>"


@pytest.mark.timeout(90)
def test_code_turns_through_the_env():
    img = np.zeros((48, 64, 3), dtype=np.uint8)
    img[10:20, 5:15] = (255, 0, 0)
    tasks = [Task(id=f"s{i}", question="Where is the red square?", answer="top left", images=[img]) for i in range(2)]
    env = DeepEyesEnv(tasks, tools=("python",), tool_kwargs={"python": {"timeout": 2, "hard_timeout_grace": 1, "max_output_chars": 7777}},
                      shuffle=False)
    try:
        env.reset(seed=0)
        obs, reward, term, trunc, info = env.step(code("import numpy as np\na = np.asarray(image_1)\nprint(a.shape, a[15, 10].tolist())"))
        assert obs["text"].startswith("Code execution result:\nstdout:\n```\n(48, 64, 3) [255, 0, 0]")
        assert obs["images"] == () and info["tool"] == "python" and info["error"] is None and not term
        obs, *_ = env.step(code("import matplotlib.pyplot as plt\nplt.imshow(image_1.crop((0, 0, 32, 24)))\nplt.show()\nprint(a.sum() > 0)"))
        assert "True" in obs["text"] and obs["text"].endswith("Images:\n<image>")
        assert len(obs["images"]) == 1 and obs["images"][0].dtype == np.uint8 and obs["images"][0].ndim == 3
        obs, *_ = env.step(code("while True:\n    pass"))
        assert "TimeoutError" in obs["text"]
        assert "(48, 64, 3)" in env.step(code("print(a.shape)"))[0]["text"]  # the session survived
        pid = env.tools["python"].backend.worker_pid
        obs, reward, term, *_ = env.step("<think>done</think><answer>top left</answer>")
        assert term
        env.reset()
        assert "NameError" in env.step(code("print(a)"))[0]["text"]  # nothing leaks across episodes
        assert not alive(pid) or _wait(lambda: not alive(pid))
        messages = env.messages()
        assert any("Code execution result" in str(m.get("content")) for m in messages)
        current = env.tools["python"].backend.worker_pid
        server = env.tools["python"].backend._state.pool.server.proc.pid
    finally:
        env.close()
    assert _wait(lambda: not alive(current) and not alive(server)), "sandbox processes left after env.close()"


def _wait(cond, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


@pytest.mark.timeout(60)
def test_env_abort_from_another_thread_stops_a_running_cell():
    import threading

    img = np.zeros((8, 8, 3), dtype=np.uint8)
    env = DeepEyesEnv([Task(id="ab", question="q", answer="a", images=[img])], tools=("python",),
                      tool_kwargs={"python": {"timeout": 60, "max_output_chars": 7778}}, shuffle=False)
    try:
        env.reset(seed=0)
        env.step(code("x = 1"))
        pid = env.tools["python"].backend.worker_pid
        out: dict = {}
        th = threading.Thread(target=lambda: out.update(r=env.step(code("import time\ntime.sleep(60)"))))
        th.start()
        time.sleep(0.3)
        env.abort()  # e.g. dynamic sampling cancelling a surplus episode
        th.join(20)
        assert not th.is_alive(), "abort waited for the running cell"
        assert out["r"][4].get("stop_reason") == "abort"
        assert _wait(lambda: not alive(pid))
        env.reset(seed=1)
        assert "(8, 8)" in env.step(code("print(image_1.size)"))[0]["text"]
    finally:
        env.close()
