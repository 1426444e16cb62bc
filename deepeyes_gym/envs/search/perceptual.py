"""Perceptual hashes (DCT pHash) made robust to cropping by hashing many crops of each image.

A pHash (low 8×8 DCT coefficients of a 32×32 grey thumbnail, thresholded at their median) is
stable under resizing, JPEG re-encoding and brightness/contrast changes, but not under cropping.
So the index stores the hash of a grid of crops of every corpus image (full frame plus crops that
keep 90/80/70% of each side at three positions); a query — a crop of the original — is close to
one of them, and an image's distance is the minimum over its crops. Hamming distances over
uint64 words are computed with ``np.bitwise_count`` (no downloadable weights, numpy only).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

__all__ = ["HASH_SIZE", "DEFAULT_CROP_SCALES", "crop_boxes", "phash_boxes", "query_hash", "hamming"]

HASH_SIZE = 32  # side of the grey thumbnail the DCT runs on
_LOW = 8  # 8x8 low-frequency coefficients -> 64 bits
_WORK_SIDE = 192  # images are box-reduced to about this long side before cropping
DEFAULT_CROP_SCALES: tuple[float, ...] = (0.9, 0.8, 0.7)


@lru_cache(maxsize=4)
def _dct_rows(n: int, rows: int) -> np.ndarray:
    """First ``rows`` rows of the orthonormal DCT-II matrix of size ``n``."""
    k = np.arange(rows)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m.astype(np.float32)


def _grey_work(img: Image.Image) -> Image.Image:
    """Grey image with its long side reduced to about ``_WORK_SIDE`` (area averaging)."""
    factor = max(1, max(img.size) // (2 * _WORK_SIDE))
    if factor > 1:
        img = img.reduce(factor)  # cheap integer box reduction first, for very large inputs
    g = img.convert("L")
    if max(g.size) > _WORK_SIDE:
        g = g.copy()
        g.thumbnail((_WORK_SIDE, _WORK_SIDE), Image.BOX)
    return g


def _hash_thumbs(thumbs: np.ndarray) -> np.ndarray:
    """(B, 32, 32) float32 grey thumbnails -> (B,) uint64 pHashes."""
    d = _dct_rows(HASH_SIZE, _LOW)
    coeffs = (d @ thumbs @ d.T).reshape(len(thumbs), -1)
    bits = coeffs > np.median(coeffs, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64).ravel()


def crop_boxes(
    width: float, height: float, scales: tuple[float, ...] = DEFAULT_CROP_SCALES, positions: int = 3
) -> list[tuple[float, float, float, float]]:
    """Full frame plus every (x-scale, y-scale) crop at ``positions`` offsets along each axis."""
    axis_x: list[tuple[float, float]] = [(0.0, float(width))]
    axis_y: list[tuple[float, float]] = [(0.0, float(height))]
    for s in scales:
        for off in np.linspace(0.0, 1.0 - s, positions):
            axis_x.append((off * width, (off + s) * width))
            axis_y.append((off * height, (off + s) * height))
    return [(x0, y0, x1, y1) for (x0, x1) in axis_x for (y0, y1) in axis_y]


def phash_boxes(img: Image.Image, scales: tuple[float, ...] = DEFAULT_CROP_SCALES) -> np.ndarray:
    """pHashes of the crop grid of ``img``, in :func:`crop_boxes` order (uint64 array)."""
    g = _grey_work(img)
    boxes = crop_boxes(g.width, g.height, scales)
    thumbs = np.stack(
        [np.asarray(g.resize((HASH_SIZE, HASH_SIZE), Image.BOX, box=b), dtype=np.float32) for b in boxes]
    )
    return _hash_thumbs(thumbs)


def query_hash(img: Image.Image) -> np.uint64:
    """pHash of the whole query image."""
    g = _grey_work(img)
    thumb = np.asarray(g.resize((HASH_SIZE, HASH_SIZE), Image.BOX), dtype=np.float32)
    return _hash_thumbs(thumb[None])[0]


def hamming(hashes: np.ndarray, h: np.uint64) -> np.ndarray:
    """Hamming distance of every hash in ``hashes`` to ``h``."""
    return np.bitwise_count(np.bitwise_xor(hashes, np.uint64(h)))
