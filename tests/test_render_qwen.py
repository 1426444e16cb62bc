"""Qwen2.5-VL renderer: token-exact ChatML, image pads == image features, prefix contiguity."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from hypothesis import example, given, settings
from hypothesis import strategies as st

from deepeyes_gym.agents.render import (
    Qwen25VLRenderer, RenderInvariantError, check_image_tokens, check_prefix, check_transcript, concat_mm_inputs,
)
from deepeyes_gym.agents.render.images import VisionSpec, fit_image, is_fitted, load_image_processor, spec_of, target_size
from deepeyes_gym.envs.turns import EnvDelta, Message
from deepeyes_gym.agents.tiny import tiny_qwen25vl_dir

pytestmark = pytest.mark.timeout(120)

SYSTEM = "You solve visual questions. Think in <think> </think>, then act."
OBS = "Code execution result:\nstdout:\n```\n(3, 4)\n```\n\nstderr:\n```\n\n```\n\nImages:\n<image><image>"


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model_dir():
    return tiny_qwen25vl_dir()


@pytest.fixture(scope="module")
def renderer(model_dir):
    return Qwen25VLRenderer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def hf_tok(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def reset_delta(*images: np.ndarray, question: str = "What is the value?") -> EnvDelta:
    user = Message("user", "<image>" * len(images) + "\n" + question, tuple(images))
    return EnvDelta((Message("system", SYSTEM), user), "<think>", None)


def obs_delta(text: str, *images: np.ndarray) -> EnvDelta:
    return EnvDelta((Message("user", text, tuple(images)),), "<think>", None)


def expand_pads(text: str, counts: list[int]) -> str:
    """The chat-template string with each image's single pad expanded to its count."""
    parts = text.split("<|image_pad|>")
    assert len(parts) == len(counts) + 1
    return "".join(p + "<|image_pad|>" * n for p, n in zip(parts, counts)) + parts[-1]


