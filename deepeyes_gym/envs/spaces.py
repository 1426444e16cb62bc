"""Spaces Gymnasium cannot express: any unicode string up to N chars, and variable-size images."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from gymnasium import spaces

__all__ = ["UnicodeText", "ImageTuple", "observation_space"]

# Code points sample() draws from: printable ASCII, markup characters, and a few non-Latin
# ranges. Surrogates (D800–DFFF) are never valid members.
_SAMPLE_RANGES = ((0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x4E00, 0x4FFF), (0x1F300, 0x1F5FF))
_MARKUP = (
    "<think>", "</think>", "<answer>", "</answer>", "<code>", "</code>", "```python\n", "\n```",
    "<tool_call>", "</tool_call>", '{"name": "', '", "arguments": {', "}}", "\n",
)


class UnicodeText(spaces.Space[str]):
    """Any ``str`` of at most ``max_length`` characters that is valid Unicode (no lone surrogates).

    ``sample()`` returns random text mixing unicode characters with fragments of the action markup,
    so random agents exercise the parser's paths.
    """

    def __init__(self, max_length: int = 1_000_000, seed: int | np.random.Generator | None = None):
        if max_length < 0:
            raise ValueError("max_length must be >= 0")
        self.max_length = int(max_length)
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def contains(self, x: Any) -> bool:
        if not isinstance(x, str) or len(x) > self.max_length:
            return False
        try:
            x.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        if mask is not None or probability is not None:
            raise NotImplementedError("UnicodeText.sample() takes no mask")
        rng = self.np_random
        n = int(rng.integers(0, min(self.max_length, 64) + 1))
        parts: list[str] = []
        length = 0
        while length < n:
            if rng.random() < 0.2:
                piece = _MARKUP[int(rng.integers(len(_MARKUP)))]
            else:
                lo, hi = _SAMPLE_RANGES[int(rng.integers(len(_SAMPLE_RANGES)))]
                piece = chr(int(rng.integers(lo, hi + 1)))
            parts.append(piece)
            length += len(piece)
        return "".join(parts)[: self.max_length]

    def __repr__(self) -> str:
        return f"UnicodeText(max_length={self.max_length})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, UnicodeText) and other.max_length == self.max_length


class ImageTuple(spaces.Space[tuple]):
    """A tuple of at most ``max_images`` RGB images, each an H×W×3 uint8 array of any size with
    1 ≤ H, W ≤ ``max_side``."""

    def __init__(self, max_images: int = 64, max_side: int = 32768, seed: Any = None):
        self.max_images = int(max_images)
        self.max_side = int(max_side)
        super().__init__(shape=None, dtype=np.uint8, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def contains(self, x: Any) -> bool:
        if not isinstance(x, tuple) or len(x) > self.max_images:
            return False
        return all(
            isinstance(im, np.ndarray)
            and im.dtype == np.uint8
            and im.ndim == 3
            and im.shape[2] == 3
            and 1 <= im.shape[0] <= self.max_side
            and 1 <= im.shape[1] <= self.max_side
            for im in x
        )

    def sample(self, mask: Any = None, probability: Any = None) -> tuple:
        if mask is not None or probability is not None:
            raise NotImplementedError("ImageTuple.sample() takes no mask")
        rng = self.np_random
        n = int(rng.integers(0, min(self.max_images, 3) + 1))
        side = min(self.max_side, 64)
        return tuple(
            rng.integers(0, 256, size=(int(rng.integers(1, side + 1)), int(rng.integers(1, side + 1)), 3), dtype=np.uint8)
            for _ in range(n)
        )

    def __repr__(self) -> str:
        return f"ImageTuple(max_images={self.max_images}, max_side={self.max_side})"

    def __eq__(self, other: Any) -> bool:
        return (
            isinstance(other, ImageTuple)
            and other.max_images == self.max_images
            and other.max_side == self.max_side
        )


def observation_space(max_chars: int, max_images: int, max_side: int) -> spaces.Dict:
    return spaces.Dict(
        {"text": UnicodeText(max_chars), "images": ImageTuple(max_images, max_side)}
    )


def as_image_tuple(images: Sequence[np.ndarray]) -> tuple:
    return tuple(np.array(im, dtype=np.uint8, copy=True) for im in images)
