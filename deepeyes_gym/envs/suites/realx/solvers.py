"""Per-family scripted solvers for the RealX-style suite.

A solver reads only what a model would see: the question text, the input images, and the tool
observations of its own earlier turns. It never sees the answer. Each family is written as a
Python generator that yields one assistant turn (DeepEyesV2 markup) at a time and receives the
observation that came back::

    gen = solver_for(question)       # question: parsed first user turn
    action = next(gen)               # e.g. a <code> block that counts markers in image_1
    action = gen.send(observation)   # ... then a <tool_call> to search, then an <answer>

:func:`solve_turn` replays a conversation (OpenAI-style messages) through the generator and returns
the next turn, so the agent stays stateless. Pixel work runs in the Python tool: the code sent is
the source of :mod:`.pixelkit` (numpy + PIL only) plus a few lines that call it on ``image_1``.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Any, Callable, Generator, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from . import pixelkit
from .templates import parse_any
from .world import DOMAIN_SPECS, DomainSpec

__all__ = [
    "Question",
    "Observation",
    "SolverError",
    "parse_question",
    "solver_for",
    "solve_turn",
    "run_solver",
    "message_parts",
    "round_half_up",
    "code_turn",
    "search_turn",
    "image_search_turn",
    "answer_turn",
    "extract_fact",
    "parse_search_results",
    "parse_image_results",
    "stdout_json",
    "FACT_SOURCE",
]

Action = str
SolverGen = Generator[Action, "Observation", None]


class SolverError(ValueError):
    """The solver cannot read the question (not a RealX-style task)."""


@dataclass
class Question:
    """The first user turn, parsed."""

    text: str  # question text without the appended options
    images: list[Image.Image]
    family: str
    variant: str
    domain: str
    fields: dict[str, str]
    options: dict[str, str] | None = None

    @property
    def spec(self) -> DomainSpec:
        return DOMAIN_SPECS[self.domain]


@dataclass
class Observation:
    """What came back for one tool turn: text plus the images attached to it."""

    text: str
    images: list[Image.Image] = field(default_factory=list)


# ----------------------------------------------------------------------------- turns


def round_half_up(x: Fraction | float | int) -> int:
    """Round to the nearest integer, halves up (what the questions mean by 'round')."""
    f = Fraction(x)
    return int((f + Fraction(1, 2)) // 1)


def code_turn(thought: str, code: str) -> Action:
    return f"<think>{thought}</think>\n<code>\n```python\n{code}\n```\n</code>"


def search_turn(thought: str, query: str) -> Action:
    call = json.dumps({"name": "search", "arguments": {"query": query}}, ensure_ascii=False)
    return f"<think>{thought}</think>\n<tool_call>{call}</tool_call>"


def image_search_turn(thought: str) -> Action:
    return f'<think>{thought}</think>\n<tool_call>{{"name": "image_search"}}</tool_call>'


def answer_turn(thought: str, answer: Any) -> Action:
    return f"<think>{thought}</think>\n<answer>{answer}</answer>"


# ----------------------------------------------------------------------------- code sent to the tool

_COUNT_FUNCS = ("HUES", "to_rgb_array", "colour_mask", "runs", "components", "shape_of", "find_zone", "count_shapes")
_TEXT_FUNCS = ("to_rgb_array", "ink_mask", "runs", "_FONTS", "_GLYPHS", "_font", "render_text_mask", "trim",
               "similarity", "split_glyphs", "read_number", "text_score")
_CHART_FUNCS = _TEXT_FUNCS + ("read_chart", "bar_for")
_BOARD_FUNCS = _TEXT_FUNCS + ("read_board", "row_for")


@lru_cache(maxsize=1)
def _pixelkit_parts() -> dict[str, str]:
    src = inspect.getsource(pixelkit)
    tree = ast.parse(src)
    parts: dict[str, str] = {}
    for node in tree.body:
        seg = ast.get_source_segment(src, node)
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            parts[node.name] = seg
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            parts[node.targets[0].id] = seg
    return parts


def helper_source(names: Iterable[str]) -> str:
    """Source of the named pixelkit helpers, with the imports they need."""
    parts = _pixelkit_parts()
    body = "\n\n".join(parts[n] for n in dict.fromkeys(names))
    return "import json\nimport numpy as np\nfrom PIL import Image, ImageDraw, ImageFont\n\n" + body


def count_code(colours: Sequence[str]) -> str:
    calls = ", ".join(f'"{c}": count_shapes(image_1, "{c}", zone_colour="blue")' for c in colours)
    return helper_source(_COUNT_FUNCS) + (
        "\n\n# count blobs of each colour inside the dashed blue outline, by shape\n"
        f"print(json.dumps({{{calls}}}))"
    )


def chart_code(names: Sequence[str]) -> str:
    return helper_source(_CHART_FUNCS) + (
        "\n\n# find the bars, read the small value printed above each, match the names under them\n"
        "bars = read_chart(image_1)\n"
        f"names = {json.dumps(list(names), ensure_ascii=False)}\n"
        "values = {n: bar_for(bars, n)[0]['value'] for n in names}\n"
        "print(json.dumps({'values': values, 'all': [b['value'] for b in bars]}))"
    )


def board_code(items: Sequence[str]) -> str:
    return helper_source(_BOARD_FUNCS) + (
        "\n\n# read every line of the board and match the items by their printed names\n"
        "lines = read_board(image_1)\n"
        f"items = {json.dumps(list(items), ensure_ascii=False)}\n"
        "print(json.dumps({'prices': {it: row_for(lines, it)[0]['value'] for it in items}}))"
    )


# ----------------------------------------------------------------------------- reading observations

_STDOUT_RE = re.compile(r"stdout:\s*\n```[^\n]*\n(.*?)\n?```", re.S)


def stdout_json(text: str) -> dict[str, Any] | None:
    """The last JSON object printed on a line of a code observation's stdout."""
    m = _STDOUT_RE.search(text)
    body = m.group(1) if m else text
    for line in reversed(body.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


_RESULT_HEAD = re.compile(r"^\s*(\d+)\.\s*\[(.*?)\]\((.*?)\)\s*$", re.M)
_TAGS = re.compile(r"</?(?:b|strong|em|mark|i)>|\*\*")


def parse_search_results(text: str) -> list[dict[str, str]]:
    """(title, url, snippet) of each numbered result of a text-search observation."""
    heads = list(_RESULT_HEAD.finditer(text))
    out = []
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        body = text[m.end(): end].replace("</tool_response>", "")
        body = re.sub(r"^\s*Date published:.*$", "", body, flags=re.M)
        out.append({"title": _TAGS.sub("", m.group(2)).strip(), "url": m.group(3).strip(),
                    "snippet": " ".join(_TAGS.sub("", body).split())})
    return out


_IMAGE_HEAD = re.compile(r"^\s*\d+\.\s*(?:<image>|\[image\])?\s*\n?\s*\[(.*?)\]", re.M)


def parse_image_results(text: str) -> list[str]:
    """Titles of the results of an image-search observation, in rank order."""
    return [t.strip() for t in _IMAGE_HEAD.findall(text)]


# Which corpus page states each attribute, and the query word a searcher adds for it.
FACT_SOURCE = {"year": "profile", "town": "profile", "person": "profile", "count": "figures", "unit": "figures"}


def fact_query(spec: DomainSpec, name: str, attr: str) -> str:
    kw = {"year": spec.kw_year, "person": spec.kw_year, "town": spec.kw_town, "count": spec.kw_count,
          "unit": spec.kw_unit}[attr]
    return f"{name} {kw}"


@lru_cache(maxsize=None)
def _fact_regex(domain: str, source: str, name: str) -> re.Pattern[str]:
    spec = DOMAIN_SPECS[domain]
    t = spec.profile if source == "profile" else spec.figures
    groups = {"name": re.escape(name), "a_kind": r"an? [\w -]+?", "year": r"(?P<year>\d{4})",
              "person": r"(?P<person>[A-Z][\w'-]*(?: [A-Z][\w'-]*)+)", "town": r"(?P<town>[A-Z][\w'-]*(?: [A-Z][\w'-]*)*)",
              "count": r"(?P<count>\d[\d,]*)", "unit": r"(?P<unit>\d+)", "extra": r"[^,]+?"}
    pattern = ""
    for part in re.split(r"(\{[a-z_]+\})", t):
        pattern += groups[part[1:-1]] if part.startswith("{") else re.escape(part)
    return re.compile(pattern.replace(r"\ ", r"\s+"), re.S)


def extract_fact(results: Sequence[Mapping[str, str]], domain: str, name: str, attr: str) -> str | None:
    """The attribute of ``name`` stated in any result (title + snippet), or None."""
    # The question's domain first; the others too, as a question alone may not pin the domain.
    domains = [domain] + [d for d in DOMAIN_SPECS if d != domain]
    for dom in domains:
        rx = _fact_regex(dom, FACT_SOURCE[attr], name)
        for r in results:
            m = rx.search(f"{r.get('title', '')} {r.get('snippet', '')}")
            if m and m.group(attr):
                return m.group(attr).replace(",", "")
    return None


# ----------------------------------------------------------------------------- question parsing


def parse_question(text: str, images: Sequence[Image.Image] = (), *, family: str | None = None,
                   domain: str | None = None, options: Mapping[str, str] | None = None) -> Question:
    """Parse a RealX-style question (options may be appended as 'Options:' lines)."""
    body, opts = _split_options(text)
    if options:
        opts = dict(options)
    found = parse_any(body, family, domain)
    if found is None and (family or domain):
        found = parse_any(body)
    if found is None:
        raise SolverError(f"not a RealX-style question: {body[:120]!r}")
    fam, variant, dom, fields = found
    return Question(body, list(images), fam, variant, dom, fields, opts or None)


def _split_options(text: str) -> tuple[str, dict[str, str]]:
    head, sep, tail = text.partition("\nOptions:\n")
    if not sep:
        return text.strip(), {}
    opts = {}
    for line in tail.splitlines():
        m = re.match(r"^\s*([A-Z])[.)]\s*(.+?)\s*$", line)
        if m:
            opts[m.group(1)] = m.group(2)
    return head.strip(), opts


# ----------------------------------------------------------------------------- family solvers


def _search_fact(q: Question, name: str, attr: str) -> Generator[Action, Observation, str | None]:
    """Search for one attribute of ``name``; a second, broader query if the first misses."""
    spec = q.spec
    page = "profile" if FACT_SOURCE[attr] == "profile" else "key figures"
    queries = [fact_query(spec, name, attr), f"{name} {page}"]
    for i, query in enumerate(queries):
        thought = (f"I need the {attr} fact for {name}; I will search the web for it."
                   if i == 0 else f"The results did not state it; I will try a broader query for {name}.")
        obs = yield search_turn(thought, query)
        value = extract_fact(parse_search_results(obs.text), q.domain, name, attr)
        if value is not None:
            return value
    return None


def _identify(q: Question) -> Generator[Action, Observation, str | None]:
    """Reverse-image-search the input image; return the best-matching entity name."""
    obs = yield image_search_turn("I do not recognise this emblem; a reverse image search should identify it.")
    titles = parse_image_results(obs.text)
    if not titles:
        return None
    best = 0
    if q.images and len(obs.images) == len(titles) and len(titles) > 1:
        sims = [image_similarity(q.images[0], im) for im in obs.images]
        j = int(np.argmax(sims))
        if sims[j] > sims[0] + 0.02:  # trust the engine's ranking unless another hit is clearly closer
            best = j
    return _title_name(titles[best])


def _title_name(title: str) -> str:
    name = re.split(r"\s+[—–|-]\s+|:\s", title)[0]
    return re.sub(r"\s+(?:official\s+)?(?:emblem|logo|badge)$", "", name, flags=re.I).strip()


def image_similarity(a: Image.Image, b: Image.Image) -> float:
    """Cosine similarity of small, normalised colour thumbnails (robust to crop/resize/JPEG)."""
    fa, fb = _thumb_feature(a), _thumb_feature(b)
    return float(np.dot(fa, fb))


def _thumb_feature(img: Image.Image) -> np.ndarray:
    img = img.convert("RGB")
    w, h = img.size
    img = img.crop((int(0.02 * w), int(0.02 * h), int(0.98 * w), int(0.98 * h)))
    arr = np.asarray(img.resize((16, 16), Image.BILINEAR), dtype=np.float32).ravel()
    arr = arr - arr.mean()
    return arr / (np.linalg.norm(arr) + 1e-6)


def _fail(reason: str) -> Action:
    return answer_turn(f"I could not determine the answer: {reason}.", "unknown")


def _counts(obs: Observation) -> dict[str, dict[str, int]] | None:
    data = stdout_json(obs.text)
    if not data:
        return None
    try:
        return {c: {s: int(v) for s, v in d.items()} for c, d in data.items()}
    except (AttributeError, TypeError, ValueError):
        return None


def solve_count_marked(q: Question) -> SolverGen:
    c, s = q.fields["colour"], q.fields["shape"]
    obs = yield code_turn(f"The {c} {s}s are tiny in this large image; I will count them inside the blue outline "
                          "with pixel analysis.", count_code([c]))
    counts = _counts(obs)
    if not counts or c not in counts:
        yield _fail("the counting code gave no result")
        return
    n = counts[c].get(s, 0)
    yield answer_turn(f"The code found {n} {c} {s}s inside the dashed blue rectangle.", n)


def solve_count_compare(q: Question) -> SolverGen:
    c, s = q.fields["colour"], q.fields["shape"]
    obs = yield code_turn(f"I will count the {c} markers inside the blue outline by shape.", count_code([c]))
    counts = _counts(obs)
    if not counts or c not in counts:
        yield _fail("the counting code gave no result")
        return
    k = counts[c]
    if q.variant == "diff":
        s2 = q.fields["shape2"]
        n = k.get(s, 0) - k.get(s2, 0)
        yield answer_turn(f"{k.get(s, 0)} {s}s minus {k.get(s2, 0)} {s2}s is {n}.", n)
    else:
        total = k.get("triangle", 0) + k.get("circle", 0) + k.get("square", 0)
        if total == 0:
            yield _fail("no markers found")
            return
        n = round_half_up(Fraction(100 * k.get(s, 0), total))
        yield answer_turn(f"{k.get(s, 0)} of {total} {c} markers are {s}s, which is {n}%.", n)


def _chart_values(q: Question, names: Sequence[str]) -> Generator[Action, Observation, dict[str, Any] | None]:
    what = ", ".join(names) if names else "every bar"
    obs = yield code_turn(f"The value labels are too small to read at a glance; I will locate the bars and read the "
                          f"printed values for {what} by matching glyphs.", chart_code(names))
    data = stdout_json(obs.text)
    if not data or "values" not in data:
        return None
    return data


def solve_chart(q: Question) -> SolverGen:
    f = q.fields
    names = [f[k] for k in ("name", "name2", "name3") if k in f]
    data = yield from _chart_values(q, names)
    if data is None:
        yield _fail("the chart could not be read")
        return
    vals = data["values"]
    if any(vals.get(n) is None for n in names):
        yield _fail("a value label could not be read")
        return
    if q.family == "chart_read":
        yield answer_turn(f"The value printed for {names[0]} is {vals[names[0]]}.", vals[names[0]])
    elif q.family == "chart_search":
        name = names[0]
        unit = yield from _search_fact(q, name, "unit")
        if unit is None:
            yield _fail(f"the {q.spec.unit_phrase} of {name} was not found")
            return
        n = int(vals[name]) * int(unit)
        yield answer_turn(f"{vals[name]} x {unit} = {n}.", n)
    elif q.variant == "diff":
        a, b = vals[names[0]], vals[names[1]]
        yield answer_turn(f"{a} - {b} = {a - b}.", a - b)
    elif q.variant == "sum3":
        total = sum(int(vals[n]) for n in names)
        yield answer_turn(f"The three values sum to {total}.", total)
    elif q.variant == "percent":
        a, b = vals[names[0]], vals[names[1]]
        n = round_half_up(Fraction(100 * int(a), int(b)))
        yield answer_turn(f"{a} / {b} is {n}% after rounding.", n)
    else:  # range
        allv = [v for v in data.get("all", []) if v is not None]
        if not allv:
            yield _fail("no bars found")
            return
        yield answer_turn(f"The largest value is {max(allv)} and the smallest {min(allv)}.", max(allv) - min(allv))


def solve_scene_search(q: Question) -> SolverGen:
    c, s, name = q.fields["colour"], q.fields["shape"], q.fields["name"]
    obs = yield code_turn(f"First I count the {c} {s}s inside the blue outline.", count_code([c]))
    counts = _counts(obs)
    if not counts or c not in counts:
        yield _fail("the counting code gave no result")
        return
    n = counts[c].get(s, 0)
    unit = yield from _search_fact(q, name, "unit")
    if unit is None:
        yield _fail(f"the {q.spec.unit_phrase} of {name} was not found")
        return
    yield answer_turn(f"{n} markers x {unit} {q.spec.unit_name} = {n * int(unit)}.", n * int(unit))


def solve_zone_brand(q: Question) -> SolverGen:
    f = q.fields
    c1, c2, s = f["colour"], f["colour2"], f["shape"]
    obs = yield code_turn(f"I will count the {c1} and the {c2} {s}s inside the blue outline.", count_code([c1, c2]))
    counts = _counts(obs)
    if not counts or c1 not in counts or c2 not in counts:
        yield _fail("the counting code gave no result")
        return
    n1, n2 = counts[c1].get(s, 0), counts[c2].get(s, 0)
    name = f["name"] if n1 >= n2 else f["name2"]
    town = yield from _search_fact(q, name, "town")
    if town is None:
        yield _fail(f"the town of {name} was not found")
        return
    yield answer_turn(f"{name} has more markers ({max(n1, n2)} vs {min(n1, n2)}); the search says it is in {town}.", town)


def solve_board(q: Question) -> SolverGen:
    f = q.fields
    items = [f[k] for k in ("item", "item2", "item3") if k in f]
    obs = yield code_turn("I will read the prices printed on the board for the items in the question.", board_code(items))
    data = stdout_json(obs.text)
    prices = (data or {}).get("prices") or {}
    if any(prices.get(it) is None for it in items):
        yield _fail("a price could not be read")
        return
    qty = [int(f[k]) for k in ("a", "b", "c") if k in f]
    total = sum(n * int(prices[it]) for n, it in zip(qty, items))
    if q.variant == "discount":
        p = int(f["p"])
        n = round_half_up(Fraction(total * (100 - p), 100))
        yield answer_turn(f"The order costs {total} before the {p}% discount, {n} after rounding.", n)
    else:
        yield answer_turn(f"The order costs {total}.", total)


def solve_search_fact(q: Question) -> SolverGen:
    name, attr = q.fields["name"], q.variant
    value = yield from _search_fact(q, name, attr)
    if value is None:
        yield _fail(f"the {attr} of {name} was not found")
        return
    yield answer_turn(f"The search result states it: {value}.", value)


def solve_emblem_fact(q: Question) -> SolverGen:
    name = yield from _identify(q)
    if not name:
        yield _fail("the image search found nothing")
        return
    value = yield from _search_fact(q, name, q.variant)
    if value is None:
        yield _fail(f"the {q.variant} of {name} was not found")
        return
    yield answer_turn(f"The emblem belongs to {name}; the search result gives {value}.", value)


def solve_search_compare(q: Question) -> SolverGen:
    f = q.fields
    if q.variant == "choice":
        opts = q.options or {}
        if not opts:
            yield _fail("no options given")
            return
        counts: dict[str, int] = {}
        for letter, name in opts.items():
            v = yield from _search_fact(q, name, "count")
            if v is not None:
                counts[letter] = int(v)
        if not counts:
            yield _fail("no counts found")
            return
        letter = max(counts, key=lambda k: counts[k])
        yield answer_turn(f"The largest {q.spec.count_phrase} is {counts[letter]} ({opts[letter]}).", letter)
        return
    attr = "year" if q.variant == "years" else "count"
    v1 = yield from _search_fact(q, f["name"], attr)
    v2 = yield from _search_fact(q, f["name2"], attr)
    if v1 is None or v2 is None:
        yield _fail("a fact was not found")
        return
    if q.variant == "years":
        yield answer_turn(f"{v2} - {v1} = {int(v2) - int(v1)}.", int(v2) - int(v1))
    else:
        yield answer_turn(f"{v1} + {v2} = {int(v1) + int(v2)}.", int(v1) + int(v2))


def solve_emblem_compute(q: Question) -> SolverGen:
    f = q.fields
    other = None
    if q.variant == "apart":
        other = yield from _search_fact(q, f["name"], "year")
        if other is None:
            yield _fail(f"the year of {f['name']} was not found")
            return
    name = yield from _identify(q)
    if not name:
        yield _fail("the image search found nothing")
        return
    attr = "unit" if q.variant == "times" else "year"
    v = yield from _search_fact(q, name, attr)
    if v is None:
        yield _fail(f"the {attr} of {name} was not found")
        return
    v = int(v)
    if q.variant == "years2030":
        yield answer_turn(f"2030 - {v} = {2030 - v}.", 2030 - v)
    elif q.variant == "times":
        k = int(f["k"])
        yield answer_turn(f"{k} x {v} = {k * v}.", k * v)
    else:
        assert other is not None
        yield answer_turn(f"|{other} - {v}| = {abs(int(other) - v)}.", abs(int(other) - v))


SOLVERS: dict[str, Callable[[Question], SolverGen]] = {
    "count_marked": solve_count_marked,
    "count_compare": solve_count_compare,
    "chart_read": solve_chart,
    "chart_compute": solve_chart,
    "chart_search": solve_chart,
    "scene_search": solve_scene_search,
    "zone_brand_search": solve_zone_brand,
    "board_compute": solve_board,
    "search_fact": solve_search_fact,
    "emblem_fact": solve_emblem_fact,
    "search_compare": solve_search_compare,
    "emblem_compute": solve_emblem_compute,
}


def solver_for(q: Question) -> SolverGen:
    return SOLVERS[q.family](q)


def run_solver(q: Question, observations: Sequence[Observation]) -> Action:
    """The next turn after the given observations (replays the solver from the start)."""
    gen = solver_for(q)
    try:
        action = next(gen)
        for obs in observations:
            action = gen.send(obs)
    except StopIteration:
        return _fail("the solver has no further step")
    return action


# ----------------------------------------------------------------------------- conversations


def message_parts(msg: Mapping[str, Any]) -> tuple[str, list[Image.Image]]:
    """(text with <image> placeholders, images) of one chat message."""
    content = msg.get("content")
    if isinstance(content, str):
        return content, []
    text, images = "", []
    for part in content or []:
        kind = part.get("type")
        if kind == "text":
            text += part.get("text", "")
        elif kind in ("image", "image_url"):
            img = _to_pil(part)
            if img is not None:
                images.append(img)
            text += "<image>"
    return text, images


def _to_pil(part: Mapping[str, Any]) -> Image.Image | None:
    import base64
    import io

    if part.get("type") == "image":
        im = part.get("image")
        if isinstance(im, Image.Image):
            return im
        if isinstance(im, np.ndarray):
            return Image.fromarray(im)
        return None
    url = (part.get("image_url") or {}).get("url", "")
    if url.startswith("data:image"):
        return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
    return None


def solve_turn(messages: Sequence[Mapping[str, Any]], info: Mapping[str, Any] | None = None) -> Action:
    """The scripted solver's next assistant turn for a conversation (stateless)."""
    info = info or {}
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        return _fail("no question")
    text, images = message_parts(users[0])
    question_text = text.replace("<image>", "").strip()
    try:
        q = parse_question(question_text, images, family=info.get("family"), domain=info.get("domain"),
                           options=info.get("options"))
    except SolverError as exc:
        return _fail(str(exc))
    observations = []
    seen_assistant = False
    for m in messages:
        if m.get("role") == "assistant":
            seen_assistant = True
        elif m.get("role") == "user" and seen_assistant:
            t, ims = message_parts(m)
            observations.append(Observation(t, ims))
    return run_solver(q, observations)