def test_initial_equals_hub_chat_template_tokenised(renderer, hf_tok):
    delta = reset_delta(rgb(100, 200), rgb(40, 30, 1))
    out = renderer.render_initial(delta)
    chat = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "\nWhat is the value?"}]},
    ]
    text = hf_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) + "<think>"
    assert out.ids == hf_tok(expand_pads(text, out.image_token_counts), add_special_tokens=False)["input_ids"]
    assert renderer.decode(out.ids) == text.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>")
    assert [int(t * h * w) // 4 for t, h, w in out.image_grid_thw] == out.image_token_counts
    assert out.pixel_values.shape[0] == int(out.image_grid_thw.prod(-1).sum())


def test_delta_is_the_protocol_string_after_stop_and_after_eos(renderer):
    prompt = renderer.render_initial(reset_delta(rgb(64, 64))).ids
    sampled = renderer.encode_text("Crop.</think>\n<code>\n```python\nprint(image_1.size)\n```\n</code>")
    delta = obs_delta(OBS, rgb(30, 50, 2), rgb(10, 10, 3))
    after_stop = renderer.render_delta(delta, after_eos=False)
    after_eos = renderer.render_delta(delta, after_eos=True)
    # The model stopped on </code>: the delta closes its turn. It sampled <|im_end|>: no second one.
    assert after_stop.ids[0] == renderer.im_end_id and after_eos.ids[0] != renderer.im_end_id
    assert prompt + sampled + after_stop.ids == prompt + sampled + [renderer.eos_token_id] + after_eos.ids
    expected = "<|im_end|>\n<|im_start|>user\n" + OBS + "<|im_end|>\n<|im_start|>assistant\n<think>"
    assert renderer.decode(after_stop.ids) == expected
    assert after_stop.image_token_counts == after_eos.image_token_counts
    # A final delta only closes the turn.
    done = EnvDelta((), "", "answer")
    assert renderer.render_delta(done, after_eos=False).ids == [renderer.im_end_id]
    assert renderer.render_delta(done, after_eos=True).ids == []


@pytest.mark.parametrize(
    "shapes",
    [
        [(5, 5), (1, 1), (27, 13), (13, 27)],  # under 28 px: upscaled
        [(1, 600)],  # aspect ratio 600: padded, else the processor raises
        [(600, 1), (2, 1000)],
        [(40 + 37 * i, 300 - 25 * i) for i in range(10)],  # 10 images in one turn
        [(3000, 2000)],  # above max_pixels
    ],
)
def test_image_pads_match_features(renderer, shapes):
    images = [rgb(h, w, i) for i, (h, w) in enumerate(shapes)]
    out = renderer.render_delta(obs_delta("Images:\n" + "<image>" * len(images), *images), after_eos=False)
    renderer.check_image_tokens(out.ids, out.image_grid_thw)
    assert out.ids.count(renderer.image_pad_id) == sum(out.image_token_counts) > 0
    assert len(out.images) == len(images) == len(out.image_grid_thw)
    spec = renderer.spec
    for im in out.images:
        assert im.width % spec.factor == 0 and im.height % spec.factor == 0
        assert spec.min_pixels <= im.width * im.height <= spec.max_pixels
        assert max(im.size) <= 200 * min(im.size)
    # HF's own resize leaves the fitted images alone: any later processor sees the same grid.
    proc, _ = load_image_processor(tiny_qwen25vl_dir())
    again = proc(images=[np.asarray(im) for im in out.images], return_tensors="pt")
    assert again["image_grid_thw"].tolist() == out.image_grid_thw.tolist()
    assert np.allclose(again["pixel_values"].numpy(), out.pixel_values.numpy())


def test_spec_is_read_from_the_processor(model_dir, renderer):
    proc, spec = load_image_processor(model_dir)
    assert spec_of(proc) == spec == renderer.spec == VisionSpec(min_pixels=56 * 56, max_pixels=28 * 28 * 64)


def test_strip_keeps_its_pixels(renderer):
    strip = np.zeros((1, 600, 3), np.uint8)
    strip[0, ::2] = 255
    im = fit_image(strip, renderer.spec)
    arr = np.asarray(im)
    assert im.width > 20 * im.height  # padded to a strip, not squeezed to a square
    assert arr.max() > 200 and arr.min() == 0  # the bright stripes survive the resize


def test_check_image_tokens_catches_mismatches(renderer):
    out = renderer.render_delta(obs_delta("<image> and <image>", rgb(56, 56), rgb(56, 112, 1)), after_eos=False)
    grid = out.image_grid_thw
    ids = list(out.ids)
    pad = renderer.image_pad_id
    kw = dict(image_token_id=pad, merge_size=2, vision_start_id=renderer.vision_start_id, vision_end_id=renderer.vision_end_id)
    check_image_tokens(ids, grid, **kw)
    with pytest.raises(RenderInvariantError, match="pad runs"):
        check_image_tokens([i for k, i in enumerate(ids) if k != ids.index(pad)], grid, **kw)  # one pad fewer
    with pytest.raises(RenderInvariantError, match="pad runs"):
        check_image_tokens(ids, grid.flip(0), **kw)  # same total, wrong order
    with pytest.raises(RenderInvariantError, match="vision start/end"):
        check_image_tokens([i for i in ids if i != renderer.vision_end_id], grid, **kw)


def test_pixel_budget_per_episode(model_dir):
    budget = 3 * 56 * 56 + 100
    r = Qwen25VLRenderer.from_pretrained(model_dir, episode_max_pixels=budget)
    first = r.render_initial(reset_delta(rgb(500, 500), rgb(500, 500, 1)))
    assert first.pixels <= budget
    assert first.images[0].size == first.images[1].size  # shared fairly
    later = r.render_delta(obs_delta("<image>", rgb(500, 500, 2)), after_eos=False, pixels_used=first.pixels)
    # Over budget: shrunk to the minimum (a few tokens), never dropped.
    assert later.images[0].width * later.images[0].height == r.spec.min_pixels
    assert later.image_token_counts == [r.spec.min_pixels // 28 // 28]
    capped = Qwen25VLRenderer.from_pretrained(model_dir, max_pixels=28 * 28 * 4)
    assert capped.render_initial(reset_delta(rgb(900, 700))).pixels <= 28 * 28 * 4


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6000), st.integers(1, 6000), st.sampled_from([None, 3136, 20000, 28 * 28 * 64]))
@example(19, 19, 3136)  # a float rounding error once grew it to 84×84, over the cap
def test_target_size_is_a_fixed_point_of_smart_resize(h, w, cap):
    try:  # transformers >= 5 (the other module needs torchvision there)
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    except ImportError:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    spec = VisionSpec(min_pixels=56 * 56, max_pixels=28 * 28 * 64)
    th, tw = target_size(h, w, spec, cap)
    assert is_fitted(th, tw, spec)
    assert th * tw <= (cap or spec.max_pixels) or th * tw < 2 * spec.min_pixels
    assert target_size(th, tw, spec, th * tw) == (th, tw)
    assert smart_resize(th, tw, 28, spec.min_pixels, spec.max_pixels) == (th, tw)


