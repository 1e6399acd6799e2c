"""Probes: agreement with scikit-learn, planted directions, metrics, sweeps, artifacts, CLI."""

import json

import numpy as np
import pytest
import torch
import typer
from conftest import make_tiny_lab
from rich.console import Console
from sklearn.covariance import ledoit_wolf_shrinkage as sk_ledoit_wolf
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, brier_score_loss, roc_auc_score
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from actlab.cli.probe_commands import register
from actlab.data.statements import statements
from actlab.errors import ActlabError
from actlab.read.probes import (DiffMeanProbe, LDAProbe, LinearProbe, Probe, ProbeSweep, auroc,
                                ledoit_wolf_shrinkage, probe_metrics, read_last)
from actlab.steer import SteeringVector


def synthetic(n=400, d=30, noise=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g) * torch.linspace(0.5, 3, d) + 2).double()
    w = torch.randn(d, generator=g).double()
    y = ((x @ w + noise * torch.randn(n, generator=g).double()) > (x @ w).median()).double()
    return x, y


def test_linear_probe_matches_sklearn_logistic_regression():
    x, y = synthetic()
    probe = LinearProbe(C=0.5).fit_tensors(x, y)
    scaler = StandardScaler().fit(x.numpy())
    sk = LogisticRegression(C=0.5, tol=1e-10, max_iter=10000).fit(scaler.transform(x.numpy()), y.numpy())
    np.testing.assert_allclose(probe.predict_proba(x).numpy(), sk.predict_proba(scaler.transform(x.numpy()))[:, 1],
                               atol=1e-4)
    np.testing.assert_allclose(probe.weight.numpy(), sk.coef_[0] / scaler.scale_, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("shrinkage", ["auto", 0.3, 0.0])
def test_lda_probe_matches_sklearn(shrinkage):
    x, y = synthetic(n=200, d=40)
    probe = LDAProbe(shrinkage=shrinkage).fit_tensors(x, y)
    sk = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage or None).fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(probe.decision_function(x).numpy(), sk.decision_function(x.numpy()), atol=1e-3)


def test_ledoit_wolf_matches_sklearn():
    x, _ = synthetic(n=50, d=80)
    assert ledoit_wolf_shrinkage(x) == pytest.approx(sk_ledoit_wolf(x.double().numpy()), rel=1e-9)


@pytest.mark.parametrize("make", [LinearProbe, DiffMeanProbe, LDAProbe])
def test_planted_direction_is_recovered(make):
    g = torch.Generator().manual_seed(1)
    u = torch.nn.functional.normalize(torch.randn(64, generator=g), dim=0)
    y = (torch.rand(600, generator=g) < 0.5).double()
    x = torch.randn(600, 64, generator=g) + torch.outer(4 * y - 2, u)
    probe = make().fit_tensors(x[:400], y[:400])
    assert probe.evaluate(x[400:], y[400:]).accuracy > 0.9  # Bayes accuracy Φ(2) = 0.977
    assert float(torch.nn.functional.cosine_similarity(probe.direction(), u, dim=0)) > 0.8
    unit = probe.weight.double() / probe.weight.double().norm()
    gap = float((x[:400][y[:400] == 1].mean(0) - x[:400][y[:400] == 0].mean(0)).double() @ unit)
    torch.testing.assert_close(probe.direction().double(), unit * gap, atol=1e-5, rtol=1e-5)  # scaled to the mean gap


def test_metrics_match_sklearn_and_hand_values():
    g = torch.Generator().manual_seed(2)
    y = (torch.rand(300, generator=g) < 0.4).double()
    p = ((torch.rand(300, generator=g) + y * 0.3) * 10).round() / 13  # ties on purpose
    m = probe_metrics(p, y)
    assert m.auroc == pytest.approx(roc_auc_score(y, p), abs=1e-12) and auroc(p, y) == m.auroc
    assert m.accuracy == pytest.approx(accuracy_score(y, p >= 0.5))
    assert m.brier == pytest.approx(brier_score_loss(y, p))
    hand = probe_metrics(torch.tensor([0.05, 0.15, 0.95, 0.95]), torch.tensor([0.0, 1.0, 1.0, 1.0]))
    # bins [0, .1): p .05 vs 0 -> .05; [.1, .2): .15 vs 1 -> .85; [.9, 1]: .95 vs 1 -> .05 (two items)
    assert hand.ece == pytest.approx((0.05 + 0.85 + 2 * 0.05) / 4) and hand.n_true == 3
    assert np.isnan(auroc(torch.tensor([0.3, 0.4]), torch.tensor([1.0, 1.0])))


