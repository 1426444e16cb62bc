"""HFPolicy on the tiny Qwen2.5-VL / Qwen2: stops, eos, length, bans, logprobs vs the forward pass."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import LogitsProcessor

from deepeyes_gym.agents.generation import Generation, SamplingParams, TokenPolicy
from deepeyes_gym.agents.hf import HFAgent, HFPolicy, logprob_mismatch, sequence_logprobs
from deepeyes_gym.agents.render import Qwen25VLRenderer, RenderInvariantError, check_prefix, concat_mm_inputs
from deepeyes_gym.envs.turns import EnvDelta, Message
from deepeyes_gym.agents.tiny import tiny_qwen2_dir, tiny_qwen25vl_dir

pytestmark = pytest.mark.timeout(180)

GREEDY = SamplingParams(max_tokens=48, temperature=0.0)


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def policy():
    p = HFPolicy.from_pretrained(tiny_qwen25vl_dir())
    yield p
    p.close()


@pytest.fixture(scope="module")
def renderer():
    return Qwen25VLRenderer.from_pretrained(tiny_qwen25vl_dir())


@pytest.fixture(scope="module")
def prompt(renderer):
    user = Message("user", "<image>\nHow many bars?", (rgb(70, 100),))
    return renderer.render_initial(EnvDelta((Message("system", "Use tools."), user), "<think>"))


class Script(LogitsProcessor):
    """Steers greedy decoding along ``text``: every token that continues it gets a bonus, longer
    ones more (so the policy's own masks decide between ">" and ">\\n"); then ``then`` ids."""

    def __init__(self, policy: HFPolicy, text: str, then: tuple[int, ...] = ()):
        self.policy, self.text, self.then, self.start = policy, text, then, None

    def __call__(self, input_ids, scores):
        self.start = input_ids.shape[1] if self.start is None else self.start
        gen = input_ids[0, self.start:].tolist()
        done = self.policy.decode(gen)
        rest = self.text[len(done):] if self.text.startswith(done) else ""  # off script: no steering
        bonus = torch.zeros_like(scores)
        for i, t in enumerate(self.policy._token_texts):
            if rest and t and rest.startswith(t):
                bonus[:, i] = 100 + 10 * len(t)
        if not rest:
            for i in self.then:
                bonus[:, i] = 1000
        return scores + bonus


def scripted(policy: HFPolicy, prompt, text: str, sampling=GREEDY, then: tuple[int, ...] = ()) -> Generation:
    saved = policy.logits_processors
    policy.logits_processors = [Script(policy, text, then)]
    try:
        return policy.generate_sync(prompt.ids, prompt.images, sampling, mm_inputs=prompt.mm_inputs)
    finally:
        policy.logits_processors = saved


def test_policy_satisfies_the_protocol(policy):
    assert isinstance(policy, TokenPolicy)
    assert policy.sleep() is False  # a CPU model has no accelerator memory to free for an update
    policy.wake_up()


def test_stop_string_ends_the_turn_exactly_at_its_end(policy, prompt, renderer):
    script = "Crop.</think>\n<code>\n```python\nprint(1)\n```\n</code>\nmore"
    # The tokenizer writes "</code>\n" with a ">\n" token: a naive stop would end after the "\n".
    greedy_ids = renderer.encode_text(script)
    assert any(policy._token_texts[i] == ">\n" for i in greedy_ids)
    g = scripted(policy, prompt, script)
    assert (g.finish_reason, g.stop) == ("stop", "</code>")
    assert g.text == script[: script.index("</code>") + len("</code>")]
    assert policy.decode(g.token_ids) == g.text and policy._token_texts[g.token_ids[-1]] == ">"
    assert len(g.logprobs) == len(g.token_ids) and g.prompt_tokens == len(prompt.ids)


@pytest.mark.parametrize("script, added", [
    ('<tool_call>{"name": "image_search"}</tool_call> after', True),  # the added token
    ('<tool_call>{"arguments": {"query": "x"}}</tool_call> after', False),  # "}}</" + BPE pieces
])
def test_tool_call_stop_as_added_token_or_as_bpe_pieces(policy, prompt, renderer, script, added):
    g = scripted(policy, prompt, script)
    assert (g.finish_reason, g.stop) == ("stop", "</tool_call>")
    assert g.text == script[: script.index("</tool_call>") + len("</tool_call>")] == policy.decode(g.token_ids)
    assert (g.token_ids[-1] == renderer._tok.token_to_id("</tool_call>")) == added


def test_end_of_turn_token_stops_without_a_stop_string(policy, prompt):
    g = scripted(policy, prompt, "Done.</think><answer>3</answer>", then=(policy.eos_token_id,))
    assert (g.finish_reason, g.stop) == ("stop", None)
    assert g.token_ids[-1] == policy.eos_token_id and g.text == "Done.</think><answer>3</answer>"
    assert policy.decode(g.token_ids[:-1]) == g.text


def test_max_tokens_is_length(policy, prompt):
    g = scripted(policy, prompt, "a b c d e f g h i j k l m n o p", SamplingParams(max_tokens=5, temperature=0.0))
    assert g.finish_reason == "length" and g.stop is None and len(g.token_ids) == 5


def test_banned_tokens_are_never_sampled(policy, prompt, renderer):
    banned = (renderer.endoftext_id, renderer.im_start_id, policy._vocab - 1)  # the last: a padded row
    assert policy._vocab - 1 >= renderer.vocab_size
    g = scripted(policy, prompt, "", SamplingParams(max_tokens=12, temperature=0.0), then=banned)
    assert not set(banned) & set(g.token_ids) and len(g.token_ids) == 12
    # Sampling with every filter on still never picks them (and yields no NaN).
    s = SamplingParams(max_tokens=12, temperature=0.7, top_p=0.9, top_k=20, seed=3)
    g = scripted(policy, prompt, "", s, then=banned)
    assert not set(banned) & set(g.token_ids) and all(np.isfinite(g.logprobs))


def test_seeded_sampling_is_reproducible_and_model_defaults_do_not_leak(policy, prompt):
    """The tiny model ships Qwen's generation_config (top_k=1, top_p=0.001, repetition penalty):
    if it leaked in, every seed would give the same greedy-like output."""
    run = lambda seed: policy.generate_sync(prompt.ids, prompt.images, SamplingParams(max_tokens=16, seed=seed),
                                            mm_inputs=prompt.mm_inputs).token_ids
    assert run(1) == run(1)
    assert len({tuple(run(s)) for s in (1, 2, 3)}) == 3


def test_logprobs_match_the_training_forward_pass_over_turns_with_images(policy, renderer, prompt):
    """Two sampled turns around a tool result carrying images; the whole trajectory through
    ``sequence_logprobs``: per-token |Δlogp| <= 1e-5, and checks that would catch a bug do fire."""
    ids, parts, mask, roll = list(prompt.ids), [prompt], [0] * len(prompt.ids), [0.0] * len(prompt.ids)
    first = scripted(policy, prompt, "Zoom.</think>\n<code>\n```python\nshow(image_1)\n```\n</code>",
                     SamplingParams(max_tokens=40, temperature=1.0, seed=0))
    assert first.stop == "</code>"
    obs = Message("user", "Code execution result:\nImages:\n<image><image>", (rgb(20, 20, 1), rgb(1, 600, 2)))
    delta = renderer.render_delta(EnvDelta((obs,), "<think>"), after_eos=first.token_ids[-1] == renderer.eos_token_id,
                                  pixels_used=prompt.pixels)
    nxt = ids + first.token_ids + delta.ids
    check_prefix(ids, first.token_ids, delta.ids, nxt)
    mask += [1] * len(first.token_ids) + [0] * len(delta.ids)
    roll += first.logprobs + [0.0] * len(delta.ids)
    ids, parts = nxt, parts + [delta]
    mm = concat_mm_inputs([p.mm_inputs for p in parts])
    second = policy.generate_sync(ids, [im for p in parts for im in p.images], SamplingParams(max_tokens=24, seed=1), mm_inputs=mm)
    ids += second.token_ids
    mask += [1] * len(second.token_ids)
    roll += second.logprobs
    renderer.check_image_tokens(ids, mm["image_grid_thw"])

    t_ids, t_mask = torch.tensor(ids), torch.tensor(mask)
    with torch.no_grad():
        train = sequence_logprobs(policy.model, t_ids, mm, t_mask)
    stats = logprob_mismatch(torch.tensor(roll), train, t_mask)
    assert stats["n_tokens"] == len(first.token_ids) + len(second.token_ids)
    assert stats["max_abs"] <= 1e-5 and stats["kl_k3"] <= 1e-9, stats
    # The same trajectory with one image's pixels changed is visibly different.
    bad = dict(mm, pixel_values=mm["pixel_values"].clone())
    bad["pixel_values"][-5:] += 1.0
    with torch.no_grad():
        off = logprob_mismatch(torch.tensor(roll), sequence_logprobs(policy.model, t_ids, bad, t_mask), t_mask)
    assert off["max_abs"] > 1e-4


def test_processing_images_in_the_policy_equals_rendered_tensors(policy, prompt):
    g1 = policy.generate_sync(prompt.ids, prompt.images, SamplingParams(max_tokens=8, seed=5))
    g2 = policy.generate_sync(prompt.ids, prompt.images, SamplingParams(max_tokens=8, seed=5), mm_inputs=prompt.mm_inputs)
    assert g1.token_ids == g2.token_ids and g1.logprobs == g2.logprobs


def test_pad_feature_mismatch_is_refused_before_generating(policy, prompt, renderer):
    ids = list(prompt.ids)
    ids.remove(renderer.image_pad_id)  # one pad fewer than the image's features
    with pytest.raises(RenderInvariantError):
        policy.generate_sync(ids, [], GREEDY, mm_inputs=prompt.mm_inputs)
    with pytest.raises(RenderInvariantError):
        policy.generate_sync(prompt.ids, [], GREEDY)  # pads without images


def test_async_generate_runs_off_the_loop_and_concurrent_calls_are_safe(policy, prompt):
    threads = set()

    class Where(LogitsProcessor):
        def __call__(self, input_ids, scores):
            threads.add(threading.get_ident())
            return scores

    sampling = [SamplingParams(max_tokens=10, seed=s) for s in range(4)]
    sequential = [policy.generate_sync(prompt.ids, prompt.images, s, mm_inputs=prompt.mm_inputs).token_ids for s in sampling]

    async def main():
        policy.logits_processors = [Where()]
        try:
            outs = await asyncio.gather(*[
                policy.generate(prompt.ids, prompt.images, s, request_id=f"r{i}", mm_inputs=prompt.mm_inputs)
                for i, s in enumerate(sampling)
            ])
        finally:
            policy.logits_processors = []
        return outs, threading.get_ident()

    outs, loop_thread = asyncio.run(main())
    assert [o.token_ids for o in outs] == sequential
    assert threads and loop_thread not in threads
    assert [o.metadata["request_id"] for o in outs] == ["r0", "r1", "r2", "r3"]


def test_abort_and_cancel_end_a_generation_early(policy, prompt):
    calls = []

    class AbortAt(LogitsProcessor):
        def __init__(self, n, action):
            self.n, self.action = n, action

        def __call__(self, input_ids, scores):
            calls.append(1)
            if len(calls) == self.n:
                self.action()
            return scores

    long = SamplingParams(max_tokens=2000, temperature=1.0, seed=0, stop=())
    policy.logits_processors = [AbortAt(3, lambda: policy.abort("a"))]
    try:
        g = policy.generate_sync(prompt.ids, prompt.images, long, request_id="a", mm_inputs=prompt.mm_inputs)
    finally:
        policy.logits_processors = []
    assert g.finish_reason == "abort" and len(g.token_ids) == len(g.logprobs) == 3
    assert policy.generate_sync(prompt.ids, prompt.images, SamplingParams(max_tokens=3, seed=0), request_id="a",
                                mm_inputs=prompt.mm_inputs).finish_reason != "abort"  # no stale abort

    async def cancel_one():
        started = asyncio.Event()
        loop = asyncio.get_running_loop()
        calls.clear()
        policy.logits_processors = [AbortAt(3, lambda: loop.call_soon_threadsafe(started.set))]
        try:
            task = asyncio.create_task(policy.generate(prompt.ids, prompt.images, long, request_id="c", mm_inputs=prompt.mm_inputs))
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            policy.logits_processors = []
        # The worker is free again, and the cancelled generation stopped well before max_tokens.
        nxt = await policy.generate(prompt.ids, prompt.images, SamplingParams(max_tokens=4, seed=0), request_id="d",
                                    mm_inputs=prompt.mm_inputs)
        return nxt, len(calls)

    nxt, n_calls = asyncio.run(cancel_one())
    assert len(nxt.token_ids) == 4 and n_calls < 2000


def test_image_tokens_get_3d_positions(policy, prompt):
    """transformers >= 5 silently gives image tokens 1-D positions unless ``mm_token_type_ids`` is
    passed; sequence_logprobs passes it (and generate must too, or the logprob test above fails)."""
    import inspect

    if "mm_token_type_ids" not in inspect.signature(policy.model.forward).parameters:
        pytest.skip("transformers 4.x derives the 3-D positions itself")
    ids = torch.tensor(prompt.ids)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ours = sequence_logprobs(policy.model, ids, prompt.mm_inputs, mask)
        logits = policy.model(input_ids=ids[None], **prompt.mm_inputs).logits[0, :-1].log_softmax(-1)
    flat = logits.gather(-1, ids[1:, None]).squeeze(-1)
    assert (ours[1:] - flat).abs().max() > 1e-4


def test_text_only_qwen2():
    p = HFPolicy.from_pretrained(tiny_qwen2_dir())
    try:
        r = Qwen25VLRenderer.from_pretrained(tiny_qwen2_dir())
        ids = r.render_initial(EnvDelta((Message("system", "S"), Message("user", "2+2?")), "<think>")).ids
        g = p.generate_sync(ids, [], SamplingParams(max_tokens=16, seed=0))
        seq = torch.tensor(ids + g.token_ids)
        mask = torch.tensor([0] * len(ids) + [1] * len(g.token_ids))
        with torch.no_grad():
            train = sequence_logprobs(p.model, seq, None, mask)
        assert logprob_mismatch(torch.tensor([0.0] * len(ids) + g.logprobs), train, mask)["max_abs"] <= 1e-5
        with pytest.raises(ValueError, match="no images"):
            p.generate_sync(ids, [rgb(30, 30)], GREEDY)
    finally:
        p.close()


def test_logprob_mismatch_values():
    train = torch.tensor([0.0, -1.0, -2.0, -3.0])
    mask = torch.tensor([0, 1, 1, 0])
    assert logprob_mismatch(train, train, mask) == {"mean_abs": 0.0, "max_abs": 0.0, "kl_k3": 0.0, "n_tokens": 2}
    roll = train - torch.tensor([5.0, 0.1, 0.3, 5.0])  # the masked-out 5.0s must not count
    m = logprob_mismatch(roll, train, mask)
    assert m["max_abs"] == pytest.approx(0.3) and m["mean_abs"] == pytest.approx(0.2)
    assert m["kl_k3"] == pytest.approx(((np.exp(0.1) - 1.1) + (np.exp(0.3) - 1.3)) / 2)


def test_sampling_params_validate():
    with pytest.raises(ValueError):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError):
        SamplingParams(stop=("",))
    with pytest.raises(ValueError):
        Generation("x", "length", stop="</code>")


