"""Relation-specific neurons (arXiv 2502.17355): AP against scikit-learn, planted neurons, exact zeroing,
the artifact, the ablation table and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from rich.console import Console
from sklearn.metrics import average_precision_score
from typer.testing import CliRunner

import actlab as al
from actlab.cli.sparsity_commands import register
from actlab.data.facts import Facts
from actlab.errors import ActlabError
from actlab.read.neurons import (
    RelationAblationResult, RelationNeurons, RelationNeuronSet, average_precision, relation_ablation,
)
from conftest import make_tiny_lab


def test_average_precision_matches_sklearn_with_ties():
    gen = torch.Generator().manual_seed(0)
    scores = (torch.randn(60, 7, generator=gen) * 2).round()  # many ties
    labels = torch.rand(60, generator=gen) < 0.3
    ours = average_precision(scores, labels)
    for k in range(scores.shape[1]):
        assert float(ours[k]) == pytest.approx(average_precision_score(labels.numpy(), scores[:, k].numpy()), abs=1e-6)
    with pytest.raises(ActlabError, match="both positive and negative"):
        average_precision(scores, torch.ones(60, dtype=torch.bool))


def _planted(n_layers: int = 3, d_mlp: int = 16) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    acts = {r: torch.randn(n, n_layers, d_mlp, generator=gen) for r, n in (("a", 40), ("b", 50), ("c", 30))}
    acts["a"][:, 2, 5] += 6.0  # a perfect detector of relation a
    acts["a"][:, 1, 9] += 12.0  # another one, further from the negatives: it must rank first
    acts["b"][:, 0, 3] += 1.0  # a weak, imperfect one for b
    return acts


def test_planted_relation_neurons_are_selected():
    found = RelationNeurons(top=2).select(_planted())
    assert found.neurons["a"].tolist() == [[1, 9], [2, 5]]
    assert found.scores["a"].tolist() == [1.0, 1.0]
    assert [0, 3] == found.neurons["b"][0].tolist() and found.scores["b"][0] < 1.0
    assert found.head(1).neurons["a"].tolist() == [[1, 9]]
    with pytest.raises(ActlabError, match="at least two relations"):
        RelationNeurons().select({"a": torch.zeros(3, 2, 4)})
    with pytest.raises(ActlabError, match="top must be between"):
        RelationNeurons(top=10_000).select(_planted())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_deactivate_zeroes_exactly_those_neurons(arch):
    lab = make_tiny_lab(arch)
    rows = torch.tensor([[0, 3], [0, 17], [2, 5]])
    found = RelationNeuronSet({"a": rows, "b": torch.tensor([[1, 1]])}, {"a": torch.ones(3), "b": torch.ones(1)},
                              lab.site("blocks.0.mlp.act").shape[0], lab.fingerprint.to_dict())
    sites = lab.sites("blocks.*.mlp.act")
    prompts = ["some text", "and more of it"]
    with lab.record(sites) as dense:
        lab.forward(prompts)
    with lab.edit(found.deactivate("a")), lab.record(sites) as ablated:
        lab.forward(prompts)
    zero, keep = [3, 17], [i for i in range(dense["blocks.0.mlp.act"].shape[1]) if i not in (3, 17)]
    assert torch.all(ablated["blocks.0.mlp.act"][:, zero] == 0) and torch.any(dense["blocks.0.mlp.act"][:, zero] != 0)
    assert torch.equal(ablated["blocks.0.mlp.act"][:, keep], dense["blocks.0.mlp.act"][:, keep])
    assert torch.all(ablated["blocks.2.mlp.act"][:, 5] == 0)
    control = found.random_control("a", seed=3)
    assert {k: len(v) for k, v in control.neurons.items()} == {0: 2, 2: 1}
    assert not set(control.neurons[0]) & {3, 17} and control.neurons == found.random_control("a", seed=3).neurons


def test_artifact_round_trip_and_model_check(tmp_path):
    lab = make_tiny_lab("llama")
    found = RelationNeurons(top=4).select(_planted(lab.n_layers, lab.site("blocks.0.mlp.act").shape[0]))
    found.fingerprint = lab.fingerprint.to_dict()
    loaded = RelationNeuronSet.load(found.save(tmp_path / "rel.neurons"))
    assert loaded.relations == found.relations and loaded.d_mlp == found.d_mlp and loaded.params == found.params
    for r in found.relations:
        assert torch.equal(loaded.neurons[r], found.neurons[r]) and torch.equal(loaded.scores[r], found.scores[r])
    with pytest.raises(ActlabError, match="found in tiny-llama, not in tiny-gpt2"):
        make_tiny_lab("gpt2").edit(loaded.deactivate("a")).__enter__()
    with pytest.raises(ActlabError, match="no neurons for relation 'd'"):
        loaded.deactivate("d")
    with pytest.raises(ActlabError, match="not a 'relation_neurons'"):
        al.steer.SteeringVector({"blocks.0.resid_post": torch.ones(4)}).save(tmp_path / "v")
        RelationNeuronSet.load(tmp_path / "v")


def _tiny_facts() -> dict[str, Facts]:
    names = ["Ana", "Bo", "Cy", "Di", "Ed", "Flo"]
    return {"likes": Facts("likes", [f"{n} likes" for n in names], [" tea"] * 3 + [" jam"] * 3, names),
            "lives": Facts("lives", [f"{n} lives in" for n in names], [" Rome"] * 3 + [" Oslo"] * 3, names)}


def test_fit_and_ablation_table_on_a_tiny_model():
    lab = make_tiny_lab("llama")
    facts = _tiny_facts()
    found = RelationNeurons(top=5, progress=False).fit(lab, facts)
    assert found.fingerprint["name"] == "tiny-llama" and found.data["likes"]["prompts"] == 6
    for metric in ("answer", "choice"):
        result = relation_ablation(lab, found, facts, metric=metric, n_options=2, progress=False)
        assert set(result.ablated) == set(result.control) == {"likes", "lives"}
        assert result.n_neurons == {"likes": 5, "lives": 5} and result.n_facts == {"likes": 6, "lives": 6}
        assert RelationAblationResult.from_json(result.to_json()) == result
        assert set(result.summary()["likes"]) == {"drop_target", "drop_others", "control_drop_target"}
    with pytest.raises(ActlabError, match="unknown metric"):
        relation_ablation(lab, found, facts, metric="bleu")
    with pytest.raises(ActlabError, match="no facts given"):
        relation_ablation(lab, found, {"likes": facts["likes"]})


def test_cli_relation_neurons(tmp_path):
    lab = make_tiny_lab("llama")
    app = typer.Typer()
    register(app, Console(), Console(stderr=True), lambda model, dtype: lab)
    out = tmp_path / "found.neurons"
    res = CliRunner().invoke(app, ["relation-neurons", "tiny", "--relations", "capital,currency", "--facts", "8",
                                   "--top", "3", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["kind"] == "relation_ablation" and data["n_neurons"] == {"capital": 3, "currency": 3}
    assert RelationNeuronSet.load(out).relations == ["capital", "currency"]
    res = CliRunner().invoke(app, ["relation-neurons", "tiny", "--relations", "capitol,currency"])
    assert isinstance(res.exception, ActlabError) and "unknown relation 'capitol'" in str(res.exception)


@pytest.mark.embedded
@pytest.mark.xdist_group("embedded")
def test_smollm2_relation_neurons_are_specific(smollm2):
    relations = ("capital", "currency", "city_country")
    train = {r: al.data.facts(r).sample(16, seed=1) for r in relations}
    found = RelationNeurons(top=40, progress=False).fit(smollm2, train)
    assert all(float(found.scores[r].min()) > 0.95 for r in relations)  # near-perfect detectors exist
    assert found.overlap("capital", "currency") < 40
