"""Task families of the RealX-style suite and the deterministic generator of each task.

Families (capabilities; count in the 300-task eval split):

=====================  ==============================  =====
count_marked           perception                        24
chart_read             perception                        15
board_compute          reasoning                         10
search_fact            search                            40
emblem_fact            search                            30
chart_compute          perception, reasoning             22
count_compare          perception, reasoning             18
zone_brand_search      perception, search                13
search_compare         reasoning, search                 28
emblem_compute         reasoning, search                 28
chart_search           perception, reasoning, search     36
scene_search           perception, reasoning, search     36
=====================  ==============================  =====

Totals: 164 perception, 178 reasoning, 211 search, 72 all three (RealX-Bench's mix), 60 tasks
per domain. Every task carries a reference solution: the scripted solver's turns, produced by
running it against oracle tool outputs built from the ground truth, and checked to reach the
answer.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
from PIL import Image

from ...task import Task
from .corpus import emblem_image, figures_doc_id, image_id, profile_doc_id
from .render import (
    MARKER_RGB,
    SHAPES,
    BoardSpec,
    ChartSpec,
    distort,
    draw_board,
    draw_card,
    draw_chart,
    draw_scene,
    font,
    layout_scene,
)
from .solvers import FACT_SOURCE, Observation, fact_query, parse_question, round_half_up, run_solver
from .templates import ATTRIBUTES, FAMILY_TEMPLATES, domain_template, fill
from .world import DOMAIN_SPECS, DOMAINS, Entity, World, rng_for

__all__ = ["FamilyInfo", "FAMILIES", "Draft", "make_draft", "eval_plan", "draft_to_task", "SOURCE"]

SOURCE = "realx-synthetic"
P, R, S = "perception", "reasoning", "search"


@dataclass(frozen=True)
class FamilyInfo:
    capabilities: frozenset[str]
    eval_count: int
    variants: tuple[str, ...]


FAMILIES: dict[str, FamilyInfo] = {
    "count_marked": FamilyInfo(frozenset({P}), 24, ("count",)),
    "chart_read": FamilyInfo(frozenset({P}), 15, ("read",)),
    "board_compute": FamilyInfo(frozenset({R}), 10, ("discount", "sum3")),
    "search_fact": FamilyInfo(frozenset({S}), 40, ATTRIBUTES),
    "emblem_fact": FamilyInfo(frozenset({S}), 30, ("year", "town", "person")),
    "chart_compute": FamilyInfo(frozenset({P, R}), 22, ("diff", "sum3", "range", "percent")),
    "count_compare": FamilyInfo(frozenset({P, R}), 18, ("diff", "percent")),
    "zone_brand_search": FamilyInfo(frozenset({P, S}), 13, ("town",)),
    "search_compare": FamilyInfo(frozenset({R, S}), 28, ("years", "choice", "sum")),
    "emblem_compute": FamilyInfo(frozenset({R, S}), 28, ("years2030", "times", "apart")),
    "chart_search": FamilyInfo(frozenset({P, R, S}), 36, ("times",)),
    "scene_search": FamilyInfo(frozenset({P, R, S}), 36, ("times",)),
}
assert set(FAMILIES) == set(FAMILY_TEMPLATES)
for _f, _i in FAMILIES.items():
    assert set(_i.variants) == set(FAMILY_TEMPLATES[_f]), _f


@dataclass
class Draft:
    """A generated task before its images are stored."""

    family: str
    variant: str
    domain: str
    question: str
    answer: str
    answer_kind: str
    capabilities: frozenset[str]
    image: Image.Image | None = None  # palette image (scenes, charts, boards), stored as PNG
    jpeg: bytes | None = None  # distorted emblem photo, stored as JPEG
    options: dict[str, str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)  # what correct pixel code prints
    emblem_entity: Entity | None = None
    reference: list[str] = field(default_factory=list)

    def image_ref(self) -> Image.Image | bytes:
        return self.jpeg if self.jpeg is not None else self.image  # type: ignore[return-value]


# ----------------------------------------------------------------------------- helpers


def _pick(rng: np.random.Generator, pool: list[Entity], k: int) -> list[Entity]:
    return [pool[int(i)] for i in rng.choice(len(pool), size=k, replace=False)]


def _search_meta(pairs: list[tuple[Entity, str]]) -> dict[str, Any]:
    """search_query (the first), search_queries, gold_doc_ids (all) and search_gold ([query, gold
    doc id] per lookup) for the (entity, attribute) lookups a task needs."""
    queries, gold, pairs_out = [], [], []
    for e, attr in pairs:
        query = fact_query(DOMAIN_SPECS[e.domain], e.name, attr)
        doc = profile_doc_id(e) if FACT_SOURCE[attr] == "profile" else figures_doc_id(e)
        queries.append(query)
        pairs_out.append([query, doc])
        if doc not in gold:
            gold.append(doc)
    return {"search_query": queries[0], "search_queries": queries, "gold_doc_ids": gold,
            "search_gold": pairs_out, "entity_ids": list(dict.fromkeys(e.id for e, _ in pairs))}


def _attr_value(e: Entity, attr: str) -> str:
    return str(getattr(e, attr))


def _kind_of(attr: str) -> str:
    return "text" if attr in ("town", "person") else "numeric"


def _colours(rng: np.random.Generator, k: int) -> list[str]:
    names = list(MARKER_RGB)
    return [names[int(i)] for i in rng.choice(len(names), size=k, replace=False)]


def _scene(rng: np.random.Generator, domain: str, inside: dict[tuple[str, str], int], extra_colours: list[str]) -> tuple[Image.Image, dict]:
    """Add random other-colour markers to the zone, lay out and draw; return image + per-colour counts."""
    inside = dict(inside)
    for c in extra_colours:
        for s in SHAPES:
            if rng.random() < 0.7:
                inside[(c, s)] = inside.get((c, s), 0) + int(rng.integers(1, 6))
    colours = tuple(sorted({c for c, _ in inside}))
    spec = layout_scene(rng, domain, inside, n_outside=int(rng.integers(160, 280)), colours=colours)
    counts: dict[str, dict[str, int]] = {}
    for (c, s), n in inside.items():
        counts.setdefault(c, {sh: 0 for sh in SHAPES})[s] = n
    return draw_scene(spec), {"counts": counts, "zone": list(spec.zone), "size": [spec.width, spec.height]}


def _chart(rng: np.random.Generator, world: World, domain: str, split: str) -> tuple[list[Entity], list[int], ChartSpec]:
    spec = DOMAIN_SPECS[domain]
    k = int(rng.integers(6, 11))
    ents = _pick(rng, world.by_domain(domain, split), k)
    values = [int(v) for v in rng.choice(np.arange(100, 1000), size=k, replace=False)]
    title = spec.chart_metric[0].upper() + spec.chart_metric[1:]
    slot = (2400 - 210) / k
    assert all(font(13).getlength(e.name) < slot - 20 for e in ents), "label too wide for its slot"
    chart = ChartSpec(title=title, labels=[e.name for e in ents], values=values, seed=int(rng.integers(2**31)),
                      value_size=int(rng.integers(13, 15)))
    return ents, values, chart


def _card_jpeg(world: World, ents: list[Entity]) -> bytes:
    """Context picture for search-only questions: the named entities' emblems with captions."""
    buf = io.BytesIO()
    draw_card([emblem_image(world, e) for e in ents], [e.name for e in ents]).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _emblem_jpeg(world: World, e: Entity, rng: np.random.Generator) -> bytes:
    photo = distort(emblem_image(world, e), rng)
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=92)
    return buf.getvalue()


