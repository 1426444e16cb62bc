"""A vLLM engine in process as a :class:`~deepeyes_gym.agents.generation.TokenPolicy`.

Semantics mirror :class:`~deepeyes_gym.agents.hf.HFPolicy`:

* Token ids in (``TokensPrompt``), token ids out; images go in as ``multi_modal_data`` (vLLM on
  CPU serves text models only: the multimodal path is for GPU machines and is untested on CPU).
* Stop strings end a turn and stay in the output (``include_stop_str_in_output``); ``stop`` names
  the matched string. The end-of-turn token ``<|im_end|>`` ends a turn with ``stop=None``; it is
  the last id and is not in ``text``.
* **Ids are trusted, text follows them**: ``text == decode(token_ids)`` (without a final
  ``<|im_end|>``). vLLM finds stop strings in the detokenised text after each token, so the token
  that completes a stop string can run past it (``</code`` then ``">\\n"``). That token stays
  (it was sampled, its logprob is real) and ``text`` ends with its tail: the characters past the
  stop string are in ``metadata["stop_overshoot"]`` (``""`` when the turn ends exactly at the stop
  string). Tokens containing a whole stop string followed by more text are banned, as in HF, so
  an overshoot is only ever the tail of the one token that completes the stop string.
* Banned (protocol): ``<|endoftext|>``, ``<|im_start|>`` and ids past the tokenizer (padded
  vocabulary rows), via ``allowed_token_ids`` (the complement); a hard -inf mask (``logit_bias``
  is clamped to +-100 in vLLM, not a ban).
* ``logprobs`` are of the sampled tokens under the raw distribution (vLLM's default
  ``logprobs_mode="raw_logprobs"``: before temperature, top-k/p and the ban), what
  :func:`deepeyes_gym.agents.hf.sequence_logprobs` computes.
* Prefix caching is on; :meth:`VLLMPolicy.load_weights` reloads weights in place and then resets
  the prefix cache (preempting running requests), without which generation would reuse KV state
  computed with the old weights.

Engine: vLLM's ``AsyncLLM`` always runs its engine core in a separate process (``AsyncMPClient``),
whatever ``VLLM_ENABLE_V1_MULTIPROCESSING`` says: start-up 15-46 s on the 2-core machine instead
of ~3 s, and tensors cannot be handed to its worker for a weight reload (they arrive as lists).
So this drives the synchronous ``LLMEngine`` in process (``InprocClient``) on one dedicated
thread: ``generate`` coroutines queue requests, the thread adds every queued request before each
``step()``, so all in-flight requests are batched together (continuous batching, as AsyncLLM's
loop does), and each request's future is resolved when it finishes. All engine calls (add, abort,
reload, cache reset) run on that thread, between steps.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .base import Agent, Message as ChatMessage
from .generation import BANNED_TOKENS, Generation, SamplingParams

__all__ = ["VLLMPolicy", "VLLMAgent", "CPU_ENV", "BANNED_TOKENS"]


CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
"""Set (where unset) before vLLM is imported on a machine without a GPU (cpu-stack.md)."""


def _resolve(fut: Future, result: Any = None, exc: BaseException | None = None) -> None:
    """Settle ``fut`` unless it is already settled (a cancelled ``generate`` cancels it)."""
    if fut.done():
        return
    try:
        fut.set_exception(exc) if exc is not None else fut.set_result(result)
    except Exception:  # cancelled in between by the awaiting side: nobody is waiting
        pass


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


class _Request:
    __slots__ = ("key", "request_id", "n_prompt", "ids", "logprobs", "want_logprobs", "future", "stops", "cached")

    def __init__(self, key: str, request_id: str, n_prompt: int, sampling: SamplingParams) -> None:
        self.key, self.request_id, self.n_prompt = key, request_id, n_prompt
        self.ids: list[int] = []
        self.logprobs: list[float] = []
        self.want_logprobs = sampling.logprobs
        self.stops = sampling.stop
        self.future: Future = Future()
        self.cached: int | None = None  # prompt tokens served from the prefix cache


class VLLMPolicy:
    """:class:`~deepeyes_gym.agents.generation.TokenPolicy` over an in-process vLLM ``LLMEngine``.

    Build with :meth:`from_pretrained`. ``generate`` is async and never blocks the event loop;
    ``generate_sync`` blocks. ``abort(request_id)`` ends a request at the next step with
    ``finish_reason="abort"`` and the tokens sampled so far; cancelling the awaiting task aborts too.
    """

    def __init__(self, engine: Any, tokenizer: Any) -> None:
        from tokenizers import Tokenizer

        self.engine = engine
        backend = tokenizer if isinstance(tokenizer, Tokenizer) else tokenizer.backend_tokenizer
        self._tok = Tokenizer.from_str(backend.to_str())
        self.eos_token_id = self._tok.token_to_id("<|im_end|>")
        if self.eos_token_id is None:
            raise ValueError("tokenizer has no <|im_end|> (end of turn)")
        self.banned_ids = [i for i in (self._tok.token_to_id(t) for t in BANNED_TOKENS) if i is not None]
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)  # ids past it: banned
        self._token_texts = [self._tok.decode([i], skip_special_tokens=False) for i in range(self.vocab_size)]
        self._allowed: dict[tuple[str, ...], list[int]] = {}
        self.is_multimodal = bool(getattr(engine.model_config, "is_multimodal_model", False))
        self._counter = itertools.count()
        self._commands: "queue.SimpleQueue[Callable[[], None] | None]" = queue.SimpleQueue()
        self._requests: dict[str, _Request] = {}  # engine key -> request (engine thread only)
        self._by_id: dict[str, set[str]] = {}  # request_id -> engine keys (engine thread only)
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vllm-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_pretrained(cls, path: str | Path, **engine_kwargs: Any) -> "VLLMPolicy":
        """Start an engine on a local model dir. Without a GPU, sets :data:`CPU_ENV` where unset
        and defaults ``enforce_eager=True``, ``dtype="float32"`` (bf16 logprobs differ from the
        trainer's by up to 4e-3). Always: ``enable_prefix_caching=True``,
        ``generation_config="vllm"`` (the model's shipped sampling defaults never leak in),
        ``seed=0``. ``engine_kwargs`` override any of these (vLLM ``EngineArgs`` fields)."""
        gpu = _has_gpu()
        if not gpu:
            for k, v in CPU_ENV.items():
                os.environ.setdefault(k, v)
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        kwargs: dict[str, Any] = {
            "model": str(path), "enable_prefix_caching": True, "generation_config": "vllm", "seed": 0,
        }
        if not gpu:
            kwargs.update(enforce_eager=True, dtype="float32")
        kwargs.update(engine_kwargs)
        engine = LLMEngine.from_engine_args(EngineArgs(**kwargs))
        return cls(engine, AutoTokenizer.from_pretrained(str(path)))

    # ------------------------------------------------------------------ public API

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    async def generate(self, prompt_ids: list[int], images: Sequence[Any], sampling: SamplingParams, *,
                       request_id: str) -> Generation:
        """Sample one turn; cancelling the awaiting task aborts the request in the engine."""
        req = self._submit(prompt_ids, images, sampling, request_id)
        try:
            return await asyncio.wrap_future(req.future)
        except asyncio.CancelledError:
            self._call(lambda: self._abort_keys([req.key]))
            raise

    def generate_sync(self, prompt_ids: list[int], images: Sequence[Any], sampling: SamplingParams, *,
                      request_id: str = "") -> Generation:
        """The blocking form of :meth:`generate`."""
        return self._submit(prompt_ids, images, sampling, request_id).future.result()

    def abort(self, request_id: str) -> None:
        """End every in-flight or queued request named ``request_id`` (``finish_reason="abort"``)."""
        self._call(lambda: self._abort_keys(list(self._by_id.get(request_id, ()))))

    def reset_prefix_cache(self) -> bool:
        """Drop the prefix cache (running requests are preempted and recomputed). Blocks."""
        return self._call(lambda: self.engine.reset_prefix_cache(reset_running_requests=True)).result()

    def load_weights(self, weights: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> None:
        """Reload weights in place (checkpoint names, e.g. a HF ``state_dict()``, or an iterator
        of ``(name, tensor)``), then reset the prefix cache. Blocks until both are done; runs
        between engine steps. Requests in flight continue under the new weights (their KV is
        recomputed), so tokens they sampled before the reload keep the old weights' logprobs."""
        items = weights.items() if isinstance(weights, Mapping) else weights

        def reload() -> None:
            worker = self.engine.model_executor.driver_worker.worker
            worker.reload_weights(weights_iterator=((k, v.detach()) for k, v in items))
            if not self.engine.reset_prefix_cache(reset_running_requests=True):
                raise RuntimeError("vLLM did not reset its prefix cache after the weight reload")

        self._call(reload).result()

    def sleep(self, level: int = 1) -> bool:
        """Free the engine's accelerator memory while a colocated learner updates: level 1 moves the
        weights to host memory and drops the KV cache, level 2 drops the weights too (a weight load
        must follow). Returns False, doing nothing, where the engine was not started with
        ``enable_sleep_mode=True`` (vLLM supports it on CUDA only). Call with no request in flight."""
        if not getattr(self.engine.vllm_config.model_config, "enable_sleep_mode", False):
            return False
        self._call(lambda: self.engine.sleep(level)).result()
        return True

    def wake_up(self) -> None:
        """Undo :meth:`sleep` (a no-op when the engine is awake)."""
        def wake() -> None:
            if self.engine.is_sleeping():
                self.engine.wake_up()

        if getattr(self.engine.vllm_config.model_config, "enable_sleep_mode", False):
            self._call(wake).result()

    def close(self) -> None:
        """Abort everything, stop the engine thread and shut the engine down."""
        if self._closed:
            return
        self._closed = True
        self._commands.put(None)
        self._thread.join(timeout=30)
        shutdown = getattr(getattr(self.engine, "engine_core", None), "shutdown", None)
        if shutdown is not None:
            try:
                shutdown()
            except Exception:  # pragma: no cover - best effort at exit
                pass

    def __enter__(self) -> "VLLMPolicy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ request building

    def allowed_token_ids(self, stops: tuple[str, ...]) -> list[int]:
        """Every id the policy may sample under ``stops`` (the complement of the bans)."""
        if stops not in self._allowed:  # one vocabulary scan per stop-string set
            banned = set(self.banned_ids)
            for i, t in enumerate(self._token_texts):  # a whole stop string, then more text
                if any(0 <= t.find(s) < len(t) - len(s) for s in stops):
                    banned.add(i)
            self._allowed[stops] = [i for i in range(self.vocab_size) if i not in banned]
        return self._allowed[stops]

    def sampling_params(self, sampling: SamplingParams) -> Any:
        """The vLLM ``SamplingParams`` for one turn."""
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        greedy = sampling.temperature == 0
        return VSamplingParams(
            max_tokens=sampling.max_tokens, temperature=sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p, top_k=0 if greedy else max(0, sampling.top_k),
            seed=sampling.seed, stop=list(sampling.stop), stop_token_ids=[self.eos_token_id],
            include_stop_str_in_output=True, skip_special_tokens=False, spaces_between_special_tokens=False,
            logprobs=0 if sampling.logprobs else None, allowed_token_ids=self.allowed_token_ids(sampling.stop),
            repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
            output_kind=RequestOutputKind.DELTA,
        )

    def _submit(self, prompt_ids: list[int], images: Sequence[Any], sampling: SamplingParams,
                request_id: str) -> _Request:
        if self._closed:
            raise RuntimeError("VLLMPolicy is closed")
        if images and not self.is_multimodal:
            from .render.base import RenderInvariantError

            raise RenderInvariantError("images given to a text-only model")
        from vllm import TokensPrompt

        prompt = TokensPrompt(prompt_token_ids=list(prompt_ids))
        if images:
            prompt["multi_modal_data"] = {"image": list(images)}
        params = self.sampling_params(sampling)
        req = _Request(f"{request_id}@{next(self._counter)}", request_id, len(prompt_ids), sampling)
        if self._error is not None:
            _resolve(req.future, exc=RuntimeError(f"the vLLM engine thread died: {self._error!r}"))
            return req

        def add() -> None:
            if self._error is not None:
                _resolve(req.future, exc=RuntimeError(f"the vLLM engine failed: {self._error!r}"))
                return
            self._requests[req.key] = req
            self._by_id.setdefault(request_id, set()).add(req.key)
            try:
                self.engine.add_request(req.key, prompt, params)
            except BaseException as exc:
                self._forget(req)
                _resolve(req.future, exc=exc)

        self._commands.put(add)
        return req

    # ------------------------------------------------------------------ engine thread

    def _call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the engine thread between steps; its result as a future."""
        fut: Future = Future()
        if self._closed or self._error is not None:
            fut.set_exception(RuntimeError("VLLMPolicy is closed" if self._closed else f"engine died: {self._error!r}"))
            return fut

        def run() -> None:
            if self._error is not None:
                _resolve(fut, exc=RuntimeError(f"the vLLM engine failed: {self._error!r}"))
                return
            try:
                _resolve(fut, fn())
            except BaseException as exc:
                _resolve(fut, exc=exc)

        self._commands.put(run)
        return fut

    def _run(self) -> None:
        try:
            while True:
                busy = bool(self._requests)
                try:  # idle: sleep until a command; busy: take what is queued and step
                    cmd = self._commands.get() if not busy else self._commands.get_nowait()
                except queue.Empty:
                    cmd = ...
                while cmd is not ...:
                    if cmd is None:
                        self._abort_keys(list(self._requests))
                        return
                    cmd()
                    try:
                        cmd = self._commands.get_nowait()
                    except queue.Empty:
                        cmd = ...
                if self._requests:
                    if not self.engine.has_unfinished_requests():  # lost by the engine: never spin
                        self._abort_keys(list(self._requests))
                        continue
                    for out in self.engine.step():
                        self._on_output(out)
        except BaseException as exc:  # an engine crash fails every request, now and later
            self._error = exc
            for req in list(self._requests.values()):
                _resolve(req.future, exc=RuntimeError(f"the vLLM engine failed: {exc!r}"))
            self._requests.clear()
            self._by_id.clear()
            while True:  # dead mode: every later command fails fast (add and _call check _error)
                cmd = self._commands.get()
                if cmd is None:
                    return
                try:
                    cmd()
                except BaseException:
                    pass

    def _on_output(self, out: Any) -> None:
        req = self._requests.get(out.request_id)
        if req is None:
            return
        c = out.outputs[0]
        if req.cached is None:
            req.cached = getattr(out, "num_cached_tokens", None)
        req.ids.extend(c.token_ids)
        if req.want_logprobs and c.logprobs is not None:
            req.logprobs.extend(lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs))
        if out.finished:
            self._forget(req)
            reason = {"stop": "stop", "length": "length"}.get(c.finish_reason, "abort")
            _resolve(req.future, self._finish(req, reason, c.stop_reason))

    def _abort_keys(self, keys: list[str]) -> None:
        live = [k for k in keys if k in self._requests]
        if not live:
            return
        self.engine.abort_request(live)
        for k in live:
            req = self._requests[k]
            self._forget(req)
            _resolve(req.future, self._finish(req, "abort", None))

    def _forget(self, req: _Request) -> None:
        self._requests.pop(req.key, None)
        keys = self._by_id.get(req.request_id)
        if keys is not None:
            keys.discard(req.key)
            if not keys:
                del self._by_id[req.request_id]

    def _finish(self, req: _Request, reason: str, stop_reason: Any) -> Generation:
        ids = list(req.ids)
        logprobs = list(req.logprobs) if req.want_logprobs else None
        if logprobs is not None and len(logprobs) != len(ids):  # cannot happen with logprobs=0
            raise RuntimeError(f"vLLM returned {len(logprobs)} logprobs for {len(ids)} tokens")
        meta: dict[str, Any] = {"request_id": req.request_id, "cached_tokens": req.cached}
        if reason == "stop" and ids and ids[-1] == self.eos_token_id:
            return Generation(self.decode(ids[:-1]), "stop", None, ids, logprobs, req.n_prompt, meta)
        text = self.decode(ids)
        if reason == "stop":
            found = sorted((text.find(s) + len(s), s) for s in req.stops if s in text)
            if found:
                end, stop = found[0]
                meta["stop_overshoot"] = text[end:]
                return Generation(text, "stop", stop, ids, logprobs, req.n_prompt, meta)
            # vLLM said stop but no stop string or eos is visible: treat it as a natural end.
            meta["vllm_stop_reason"] = stop_reason
            return Generation(text, "stop", None, ids, logprobs, req.n_prompt, meta)
        return Generation(text, reason, None, ids, logprobs, req.n_prompt, meta)  # type: ignore[arg-type]


class VLLMAgent(Agent):
    """Text-level agent for evaluation (``--agent vllm --model DIR``): renders the conversation
    with the Qwen2.5-VL renderer (ChatML; also right for a text-only Qwen2, whose images become
    ``[image]`` text) and samples one turn with :class:`VLLMPolicy`."""

    name = "vllm"
    image_format = "pil"

    def __init__(self, model: str, *, temperature: float = 0.0, max_tokens: int = 1024, prefill: str = "<think>",
                 seed: int | None = 0, max_pixels: int | None = None, policy: VLLMPolicy | None = None,
                 **engine_kwargs: Any) -> None:
        """``engine_kwargs`` go to :meth:`VLLMPolicy.from_pretrained`; ``policy`` shares a running
        engine instead (then :meth:`close` leaves it running)."""
        from .render.qwen25vl import Qwen25VLRenderer

        self._owns_policy = policy is None
        self.policy = policy if policy is not None else VLLMPolicy.from_pretrained(model, **engine_kwargs)
        self.renderer = Qwen25VLRenderer.from_pretrained(model, max_pixels=max_pixels)
        self.sampling = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
        self.prefill = prefill
        self._n = itertools.count()

    def render(self, messages: Sequence[ChatMessage]) -> Any:
        from ..envs.turns import EnvDelta
        from .render.base import chat_to_messages

        turns = chat_to_messages(messages, with_images=self.policy.is_multimodal)
        return self.renderer.render_initial(EnvDelta(turns, self.prefill))

    def act(self, messages: Sequence[ChatMessage], info: Mapping[str, Any] | None = None) -> str:
        return self.generate(messages).text

    async def aact(self, messages: Sequence[ChatMessage], info: Mapping[str, Any] | None = None) -> Generation:
        """The episode driver's call: a Generation, so the finish reason reaches the env."""
        return await asyncio.get_running_loop().run_in_executor(None, self.generate, messages)

    def generate(self, messages: Sequence[ChatMessage]) -> Generation:
        """One turn: the whole assistant turn text (prefill included) with the engine's finish
        reason, matched stop string, sampled ids and logprobs."""
        r = self.render(messages)
        g = self.policy.generate_sync(r.ids, r.images, self.sampling, request_id=f"agent-{next(self._n)}")
        return Generation(self.prefill + g.text, g.finish_reason, g.stop, g.token_ids, g.logprobs, g.prompt_tokens,
                          g.metadata)

    def close(self) -> None:
        if self._owns_policy:
            self.policy.close()
