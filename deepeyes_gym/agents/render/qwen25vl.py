"""Qwen2.5-VL's ChatML, token in / token out, as DeepEyesV2 uses it.

Initial prompt (the reset delta)::

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{user}<|im_end|>\\n<|im_start|>assistant\\n<think>

Each continuing step (a tool result comes back as a user turn)::

    [<|im_end|>]\\n<|im_start|>user\\n{obs}<|im_end|>\\n<|im_start|>assistant\\n<think>

The leading ``<|im_end|>`` closes the sampled turn unless the model already sampled it (it stops on
``</code>``/``</tool_call>`` without one). Each ``<image>`` becomes ``<|vision_start|>`` + N
``<|image_pad|>`` + ``<|vision_end|>``, N from the fitted image's grid.

Text is encoded once, piece by piece between the template's special tokens, which is exactly how
the tokenizer splits the full chat string: the ids equal the tokenisation of the hub chat template
with pads expanded. Message text is encoded with special tokens *split*: a ``<|im_end|>`` printed
by user code is plain text, not an end of turn.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, Union

from ...envs.turns import IMAGE_TOKEN, EnvDelta, Message
from .base import Rendered, RenderInvariantError, check_image_tokens
from .images import VisionSpec, fit_images, load_image_processor, process_images, spec_of

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = ["Qwen25VLRenderer", "QWEN_SPECIAL_TOKENS"]

QWEN_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>")

_IMAGE = object()  # where the next image's vision tokens go
_Piece = Union[str, int, object]


class Qwen25VLRenderer:
    """Renders env deltas for Qwen2.5-VL (and Qwen2-VL: same template and image tokens).

    ``tokenizer``: a ``transformers`` fast tokenizer or a ``tokenizers.Tokenizer``. ``max_pixels``
    caps each image (default and upper bound: the processor's); ``episode_max_pixels`` caps an
    episode's images together; neither goes under the processor's ``min_pixels`` per image.
    Stateless between calls, so one instance serves every episode concurrently.
    """

    def __init__(
        self, tokenizer: Any, image_processor: Any = None, spec: VisionSpec | None = None, *,
        max_pixels: int | None = None, episode_max_pixels: int | None = None,
    ) -> None:
        from tokenizers import Tokenizer

        backend = tokenizer if isinstance(tokenizer, Tokenizer) else tokenizer.backend_tokenizer
        # A private copy: splitting special tokens must not leak into the caller's tokenizer.
        self._tok = Tokenizer.from_str(backend.to_str())
        self._tok.encode_special_tokens = True
        self._tok.no_padding()
        self._tok.no_truncation()
        ids = {t: self._tok.token_to_id(t) for t in QWEN_SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer lacks Qwen special tokens {missing}")
        self.im_start_id, self.im_end_id = ids["<|im_start|>"], ids["<|im_end|>"]
        self.endoftext_id, self.image_pad_id = ids["<|endoftext|>"], ids["<|image_pad|>"]
        self.vision_start_id, self.vision_end_id = ids["<|vision_start|>"], ids["<|vision_end|>"]
        self.eos_token_id = self.im_end_id
        if image_processor is None:
            image_processor, spec = load_image_processor()
        self.image_processor = image_processor
        self.spec = spec or spec_of(image_processor)
        self.max_pixels = max_pixels
        self.episode_max_pixels = episode_max_pixels

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> "Qwen25VLRenderer":
        """From a model dir (tokenizer.json + preprocessor_config.json)."""
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
        proc, spec = load_image_processor(path)
        return cls(tok, proc, spec, **kwargs)

    @property
    def merge_size(self) -> int:
        return self.spec.merge_size

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    # ------------------------------------------------------------------ rendering

    def render_initial(self, delta: EnvDelta, *, pixels_used: int = 0) -> Rendered:
        """The reset delta (system + first user turn), the generation prompt and the prefill."""
        if delta.done or not delta.messages:
            raise ValueError("render_initial needs the reset delta (messages, not done)")
        pieces: list[_Piece] = []
        for i, m in enumerate(delta.messages):
            if i:
                pieces.append("\n")
            pieces += self._message(m)
        pieces += ["\n", self.im_start_id, "assistant\n" + delta.prefill]
        return self._assemble(pieces, delta.images, pixels_used)

    def render_delta(self, delta: EnvDelta, *, after_eos: bool, pixels_used: int = 0) -> Rendered:
        """What follows a sampled turn. A final delta only closes the turn (``<|im_end|>``, or
        nothing when it was sampled)."""
        pieces: list[_Piece] = [] if after_eos else [self.im_end_id]
        if not delta.done:
            if not delta.messages:
                raise ValueError("a continuing delta needs at least one message")
            for m in delta.messages:
                pieces += ["\n", *self._message(m)]
            pieces += ["\n", self.im_start_id, "assistant\n" + delta.prefill]
        return self._assemble(pieces, delta.images if not delta.done else [], pixels_used)

    def _message(self, m: Message) -> list[_Piece]:
        out: list[_Piece] = [self.im_start_id, m.role + "\n"]
        chunks = m.text.split(IMAGE_TOKEN)
        for k, chunk in enumerate(chunks):
            if chunk:
                out.append(chunk)
            if k < len(chunks) - 1:
                out.append(_IMAGE)
        out.append(self.im_end_id)
        return out

    def _assemble(self, pieces: list[_Piece], images: Sequence[Any], pixels_used: int) -> Rendered:
        fitted = self.fit(images, pixels_used=pixels_used)
        mm = self.process(fitted) if fitted else {}
        counts = [self.spec.tokens(im.height, im.width) for im in fitted]
        ids: list[int] = []
        text: list[str] = []
        n_image = 0

        def flush() -> None:
            if text:
                ids.extend(self.encode_text("".join(text)))
                text.clear()

        for p in pieces:
            if isinstance(p, str):
                text.append(p)
                continue
            flush()
            if isinstance(p, int):
                ids.append(p)
            elif p is _IMAGE:
                if n_image >= len(counts):
                    raise RenderInvariantError(f"more {IMAGE_TOKEN} placeholders than the {len(counts)} images")
                ids += [self.vision_start_id, *[self.image_pad_id] * counts[n_image], self.vision_end_id]
                n_image += 1
        flush()
        if n_image != len(counts):
            raise RenderInvariantError(f"{n_image} {IMAGE_TOKEN} placeholders for {len(counts)} images")
        out = Rendered(ids, fitted, counts, mm.get("pixel_values"), mm.get("image_grid_thw"))
        self.check_image_tokens(out.ids, out.image_grid_thw)
        return out

    # ------------------------------------------------------------------ images

    def fit(self, images: Sequence[Any], *, pixels_used: int = 0) -> list[Image.Image]:
        """Images resized to their final size under ``max_pixels`` and the episode budget."""
        left = None if self.episode_max_pixels is None else max(0, self.episode_max_pixels - pixels_used)
        return fit_images(images, self.spec, max_pixels=self.max_pixels, budget_left=left)

    def process(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """Processed tensors of already fitted images (``fit``), in order."""
        return process_images(self.image_processor, images, self.spec) if images else {}

    # ------------------------------------------------------------------ text

    def encode_text(self, text: str) -> list[int]:
        """Plain text to ids; special-token strings inside it stay text."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Ids to text, each ``<|vision_start|><|image_pad|>…<|vision_end|>`` run as ``<image>``."""
        out: list[str] = []
        seg: list[int] = []
        ids = list(ids)
        i = 0
        while i < len(ids):
            if ids[i] == self.vision_start_id:
                j = i + 1
                while j < len(ids) and ids[j] == self.image_pad_id:
                    j += 1
                if j > i + 1 and j < len(ids) and ids[j] == self.vision_end_id:
                    out.append(self._tok.decode(seg, skip_special_tokens=False))
                    out.append(IMAGE_TOKEN)
                    seg, i = [], j + 1
                    continue
            seg.append(ids[i])
            i += 1
        out.append(self._tok.decode(seg, skip_special_tokens=False))
        return "".join(out)

    def transcript(self, turns: Sequence[Message | tuple[str, str]], *, open_turn: str | None = None) -> str:
        """The ChatML text of a conversation, images as ``<image>``: what :meth:`decode` of an
        episode's ids must equal. Assistant texts are prefill + sampled text; ``open_turn`` appends
        an unfinished assistant turn (the prompt of the next generation)."""
        parts = []
        for t in turns:
            role, text = (t.role, t.text) if isinstance(t, Message) else t
            parts.append(f"<|im_start|>{role}\n{text}<|im_end|>")
        if open_turn is not None:
            parts.append(f"<|im_start|>assistant\n{open_turn}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ invariants

    def check_image_tokens(self, ids: Sequence[int], image_grid_thw: Any) -> None:
        """Pads match features image by image, each run between vision start/end tokens."""
        check_image_tokens(
            ids, image_grid_thw, image_token_id=self.image_pad_id, merge_size=self.merge_size,
            vision_start_id=self.vision_start_id, vision_end_id=self.vision_end_id,
        )
