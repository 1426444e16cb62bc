"""What crosses the env boundary each turn: messages, deltas, policy turns, stop reasons.

A token-level consumer (the rollout engine) tokenises each new env message once and appends the
ids; it never re-renders the chat. So the env says exactly what each call added
(:class:`EnvDelta`), and the policy says how its turn ended (:class:`PolicyTurn`). This module is
the single definition of the image placeholder, the neutral marker a stray placeholder becomes,
the assistant prefill, and head/tail clipping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

__all__ = [
    "IMAGE_TOKEN", "NEUTRAL_IMAGE", "THINK_PREFILL", "FinishReason", "StopReason", "STOP_REASONS",
    "Message", "EnvDelta", "PolicyTurn", "clip_middle", "clip_observation", "neutralize_placeholders",
]

IMAGE_TOKEN = "<image>"
"""One per image in a message's text, in the order of the message's images."""
NEUTRAL_IMAGE = "[image]"
"""What a stray ``<image>`` in tool or user text becomes, so it never passes for a placeholder."""
THINK_PREFILL = "<think>"
"""What DeepEyesV2 pre-fills at the start of every assistant turn."""

FinishReason = Literal["stop", "length", "abort"]
"""How a policy turn ended: a stop string or end of turn, the token limit, or cancelled."""
StopReason = Literal["answer", "max_turns", "max_chars", "max_tokens", "length", "abort", "error"]
"""Why an episode ended."""
STOP_REASONS: tuple[str, ...] = ("answer", "max_turns", "max_chars", "max_tokens", "length", "abort", "error")
ROLES = ("system", "user", "assistant")


def _clip_parts(text: str, limit: int, what: str) -> tuple[str, str, str, int]:
    """(head, note, tail, cut) with len(head + note + tail) <= limit, for a text over the limit."""
    # Size the note for the widest count it can show, so the result never exceeds ``limit``.
    note_len = len(f"\n... [{len(text)} {what}] ...\n")
    keep = max(0, limit - note_len)
    head, tail = keep - keep // 2, keep // 2
    cut = len(text) - head - tail
    return text[:head], f"\n... [{cut} {what}] ...\n", (text[-tail:] if tail else ""), cut


def clip_middle(text: str, limit: int, *, what: str = "characters truncated") -> tuple[str, int]:
    """Keep the head and tail of ``text`` so the result, note included, is at most ``limit``
    characters (for ``limit`` >= the note's length). Returns (text, number of characters cut)."""
    if len(text) <= limit:
        return text, 0
    head, note, tail, cut = _clip_parts(text, limit, what)
    return head + note + tail, cut


def clip_observation(text: str, limit: int) -> str:
    """Clip ``text`` to at most ``limit`` characters without losing an image placeholder.

    Placeholders that fall in the cut middle (or are split by a cut) are re-inserted right after
    the truncation note, so the count and the order of placeholders, and so of images, are kept.
    """
    n = text.count(IMAGE_TOKEN)
    budget = max(0, limit - n * len(IMAGE_TOKEN))
    if len(text) <= limit:
        return text
    head, note, tail, _ = _clip_parts(text, budget, "characters truncated")
    missing = n - head.count(IMAGE_TOKEN) - tail.count(IMAGE_TOKEN)
    return head + note + IMAGE_TOKEN * missing + tail


def neutralize_placeholders(text: str) -> str:
    """Replace every ``<image>`` by the neutral marker (text that must not carry images)."""
    return text.replace(IMAGE_TOKEN, NEUTRAL_IMAGE)


@dataclass(frozen=True)
class Message:
    """One chat message, model-agnostic. A user message's text holds exactly one ``<image>`` per
    image; system and assistant messages hold no images (an ``<image>`` the model wrote is text).

    ``images`` are H×W×3 uint8 arrays in placeholder order. The placeholder invariant is checked
    here, the one place every message passes through.
    """

    role: Literal["system", "user", "assistant"]
    text: str
    images: tuple[np.ndarray, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}")
        if self.role != "user":
            # Assistant text is what the model sampled: an "<image>" in it is text, not a slot.
            if self.images:
                raise ValueError(f"a {self.role} message carries no images")
            return
        n = self.text.count(IMAGE_TOKEN)
        if n != len(self.images):
            raise AssertionError(
                f"placeholder invariant broken: {n} {IMAGE_TOKEN} in the text, {len(self.images)} images"
            )


@dataclass(frozen=True)
class EnvDelta:
    """Exactly what one ``reset``/``step`` added to the conversation.

    reset: ``messages == (system, user)``; a step that continues: ``(user,)``; a step that ends the
    episode: ``()`` (nothing for the policy to read). ``prefill`` is what the next assistant turn
    starts with (``"<think>"`` while running, ``""`` at the end). ``stop_reason`` is set once the
    episode has ended.
    """

    messages: tuple[Message, ...] = ()
    prefill: str = ""
    stop_reason: StopReason | None = None

    @property
    def images(self) -> list[np.ndarray]:
        """The images these messages introduce, in placeholder order."""
        return [im for m in self.messages for im in m.images]

    @property
    def done(self) -> bool:
        return self.stop_reason is not None


@dataclass(frozen=True)
class PolicyTurn:
    """One assistant turn as the policy produced it.

    ``text`` is the whole assistant turn: the env's prefill (``<think>``) the policy continued
    from, then what it sampled; the action parser and the format reward read it as one turn. ``finish_reason="length"``
    marks a turn cut by the token limit: no tool runs on it, and the episode ends with
    ``stop_reason="length"``. ``n_tokens`` (sampled token count) feeds the env's token budget
    without re-encoding text.
    """

    text: str
    finish_reason: FinishReason = "stop"
    n_tokens: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.finish_reason not in ("stop", "length", "abort"):
            raise ValueError(f"finish_reason must be stop, length or abort, not {self.finish_reason!r}")
        if self.n_tokens is not None and self.n_tokens < 0:
            raise ValueError("n_tokens must be >= 0")
