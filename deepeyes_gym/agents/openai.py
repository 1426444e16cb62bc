"""An agent behind any OpenAI-compatible chat endpoint (``vllm serve``, SGLang, hosted APIs).

Images travel as ``data:`` URLs inside the user messages. Generation stops on ``</code>`` and
``</tool_call>`` (shared spec); servers drop a matched stop string from the text, so it is put
back. Transient failures (connection refused, time-outs, 429, 5xx) are retried with exponential
back-off; when the server stays unreachable the call raises :class:`AgentError` with a message
that says where it tried, which the benchmark runner records against that one episode.

Only ``requests`` (a core dependency) is used: no OpenAI SDK needed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import requests

from ..envs.turns import THINK_PREFILL
from ..http import HTTPRetryError, RetryPolicy, request_with_retries
from . import AgentError
from .base import Agent, Message
from .generation import Generation

__all__ = ["OpenAIAgent", "OpenAIConfig", "STOP_STRINGS", "restore_stop_string"]

log = logging.getLogger(__name__)

STOP_STRINGS = ("</code>", "</tool_call>")
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass
class OpenAIConfig:
    """Connection and sampling settings.

    ``api_key`` defaults to the environment variable named by ``api_key_env``; local servers
    accept any key. ``extra_body`` is merged into each request (e.g. ``{"top_k": 20}`` for vLLM).
    ``prefill_think`` pre-fills the assistant turn with ``<think>`` as DeepEyesV2 does, using the
    vLLM/SGLang ``continue_final_message`` extension (off by default: hosted APIs reject it).
    """

    model: str
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.0
    top_p: float | None = None
    max_tokens: int = 2048
    stop: tuple[str, ...] = STOP_STRINGS
    timeout_s: float = 300.0
    connect_timeout_s: float = 5.0
    max_retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    concurrency: int = 8
    prefill_think: bool = False
    extra_body: dict[str, Any] = field(default_factory=dict)
    extra_headers: dict[str, str] = field(default_factory=dict)


def restore_stop_string(text: str, stop_reason: Any = None, stops: Sequence[str] = STOP_STRINGS) -> str:
    """Put back the stop string a server removed.

    ``stop_reason`` is what vLLM reports (the matched string); without it, a block whose opening
    tag is the last tag in the text (``<code>`` after the last ``</code>``) is taken as cut at its
    stop string.
    """
    if isinstance(stop_reason, str) and stop_reason in stops:
        return text if text.endswith(stop_reason) else text + stop_reason
    for stop in stops:
        if not stop.startswith("</"):
            continue
        opening = "<" + stop[2:]
        if text.rfind(opening) > text.rfind(stop):
            return text + stop
    return text


class OpenAIAgent(Agent):
    """Chat-completions client. ``act`` sends the conversation and returns the assistant text.

    ``act_batch`` runs up to ``concurrency`` requests at once in threads; with
    ``return_exceptions=True`` a failed episode yields its :class:`AgentError` in place of a str
    (the runner uses this so one bad episode never costs the others).
    """

    name = "openai"
    image_format = "data_url"

    def __init__(self, model: str | None = None, config: OpenAIConfig | None = None, **kwargs: Any):
        if config is None:
            if model is None:
                raise ValueError("OpenAIAgent needs a model name (model=...)")
            if "stop" in kwargs and kwargs["stop"] is not None:
                kwargs["stop"] = tuple(kwargs["stop"])
            config = OpenAIConfig(model=model, **kwargs)
        elif model is not None or kwargs:
            raise ValueError("pass either config= or keyword settings, not both")
        self.config = config
        self.name = f"openai:{config.model}"
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.stats: dict[str, int] = {"requests": 0, "retries": 0, "failures": 0,
                                      "prompt_tokens": 0, "completion_tokens": 0}

    # ------------------------------------------------------------------ HTTP
    def _session(self) -> requests.Session:
        sess = getattr(self._local, "session", None)
        if sess is None:
            sess = self._local.session = requests.Session()
            key = self.config.api_key or os.environ.get(self.config.api_key_env) or "EMPTY"
            sess.headers.update({"Authorization": f"Bearer {key}", **self.config.extra_headers})
        return sess

    def _payload(self, messages: Sequence[Message]) -> dict[str, Any]:
        cfg = self.config
        msgs = [_to_openai(m) for m in messages]
        body: dict[str, Any] = {
            "model": cfg.model,
            "messages": msgs,
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
            "stop": list(cfg.stop),
        }
        if cfg.top_p is not None:
            body["top_p"] = cfg.top_p
        if cfg.prefill_think:
            msgs.append({"role": "assistant", "content": THINK_PREFILL})
            body.update(continue_final_message=True, add_generation_prompt=False)
        body.update(cfg.extra_body)
        return body

    def _bump(self, **counts: int) -> None:
        with self._stats_lock:
            for k, v in counts.items():
                self.stats[k] = self.stats.get(k, 0) + v

    def complete(self, messages: Sequence[Message]) -> str:
        """The text of one chat completion (see :meth:`generate`)."""
        return self.generate(messages).text

    def generate(self, messages: Sequence[Message]) -> Generation:
        """One chat completion with retries, with the server's finish reason (a turn cut by
        ``max_tokens`` is ``"length"``: the env then runs none of its half-written code), the
        matched stop string, and token ids / logprobs when the server returns them. Raises
        AgentError when it cannot get one."""
        cfg = self.config
        body = self._payload(messages)

        def send() -> requests.Response:
            self._bump(requests=1)
            return self._session().post(self._url, json=body, timeout=(cfg.connect_timeout_s, cfg.timeout_s))

        # jitter de-synchronises threads; capped before the jitter, so capped waits still spread
        policy = RetryPolicy(cfg.max_retries, cfg.backoff_s, cfg.max_backoff_s, cap_before_jitter=True)
        try:
            resp = request_with_retries(send, policy=policy, retry_on=_RETRY_STATUS,
                                        retry_exceptions=(requests.RequestException,),
                                        on_retry=lambda _: self._bump(retries=1))
        except HTTPRetryError as err:
            self._bump(failures=1)
            raise AgentError(f"gave up after {err.attempts} attempts: {self._why(err)}") from None
        if resp.status_code != 200:  # 400/401/404...: retrying will not help
            self._bump(failures=1)
            raise AgentError(
                f"{self._url} answered HTTP {resp.status_code} for model {cfg.model!r}: {_short(resp.text)}"
            )
        return self._parse(resp)

    def _why(self, err: HTTPRetryError) -> str:
        exc = err.exception
        if err.response is not None:
            return f"{self._url} answered HTTP {err.status}: {_short(err.response.text)}"
        if isinstance(exc, requests.ConnectionError):
            return f"cannot connect to {self._url} ({type(exc).__name__}); is the server running?"
        if isinstance(exc, requests.Timeout):
            return f"no answer from {self._url} within {self.config.timeout_s:g} s"
        if exc is not None:
            return f"request to {self._url} failed: {type(exc).__name__}: {exc}"
        return err.reason

    def _parse(self, resp: requests.Response) -> Generation:
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            self._bump(failures=1)
            raise AgentError(
                f"unexpected response from {self._url} ({type(exc).__name__}): {_short(resp.text)}"
            ) from None
        usage = data.get("usage") or {}
        self._bump(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                   completion_tokens=int(usage.get("completion_tokens") or 0))
        if self.config.prefill_think and not text.lstrip().startswith(THINK_PREFILL):
            text = THINK_PREFILL + text
        finish = choice.get("finish_reason")
        stop = None
        if finish == "stop":
            restored = restore_stop_string(text, choice.get("stop_reason"), self.config.stop)
            stop = next((s for s in self.config.stop if restored.endswith(s)), None)
            text = restored
        # Token ids and logprobs only travel together: logprobs without their ids stay metadata.
        logprobs = [float(t["logprob"]) for t in ((choice.get("logprobs") or {}).get("content") or [])
                    if isinstance(t, dict) and "logprob" in t] or None
        ids = choice.get("token_ids")  # vLLM with return_token_ids in extra_body
        ids = [int(i) for i in ids] if isinstance(ids, list) else None
        paired = logprobs if ids is not None and logprobs is not None and len(ids) == len(logprobs) else None
        return Generation(
            text=text,
            finish_reason=finish if finish in ("length", "abort") else "stop",
            stop=stop,
            token_ids=ids,
            logprobs=paired,
            prompt_tokens=int(usage["prompt_tokens"]) if usage.get("prompt_tokens") is not None else None,
            metadata={"server_finish_reason": finish, **({"logprobs": logprobs} if logprobs and not paired else {})},
        )

    # ------------------------------------------------------------------ Agent API
    def act(self, messages: Sequence[Message], info: Mapping[str, Any] | None = None) -> str:
        return self.complete(messages)

    async def aact(self, messages: Sequence[Message], info: Mapping[str, Any] | None = None) -> Generation:
        """The episode driver's call: a Generation, so the finish reason reaches the env."""
        return await asyncio.get_running_loop().run_in_executor(None, self.generate, messages)

    def act_batch(
        self,
        batch: Sequence[Sequence[Message]],
        infos: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        return_exceptions: bool = False,
    ) -> list[Any]:
        if not batch:
            return []
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max(1, self.config.concurrency), thread_name_prefix="openai")
        futures = [self._pool.submit(self.complete, m) for m in batch]
        out: list[Any] = []
        for fut in futures:
            try:
                out.append(fut.result())
            except AgentError as exc:
                if not return_exceptions:
                    raise
                out.append(exc)
        return out

    def describe(self) -> dict[str, Any]:
        """Settings worth recording next to results (never the API key)."""
        d = asdict(self.config)
        d.pop("api_key", None)
        d.pop("extra_headers", None)
        return d

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _to_openai(message: Message) -> dict[str, Any]:
    """Accept env messages in any image format; send images as data URLs."""
    content = message.get("content")
    if isinstance(content, str) or content is None:
        return {"role": message["role"], "content": content or ""}
    from ..envs.messages import image_to_data_url

    parts = []
    for part in content:
        if part.get("type") == "image":  # PIL or ndarray part: encode it here
            parts.append({"type": "image_url", "image_url": {"url": image_to_data_url(part["image"])}})
        else:
            parts.append(dict(part))
    return {"role": message["role"], "content": parts}


def _short(text: str, n: int = 300) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[:n] + "..."
