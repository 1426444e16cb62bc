"""The fictional world behind the RealX-style suite: entities, towns, people and their facts.

Every fact is invented from a seed, so no pretrained model can know it and the only way to an
answer is the bundled search corpus. Entities come in look-alike groups (same first word, same
emblem palette) so that search and image search have close distractors.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterable

import numpy as np

__all__ = [
    "DOMAINS",
    "DomainSpec",
    "DOMAIN_SPECS",
    "Entity",
    "World",
    "build_world",
    "rng_for",
    "format_count",
]

DOMAINS = ("commerce", "wildlife", "travel", "sports", "culture")

ENTITIES_PER_DOMAIN = 144  # the first EVAL_PER_DOMAIN are reserved for the eval split
EVAL_PER_DOMAIN = 48
N_TOWNS = 56


def rng_for(seed: int, *tags: object) -> np.random.Generator:
    """A generator that depends only on (seed, tags): stable across runs and Python versions."""
    words = [int(seed) & 0xFFFFFFFF] + [zlib.crc32(str(t).encode("utf-8")) for t in tags]
    return np.random.default_rng(np.random.SeedSequence(words))


def format_count(n: int) -> str:
    """Thousands separators, as the corpus writes large counts (1,234)."""
    return f"{n:,}"


@dataclass(frozen=True)
class DomainSpec:
    """How one domain names its entities and words its facts."""

    name: str
    noun: str  # what an entity is: "company", "species", ...
    suffixes: tuple[tuple[str, str], ...]  # (name suffix, kind phrase used in the profile)
    suffix_first: bool  # wildlife writes "Dravin warbler" (lower-case suffix)
    profile: str  # sentence template with {name} {a_kind} {year} {person} {town}
    figures: str  # sentence template with {name} {count} {unit} {extra}
    year_word: str  # the verb in the profile ("founded", "first described", ...)
    year_range: tuple[int, int]
    count_range: tuple[int, int]
    unit_range: tuple[int, int]
    count_phrase: str  # "number of employees"
    unit_phrase: str  # "list price of its flagship product"
    unit_name: str  # "crowns" / "grams"
    town_phrase: str  # "headquartered in"
    person_phrase: str  # "founded"
    # scene and chart wording
    marker_noun: str  # what a marker in a scene stands for
    scene_title: str
    chart_metric: str  # what the bars count
    chart_unit_noun: str  # one bar unit, used with the unit attribute
    total_noun: str  # what count x unit gives ("revenue in crowns")
    board_title: str
    board_items: tuple[str, ...]
    plural: str  # "companies"
    article: str  # "the " when the name takes an article ("the Dravin warbler")
    # questions about one attribute; {subj} is the (article +) name or "the company whose emblem is shown"
    q_year: str
    q_town: str
    q_person: str
    q_count: str
    q_unit: str
    # the key word a searcher adds to the entity name to find each attribute
    kw_year: str
    kw_town: str
    kw_count: str
    kw_unit: str
    scene_search_q: str  # {colour} {shape} {name}


DOMAIN_SPECS: dict[str, DomainSpec] = {
    "commerce": DomainSpec(
        name="commerce",
        plural='companies',
        article='',
        q_year='In which year was {subj} founded?',
        q_town='In which town is {subj} headquartered?',
        q_person='Who founded {subj}?',
        q_count='How many people does {subj} employ?',
        q_unit='What is the list price, in crowns, of the flagship product of {subj}?',
        kw_year='founded',
        kw_town='headquartered',
        kw_count='employs',
        kw_unit='list price',
        scene_search_q="In this aerial photo of an industrial park, each small {colour} {shape} marks a pallet holding one unit of the flagship product of {name}. At that product's list price, what is the total value in crowns of the pallets inside the dashed blue rectangle?",
        noun="company",
        suffixes=(
            ("Robotics", "robotics"), ("Textiles", "textile"), ("Optics", "optics"),
            ("Ceramics", "ceramics"), ("Freight", "logistics"), ("Instruments", "instrument"),
            ("Foods", "food"), ("Paperworks", "paper"), ("Motors", "engineering"),
            ("Batteries", "battery"),
        ),
        suffix_first=False,
        profile="{name} is {a_kind} company founded in {year} by {person}. It is headquartered in {town}.",
        figures="{name} employs {count} people. Its flagship product, the {extra}, has a list price of {unit} crowns.",
        year_word="founded",
        year_range=(1850, 2015),
        count_range=(150, 9800),
        unit_range=(12, 480),
        count_phrase="number of employees",
        unit_phrase="flagship product list price",
        unit_name="crowns",
        town_phrase="headquartered",
        person_phrase="founded",
        marker_noun="delivery vans",
        scene_title="aerial photo of an industrial park",
        chart_metric="units of each company's flagship product sold in 2024",
        chart_unit_noun="unit sold",
        total_noun="revenue in crowns",
        board_title="Courier price list",
        board_items=("Small parcel", "Large parcel", "Pallet", "Express fee", "Insurance", "Crate"),
    ),
    "wildlife": DomainSpec(
        name="wildlife",
        plural='species',
        article='the ',
        q_year='In which year was {subj} first described?',
        q_town='Around which town is {subj} mainly found?',
        q_person='Who first described {subj}?',
        q_count='What is the estimated wild population of {subj}?',
        q_unit='What is the average adult mass, in grams, of {subj}?',
        kw_year='first described',
        kw_town='found mainly around',
        kw_count='wild population',
        kw_unit='average mass',
        scene_search_q="In this drone survey photo of a wetland, each small {colour} {shape} marks one adult {name}. Using the species' average adult mass, what is the combined mass in grams of the adults inside the dashed blue rectangle?",
        noun="species",
        suffixes=(
            ("warbler", "songbird"), ("finch", "songbird"), ("heron", "wading bird"),
            ("tree frog", "frog"), ("pika", "small mammal"), ("marten", "mammal"),
            ("newt", "amphibian"), ("plover", "shorebird"), ("vole", "rodent"),
            ("skink", "lizard"),
        ),
        suffix_first=True,
        profile="The {name} is {a_kind} first described in {year} by {person}. It is found mainly around {town}.",
        figures="The estimated wild population of the {name} is {count} individuals. Adults have an average mass of {unit} grams.",
        year_word="first described",
        year_range=(1780, 2012),
        count_range=(300, 48000),
        unit_range=(9, 900),
        count_phrase="estimated wild population",
        unit_phrase="average adult mass",
        unit_name="grams",
        town_phrase="found mainly around",
        person_phrase="first described",
        marker_noun="nests",
        scene_title="drone survey photo of a wetland",
        chart_metric="adults of each species ringed in 2024",
        chart_unit_noun="adult ringed",
        total_noun="combined mass in grams",
        board_title="Field station supply list",
        board_items=("Mist net", "Leg rings", "Trail camera", "Bird bag", "Field scale", "Headlamp"),
    ),
    "travel": DomainSpec(
        name="travel",
        plural='transport operators',
        article='',
        q_year='In which year was {subj} established?',
        q_town='In which town is {subj} based?',
        q_person='Who established {subj}?',
        q_count='How many vehicles are in the fleet of {subj}?',
        q_unit='How much, in crowns, is a standard one-way fare with {subj}?',
        kw_year='established',
        kw_town='based',
        kw_count='fleet',
        kw_unit='one-way fare',
        scene_search_q='In this harbour map, each small {colour} {shape} marks a passenger waiting for a {name} departure. If each pays the standard one-way fare of {name}, how many crowns do the passengers inside the dashed blue rectangle pay in total?',
        noun="transport operator",
        suffixes=(
            ("Ferries", "ferry"), ("Air", "airline"), ("Rail", "railway"), ("Coaches", "coach"),
            ("Sealines", "ferry"), ("Tramways", "tram"), ("Airways", "airline"),
            ("Cableways", "cable car"), ("Boats", "river boat"), ("Express", "bus"),
        ),
        suffix_first=False,
        profile="{name} is {a_kind} operator established in {year} by {person}. It is based in {town}.",
        figures="{name} runs a fleet of {count} vehicles. A standard one-way fare costs {unit} crowns.",
        year_word="established",
        year_range=(1870, 2015),
        count_range=(4, 240),
        unit_range=(6, 140),
        count_phrase="fleet size",
        unit_phrase="standard one-way fare",
        unit_name="crowns",
        town_phrase="based",
        person_phrase="established",
        marker_noun="moored boats",
        scene_title="harbour map",
        chart_metric="one-way tickets each operator sold on Midsummer Day",
        chart_unit_noun="ticket sold",
        total_noun="ticket revenue in crowns",
        board_title="Harbour kiosk fares",
        board_items=("Adult ticket", "Child ticket", "Bicycle", "Day pass", "Car deck", "Luggage"),
    ),
    "sports": DomainSpec(
        name="sports",
        plural='clubs',
        article='',
        q_year='In which year was {subj} founded?',
        q_town='In which town does {subj} play its home games?',
        q_person='Who founded {subj}?',
        q_count='How many spectators does the home ground of {subj} hold?',
        q_unit='How much, in crowns, does a season ticket for {subj} cost?',
        kw_year='founded',
        kw_town='home games',
        kw_count='spectators',
        kw_unit='season ticket',
        scene_search_q="In this photo of a stadium stand, each small {colour} {shape} marks a season-ticket holder of {name}. At the club's season ticket price, what is the total in crowns paid by the holders inside the dashed blue rectangle?",
        noun="club",
        suffixes=(
            ("Athletic", "football"), ("Rovers", "football"), ("United", "hockey"),
            ("Harriers", "athletics"), ("Wanderers", "rugby"), ("Rangers", "handball"),
            ("Comets", "basketball"), ("Mariners", "volleyball"), ("Falcons", "hockey"),
            ("Olympic", "football"),
        ),
        suffix_first=False,
        profile="{name} is {a_kind} club founded in {year} by {person}. It plays its home games in {town}.",
        figures="The home ground of {name} holds {count} spectators. A season ticket costs {unit} crowns.",
        year_word="founded",
        year_range=(1860, 2010),
        count_range=(1500, 64000),
        unit_range=(90, 900),
        count_phrase="stadium capacity",
        unit_phrase="season ticket price",
        unit_name="crowns",
        town_phrase="plays its home games",
        person_phrase="founded",
        marker_noun="occupied seats",
        scene_title="photo of a stadium stand",
        chart_metric="season tickets each club sold for 2024",
        chart_unit_noun="season ticket sold",
        total_noun="season-ticket revenue in crowns",
        board_title="Club shop prices",
        board_items=("Home shirt", "Scarf", "Match ball", "Cap", "Programme", "Water bottle"),
    ),
    "culture": DomainSpec(
        name="culture",
        plural='museums',
        article='',
        q_year='In which year was {subj} opened?',
        q_town='In which town is {subj} located?',
        q_person='Who opened {subj}?',
        q_count='How many objects does the collection of {subj} hold?',
        q_unit='How much, in crowns, is adult admission to {subj}?',
        kw_year='opened',
        kw_town='located',
        kw_count='collection',
        kw_unit='admission',
        scene_search_q='In this floor plan of an exhibition hall, each small {colour} {shape} marks a visitor who paid adult admission to {name}. What is the total in crowns paid by the visitors inside the dashed blue rectangle?',
        noun="museum",
        suffixes=(
            ("Museum of Glass", "glass"), ("Clock Museum", "horology"), ("Maritime Museum", "maritime"),
            ("Textile Museum", "textile"), ("Puppet Museum", "puppetry"), ("Museum of Maps", "cartography"),
            ("Lantern Museum", "lighting"), ("Toy Museum", "toy"), ("Salt Museum", "industrial"),
            ("Organ Hall", "music"),
        ),
        suffix_first=False,
        profile="{name} is {a_kind} museum opened in {year} by {person}. It is located in {town}.",
        figures="The collection of {name} holds {count} objects. Adult admission costs {unit} crowns.",
        year_word="opened",
        year_range=(1820, 2015),
        count_range=(800, 120000),
        unit_range=(4, 38),
        count_phrase="number of objects in the collection",
        unit_phrase="adult admission price",
        unit_name="crowns",
        town_phrase="located",
        person_phrase="opened",
        marker_noun="display cases",
        scene_title="floor plan of an exhibition hall",
        chart_metric="paid admissions at each museum on its opening weekend",
        chart_unit_noun="paid admission",
        total_noun="admission takings in crowns",
        board_title="Museum shop prices",
        board_items=("Guidebook", "Poster", "Postcard set", "Audio guide", "Tote bag", "Pencil case"),
    ),
}

_ONSETS = ("b", "br", "c", "d", "dr", "f", "g", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "t",
           "th", "v", "w", "z", "st", "tr", "gl", "sk", "")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou")
_CODAS = ("", "", "", "", "n", "r", "l", "s", "m", "nd", "rk", "ll", "st", "v")
_TOWN_PREFIX = ("", "", "", "", "Port ", "Upper ", "Lower ", "Saint ", "North ", "East ")
_TOWN_SUFFIX = ("", "dale", "hold", "wick", "ford", "mouth", "by", "stead", "more", "haven")
_FIRST_NAMES = (
    "Ilse", "Teodor", "Marta", "Oskar", "Linnea", "Bertil", "Agathe", "Casimir", "Edda", "Fabian",
    "Greta", "Hugo", "Ingrid", "Jonas", "Karin", "Leopold", "Mirela", "Nils", "Odile", "Per",
    "Rosa", "Severin", "Tilde", "Viktor", "Wanda", "Yannick", "Zora", "Anselm", "Britta", "Dorian",
)
_PRODUCT_WORDS = ("arm", "loom", "lens", "kiln", "crate", "gauge", "biscuit", "ledger", "engine", "cell")


def _word(rng: np.random.Generator, n_syll: int) -> str:
    parts = []
    for i in range(n_syll):
        onset = _ONSETS[rng.integers(len(_ONSETS))]
        if i > 0 and len(onset) > 1 and parts[-1][-1:] not in "aeiou":
            onset = onset[0]  # avoid consonant pile-ups such as "rkdr"
        parts.append(onset + _VOWELS[rng.integers(len(_VOWELS))])
        if i == n_syll - 1 or rng.random() < 0.25:
            parts.append(_CODAS[rng.integers(len(_CODAS))])
    return "".join(parts).capitalize()


@dataclass(frozen=True)
class Entity:
    """One fictional organisation, species, club ... and its facts."""

    id: str  # "commerce-017"
    domain: str
    name: str
    kind: str  # profile phrase: "robotics", "songbird", ...
    year: int
    person: str
    town: str
    count: int
    unit: int
    extra: str  # commerce: flagship product name; others: unused filler
    group: int  # look-alike group (same first word, same emblem palette)
    split: str  # "eval" or "train"

    @property
    def spec(self) -> DomainSpec:
        return DOMAIN_SPECS[self.domain]

    def profile_text(self) -> str:
        s = self.spec
        a_kind = ("an " if self.kind[0] in "aeiou" else "a ") + self.kind
        return s.profile.format(name=self.name, a_kind=a_kind, year=self.year, person=self.person, town=self.town)

    def figures_text(self) -> str:
        s = self.spec
        return s.figures.format(name=self.name, count=format_count(self.count), unit=self.unit, extra=self.extra)

    @property
    def slug(self) -> str:
        return "-".join(self.name.lower().split())


@dataclass
class World:
    """All entities of one world seed, with the towns and people their facts mention."""

    seed: int
    entities: list[Entity]
    towns: list[str]

    def by_domain(self, domain: str, split: str | None = None) -> list[Entity]:
        return [e for e in self.entities if e.domain == domain and (split is None or e.split == split)]

    def by_id(self, entity_id: str) -> Entity:
        return self._index[entity_id]

    def __post_init__(self) -> None:
        self._index = {e.id: e for e in self.entities}


def _unique_words(rng: np.random.Generator, n: int, taken: set[str], syll: Iterable[int]) -> list[str]:
    out: list[str] = []
    choices = tuple(syll)
    while len(out) < n:
        w = _word(rng, int(choices[rng.integers(len(choices))]))
        if 4 <= len(w) <= 9 and w not in taken:
            taken.add(w)
            out.append(w)
    return out


def build_world(seed: int = 0) -> World:
    """Build the entity pool for ``seed`` (pure function; milliseconds)."""
    rng = rng_for(seed, "world")
    taken: set[str] = set()
    town_words = _unique_words(rng, N_TOWNS, taken, (2,))
    towns = []
    for w in town_words:
        pre = _TOWN_PREFIX[rng.integers(len(_TOWN_PREFIX))]
        suf = _TOWN_SUFFIX[rng.integers(len(_TOWN_SUFFIX))] if not pre else ""
        towns.append(f"{pre}{w}{suf}")
    surnames = _unique_words(rng, 120, taken, (2, 3))
    entities: list[Entity] = []
    group_id = 0
    for domain in DOMAINS:
        spec = DOMAIN_SPECS[domain]
        drng = rng_for(seed, "domain", domain)
        made: list[Entity] = []
        names: set[str] = set()
        while len(made) < ENTITIES_PER_DOMAIN:
            base = _unique_words(drng, 1, taken, (2, 2, 3))[0]
            size = int(drng.choice([1, 2, 2, 3, 3]))
            picks = drng.choice(len(spec.suffixes), size=size, replace=False)
            for k in picks:
                if len(made) >= ENTITIES_PER_DOMAIN:
                    break
                suffix, kind = spec.suffixes[int(k)]
                name = f"{base} {suffix}"
                if name in names:
                    continue
                names.add(name)
                idx = len(made)
                y0, y1 = spec.year_range
                c0, c1 = spec.count_range
                u0, u1 = spec.unit_range
                # log-uniform counts: realistic spread of sizes
                count = int(round(np.exp(drng.uniform(np.log(c0), np.log(c1)))))
                person = f"{_FIRST_NAMES[drng.integers(len(_FIRST_NAMES))]} {surnames[drng.integers(len(surnames))]}"
                extra = ""
                if domain == "commerce":
                    extra = f"{_unique_words(drng, 1, taken, (2,))[0]} {_PRODUCT_WORDS[int(k)]}"
                made.append(
                    Entity(
                        id=f"{domain}-{idx:03d}",
                        domain=domain,
                        name=name,
                        kind=kind,
                        year=int(drng.integers(y0, y1 + 1)),
                        person=person,
                        town=towns[int(drng.integers(len(towns)))],
                        count=count,
                        unit=int(drng.integers(u0, u1 + 1)),
                        extra=extra,
                        group=group_id,
                        split="eval" if idx < EVAL_PER_DOMAIN else "train",
                    )
                )
            group_id += 1
        entities.extend(made)
    return World(seed=seed, entities=entities, towns=towns)
