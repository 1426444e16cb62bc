"""The HTML trajectory viewer: self-contained, escaped, images inline; renders in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile

import pytest

from deepeyes_gym.agents import Agent
from deepeyes_gym.benchmarks.runner import RunConfig, run_eval
from deepeyes_gym.benchmarks.viewer import render_viewer, split_turn, write_viewer

EVIL = '</script><script>window.PWNED=1</script><img src=x onerror="window.PWNED=2">'


class ZoomAgent(Agent):
    def act(self, messages, info=None):
        n = sum(m["role"] == "assistant" for m in messages)
        if n == 0:
            return ('<think>zoom into the corner</think><tool_call>{"name": "image_zoom_in_tool", '
                    '"arguments": {"bbox_2d": [0, 0, 200, 150]}}</tool_call>')
        if n == 1:
            return "<think>malformed on purpose</think><tool_call>{oops</tool_call>"
        return f"<think>answer</think><answer>{info['task_index'] % 3 + 1}</answer>"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("viewer_run")
    res = run_eval(RunConfig(env_id="DeepEyes-V1-Toy-v0", agent="zoom", out_dir=out, limit=5, concurrency=2,
                             progress=False), agent=ZoomAgent())
    records = list(res.records)
    search = dict(records[0], key="99:0", task_index=99, task_id="evil", question=EVIL, answer=EVIL,
                  status="error", error="agent error: " + EVIL, images=[])
    search["turns"] = [{
        "kind": "tool_call", "tool": "search", "arguments": {"query": "velmar bridge architect"},
        "action": '<think>search it</think><tool_call>{"name": "search", "arguments": {"query": "velmar"}}</tool_call>',
        "observation": "<tool_response>\nA Google search for 'velmar' found 1 results:\n</tool_response>",
        "n_images": 0, "error": None, "latency_s": 0.002, "step_s": 0.0025,
        "metadata": {"hits": [{"title": "Velmar Bridge - Kalo", "url": "https://example.org/wiki/Velmar_Bridge",
                               "snippet": "Velmar Bridge is a suspension bridge."}]},
    }]
    records.append(search)
    write_viewer(records, out / "viewer.html", title="test run", system_prompt=res.meta["system_prompt"])
    return out, records


def test_split_turn():
    assert split_turn("<think>a</think>\n<answer>1</answer>") == ("a", "<answer>1</answer>")
    assert split_turn("prefilled thought</think><code>x</code>") == ("prefilled thought", "<code>x</code>")
    assert split_turn("<answer>1</answer>") == ("", "<answer>1</answer>")


def test_viewer_is_self_contained_with_inline_images(run_dir):
    out, records = run_dir
    page = (out / "viewer.html").read_text()
    n_images = sum(len(r["images"]) for r in records)
    assert n_images == 10  # 5 episodes: input + zoom crop
    assert page.count('src="data:image/') == n_images
    assert not re.search(r'(src|href)="(?!data:|https://example\.org)', page)  # nothing fetched from outside
    assert "<script src" not in page and "<link rel=\"stylesheet\"" not in page
    for needle in ("zoom into the corner", "image_zoom_in_tool", "Error: the tool call is not valid JSON",
                   "Reward breakdown", "Velmar Bridge - Kalo", "suspension bridge", "System prompt"):
        assert needle in page


def test_viewer_escapes_everything(run_dir):
    page = (run_dir[0] / "viewer.html").read_text()
    assert "window.PWNED" in page  # the text is shown ...
    assert "<script>window.PWNED" not in page and '<img src=x' not in page  # ... but never live
    assert page.count("<script>") == 1


def test_image_budget_keeps_the_file_small(run_dir):
    out, records = run_dir
    small = render_viewer(records, images_root=out, image_budget_mb=0.0001)
    assert 'src="data:image/' not in small and "not embedded: size budget" in small
    assert "images were not embedded" in small
    # wrong episodes get the budget first
    correct = [r for r in records if r.get("status") == "ok" and r["accuracy"] == 1.0]
    wrong = [r for r in records if r.get("status") == "ok" and r["accuracy"] < 1.0]
    if correct and wrong:
        one = sum((out / e["file"]).stat().st_size for e in wrong[0]["images"])
        page = render_viewer([correct[0], wrong[0]], images_root=out, image_budget_mb=one / 2**20)
        first, second = page.split('class="ep ', 2)[1:]
        assert 'src="data:' in (second if correct[0]["task_index"] < wrong[0]["task_index"] else first)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.timeout(120)
def test_viewer_renders_in_headless_chromium_without_errors(run_dir):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium)")
    out, records = run_dir
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000",
             "--dump-dom", (out / "viewer.html").as_uri() + "#all"],
            capture_output=True, text=True, timeout=90,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom, log = proc.stdout, proc.stderr
    console = [l for l in log.splitlines() if "CONSOLE" in l or "Uncaught" in l]
    assert not console, console
    n = len(records)
    assert f'id="count">{n} / {n} episodes<' in dom  # the script ran to the end
    assert re.search(r'<div id="js-errors"></div>', dom)  # and window.onerror caught nothing
    assert dom.count("<script") == 1 and "<img src=\"x\"" not in dom  # the hostile text stayed text
    assert dom.count("<details class=\"ep") == n and dom.count(" open=\"\"") >= n  # #all expands every episode