# ----------------------------------------------------------------------------- families


def make_draft(world: World, family: str, variant: str, domain: str, split: str, rng: np.random.Generator) -> Draft:
    """Generate one task of ``family``/``variant`` in ``domain`` from ``split``'s entities."""
    info = FAMILIES[family]
    spec = DOMAIN_SPECS[domain]
    t = domain_template(family, variant, domain)
    pool = world.by_domain(domain, split)
    d = Draft(family, variant, domain, "", "", "numeric", info.capabilities)
    meta: dict[str, Any] = {"family": family, "variant": variant}

    if family in ("count_marked", "count_compare", "scene_search"):
        c, c2 = _colours(rng, 2)
        s = SHAPES[int(rng.integers(3))]
        others = [x for x in SHAPES if x != s]
        inside: dict[tuple[str, str], int] = {}
        if family == "count_compare" and variant == "percent":
            for sh in SHAPES:
                inside[(c, sh)] = int(rng.integers(2, 17))
            total = sum(inside[(c, sh)] for sh in SHAPES)
            answer = round_half_up(Fraction(100 * inside[(c, s)], total))
            q = fill(t, colour=c, shape=s)
        elif family == "count_compare":
            s2 = others[int(rng.integers(2))]
            n1 = int(rng.integers(8, 27))
            inside[(c, s)] = n1
            inside[(c, s2)] = int(rng.integers(2, n1 - 1))
            inside[(c, [x for x in others if x != s2][0])] = int(rng.integers(1, 7))
            answer = n1 - inside[(c, s2)]
            q = fill(t, colour=c, shape=s, shape2=s2)
        else:
            inside[(c, s)] = int(rng.integers(4, 27))
            for sh in others:
                inside[(c, sh)] = int(rng.integers(2, 10))
            if family == "scene_search":
                e = pool[int(rng.integers(len(pool)))]
                answer = inside[(c, s)] * e.unit
                q = fill(t, colour=c, shape=s, name=e.name)
                meta.update(_search_meta([(e, "unit")]))
            else:
                answer = inside[(c, s)]
                q = fill(t, colour=c, shape=s)
        d.image, scene_meta = _scene(rng, domain, inside, [c2])
        meta.update(zone=scene_meta["zone"], image_size=scene_meta["size"])
        d.measured = {"counts": scene_meta["counts"]}
        d.question, d.answer = q, str(answer)

    elif family == "zone_brand_search":
        c1, c2, c3 = _colours(rng, 3)
        s = SHAPES[int(rng.integers(3))]
        while True:
            a, b = _pick(rng, pool, 2)
            if a.town != b.town:
                break
        na = int(rng.integers(3, 21))
        nb = int(rng.choice([n for n in range(3, 21) if abs(n - na) >= 2]))
        inside = {(c1, s): na, (c2, s): nb}
        for c in (c1, c2):
            for sh in SHAPES:
                if sh != s:
                    inside[(c, sh)] = int(rng.integers(1, 7))
        d.image, scene_meta = _scene(rng, domain, inside, [c3])
        winner = a if na > nb else b
        d.question = fill(t, colour=c1, colour2=c2, shape=s, name=a.name, name2=b.name)
        d.answer, d.answer_kind = winner.town, "text"
        d.measured = {"counts": scene_meta["counts"]}
        meta.update(zone=scene_meta["zone"], image_size=scene_meta["size"])
        meta.update(_search_meta([(winner, "town")]))

    elif family in ("chart_read", "chart_compute", "chart_search"):
        ents, values, chart = _chart(rng, world, domain, split)
        d.image = draw_chart(chart)
        val = dict(zip((e.name for e in ents), values))
        order = [int(i) for i in rng.permutation(len(ents))]
        e1, e2, e3 = (ents[i] for i in order[:3])
        if family == "chart_read":
            d.question, answer = fill(t, name=e1.name), val[e1.name]
        elif family == "chart_search":
            d.question, answer = fill(t, name=e1.name), val[e1.name] * e1.unit
            meta.update(_search_meta([(e1, "unit")]))
        elif variant == "diff":
            hi, lo = (e1, e2) if val[e1.name] > val[e2.name] else (e2, e1)
            d.question, answer = fill(t, name=hi.name, name2=lo.name), val[hi.name] - val[lo.name]
        elif variant == "sum3":
            d.question, answer = fill(t, name=e1.name, name2=e2.name, name3=e3.name), val[e1.name] + val[e2.name] + val[e3.name]
        elif variant == "percent":
            d.question = fill(t, name=e1.name, name2=e2.name)
            answer = round_half_up(Fraction(100 * val[e1.name], val[e2.name]))
        else:
            d.question, answer = t, max(values) - min(values)
        d.answer = str(answer)
        d.measured = {"values": val, "all": values}
        meta.update(chart_entities=[e.id for e in ents])

    elif family == "board_compute":
        k = int(rng.integers(4, 7))
        items = [spec.board_items[int(i)] for i in rng.choice(len(spec.board_items), size=k, replace=False)]
        prices = [int(v) for v in rng.integers(3, 401, size=k)]
        d.image = draw_board(BoardSpec(spec.board_title, list(zip(items, prices)), size=int(rng.integers(40, 57))))
        price = dict(zip(items, prices))
        pick = [items[int(i)] for i in rng.choice(k, size=3, replace=False)]
        if variant == "discount":
            a, b = (int(x) for x in rng.integers(2, 13, size=2))
            p = int(rng.choice([5, 10, 15, 20, 25, 30, 40]))
            d.question = fill(t, a=a, b=b, p=p, item=pick[0], item2=pick[1])
            answer = round_half_up(Fraction((a * price[pick[0]] + b * price[pick[1]]) * (100 - p), 100))
        else:
            a, b, c = (int(x) for x in rng.integers(2, 10, size=3))
            d.question = fill(t, a=a, b=b, c=c, item=pick[0], item2=pick[1], item3=pick[2])
            answer = a * price[pick[0]] + b * price[pick[1]] + c * price[pick[2]]
        d.answer = str(answer)
        d.measured = {"prices": price}

    elif family == "search_fact":
        e = pool[int(rng.integers(len(pool)))]
        d.question, d.answer, d.answer_kind = fill(t, name=e.name), _attr_value(e, variant), _kind_of(variant)
        d.jpeg = _card_jpeg(world, [e])
        meta.update(_search_meta([(e, variant)]))

    elif family == "emblem_fact":
        e = pool[int(rng.integers(len(pool)))]
        d.jpeg, d.emblem_entity = _emblem_jpeg(world, e, rng), e
        d.question, d.answer, d.answer_kind = t, _attr_value(e, variant), _kind_of(variant)
        meta.update(_search_meta([(e, variant)]), gold_image_id=image_id(e))

    elif family == "search_compare":
        if variant == "years":
            while True:
                a, b = _pick(rng, pool, 2)
                if a.year != b.year:
                    break
            a, b = (a, b) if a.year < b.year else (b, a)
            d.question, d.answer = fill(t, name=a.name, name2=b.name), str(b.year - a.year)
            d.jpeg = _card_jpeg(world, [a, b])
            meta.update(_search_meta([(a, "year"), (b, "year")]))
        elif variant == "sum":
            a, b = _pick(rng, pool, 2)
            d.question, d.answer = fill(t, name=a.name, name2=b.name), str(a.count + b.count)
            d.jpeg = _card_jpeg(world, [a, b])
            meta.update(_search_meta([(a, "count"), (b, "count")]))
        else:
            while True:
                four = _pick(rng, pool, 4)
                if len({e.count for e in four}) == 4:
                    break
            letters = "ABCD"
            d.options = {letters[i]: e.name for i, e in enumerate(four)}
            best = max(range(4), key=lambda i: four[i].count)
            d.question, d.answer, d.answer_kind = t, letters[best], "choice"
            d.jpeg = _card_jpeg(world, four)
            meta.update(_search_meta([(e, "count") for e in four]))

    elif family == "emblem_compute":
        e = pool[int(rng.integers(len(pool)))]
        d.jpeg, d.emblem_entity = _emblem_jpeg(world, e, rng), e
        meta["gold_image_id"] = image_id(e)
        if variant == "years2030":
            d.question, d.answer = t, str(2030 - e.year)
            meta.update(_search_meta([(e, "year")]))
        elif variant == "times":
            k = int(rng.integers(3, 41))
            d.question, d.answer = fill(t, k=k), str(k * e.unit)
            meta.update(_search_meta([(e, "unit")]))
        else:
            while True:
                a = pool[int(rng.integers(len(pool)))]
                if a.id != e.id and a.year != e.year:
                    break
            d.question, d.answer = fill(t, name=a.name), str(abs(a.year - e.year))
            meta.update(_search_meta([(a, "year"), (e, "year")]))
    else:  # pragma: no cover - FAMILIES and this function are kept in step by the assert above
        raise KeyError(family)

    d.metadata = meta
    d.reference = reference_solution(world, d)
    return d


