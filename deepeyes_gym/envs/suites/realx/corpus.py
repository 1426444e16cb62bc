"""The offline search corpus: one profile page, one key-figures page and news pages per entity,
town guides, and every entity's emblem image.

Format (shared with the search tools): ``docs.jsonl`` with {"id", "title", "url", "text", "date"?}
per line, ``images.jsonl`` with {"id", "path" (relative to the corpus dir), "title", "url",
"doc_id"}, and the image files under ``images/``. Pages are short (one or two sentences) so a
search snippet carries the whole fact; look-alike entities, news pages with other years and
numbers, and town guides that list several entities make the search non-trivial.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

from PIL import Image

from .render import draw_emblem
from .world import Entity, World, rng_for

__all__ = ["profile_doc_id", "figures_doc_id", "image_id", "emblem_image", "write_corpus", "corpus_docs"]

_NEWS = {
    "commerce": ("{name} opens a site in {town}", "In {year}, {name} announced a new site in {town} with {n} staff."),
    "wildlife": ("Survey counts the {name} near {town}", "A {year} survey recorded {n} individuals of the {name} near {town}."),
    "travel": ("{name} adds a route to {town}", "In {year}, {name} added a route to {town} with {n} departures a week."),
    "sports": ("{name} wins away at {town}", "In {year}, {name} won {n} matches away from home, including one in {town}."),
    "culture": ("{name} lends exhibits to {town}", "In {year}, {name} lent {n} objects to a gallery in {town}."),
}


def profile_doc_id(e: Entity) -> str:
    return f"{e.id}-profile"


def figures_doc_id(e: Entity) -> str:
    return f"{e.id}-figures"


def image_id(e: Entity) -> str:
    return f"{e.id}-emblem"


def _url(e: Entity, page: str) -> str:
    return f"https://{e.domain}.realx.example/{e.slug}/{page}"


def emblem_image(world: World, e: Entity) -> Image.Image:
    """The entity's emblem (same group → same palette and outline: visual look-alikes)."""
    return draw_emblem(
        seed=int(rng_for(world.seed, "emblem", e.id).integers(2**31)),
        group_seed=int(rng_for(world.seed, "emblem-group", e.group).integers(2**31)),
        letter=e.name[0],
    )


def corpus_docs(world: World) -> list[dict[str, Any]]:
    """All documents of the corpus, in a stable order."""
    docs: list[dict[str, Any]] = []
    by_town: dict[str, list[Entity]] = {}
    for e in world.entities:
        docs.append({"id": profile_doc_id(e), "title": f"{e.name} — profile", "url": _url(e, "profile"),
                     "text": e.profile_text()})
        docs.append({"id": figures_doc_id(e), "title": f"{e.name} — key figures", "url": _url(e, "figures"),
                     "text": e.figures_text()})
        rng = rng_for(world.seed, "news", e.id)
        title_t, text_t = _NEWS[e.domain]
        for k in range(int(rng.integers(1, 3))):
            town = world.towns[int(rng.integers(len(world.towns)))]
            year = int(rng.integers(max(e.year + 1, 1990), 2025))
            n = int(rng.integers(3, 400))
            docs.append({
                "id": f"{e.id}-news{k}",
                "title": title_t.format(name=e.name, town=town),
                "url": _url(e, f"news/{year}-{k}"),
                "text": text_t.format(name=e.name, town=town, year=year, n=n),
                "date": f"{year}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}",
            })
        by_town.setdefault(e.town, []).append(e)
    for i, town in enumerate(world.towns):
        residents = by_town.get(town, [])[:5]
        names = ", ".join(e.name for e in residents) or "a few small workshops"
        docs.append({"id": f"town-{i:03d}", "title": f"{town} — town guide",
                     "url": f"https://towns.realx.example/{'-'.join(town.lower().split())}",
                     "text": f"{town} is a market town. Visitors know it for {names}. A weekly market is held on the square."})
    return docs


def write_corpus(world: World, corpus_dir: str, *, jpeg_quality: int = 90) -> dict[str, int]:
    """Write docs.jsonl, images.jsonl and images/ under ``corpus_dir``; return counts."""
    img_dir = os.path.join(corpus_dir, "images")
    os.makedirs(img_dir, exist_ok=True)
    docs = corpus_docs(world)
    with open(os.path.join(corpus_dir, "docs.jsonl"), "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    with open(os.path.join(corpus_dir, "images.jsonl"), "w", encoding="utf-8") as f:
        for e in world.entities:
            rel = f"images/{e.id}.jpg"
            buf = io.BytesIO()
            emblem_image(world, e).save(buf, "JPEG", quality=jpeg_quality)
            with open(os.path.join(corpus_dir, rel), "wb") as g:
                g.write(buf.getvalue())
            f.write(json.dumps({"id": image_id(e), "path": rel, "title": f"{e.name} — official emblem",
                                "url": _url(e, "emblem"), "doc_id": profile_doc_id(e)}, ensure_ascii=False) + "\n")
    return {"docs": len(docs), "images": len(world.entities)}
