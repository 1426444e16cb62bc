"""The renderer interface and the run-time invariants of a token-level trajectory.

Every check raises :class:`RenderInvariantError` with what differs and where; none has a
tolerance. They are cheap enough to run on every turn of every episode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from ...envs.turns import EnvDelta, Message

__all__ = [
    "Rendered", "ChatRenderer", "RenderInvariantError", "concat_mm_inputs", "check_prefix",
    "check_image_tokens", "check_transcript",
]


class RenderInvariantError(AssertionError):
    """Token ids, images and text of a trajectory disagree: a tokenisation or image-token bug."""


@dataclass
class Rendered:
    """Token ids that one ``render_*`` call appends, and the images they introduce.

    ``images`` are the fitted images (the exact pixels the model sees), in token order;
    ``image_token_counts[i]`` is the number of image-pad tokens of ``images[i]``; ``pixel_values``
    and ``image_grid_thw`` are their processed tensors (None without images); ``pixels`` counts the
    fitted images' pixels, for the per-episode budget.
    """

    ids: list[int]
    images: list[Image.Image] = field(default_factory=list)
    image_token_counts: list[int] = field(default_factory=list)
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None

    @property
    def pixels(self) -> int:
        return sum(im.width * im.height for im in self.images)

    @property
    def mm_inputs(self) -> dict[str, torch.Tensor]:
        """``{"pixel_values", "image_grid_thw"}``, or ``{}`` without images."""
        if self.pixel_values is None:
            return {}
        return {"pixel_values": self.pixel_values, "image_grid_thw": self.image_grid_thw}


def concat_mm_inputs(parts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate per-turn ``mm_inputs`` in order (what a whole sequence's forward pass takes)."""
    import torch

    parts = [p for p in parts if p]
    if not parts:
        return {}
    return {k: torch.cat([p[k] for p in parts], dim=0) for k in parts[0]}


@runtime_checkable
class ChatRenderer(Protocol):
    """One per model family: env deltas in, token ids out, never re-encoding earlier turns.

    ``render_initial`` renders the reset delta plus the assistant generation prompt and prefill;
    ``render_delta`` renders what follows a sampled turn. ``after_eos`` says whether the sampled ids
    already end with the end-of-turn token (then it is not added again). ``pixels_used`` is the
    episode's fitted pixels so far (sum of earlier ``Rendered.pixels``), for the pixel budget.
    """

    eos_token_id: int

    def render_initial(self, delta: EnvDelta, *, pixels_used: int = 0) -> Rendered: ...

    def render_delta(self, delta: EnvDelta, *, after_eos: bool, pixels_used: int = 0) -> Rendered: ...

    def process(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def transcript(self, turns: Sequence[Message | tuple[str, str]], *, open_turn: str | None = None) -> str: ...


def check_prefix(prev_prompt: Sequence[int], sampled: Sequence[int], delta: Sequence[int], next_prompt: Sequence[int]) -> None:
    """Prefix contiguity: ``next_prompt == prev_prompt + sampled + delta``, id for id."""
    expected = [*prev_prompt, *sampled, *delta]
    if list(next_prompt) == expected:
        return
    n = min(len(expected), len(next_prompt))
    at = next((i for i in range(n) if expected[i] != next_prompt[i]), n)
    where = "prompt" if at < len(prev_prompt) else "sampled ids" if at < len(prev_prompt) + len(sampled) else "delta"
    raise RenderInvariantError(
        f"prefix broken at token {at} (in the {where}): expected {expected[at:at + 8]}, got "
        f"{list(next_prompt[at:at + 8])}; lengths {len(expected)} vs {len(next_prompt)}"
    )


def check_image_tokens(
    ids: Sequence[int], image_grid_thw: Any, *, image_token_id: int, merge_size: int,
    vision_start_id: int | None = None, vision_end_id: int | None = None,
) -> None:
    """Image pad tokens match image features, image by image and in order.

    Each maximal run of ``image_token_id`` is one image whose length must be
    ``t*h*w // merge_size**2`` of the next row of ``image_grid_thw``; with the vision start/end
    ids given, each run must sit right between them.
    """
    grids = [] if image_grid_thw is None else [tuple(int(v) for v in row) for row in image_grid_thw]
    want = [t * h * w // merge_size**2 for t, h, w in grids]
    runs: list[tuple[int, int]] = []  # (start, length)
    i, ids = 0, list(ids)
    while i < len(ids):
        if ids[i] == image_token_id:
            j = i
            while j < len(ids) and ids[j] == image_token_id:
                j += 1
            runs.append((i, j - i))
            i = j
        else:
            i += 1
    got = [n for _, n in runs]
    if got != want:
        raise RenderInvariantError(
            f"image tokens do not match image features: pad runs {got} (total {sum(got)}) vs "
            f"features per image {want} (total {sum(want)})"
        )
    if vision_start_id is None or vision_end_id is None:
        return
    for k, (start, n) in enumerate(runs):
        before = ids[start - 1] if start > 0 else None
        after = ids[start + n] if start + n < len(ids) else None
        if before != vision_start_id or after != vision_end_id:
            raise RenderInvariantError(f"image {k} (tokens {start}..{start + n}) is not between vision start/end tokens")


def check_transcript(decoded: str, expected: str) -> None:
    """Decoded trajectory ids reproduce the env transcript, character for character."""
    if decoded == expected:
        return
    n = min(len(decoded), len(expected))
    at = next((i for i in range(n) if decoded[i] != expected[i]), n)
    raise RenderInvariantError(
        f"decoded ids differ from the transcript at character {at}: decoded {decoded[max(0, at - 30):at + 30]!r} "
        f"vs transcript {expected[max(0, at - 30):at + 30]!r} (lengths {len(decoded)} vs {len(expected)})"
    )


def chat_to_messages(messages: Sequence[Mapping[str, Any]], *, with_images: bool = True) -> tuple[Message, ...]:
    """OpenAI-style chat dicts (as the eval runner hands text agents) back into env messages:
    one ``<image>`` per image part (or the neutral marker for a text-only model), and any
    ``<image>`` typed in the text neutralised, so placeholders come from image parts only."""
    import numpy as np

    from ...envs.turns import IMAGE_TOKEN, NEUTRAL_IMAGE, Message

    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        text, images = [], []
        for part in content:
            if part.get("type") == "text":
                text.append(part["text"].replace(IMAGE_TOKEN, NEUTRAL_IMAGE))
            elif with_images:
                text.append(IMAGE_TOKEN)
                images.append(np.asarray(part["image"]))
            else:
                text.append(NEUTRAL_IMAGE)
        out.append(Message(m["role"], "".join(text), tuple(images)))
    return tuple(out)

