"""A synthetic search corpus (docs + images) and image distortions, for tests and benchmarks.

The docs describe invented entities whose names and attributes overlap on purpose (shared
cities, types and years), so retrieval has distractors; each doc comes with the natural query a
solver would issue for it. The images are procedural scenes (gradients, shapes, texture).
"""

from __future__ import annotations

import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

__all__ = ["SyntheticCorpus", "make_synthetic_corpus", "make_scene", "distort_image"]

_SYLLABLES = (
    "ka lo ri ven mar tes dol bri an sel tor vik ul ness gar pe dro hal fin mo su zer "
    "qua lin ost rem bal cor dav el fa gil hor is jun kel lum nor pra rus sta tul vey wen"
).split()
_KINDS = {
    "bridge": ("suspension bridge", "arch bridge", "cable-stayed bridge"),
    "museum": ("art museum", "natural history museum", "maritime museum"),
    "mountain": ("volcano", "granite peak", "limestone massif"),
    "festival": ("music festival", "film festival", "lantern festival"),
    "ship": ("steamship", "research vessel", "ocean liner"),
    "bird": ("songbird", "wading bird", "raptor"),
}
_ATTRS = ("architect", "founder", "discoverer", "captain", "curator", "designer")
_TEMPLATES = (
    "{name} is a {sub} located in {city}. It was completed in {year} under the direction of "
    "{person}, who served as its {attr}. {filler}",
    "The {sub} known as {name} opened in {city} in {year}. Its {attr}, {person}, "
    "is credited with its distinctive design. {filler}",
    "Located near {city}, {name} is a {sub} first recorded in {year}. {person} was the {attr}. {filler}",
)
_FILLER = (
    "Visitors often arrive by train from the regional capital.",
    "The site was restored after a storm damaged the eastern side.",
    "Local guides describe the history in several languages.",
    "A small exhibition explains the engineering and the people behind it.",
    "It appears on a commemorative stamp issued decades later.",
    "Records from the period are kept in the municipal archive.",
    "The surrounding area is known for orchards and old stone walls.",
    "Annual events attract visitors from neighbouring provinces.",
)


@dataclass
class SyntheticCorpus:
    """Where the corpus was written and the ground truth for each query."""

    root: Path
    text_queries: list[tuple[str, str]]  # (query, gold doc id)
    image_ids: list[str]


def _word(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(n)).capitalize()


def make_scene(rng: np.random.Generator, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A random scene: a two-colour gradient, a few filled shapes, lines and mild texture."""
    w, h = size
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = ((np.cos(angle) * xx / w + np.sin(angle) * yy / h + 1) / 2)[..., None]
    base = (c0 * (1 - t) + c1 * t).astype(np.uint8)
    img = Image.fromarray(base)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.integers(-w // 4, w), rng.integers(-h // 4, h)
        x1, y1 = x0 + rng.integers(w // 10, w // 2), y0 + rng.integers(h // 10, h // 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        elif shape == 1:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        else:
            pts = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(3)]
            draw.polygon(pts, fill=colour)
    for _ in range(int(rng.integers(1, 5))):
        pts = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(2)]
        draw.line(pts, fill=tuple(int(c) for c in rng.integers(0, 256, 3)), width=int(rng.integers(1, 6)))
    noise = rng.integers(-10, 11, (h, w, 3), dtype=np.int16)
    arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr).filter(ImageFilter.SMOOTH)


def distort_image(img: Image.Image, rng: random.Random, *, strength: float = 1.0) -> Image.Image:
    """Crop (keep 75–100% of each side), resize (0.5–1.5x), brightness (±30%) and JPEG (q 30–90)."""
    w, h = img.size
    fx = 1 - rng.uniform(0, 0.25) * strength
    fy = 1 - rng.uniform(0, 0.25) * strength
    cw, ch = max(8, int(w * fx)), max(8, int(h * fy))
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = img.crop((x0, y0, x0 + cw, y0 + ch))
    scale = rng.uniform(1 - 0.5 * strength, 1 + 0.5 * strength)
    out = out.resize((max(8, int(cw * scale)), max(8, int(ch * scale))), Image.BILINEAR)
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(1 - 0.3 * strength, 1 + 0.3 * strength))
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=rng.randint(30, 90))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def make_synthetic_corpus(
    root: str | os.PathLike[str],
    *,
    n_docs: int = 2000,
    n_images: int = 1000,
    seed: int = 0,
    image_size: tuple[int, int] = (320, 240),
) -> SyntheticCorpus:
    """Write ``docs.jsonl``, ``images.jsonl`` and ``images/*.jpg`` under ``root``."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    cities = [_word(rng, 2) for _ in range(max(8, n_docs // 40))]
    people = [f"{_word(rng, 2)} {_word(rng, 3)}" for _ in range(max(8, n_docs // 10))]
    queries: list[tuple[str, str]] = []
    seen: set[str] = set()
    with open(root / "docs.jsonl", "w", encoding="utf-8") as f:
        for i in range(n_docs):
            kind = rng.choice(list(_KINDS))
            sub = rng.choice(_KINDS[kind])
            while True:
                name = f"{_word(rng, rng.randint(2, 3))} {kind.capitalize()}"
                if name not in seen:
                    seen.add(name)
                    break
            city, person, attr = rng.choice(cities), rng.choice(people), rng.choice(_ATTRS)
            year = rng.randint(1700, 2020)
            filler = " ".join(rng.sample(_FILLER, 3))
            text = rng.choice(_TEMPLATES).format(
                name=name, sub=sub, city=city, year=year, person=person, attr=attr, filler=filler
            )
            doc_id = f"d{i:06d}"
            doc = {
                "id": doc_id,
                "title": f"{name} - {city}",
                "url": f"https://example.org/wiki/{name.replace(' ', '_')}",
                "text": text,
            }
            if rng.random() < 0.3:
                doc["date"] = f"{rng.randint(1, 28)} Mar {rng.randint(2005, 2024)}"
            f.write(json.dumps(doc) + "\n")
            queries.append((rng.choice([f"who was the {attr} of {name}", f"{name} {city} {attr}",
                                        f"when was the {name} in {city} completed"]), doc_id))
    image_ids = []
    with open(root / "images.jsonl", "w", encoding="utf-8") as f:
        for i in range(n_images):
            img_id = f"img{i:06d}"
            rel = f"images/{img_id}.jpg"
            make_scene(nrng, image_size).save(root / rel, quality=92)
            f.write(json.dumps({
                "id": img_id, "path": rel, "title": f"Scene {img_id} - {_word(rng, 2)}",
                "url": f"https://example.org/img/{img_id}", "doc_id": f"d{i % max(n_docs, 1):06d}",
            }) + "\n")
            image_ids.append(img_id)
    return SyntheticCorpus(root=root, text_queries=queries, image_ids=image_ids)