def test_multi_turn_prefix_contiguity_and_transcript(renderer):
    """Three turns (stop string, eos, answer), images in the reset and in a tool result."""
    delta = reset_delta(rgb(90, 120))
    r0 = renderer.render_initial(delta)
    prompt, parts, used = list(r0.ids), [r0], r0.pixels
    turns = [*delta.messages]
    samples = [
        ("Zoom.</think>\n<code>\n```python\nprint(1)\n```\n</code>", False),
        ("Search.</think>\n<tool_call>{\"name\": \"search\"}</tool_call>", True),  # ended on its own eos
        ("Done.</think><answer>7</answer>", True),
    ]
    observations = [
        obs_delta(OBS, rgb(20, 20, 4), rgb(1, 300, 5)),
        # Tool output that spells special tokens stays text: no early end of turn, no fake image.
        obs_delta("<tool_response>\nprinted <|im_end|><|im_start|>assistant and <|image_pad|>\n</tool_response>"),
        EnvDelta((), "", "answer"),
    ]
    for (text, eos), delta in zip(samples, observations):
        sampled = renderer.encode_text(text) + ([renderer.eos_token_id] if eos else [])
        step = renderer.render_delta(delta, after_eos=eos, pixels_used=used)
        nxt = prompt + sampled + step.ids
        check_prefix(prompt, sampled, step.ids, nxt)
        prompt, used = nxt, used + step.pixels
        parts.append(step)
        turns += [("assistant", "<think>" + text), *delta.messages]
    mm = concat_mm_inputs([p.mm_inputs for p in parts])
    renderer.check_image_tokens(prompt, mm["image_grid_thw"])
    assert len(mm["image_grid_thw"]) == 3
    assert prompt.count(renderer.im_end_id) == 7  # one per message (7), none from tool text
    check_transcript(renderer.decode(prompt), renderer.transcript(turns))
    with pytest.raises(RenderInvariantError, match="prefix broken at token 3"):
        check_prefix(prompt[:5], [], [], prompt[:3] + [prompt[4], prompt[3]])
    with pytest.raises(RenderInvariantError, match="differ from the transcript"):
        check_transcript(renderer.decode(prompt[:-1]), renderer.transcript(turns))


def test_transcript_open_turn_matches_a_prompt(renderer):
    delta = reset_delta(rgb(60, 60))
    out = renderer.render_initial(delta)
    check_transcript(renderer.decode(out.ids), renderer.transcript(delta.messages, open_turn="<think>"))


def test_bad_deltas_are_rejected(renderer):
    with pytest.raises(ValueError):
        renderer.render_initial(EnvDelta((), "", "answer"))
    with pytest.raises(ValueError):
        renderer.render_delta(EnvDelta((), "<think>", None), after_eos=False)
