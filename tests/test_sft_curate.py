"""Curation and cold-start SFT on tiny local models: the paper's stage-1 pipeline end to end."""

from __future__ import annotations

import json

import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from deepeyes_gym.agents.tiny import tiny_qwen25vl_dir  # noqa: E402

from deepeyes_gym import cli  # noqa: E402
from deepeyes_gym.agents.render.qwen25vl import Qwen25VLRenderer  # noqa: E402
from deepeyes_gym.envs.episode_io import EpisodeStore  # noqa: E402
from deepeyes_gym.trainers.curate import CurateConfig, curate  # noqa: E402
from deepeyes_gym.trainers.examples import episode_to_example, load_episodes  # noqa: E402
from deepeyes_gym.trainers.sft import SFTConfig, train_sft  # noqa: E402


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    out = tmp_path_factory.mktemp("curate")
    return curate(CurateConfig(env_id="DeepEyes-RealX-v0", limit=6, attempts=2, out_dir=str(out), concurrency=4))


def test_curation_keeps_tasks_the_base_fails_and_the_reference_solves(curated):
    c = curated.counts
    assert c["considered"] == 6 and c["kept"] == c["sft_tasks"] + c["rl_tasks"] <= 6
    assert c["sft_episodes"] == c["sft_tasks"] > 0 and c["rl_tasks"] > 0
    assert not set(curated.sft_tasks) & set(curated.rl_tasks)
    stored = list(EpisodeStore(curated.out_dir / "sft"))
    assert len(stored) == c["sft_episodes"] and all(ep.reward_breakdown["accuracy"] == 1.0 for _, ep, _ in stored)
    pool = json.loads((curated.out_dir / "rl_tasks.json").read_text())
    assert pool["task_indices"] == curated.rl_tasks


def test_examples_mask_everything_but_the_policys_own_turns(curated):
    renderer = Qwen25VLRenderer.from_pretrained(tiny_qwen25vl_dir(), max_pixels=64 * 28 * 28)
    (_, ep), *_ = load_episodes([curated.out_dir / "sft"])
    ex = episode_to_example(ep, renderer)
    assert len(ex.ids) == len(ex.mask) and ex.images and ex.mm_inputs["pixel_values"].shape[0] > 0
    trained = [i for i, m in zip(ex.ids, ex.mask) if m]
    want = "".join(t.action.removeprefix("<think>") for t in ep.turns)
    assert renderer.decode(trained[:-1]) == want and trained[-1] == renderer.eos_token_id
    observed = [i for i, m in zip(ex.ids, ex.mask) if not m]
    assert renderer.image_pad_id in observed and renderer.image_pad_id not in trained


def test_sft_trains_on_curated_and_deepeyesv2_files_and_plots(curated, tmp_path, capsys):
    sft_json = tmp_path / "sft.json"
    Image.new("RGB", (96, 64), (200, 10, 10)).save(tmp_path / "q.png")
    sft_json.write_text(json.dumps([{"messages": [
        {"role": "user", "content": "<image>What colour is it?"},
        {"role": "assistant", "content": "<think>Look.</think><code>\n```python\nprint(image_1.getpixel((0, 0)))\n```\n</code>"},
        {"role": "user", "content": "Code execution result:\nstdout:\n```\n(200, 10, 10)\n```"},
        {"role": "assistant", "content": "<think>Red.</think><answer>red</answer>"},
    ], "images": ["q.png"]}]))
    cfg = SFTConfig(model=str(tiny_qwen25vl_dir()), data=[str(curated.out_dir / "sft"), str(sft_json)],
                    out_dir=str(tmp_path / "sft"), epochs=4, batch_size=8, lr=2e-3, warmup_ratio=0.0,
                    max_pixels=64 * 28 * 28, seed=0)
    res = train_sft(cfg)
    assert res.n_examples == curated.counts["sft_episodes"] + 1 and res.steps == 4
    assert res.losses[-1] < res.losses[0]  # it learns the curated turns
    assert (res.final_model / "config.json").exists() and (res.final_model / "tokenizer.json").exists()
    assert cli.main(["plot", str(tmp_path / "sft")]) == 0
    assert (tmp_path / "sft" / "curves.png").stat().st_size > 1000
