"""A transformers ``generate`` policy, token in / token out, on CPU or GPU.

* Stop strings end a turn exactly at their last character: a token that would run past one (BPE
  tokens like ``">\\n"`` after ``</code``) is masked at that step, so ``text == decode(token_ids)``
  and the ids are the sampled ones.
* ``logprobs`` are of the sampled tokens under the model's *raw* distribution (log-softmax of the
  unprocessed logits at temperature 1: no temperature, top-k/top-p or banned-token masking), i.e.
  what the training forward pass computes (:func:`sequence_logprobs`) and vLLM's default
  ``raw_logprobs``. At temperature 1 without filters they are the sampling logprobs up to the
  renormalisation over the few banned tokens.
* Banned in generation (protocol): ``<|endoftext|>``, ``<|im_start|>``, and ids past the tokenizer
  (the model's padded vocabulary rows).
* One worker thread per policy and one lock per model (Qwen2.5-VL keeps ``rope_deltas`` on the
  model between calls), so concurrent coroutines are safe and the event loop is never blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from .base import Agent, Message as ChatMessage
from .generation import BANNED_TOKENS, Generation, SamplingParams
from .render.base import RenderInvariantError, check_image_tokens
from .render.images import VisionSpec, fit_images, load_image_processor, process_images, spec_of

__all__ = ["HFPolicy", "HFAgent", "sequence_logprobs", "logprob_mismatch", "load_model"]

_LOCKS: "weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: torch.nn.Module) -> threading.RLock:
    """The lock that serialises every forward/generate on ``model`` in this process."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(model, threading.RLock())


def _wants_mm_token_type_ids(model: torch.nn.Module) -> bool:
    # transformers >= 5 needs it for 3-D rope positions of image tokens (silently 1-D without).
    return "mm_token_type_ids" in inspect.signature(model.forward).parameters


def _mm_kwargs(model: torch.nn.Module, ids: torch.Tensor, mm_inputs: Mapping[str, torch.Tensor] | None) -> dict[str, Any]:
    if not mm_inputs:
        return {}
    dtype = next(model.parameters()).dtype
    out = {
        "pixel_values": mm_inputs["pixel_values"].to(ids.device, dtype),
        "image_grid_thw": mm_inputs["image_grid_thw"].to(ids.device),
    }
    if _wants_mm_token_type_ids(model):
        out["mm_token_type_ids"] = (ids == model.config.image_token_id).int()
    return out