# ----------------------------------------------------------------------------- reference solutions


def _code_obs(obj: Any) -> Observation:
    return Observation(f"Code execution result:\nstdout:\n```\n{json.dumps(obj)}\n```\n\nstderr:\n```\n\n```")


def _search_obs(query: str, entity: Entity | None) -> Observation:
    hits = []
    if entity is not None:
        hits = [(f"{entity.name} — profile", entity.profile_text()), (f"{entity.name} — key figures", entity.figures_text())]
    parts = [f"{i}. [{title}](https://realx.example/{i})\n\n{text}" for i, (title, text) in enumerate(hits, 1)]
    body = f"A Google search for '{query}' found {len(parts)} results:\n\n## Web Results\n" + "\n\n".join(parts)
    return Observation(f"<tool_response>\n{body}\n</tool_response>")


def _oracle(world: World, d: Draft, action: str) -> Observation:
    """The observation a correct tool would return for one of the solver's actions."""
    if "<code>" in action:
        m = d.measured
        if "counts" in m:
            colours = re.findall(r'count_shapes\(image_1, "(\w+)"', action)
            return _code_obs({c: m["counts"].get(c, {s: 0 for s in SHAPES}) for c in colours})
        if "values" in m:
            names = json.loads(re.search(r"names = (\[.*?\])\n", action).group(1))
            return _code_obs({"values": {n: m["values"].get(n) for n in names}, "all": m["all"]})
        items = json.loads(re.search(r"items = (\[.*?\])\n", action).group(1))
        return _code_obs({"prices": {it: m["prices"].get(it) for it in items}})
    call = json.loads(action.split("<tool_call>", 1)[1].split("</tool_call>", 1)[0])
    if call["name"] == "image_search":
        e = d.emblem_entity
        title = f"{e.name} — official emblem" if e else "unknown"
        return Observation("<tool_response>\nA Google image search for the image found 1 results:\n\n## Web Results\n"
                           f"1. <image>\n[{title}] \n\n</tool_response>")
    query = call["arguments"]["query"]
    named = [e for e in world.entities if query.startswith(e.name + " ")]
    return _search_obs(query, max(named, key=lambda e: len(e.name)) if named else None)


