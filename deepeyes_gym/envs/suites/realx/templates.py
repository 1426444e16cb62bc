"""Question wording of every family, shared by the generator (to write questions) and the
scripted solvers (to read them back). A template is first specialised to a domain (scene,
metric, attribute wording), then filled with the task's names and numbers; ``parse`` inverts it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from .world import DOMAIN_SPECS, DOMAINS

__all__ = ["FAMILY_TEMPLATES", "ATTRIBUTES", "domain_template", "fill", "parse", "parse_any"]

ATTRIBUTES = ("year", "town", "person", "count", "unit")

_ZONE = "inside the dashed blue rectangle"

FAMILY_TEMPLATES: dict[str, dict[str, str]] = {
    "count_marked": {
        "count": "In this {scene}, small {colour} {shape}s mark {marker}. How many {colour} {shape}s are "
        + _ZONE + "?",
    },
    "count_compare": {
        "diff": "In this {scene}, how many more {colour} {shape}s than {colour} {shape2}s are " + _ZONE + "?",
        "percent": "In this {scene}, what percentage of the {colour} markers (triangles, circles and squares) "
        + _ZONE + " are {shape}s? Round to the nearest whole number.",
    },
    "chart_read": {
        "read": "The chart shows the {metric}. What value is shown for {name}?",
    },
    "chart_compute": {
        "diff": "The chart shows the {metric}. By how much does the value for {name} exceed the value for {name2}?",
        "sum3": "The chart shows the {metric}. What is the total of the values for {name}, {name2} and {name3}?",
        "range": "The chart shows the {metric}. What is the difference between the largest and the smallest "
        "value in the chart?",
        "percent": "The chart shows the {metric}. What is the value for {name} as a percentage of the value for "
        "{name2}? Round to the nearest whole number.",
    },
    "chart_search": {
        "times": "The chart shows the {metric}. Multiply the value shown for {name} by its {unit_phrase}, in "
        "{unit_name}, as given in its published key figures. What is the result?",
    },
    "scene_search": {"times": "{scene_search_q}"},
    "zone_brand_search": {
        "town": "In this {scene}, small {colour} {shape}s mark {marker} of {name} and small {colour2} {shape}s mark "
        "{marker} of {name2}. Consider whichever of the two has more of them " + _ZONE + ". {town_q_it}",
    },
    "board_compute": {
        "discount": 'The image shows the {board}. Using its prices, what is the total cost of {a} x "{item}" and '
        '{b} x "{item2}" after a {p}% discount on the whole order? Round to the nearest whole number.',
        "sum3": 'The image shows the {board}. Using its prices, what is the total cost of {a} x "{item}", '
        '{b} x "{item2}" and {c} x "{item3}"?',
    },
    "search_fact": {attr: "{q_" + attr + "}" for attr in ATTRIBUTES},
    "emblem_fact": {attr: "{eq_" + attr + "}" for attr in ("year", "town", "person")},
    "search_compare": {
        "years": "How many years after {subj} was {subj2} {year_word}?",
        "choice": "Which of these {plural} has the largest {count_phrase}?",
        "sum": "What is the combined {count_phrase} of {subj} and {subj2}?",
    },
    "emblem_compute": {
        "years2030": "How many years before 2030 was {esubj} {year_word}?",
        "times": "What is {k} times the {unit_phrase}, in {unit_name}, of {esubj}?",
        "apart": "How many years apart were {subj} and {esubj} {year_word}?",
    },
}

_DOMAIN_FIELDS = ("scene", "marker", "metric", "board", "plural", "count_phrase", "unit_phrase", "unit_name",
                  "year_word", "esubj", "scene_search_q", "town_q_it", "subj", "subj2")


@lru_cache(maxsize=None)
def domain_template(family: str, variant: str, domain: str) -> str:
    """The family template with the domain's wording filled in (names and numbers left open)."""
    spec = DOMAIN_SPECS[domain]
    esubj = f"the {spec.noun} whose emblem is shown"
    t = FAMILY_TEMPLATES[family][variant]
    repl = {
        "{scene_search_q}": spec.scene_search_q,
        "{town_q_it}": spec.q_town.replace("{subj}", "it"),
        "{scene}": spec.scene_title,
        "{marker}": spec.marker_noun,
        "{metric}": spec.chart_metric,
        "{board}": spec.board_title.lower(),
        "{plural}": spec.plural,
        "{count_phrase}": spec.count_phrase,
        "{unit_phrase}": spec.unit_phrase,
        "{unit_name}": spec.unit_name,
        "{year_word}": spec.year_word,
    }
    for attr in ATTRIBUTES:
        q = getattr(spec, f"q_{attr}")
        repl["{q_" + attr + "}"] = q
        repl["{eq_" + attr + "}"] = q.replace("{subj}", esubj)
    for k, v in repl.items():
        t = t.replace(k, v)
    t = t.replace("{esubj}", esubj)
    t = t.replace("{subj2}", spec.article + "{name2}").replace("{subj}", spec.article + "{name}")
    if t[:1].islower():
        t = t[0].upper() + t[1:]
    return t


def fill(template: str, **values: Any) -> str:
    out = template
    for k, v in values.items():
        out = out.replace("{" + k + "}", str(v))
    if "{" in out:
        raise ValueError(f"unfilled field in question: {out!r}")
    return out


_FIELD_RE = {
    "name": r".+?", "name2": r".+?", "name3": r".+?",
    "item": r"[^\"]+", "item2": r"[^\"]+", "item3": r"[^\"]+",
    "colour": r"[a-z]+", "colour2": r"[a-z]+",
    "shape": r"[a-z]+?", "shape2": r"[a-z]+?",
    "a": r"\d+", "b": r"\d+", "c": r"\d+", "k": r"\d+", "p": r"\d+",
}


@lru_cache(maxsize=None)
def _regex(template: str) -> re.Pattern[str]:
    pattern = ""
    seen: set[str] = set()
    for part in re.split(r"(\{[a-z0-9_]+\})", template):
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1]
            if name in seen:
                pattern += f"(?P={name})"
            else:
                seen.add(name)
                pattern += f"(?P<{name}>{_FIELD_RE.get(name, '.+?')})"
        else:
            pattern += re.escape(part)
    return re.compile(r"^\s*" + pattern + r"\s*$", re.DOTALL)


def parse(template: str, text: str) -> dict[str, str] | None:
    """The field values of ``text`` if it was written from ``template``, else None."""
    m = _regex(template).match(text.strip())
    return m.groupdict() if m else None


def parse_any(text: str, family: str | None = None, domain: str | None = None) -> tuple[str, str, str, dict[str, str]] | None:
    """Find (family, variant, domain, fields) for a question, trying every template that fits."""
    families = [family] if family in FAMILY_TEMPLATES else list(FAMILY_TEMPLATES)
    domains = [domain] if domain in DOMAIN_SPECS else list(DOMAINS)
    for fam in families:
        for variant in FAMILY_TEMPLATES[fam]:
            for dom in domains:
                fields = parse(domain_template(fam, variant, dom), text)
                if fields is not None and not any("emblem is shown" in v for v in fields.values()):
                    return fam, variant, dom, fields
    return None
