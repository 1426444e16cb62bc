"""Image sizing and processing for Qwen2-VL-style vision towers, without torchvision.

Images are resized *here*, before rendering, to a size that the processor's own ``smart_resize``
maps to itself (sides multiples of ``patch*merge``, pixels within [min, max], aspect ratio <= 200).
So the token count fixed at render time is what any later processor with the same geometry (the
trainer's, vLLM's) computes again for the stored image; the processor itself runs with
``do_resize=False``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

__all__ = ["VisionSpec", "target_size", "is_fitted", "fit_image", "spec_of", "fit_images", "load_image_processor", "process_images"]

MAX_RATIO = 200  # the processor raises above this aspect ratio


@dataclass(frozen=True)
class VisionSpec:
    """The image geometry a Qwen2-VL processor implies (defaults: Qwen2.5-VL's)."""

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280

    def __post_init__(self) -> None:
        # 2x headroom: raising a tiny image to min_pixels in factor steps can overshoot it by < 1x.
        if self.min_pixels < self.factor**2 or self.max_pixels < 2 * self.min_pixels:
            raise ValueError(f"need {self.factor ** 2} <= min_pixels <= max_pixels / 2, got {self.min_pixels}, {self.max_pixels}")

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def tokens(self, height: int, width: int) -> int:
        """Image tokens (merged patches) for an image of exactly this (already fitted) size."""
        return (height // self.patch_size) * (width // self.patch_size) // self.merge_size**2


def target_size(height: int, width: int, spec: VisionSpec, max_pixels: int | None = None) -> tuple[int, int]:
    """Qwen's ``smart_resize`` under a per-image cap, then forced into what the processor accepts
    unchanged: sides multiples of ``factor``, ``min_pixels <= h*w <= spec.max_pixels``, aspect
    ratio <= 200. (``smart_resize`` alone floors thin strips' short side at ``factor`` and so
    overshoots the cap, and can land under ``min_pixels`` when the cap is close to it.)
    The cap wins except where meeting ``min_pixels`` needs more (then by less than ``min_pixels``).
    """
    f, lo = spec.factor, spec.min_pixels
    hi = min(spec.max_pixels, max(lo, max_pixels or spec.max_pixels))
    h, w = max(1, height), max(1, width)
    th, tw = round(h / f) * f, round(w / f) * f
    if th * tw > hi:
        beta = math.sqrt(h * w / hi)
        th, tw = max(f, math.floor(h / beta / f) * f), max(f, math.floor(w / beta / f) * f)
    elif th * tw < lo:
        beta = math.sqrt(lo / (h * w))
        # less a rounding error: 19×19 to 56×56 gives 56.000000000000004 / 28, which must not ceil to 3
        th, tw = math.ceil(h * beta / f - 1e-9) * f, math.ceil(w * beta / f - 1e-9) * f
    short, long_ = sorted((th, tw))
    long_ = min(long_, MAX_RATIO * short)
    long_ = max(short, min(long_, hi // short // f * f))
    while short * long_ < lo:  # grow the short side first: it also lowers the aspect ratio
        if short < long_:
            short += f
        else:
            long_ += f
    return (short, long_) if th <= tw else (long_, short)


def is_fitted(height: int, width: int, spec: VisionSpec) -> bool:
    """True when the processor's resize would leave this size unchanged."""
    f = spec.factor
    return (height % f == 0 and width % f == 0 and spec.min_pixels <= height * width <= spec.max_pixels
            and max(height, width) <= MAX_RATIO * min(height, width))


def _pad_to_ratio(img: Image.Image) -> Image.Image:
    """Pad the short side (black, centred) so the aspect ratio is at most ``MAX_RATIO``: a 1x600
    strip keeps its pixels instead of being squeezed into an unrecognisable sliver."""
    w, h = img.size
    if max(w, h) <= MAX_RATIO * min(w, h):
        return img
    need = math.ceil(max(w, h) / MAX_RATIO)
    size = (w, need) if w > h else (need, h)
    out = Image.new("RGB", size)
    out.paste(img, ((size[0] - w) // 2, (size[1] - h) // 2))
    return out


def fit_image(img: Image.Image | np.ndarray, spec: VisionSpec, max_pixels: int | None = None) -> Image.Image:
    """RGB, padded to a sane aspect ratio, resized (bicubic) to :func:`target_size`."""
    pil = Image.fromarray(np.asarray(img, dtype=np.uint8)) if isinstance(img, np.ndarray) else img
    pil = _pad_to_ratio(pil.convert("RGB"))
    th, tw = target_size(pil.height, pil.width, spec, max_pixels)
    return pil if pil.size == (tw, th) else pil.resize((tw, th), Image.Resampling.BICUBIC)


def fit_images(
    images: Sequence[Image.Image | np.ndarray], spec: VisionSpec, *, max_pixels: int | None = None,
    budget_left: int | None = None,
) -> list[Image.Image]:
    """Fit each image under ``max_pixels``, sharing ``budget_left`` pixels fairly among the images
    still to place.

    An exhausted budget shrinks images to ``min_pixels`` (a few tokens) rather than dropping them:
    the transcript already promised the model an image at each placeholder.
    """
    out: list[Image.Image] = []
    for i, img in enumerate(images):
        cap = max_pixels
        if budget_left is not None:
            share = max(spec.min_pixels, budget_left // (len(images) - i))
            cap = share if cap is None else min(cap, share)
        fitted = fit_image(img, spec, cap)
        out.append(fitted)
        if budget_left is not None:
            budget_left = max(0, budget_left - fitted.width * fitted.height)
    return out


def _processor_class() -> Any:
    try:  # transformers >= 5: the PIL backend (the default one wants torchvision)
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        return Qwen2VLImageProcessorPil
    except ImportError:  # 4.x: the numpy/PIL processor
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

        return Qwen2VLImageProcessor


_PROCESSOR_KEYS = ("image_mean", "image_std", "rescale_factor", "do_rescale", "do_normalize", "do_convert_rgb")


def load_image_processor(path: str | Path | None = None, **overrides: Any) -> tuple[Any, VisionSpec]:
    """The processor and its geometry, from a model dir's ``preprocessor_config.json`` (read here,
    not by ``from_pretrained``, whose key handling differs between 4.x and 5.x) or defaults."""
    cfg: dict[str, Any] = {}
    if path is not None and (Path(path) / "preprocessor_config.json").exists():
        cfg = json.loads((Path(path) / "preprocessor_config.json").read_text())
    cfg.update(overrides)
    size = cfg.get("size") or {}
    spec = VisionSpec(
        patch_size=int(cfg.get("patch_size", 14)), merge_size=int(cfg.get("merge_size", 2)),
        temporal_patch_size=int(cfg.get("temporal_patch_size", 2)),
        min_pixels=int(cfg.get("min_pixels", size.get("shortest_edge", 56 * 56))),
        max_pixels=int(cfg.get("max_pixels", size.get("longest_edge", 28 * 28 * 1280))),
    )
    kwargs = {k: cfg[k] for k in _PROCESSOR_KEYS if k in cfg}
    proc = _processor_class()(
        min_pixels=spec.min_pixels, max_pixels=spec.max_pixels, patch_size=spec.patch_size,
        merge_size=spec.merge_size, temporal_patch_size=spec.temporal_patch_size, **kwargs,
    )
    return proc, spec


def spec_of(processor: Any) -> VisionSpec:
    """The geometry of a Qwen2-VL image processor (4.x keeps min/max_pixels, 5.x a ``size``)."""
    size = processor.size
    get = (lambda k: size.get(k)) if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    return VisionSpec(
        patch_size=processor.patch_size, merge_size=processor.merge_size,
        temporal_patch_size=processor.temporal_patch_size,
        min_pixels=getattr(processor, "min_pixels", None) or get("shortest_edge"),
        max_pixels=getattr(processor, "max_pixels", None) or get("longest_edge"),
    )


def process_images(processor: Any, images: Sequence[Image.Image], spec: VisionSpec) -> dict[str, Any]:
    """``pixel_values`` and ``image_grid_thw`` (torch) for images already fitted by :func:`fit_image`;
    raises if an image is not at a fitted size (its token count would be ambiguous)."""
    for im in images:
        if not is_fitted(im.height, im.width, spec):
            raise ValueError(f"image of {im.width}x{im.height} is not fitted: pass it through fit_image first")
    arrays = [np.asarray(im.convert("RGB")) for im in images]
    out = processor(images=arrays, do_resize=False, input_data_format="channels_last", return_tensors="pt")
    return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}
