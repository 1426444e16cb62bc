"""Spaces Gymnasium cannot express: any unicode string up to N chars, and variable-size images.

Both work with ``AsyncVectorEnv(shared_memory=True)`` (the default of ``gym.make_vec``): each
sub-env's observation goes through a per-slot file in a tmpfs directory, since a fixed-size
shared array cannot hold text of any length or images of any size.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import shutil
import tempfile
import weakref
from collections.abc import Sequence as SequenceABC
from typing import Any, Sequence

import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import create_shared_memory, read_from_shared_memory, write_to_shared_memory

from .turns import PolicyTurn

__all__ = ["UnicodeText", "ImageTuple", "TurnSpace", "observation_space"]

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


class TurnSpace(UnicodeText):
    """The action space: a turn as text, or a :class:`PolicyTurn` whose text is in the space."""

    def contains(self, x: Any) -> bool:
        if isinstance(x, PolicyTurn):
            return super().contains(x.text)
        return super().contains(x)

    def __repr__(self) -> str:
        return f"TurnSpace(max_length={self.max_length})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, TurnSpace) and other.max_length == self.max_length


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


# ---------------------------------------------------------------------- shared memory for vector envs
class _FileSlots:
    """One file per sub-env in a tmpfs directory. The worker writes (atomically, before it
    answers the step), the parent reads after the answer, so a read always sees that step."""

    def __init__(self, n: int, empty: Any):
        root = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.dir = tempfile.mkdtemp(prefix="deepeyes-gym-vec-", dir=root)
        self.n, self.empty = n, empty
        # Only the creating process cleans up: the finaliser is not pickled to spawned workers,
        # and forked workers leave through os._exit, which skips it.
        weakref.finalize(self, shutil.rmtree, self.dir, True)

    def write(self, index: int, value: Any) -> None:
        path = os.path.join(self.dir, str(index))
        with open(path + ".tmp", "wb") as fh:
            pickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(path + ".tmp", path)

    def read(self, index: int) -> Any:
        try:
            with open(os.path.join(self.dir, str(index)), "rb") as fh:
                return pickle.load(fh)
        except FileNotFoundError:
            return self.empty


class _LiveSlots(SequenceABC):
    """The parent's view of the slots: indexing reads the current value; ``deepcopy`` (what the
    vector env does with ``copy=True``) materialises a plain tuple, as without shared memory."""

    def __init__(self, slots: _FileSlots):
        self._slots = slots

    def __len__(self) -> int:
        return self._slots.n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return tuple(self[j] for j in range(*i.indices(len(self))))
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self._slots.read(i % len(self))

    def __deepcopy__(self, memo: dict) -> tuple:
        return tuple(self)

    def __repr__(self) -> str:
        return f"_LiveSlots({tuple(self)!r})"


@create_shared_memory.register(UnicodeText)
@create_shared_memory.register(ImageTuple)
def _create_slots(space: spaces.Space, n: int = 1, ctx: Any = mp) -> _FileSlots:
    return _FileSlots(n, "" if isinstance(space, UnicodeText) else ())


@read_from_shared_memory.register(UnicodeText)
@read_from_shared_memory.register(ImageTuple)
def _read_slots(space: spaces.Space, shared_memory: _FileSlots, n: int = 1) -> _LiveSlots:
    return _LiveSlots(shared_memory)


@write_to_shared_memory.register(UnicodeText)
@write_to_shared_memory.register(ImageTuple)
def _write_slot(space: spaces.Space, index: int, value: Any, shared_memory: _FileSlots) -> None:
    shared_memory.write(index, value)
