"""What a token-level policy returns, how it is asked to sample, and the policy interface.

A rollout engine keeps each episode as token ids and appends what the policy sampled, so a
:class:`Generation` carries the sampled ids themselves (never re-encoded text), how the turn
ended, and one logprob per sampled id. No torch here: the backends import it, this does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

from ..envs.turns import FinishReason

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["FinishReason", "STOP_STRINGS", "BANNED_TOKENS", "Generation", "SamplingParams", "TokenPolicy"]

STOP_STRINGS: tuple[str, ...] = ("</code>", "</tool_call>")
"""DeepEyesV2 stops a turn after a code block or a tool call (kept in the output)."""


BANNED_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                 "<|video_pad|>")
"""Never sampled: the protocol bans the first two; a sampled vision token would be read as an
image slot by the next forward pass (image tokens no longer matching image features)."""


@dataclass
class Generation:
    """One sampled assistant turn.

    ``finish_reason``: ``"stop"`` (a stop string, then ``stop`` names it and it ends ``text`` and
    ``token_ids``; or the end-of-turn token, then ``stop`` is None and that token is the last of
    ``token_ids`` but not part of ``text``), ``"length"`` (``max_tokens`` reached) or ``"abort"``.
    ``logprobs[i]`` is the logprob of ``token_ids[i]``; ``prompt_tokens`` is the prompt's length.
    """

    text: str
    finish_reason: FinishReason
    stop: str | None = None
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    prompt_tokens: int | None = None
    metadata: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.finish_reason not in ("stop", "length", "abort"):
            raise ValueError(f"finish_reason must be stop, length or abort, not {self.finish_reason!r}")
        if self.stop is not None and self.finish_reason != "stop":
            raise ValueError(f"a matched stop string needs finish_reason 'stop', not {self.finish_reason!r}")
        if self.logprobs is not None and (self.token_ids is None or len(self.logprobs) != len(self.token_ids)):
            raise ValueError("logprobs needs token_ids of the same length")

    @property
    def n_tokens(self) -> int | None:
        return None if self.token_ids is None else len(self.token_ids)


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one turn. ``temperature == 0`` is greedy; ``top_k <= 0`` and ``top_p == 1``
    disable those filters. ``seed`` makes one request reproducible; ``logprobs`` asks for the
    sampled tokens' logprobs."""

    max_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = STOP_STRINGS
    seed: int | None = None
    logprobs: bool = True

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        object.__setattr__(self, "stop", tuple(self.stop))


@runtime_checkable
class TokenPolicy(Protocol):
    """Token ids in, token ids out (HF, vLLM, a vLLM server ...).

    ``prompt_ids`` is the whole episode so far (each ``<|image_pad|>`` run already expanded);
    ``images`` are all of the episode's images in token order. ``request_id`` names the request
    for logs, cancellation and prefix-cache affinity.
    """

    async def generate(
        self, prompt_ids: list[int], images: Sequence[Image.Image], sampling: SamplingParams, *, request_id: str
    ) -> Generation: ...