def test_read_last_batched_equals_unbatched():
    lab = make_tiny_lab("llama")
    texts = statements("capitals").texts[:7]
    one = read_last(lab, texts, "blocks.*.resid_post", batch_size=1, progress=False)
    many = read_last(lab, texts, "blocks.*.resid_post", batch_size=5, progress=False)
    assert list(one) == lab.sites("blocks.*.resid_post")
    for site in one:
        assert one[site].shape == (7, lab.d_model)
        torch.testing.assert_close(one[site], many[site], atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def tiny_sweep():
    lab = make_tiny_lab("gpt2")
    facts = statements("capitals")
    return lab, ProbeSweep(LDAProbe(), progress=False).fit(lab, facts.subset(range(0, len(facts), 3)))


def test_sweep_table_is_held_out_and_json(tiny_sweep):
    lab, sweep = tiny_sweep
    table = sweep.table()
    assert [r["site"] for r in table.per_site] == lab.sites("blocks.*.resid_post")
    assert sweep.best_site in lab.sites("blocks.*.resid_post") and sweep.best_probe.site == sweep.best_site
    p = table.protocol
    assert p["n_train"] + p["n_test"] == sum(label != "neither" for label in statements("capitals").labels[::3])
    again = json.loads(table.to_json())
    assert again["kind"] == "probe_sweep" and again["best_site"] == sweep.best_site
    assert sweep.best_site in str(table) and "test acc" in str(table)


def test_probe_artifact_round_trip_and_wrong_model(tiny_sweep, tmp_path):
    lab, sweep = tiny_sweep
    probe = sweep.best_probe
    probe.save(tmp_path / "p.probe")
    loaded = Probe.load(tmp_path / "p.probe")
    assert isinstance(loaded, LDAProbe) and loaded.site == probe.site and loaded.params() == probe.params()
    texts = statements("capitals").texts[:5]
    torch.testing.assert_close(loaded.score(lab, texts), probe.score(lab, texts))
    with pytest.raises(ActlabError, match="fitted on tiny-gpt2"):
        loaded.score(make_tiny_lab("llama"), texts)


def test_fit_on_a_lab_equals_fit_on_its_features(tiny_sweep):
    lab, _ = tiny_sweep
    facts = statements("continents").subset(range(0, 120))
    probe = LinearProbe().fit(lab, facts, "blocks.1.resid_post", progress=False)
    x = read_last(lab, facts.texts, ["blocks.1.resid_post"], progress=False)["blocks.1.resid_post"]
    y = torch.tensor([label == "true" for label in facts.labels], dtype=torch.float64)
    torch.testing.assert_close(probe.weight, LinearProbe().fit_tensors(x, y).weight)
    assert probe.site == "blocks.1.resid_post" and probe.data["n"] == 120 and probe.fingerprint["name"] == "tiny-gpt2"
    with pytest.raises(ActlabError, match="a probe reads one site"):
        LinearProbe().fit(lab, facts, "blocks.*.resid_post")


def test_probe_exports_a_steering_vector(tiny_sweep, tmp_path):
    _, sweep = tiny_sweep
    probe = sweep.best_probe
    vec = SteeringVector.load(probe.to_steering_vector(tmp_path / "truth.steer"))
    assert vec.sites == [probe.site] and vec.method == "probe:lda" and vec.fingerprint == probe.fingerprint
    torch.testing.assert_close(vec.directions[probe.site], probe.direction())


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ActlabError, match="both classes"):
        LinearProbe().fit_tensors(torch.randn(4, 3), torch.ones(4))
    with pytest.raises(ActlabError, match="not fitted"):
        LinearProbe().predict_proba(torch.randn(2, 3))
    with pytest.raises(ActlabError, match="shrinkage"):
        LDAProbe(shrinkage=2.0).fit_tensors(*synthetic(n=20, d=3))
    with pytest.raises(ActlabError, match="negatives"):
        ProbeSweep(negatives=("maybe",)).fit(make_tiny_lab("llama"), statements("capitals"))
    with pytest.raises(ActlabError, match="not an actlab artifact"):
        Probe.load(tmp_path / "missing")


def cli(tmp_path):
    app = typer.Typer()
    register(app, Console(), Console(stderr=True), lambda model, dtype: make_tiny_lab(model))

    @app.callback()
    def main():  # a group, so that `probe` stays a subcommand
        pass

    return app


def test_cli_sweeps_saves_and_exports(tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli(tmp_path), ["probe", "llama", "--statements", "continents", "--probe", "diffmean",
                                        "--json", "--save", str(tmp_path / "best.probe"),
                                        "--export-steering", str(tmp_path / "best.steer")])
    assert res.exit_code == 0, res.output
    table = json.loads(res.stdout)
    assert table["method"] == "diffmean" and len(table["per_site"]) == make_tiny_lab("llama").n_layers
    assert Probe.load(tmp_path / "best.probe").site == table["best_site"]
    assert SteeringVector.load(tmp_path / "best.steer").sites == [table["best_site"]]
    res = runner.invoke(cli(tmp_path), ["probe", "llama", "--statements", "continents", "--neither"])
    assert res.exit_code == 0 and "true vs false/neither" in res.stdout.replace("\n", " ")


def test_cli_bad_input(tmp_path):
    res = CliRunner().invoke(cli(tmp_path), ["probe", "llama", "--probe", "svm"])
    assert isinstance(res.exception, ActlabError) and "unknown probe 'svm'" in str(res.exception)
    res = CliRunner().invoke(cli(tmp_path), ["probe", "llama", "--statements", "planets"])
    assert isinstance(res.exception, ActlabError) and "unknown statement domain" in str(res.exception)


@pytest.mark.embedded
@pytest.mark.xdist_group("embedded")
def test_capitals_probe_on_smollm2_beats_chance_in_the_middle(smollm2):
    facts = statements("capitals")
    sweep = ProbeSweep(LinearProbe(), progress=False).fit(smollm2, facts,
                                                          sites=["blocks.1.resid_post", "blocks.13.resid_post"])
    rows = {r["site"]: r for r in sweep.table().per_site}
    assert rows["blocks.13.resid_post"]["accuracy"] > 0.65 and rows["blocks.13.resid_post"]["auroc"] > 0.72
    assert rows["blocks.13.resid_post"]["accuracy"] > rows["blocks.1.resid_post"]["accuracy"] + 0.1
    assert sweep.best_site == "blocks.13.resid_post"