def load_model(path: str | Path, *, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A Qwen2/2.5-VL (image-text) or text-only causal LM from a local dir, in eval mode."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    if getattr(config, "vision_config", None) is not None:
        cls = {
            "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
            "qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
        }.get(config.model_type, getattr(transformers, "AutoModelForImageTextToText", None))
    else:
        cls = AutoModelForCausalLM
    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model = cls.from_pretrained(path, **{key: dtype})
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()


class _StopMasks:
    """Per (tokenizer, stop strings): the ids to ban always, and per generated suffix."""

    def __init__(self, token_texts: Sequence[str], banned: Sequence[int], stops: tuple[str, ...], vocab: int) -> None:
        always = set(banned) | set(range(len(token_texts), vocab))
        # A stop string wholly inside a token, followed by more text.
        for i, t in enumerate(token_texts):
            if any(0 <= t.find(s) < len(t) - len(s) for s in stops):
                always.add(i)
        self.always = torch.tensor(sorted(always), dtype=torch.long)
        # (generated text ends with this prefix of a stop, ids completing it with text to spare)
        self.partial: list[tuple[str, torch.Tensor]] = []
        for s in stops:
            for k in range(1, len(s)):
                rest = s[k:]
                bad = [i for i, t in enumerate(token_texts) if len(t) > len(rest) and t.startswith(rest)]
                if bad:
                    self.partial.append((s[:k], torch.tensor(bad, dtype=torch.long)))
        # Enough trailing tokens to hold any stop string (partial UTF-8 tokens may share a char).
        self.tail_tokens = 2 * max((len(s) for s in stops), default=0) + 2


class _TurnProcessor(LogitsProcessor):
    """Bans protocol tokens, and tokens that would end a stop string before their own end."""

    def __init__(self, masks: _StopMasks, prompt_len: int, decode: Any) -> None:
        self.masks, self.prompt_len, self.decode = masks, prompt_len, decode

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        m = self.masks
        scores = scores.clone()  # in place would also mask generate's raw logits (our logprobs)
        scores[:, m.always.to(scores.device)] = -float("inf")
        for row in range(input_ids.shape[0] if m.partial else 0):
            gen = input_ids[row, self.prompt_len:][-m.tail_tokens:].tolist()
            tail = self.decode(gen) if gen else ""
            for prefix, ids in m.partial:
                if tail.endswith(prefix):
                    scores[row, ids.to(scores.device)] = -float("inf")
        return scores


class _StopOnStrings(StoppingCriteria):
    """Stops a row once its generated text contains a stop string, and every row on abort."""

    def __init__(self, stops: Sequence[str], prompt_len: int, decode: Any, tail_tokens: int,
                 aborted: threading.Event) -> None:
        self.stops, self.prompt_len, self.decode, self.tail_tokens = tuple(stops), prompt_len, decode, tail_tokens
        self.aborted = aborted

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        stop_all = self.aborted.is_set()
        done = [stop_all or any(s in self.decode(input_ids[r, self.prompt_len:][-self.tail_tokens:].tolist())
                                for s in self.stops) for r in range(input_ids.shape[0])]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class HFPolicy:
    """:class:`~deepeyes_gym.agents.generation.TokenPolicy` over a transformers model.

    ``generate`` takes the whole episode's ids and images (or their processed tensors as
    ``mm_inputs``, the concatenated ``Rendered.mm_inputs``, to skip re-processing); checks that
    image pads match image features before running. ``logits_processors`` run before the
    protocol's masks (constrained decoding, scripted tests).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, image_processor: Any = None,
                 spec: VisionSpec | None = None, *, logits_processors: Sequence[Any] = ()) -> None:
        from tokenizers import Tokenizer

        self.model = model
        backend = tokenizer if isinstance(tokenizer, Tokenizer) else tokenizer.backend_tokenizer
        self._tok = Tokenizer.from_str(backend.to_str())
        self.image_processor = image_processor
        self.spec = spec or (spec_of(image_processor) if image_processor is not None else None)
        self.logits_processors = list(logits_processors)
        self.device = next(model.parameters()).device
        self.eos_token_id = self._tok.token_to_id("<|im_end|>")
        if self.eos_token_id is None:
            raise ValueError("tokenizer has no <|im_end|> (end of turn)")
        self.banned_ids = [i for i in (self._tok.token_to_id(t) for t in BANNED_TOKENS) if i is not None]
        n = self._tok.get_vocab_size(with_added_tokens=True)
        self._token_texts = [self._tok.decode([i], skip_special_tokens=False) for i in range(n)]
        self._masks: dict[tuple[str, ...], _StopMasks] = {}
        self._vocab = model.get_output_embeddings().weight.shape[0]
        # generate() fills fields left at their global defaults from the model's own generation
        # config (Qwen's top_p=0.001, repetition_penalty=1.05 ...): neutralise it, the sampling
        # params say everything.
        model.generation_config = GenerationConfig(eos_token_id=[self.eos_token_id])
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-policy")
        self._lock = model_lock(model)
        self._aborts: dict[str, threading.Event] = {}
        self._abort_guard = threading.Lock()

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = None,
                        dtype: torch.dtype = torch.float32, **kwargs: Any) -> "HFPolicy":
        from transformers import AutoTokenizer

        model = load_model(path, device=device, dtype=dtype)
        proc, spec = load_image_processor(path) if getattr(model.config, "vision_config", None) is not None else (None, None)
        return cls(model, AutoTokenizer.from_pretrained(path), proc, spec, **kwargs)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    async def generate(self, prompt_ids: list[int], images: Sequence[Any], sampling: SamplingParams, *,
                       request_id: str, mm_inputs: Mapping[str, torch.Tensor] | None = None) -> Generation:
        """Sample one turn without blocking the event loop (runs on the policy's worker thread).
        Cancelling the awaiting task aborts the generation at its next token, freeing the worker."""
        aborted = self._register(request_id)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, self._generate, prompt_ids, images, sampling, request_id, mm_inputs, aborted
            )
        except asyncio.CancelledError:
            aborted.set()
            raise
        finally:
            self._unregister(request_id, aborted)

    def abort(self, request_id: str) -> None:
        """End the in-flight or queued ``request_id`` at its next token (``finish_reason="abort"``)."""
        with self._abort_guard:
            event = self._aborts.get(request_id)
        if event is not None:
            event.set()

    def _register(self, request_id: str) -> threading.Event:
        with self._abort_guard:
            return self._aborts.setdefault(request_id, threading.Event())

    def _unregister(self, request_id: str, event: threading.Event) -> None:
        with self._abort_guard:
            if self._aborts.get(request_id) is event:
                del self._aborts[request_id]

    def mm_inputs_for(self, images: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Processed tensors of the episode's images (fitted first: a no-op for rendered ones)."""
        if not images:
            return {}
        if self.image_processor is None or self.spec is None:
            raise ValueError("this model takes no images")
        return process_images(self.image_processor, fit_images(images, self.spec), self.spec)

    def _stop_masks(self, stops: tuple[str, ...]) -> _StopMasks:
        if stops not in self._masks:  # scans the vocabulary once per stop-string set
            self._masks[stops] = _StopMasks(self._token_texts, self.banned_ids, stops, self._vocab)
        return self._masks[stops]

    def generate_sync(self, prompt_ids: list[int], images: Sequence[Any], sampling: SamplingParams, *,
                      request_id: str = "", mm_inputs: Mapping[str, torch.Tensor] | None = None) -> Generation:
        """The blocking form of :meth:`generate`."""
        aborted = self._register(request_id)
        try:
            return self._generate(prompt_ids, images, sampling, request_id, mm_inputs, aborted)
        finally:
            self._unregister(request_id, aborted)

    def _generate(self, prompt_ids: list[int], images: Sequence[Any], sampling: SamplingParams, request_id: str,
                  mm_inputs: Mapping[str, torch.Tensor] | None, aborted: threading.Event) -> Generation:
        if aborted.is_set():
            return Generation("", "abort", None, [], [] if sampling.logprobs else None, len(prompt_ids), {"request_id": request_id})
        if mm_inputs is None:
            mm_inputs = self.mm_inputs_for(images)
        image_token_id = getattr(self.model.config, "image_token_id", None)
        if image_token_id is not None:
            check_image_tokens(prompt_ids, mm_inputs.get("image_grid_thw"), image_token_id=image_token_id,
                               merge_size=self.model.config.vision_config.spatial_merge_size)
        elif mm_inputs:
            raise RenderInvariantError("images given to a text-only model")
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        n = ids.shape[1]
        masks = self._stop_masks(sampling.stop)
        turn = _TurnProcessor(masks, n, self.decode)
        stopper = _StopOnStrings(sampling.stop, n, self.decode, masks.tail_tokens, aborted)
        config = self._generation_config(sampling)
        # Seeds the process-wide generator inside fork_rng: reproducible as long as no other thread
        # samples with torch's global RNG at the same time.
        rng = torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else [])
        with self._lock, torch.no_grad(), rng if sampling.seed is not None else contextlib.nullcontext():
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            out = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                logits_processor=LogitsProcessorList([*self.logits_processors, turn]),
                stopping_criteria=StoppingCriteriaList([stopper]), **_mm_kwargs(self.model, ids, mm_inputs),
            )
        gen = out.sequences[0, n:].tolist()
        logprobs = None
        if sampling.logprobs:
            raw = torch.stack([lg[0] for lg in out.logits]).float().log_softmax(-1)
            logprobs = raw.gather(-1, torch.tensor(gen, device=raw.device)[:, None]).squeeze(-1).tolist()
        out = self._finish(gen, logprobs, sampling, n, request_id)
        if aborted.is_set() and out.finish_reason == "length" and len(gen) < sampling.max_tokens:
            out.finish_reason = "abort"  # cut short, not a natural end
        return out

    def _generation_config(self, sampling: SamplingParams) -> GenerationConfig:
        # Greedy takes no sampling knobs (5.x warns about unused ones).
        knobs = {} if sampling.temperature == 0 else {
            "temperature": sampling.temperature, "top_k": max(0, sampling.top_k), "top_p": sampling.top_p,
        }
        return GenerationConfig(
            max_new_tokens=sampling.max_tokens, do_sample=sampling.temperature > 0, num_beams=1,
            repetition_penalty=1.0, eos_token_id=[self.eos_token_id],
            pad_token_id=self.banned_ids[0] if self.banned_ids else self.eos_token_id,
            return_dict_in_generate=True, output_logits=sampling.logprobs, output_scores=False, **knobs,
        )

    def _finish(self, gen: list[int], logprobs: list[float] | None, sampling: SamplingParams, n_prompt: int,
                request_id: str) -> Generation:
        if gen and gen[-1] == self.eos_token_id:
            return Generation(self.decode(gen[:-1]), "stop", None, gen, logprobs, n_prompt, {"request_id": request_id})
        text = self.decode(gen)
        found = [(text.find(s) + len(s), s) for s in sampling.stop if s in text]
        if found:
            return Generation(text, "stop", min(found)[1], gen, logprobs, n_prompt, {"request_id": request_id})
        return Generation(text, "length", None, gen, logprobs, n_prompt, {"request_id": request_id})

    def sleep(self, level: int = 1) -> bool:
        """Free the accelerator memory while a colocated learner updates: move the weights to host
        memory (under the model lock). False, doing nothing, on a CPU model (nothing to free)."""
        if self.device.type == "cpu":
            return False
        with self._lock:
            self.model.to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return True

    def wake_up(self) -> None:
        """Undo :meth:`sleep`: the weights go back to the policy's device."""
        if self.device.type != "cpu":
            with self._lock:
                self.model.to(self.device)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def forward_logits(model: torch.nn.Module, input_ids: torch.Tensor, mm_inputs: Mapping[str, torch.Tensor] | None,
                   *, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [B, T, V] of a full-sequence forward pass (images in token order), under the
    model's lock; the one forward every trainer computation goes through."""
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    attn = torch.ones_like(ids) if attention_mask is None else attention_mask.to(device)
    with model_lock(model):
        return model(input_ids=ids, attention_mask=attn, use_cache=False, **_mm_kwargs(model, ids, mm_inputs)).logits


def sequence_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, mm_inputs: Mapping[str, torch.Tensor] | None,
                      response_mask: torch.Tensor, *, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token logprobs of ``input_ids`` under ``model`` (the training forward pass).

    ``out[..., i] = log p(ids[i] | ids[:i])`` where ``response_mask`` is 1, else 0 (and 0 at i=0).
    Shapes follow ``input_ids`` ([T] or [B, T]); ``mm_inputs`` holds every image of the batch in
    token order. Gradients flow unless the caller disables them.
    """
    squeeze = input_ids.dim() == 1
    ids = input_ids[None] if squeeze else input_ids
    mask = (response_mask[None] if squeeze else response_mask).to(ids.device)
    attn = None if attention_mask is None else (attention_mask[None] if squeeze else attention_mask)
    logits = forward_logits(model, ids, mm_inputs, attention_mask=attn)
    ids = ids.to(logits.device)
    logp = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    out = torch.cat([torch.zeros_like(logp[:, :1]), logp], dim=1) * mask.to(logp.device, logp.dtype)
    return out[0] if squeeze else out


def logprob_mismatch(rollout_logprobs: torch.Tensor, train_logprobs: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """How far the trainer's logprobs are from the sampler's on masked tokens: mean and max
    ``|Δlogp|`` and the k3 estimate of KL(rollout || train), ``E[exp(d) - 1 - d]`` with
    ``d = train - rollout``. ~0 when rollout and training see the same tokens, images and weights."""
    m = mask.bool()
    d = (train_logprobs.detach().double() - rollout_logprobs.detach().double())[m]
    if d.numel() == 0:
        return {"mean_abs": 0.0, "max_abs": 0.0, "kl_k3": 0.0, "n_tokens": 0}
    return {
        "mean_abs": float(d.abs().mean()), "max_abs": float(d.abs().max()),
        "kl_k3": float((d.exp() - 1 - d).mean()), "n_tokens": int(d.numel()),
    }


class HFAgent(Agent):
    """Text-level agent for evaluation (``--agent hf --model DIR``): renders the conversation with
    the Qwen2.5-VL renderer each turn and samples with :class:`HFPolicy`. Training uses the
    token-level policy instead, which never re-renders."""

    name = "hf"
    image_format = "pil"

    def __init__(self, model: str, *, temperature: float = 0.0, max_tokens: int = 1024, prefill: str = "<think>",
                 device: str | None = None, seed: int | None = 0, max_pixels: int | None = None) -> None:
        from .render.qwen25vl import Qwen25VLRenderer

        self.policy = HFPolicy.from_pretrained(model, device=device)
        self.renderer = Qwen25VLRenderer.from_pretrained(model, max_pixels=max_pixels)
        self.sampling = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
        self.prefill = prefill

    def act(self, messages: Sequence[ChatMessage], info: Mapping[str, Any] | None = None) -> str:
        return self.generate(messages).text

    async def aact(self, messages: Sequence[ChatMessage], info: Mapping[str, Any] | None = None) -> Generation:
        """The episode driver's call: a Generation, so a turn cut at max_tokens reaches the env as
        ``finish_reason="length"`` (no half-written code runs), as in RL rollouts."""
        return await asyncio.get_running_loop().run_in_executor(None, self.generate, messages)

    def generate(self, messages: Sequence[ChatMessage]) -> Generation:
        """One turn: the whole assistant turn text (prefill included) with the policy's finish
        reason, matched stop string, sampled ids and logprobs."""
        from ..envs.turns import EnvDelta
        from .render.base import chat_to_messages

        r = self.renderer.render_initial(EnvDelta(chat_to_messages(messages), self.prefill))
        g = self.policy.generate_sync(r.ids, r.images, self.sampling, mm_inputs=r.mm_inputs)
        return Generation(self.prefill + g.text, g.finish_reason, g.stop, g.token_ids, g.logprobs, g.prompt_tokens,
                          g.metadata)

    def close(self) -> None:
        self.policy.close()