def reference_solution(world: World, d: Draft, max_turns: int = 9) -> list[str]:
    """The scripted solver's turns against oracle tools; raises if they miss the answer."""
    q = parse_question(_prompt(d), family=d.family, domain=d.domain, options=d.options)
    turns: list[str] = []
    observations: list[Observation] = []
    for _ in range(max_turns):
        action = run_solver(q, observations)
        turns.append(action)
        if "<answer>" in action:
            got = action.split("<answer>", 1)[1].split("</answer>", 1)[0]
            if got != d.answer:
                raise AssertionError(f"reference solution of a {d.family}/{d.variant} task answers {got!r}, not {d.answer!r}")
            return turns
        observations.append(_oracle(world, d, action))
    raise AssertionError(f"reference solution of a {d.family} task did not answer in {max_turns} turns")


def _prompt(d: Draft) -> str:
    if not d.options:
        return d.question
    return d.question + "\nOptions:\n" + "\n".join(f"{k}. {v}" for k, v in d.options.items())


# ----------------------------------------------------------------------------- splits


def eval_plan(seed: int) -> list[tuple[str, str, str]]:
    """(family, variant, domain) of the 300 eval tasks, in order; exactly 60 per domain."""
    items = []
    for family, info in FAMILIES.items():
        for k in range(info.eval_count):
            items.append((family, info.variants[k % len(info.variants)]))
    order = rng_for(seed, "eval-order").permutation(len(items))
    return [(*items[int(j)], DOMAINS[pos % len(DOMAINS)]) for pos, j in enumerate(order)]


def train_pick(seed: int, index: int) -> tuple[str, str, str, np.random.Generator]:
    """(family, variant, domain, rng) of train task ``index``: families in the eval mix."""
    rng = rng_for(seed, "train", index)
    fams = list(FAMILIES)
    weights = np.array([FAMILIES[f].eval_count for f in fams], dtype=float)
    family = fams[int(rng.choice(len(fams), p=weights / weights.sum()))]
    variants = FAMILIES[family].variants
    return family, variants[int(rng.integers(len(variants)))], DOMAINS[int(rng.integers(len(DOMAINS)))], rng


def draft_to_task(d: Draft, task_id: str, images: list[Any]) -> Task:
    return Task(
        id=task_id,
        question=d.question,
        answer=d.answer,
        images=images,
        answer_kind=d.answer_kind,
        options=d.options,
        domain=d.domain,
        capabilities=d.capabilities,
        reference_solution=list(d.reference),
        source=SOURCE,
        metadata=dict(d.metadata),
    )