def test_hf_agent_plays_a_text_level_turn():
    agent = HFAgent(str(tiny_qwen25vl_dir()), max_tokens=8)
    try:
        from PIL import Image

        msgs = [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": [{"type": "image", "image": Image.fromarray(rgb(50, 80))}, {"type": "text", "text": "Q?"}]},
        ]
        out = agent.act(msgs)
        assert out.startswith("<think>") and out == agent.act(msgs)  # seeded
    finally:
        agent.close()


def test_cli_eval_with_the_hf_agent_on_the_bundled_suite(tmp_path, capsys):
    """`deepeyes-gym eval --agent hf --model DIR` runs the bundled suite end to end."""
    import json

    from deepeyes_gym import cli

    code = cli.main(["eval", "--env", "DeepEyes-RealX-v0", "--agent", "hf", "--model", str(tiny_qwen25vl_dir()),
                     "--agent-arg", "max_tokens=8", "--agent-arg", "max_pixels=50176", "--limit", "2",
                     "--concurrency", "2", "--env-arg", "max_turns=2", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0, out
    records = [json.loads(x) for x in (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["status"] == "ok" and r["n_turns"] >= 1 for r in records)


def test_hf_agent_passes_the_finish_reason_to_the_env(tmp_path):
    """A turn cut at max_tokens must end the episode as "length" in eval too, never run."""
    import asyncio

    from deepeyes_gym.agents.loop import run_episode
    from deepeyes_gym.envs import DeepEyesEnv
    from deepeyes_gym.envs.suites.builtin import toy_tasks

    agent = HFAgent(str(tiny_qwen25vl_dir()), max_tokens=3, max_pixels=50176)
    env = DeepEyesEnv(toy_tasks(1), tools=("python",))
    out = asyncio.run(run_episode(env, agent, seed=0))
    agent.close()
    env.close()
    assert out.ok and out.episode.stop_reason == "length" and out.episode.turns[0].finish_reason == "length"
    assert out.episode.turns[0].n_tokens == 3 and out.episode.turns[0].tool is None
