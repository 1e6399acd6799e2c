"""Representational stability: planted geometry gives the paper's ordering; the real model runs end to end."""

import json

import pytest
import torch

from actlab.data.statements import Statements, statements
from actlab.errors import ActlabError
from actlab.read.probes import LDAProbe
from actlab.read.stability import PERTURBATIONS, stability, stability_of_features


def planted(seed=0):
    """Truth along e0; unfamiliar statements sit near the false ones, fiction is off along e1."""
    g = torch.Generator().manual_seed(seed)
    texts, labels, kinds, entities, centres = [], [], [], [], []
    for i in range(120):
        for label, c in (("true", 2.0), ("false", -2.0)):
            texts.append(f"{label} {i}"), labels.append(label), kinds.append(label), entities.append(f"real{i}")
            centres.append((c, 0.0))
    for kind, centre in (("unfamiliar", (-1.5, 0.0)), ("fiction", (-2.0, 4.0))):
        for i in range(60):
            texts.append(f"{kind} {i}"), labels.append("neither"), kinds.append(kind), entities.append(f"{kind}{i}")
            centres.append(centre)
    x = 0.5 * torch.randn(len(texts), 16, generator=g)
    x[:, :2] += torch.tensor(centres)
    return x, Statements(texts, labels, kinds, ["capitals"] * len(texts), entities)


def test_planted_unfamiliar_shifts_the_boundary_more_than_fiction():
    x, facts = planted()
    result = stability_of_features(x, facts, control_repeats=3)
    rows = {r["perturbation"]: r for r in result.per_perturbation}
    assert list(rows) == list(PERTURBATIONS)
    assert len({r["n_relabelled"] for r in rows.values()}) == 1  # both kinds change equally many labels
    assert rows["unfamiliar→true"]["flipped_factual"] > 0.05 > 0.02 > rows["fiction→true"]["flipped_factual"]
    assert rows["fiction→true"]["flipped_by_kind"]["fiction"] > 0.9  # the relabelled kind itself moves
    assert rows["unfamiliar→true"]["base_accuracy"] > 0.9
    assert result.ordering == {"capitals": True}
    assert rows["control: false→true"]["repeats"] == 3 and -1 <= rows["control: false→true"]["cosine"] <= 1
    assert json.loads(result.to_json())["kind"] == "representational_stability"


def test_stability_of_identical_labels_is_zero_shift():
    """Relabelling statements the base probe already calls true moves nothing: flips 0, cosine ~1."""
    x, facts = planted(1)
    x[[k in ("unfamiliar", "fiction") for k in facts.kinds], 0] = 2.0  # neither statements sit with the true ones
    facts.labels = ["true" if k in ("unfamiliar", "fiction") else label for k, label in zip(facts.kinds, facts.labels)]
    result = stability_of_features(x, facts, probe=LDAProbe(), control_repeats=1)
    for r in result.per_perturbation[:2]:
        assert r["flipped"] == 0.0 and r["cosine"] > 0.999


def test_bad_input():
    x, facts = planted()
    with pytest.raises(ActlabError, match="one feature row per statement"):
        stability_of_features(x[:10], facts)
    with pytest.raises(ActlabError, match="control_repeats"):
        stability_of_features(x, facts, control_repeats=0)
    with pytest.raises(ActlabError, match="needs unfamiliar, fiction and at least as many false"):
        stability_of_features(x[:300], facts.subset(range(300)))


@pytest.mark.embedded
@pytest.mark.xdist_group("embedded")
def test_stability_on_smollm2(smollm2):
    facts, _ = statements("capitals").split(0.5)  # half the entities keep the test short
    with pytest.raises(ActlabError, match="stability reads one site"):
        stability(smollm2, facts, "blocks.*.resid_post")
    result = stability(smollm2, facts, "blocks.13.resid_post", control_repeats=2, progress=False)
    assert [r["perturbation"] for r in result.per_perturbation] == list(PERTURBATIONS)
    for r in result.per_perturbation:
        assert 0 <= r["flipped_factual"] <= 1 and 0 <= r["retracted"] <= 1 and r["base_accuracy"] > 0.6
    assert "unfamiliar→true" in str(result) and result.fingerprint["name"] == "smollm2-135m"
