"""Linear CKA, SVCCA and relative representations: invariances, references, streaming, stores, CLI."""

import json

import numpy as np
import pytest
import torch
import typer
from rich.console import Console
from typer.testing import CliRunner

import actlab as al
from actlab.cli.similarity_commands import register
from actlab.errors import ActlabError
from actlab.read.similarity import Moments, anchor_rows, cka, compare_stores, relative_similarity, svcca
from conftest import make_tiny_lab

G = torch.Generator().manual_seed(0)


def randn(*shape):
    return torch.randn(*shape, generator=G, dtype=torch.float64)


def orthogonal(d):
    return torch.linalg.qr(randn(d, d))[0]


def numpy_cka(x, y):
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


X = randn(300, 12)
Y = X @ randn(12, 20) + 2.0 * randn(300, 20)


def test_cka_matches_numpy_in_both_forms():
    assert cka(X, Y) == pytest.approx(numpy_cka(X.numpy(), Y.numpy()), rel=1e-12)
    wide_x, wide_y = randn(30, 50), randn(30, 40)  # fewer rows than features: Gram form
    assert cka(wide_x, wide_y) == pytest.approx(numpy_cka(wide_x.numpy(), wide_y.numpy()), rel=1e-12)
    assert cka(X, X) == pytest.approx(1.0) and 0.0 < cka(X, Y) < 1.0


def test_similarity_never_changes_its_inputs():
    x, y = torch.randn(50, 8, dtype=torch.float64), torch.randn(50, 6, dtype=torch.float64)
    before = (x.clone(), y.clone())
    cka(x, y), cka(x[:4], y[:4]), relative_similarity(x, y, anchors=5)
    assert torch.equal(x, before[0]) and torch.equal(y, before[1])


def test_cka_invariances():
    assert cka(X, 5.0 * Y @ orthogonal(20) + 3.0) == pytest.approx(cka(X, Y), rel=1e-12)
    stretched = X @ torch.diag(torch.linspace(0.1, 10.0, 12, dtype=torch.float64))  # invertible but not orthogonal
    assert cka(X, stretched) < 0.99


def test_svcca_is_one_under_invertible_maps_and_low_for_noise():
    z = randn(400, 6) @ randn(6, 16)  # rank 6 in 16 dimensions
    assert svcca(z, z @ randn(16, 16) + 1.0) == pytest.approx(1.0, abs=1e-8)
    assert svcca(z, (z @ randn(16, 24)) * 1e3) == pytest.approx(1.0, abs=1e-8)
    assert svcca(randn(400, 5), randn(400, 5)) < 0.2
    with pytest.raises(ActlabError, match="keep"):
        svcca(X, Y, keep=0.0)


def test_relative_similarity_is_rotation_and_scale_invariant():
    anchors = anchor_rows(300, 40, seed=1)
    assert relative_similarity(X, 0.1 * X @ orthogonal(12), anchors) == pytest.approx(1.0, abs=1e-12)
    assert relative_similarity(X, Y, anchors) < 0.99
    assert relative_similarity(X, Y, 40, seed=1) == relative_similarity(X, Y, anchors)
    with pytest.raises(ActlabError, match="anchor"):
        relative_similarity(X, Y, [0, 300])


def test_streaming_equals_in_memory():
    moments = Moments()
    for a, b in zip((X + 100.0).split(37), Y.split(37)):  # a large offset: the shift keeps float64 exact
        moments.update(a, b)
    assert moments.cka() == pytest.approx(cka(X, Y), rel=1e-10)
    assert moments.svcca() == pytest.approx(svcca(X, Y), rel=1e-10)
    with pytest.raises(ActlabError, match="paired"):
        cka(X, Y[:-1])


TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife. ") * 40
SITES = ["blocks.0.resid_post", "blocks.1.mlp.act", "blocks.2.resid_post"]  # the store's (canonical) order


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    lab = make_tiny_lab("llama")
    root = tmp_path_factory.mktemp("similarity")
    (root / "a.txt").write_text(TEXT)
    (root / "b.txt").write_text(TEXT.upper())
    args = dict(tokens=1024, seq_len=32, batch_size=4, chunk_windows=8, dtype="float32", progress=False)
    return (al.harvest(lab, str(root / "a.txt"), SITES, root / "a.zarr", **args),
            al.harvest(lab, str(root / "b.txt"), SITES, root / "b.zarr", **args))


def test_store_comparison_streams_the_in_memory_values(stores):
    store, _ = stores
    result = compare_stores(store, store, metrics=["cka", "svcca", "relative"], batch_tokens=100, anchors=50,
                            progress=False)
    assert result.sites_a == result.sites_b == SITES and result.n_tokens == store.n_tokens
    acts = {s: store[s][:] for s in SITES}
    index = anchor_rows(store.n_tokens, 50, seed=0)
    for i, a in enumerate(SITES):
        for j, b in enumerate(SITES):
            assert result.metrics["cka"][i][j] == pytest.approx(cka(acts[a], acts[b]), rel=1e-9)
            assert result.metrics["svcca"][i][j] == pytest.approx(svcca(acts[a], acts[b]), rel=1e-7)
            assert result.metrics["relative"][i][j] == pytest.approx(relative_similarity(acts[a], acts[b], index),
                                                                      rel=1e-9)
    assert torch.allclose(result.matrix("cka").diagonal(), torch.ones(3, dtype=torch.float64))
    assert json.loads(result.to_json())["kind"] == "similarity" and "blocks.1.mlp.act" in str(result)
    by_store = cka(store, store, batch_tokens=100, progress=False)  # al.read.cka(store_a, store_b) streams too
    assert by_store.metrics["cka"] == result.metrics["cka"]
    assert torch.allclose(svcca(store, store, progress=False).matrix("svcca"), result.matrix("svcca"))
    cross = compare_stores(store, store, sites="blocks.0.*", sites_b=["blocks.1.mlp.act"], max_tokens=300,
                           progress=False)
    assert cross.sites_a == ["blocks.0.resid_post"] and cross.n_tokens == 300
    assert cross.metrics["cka"][0][0] == pytest.approx(cka(acts[SITES[0]][:300], acts[SITES[1]][:300]), rel=1e-9)
    later = torch.from_numpy(store.index("positions") >= 2)
    skipped = compare_stores(store, store, sites=[SITES[0]], sites_b=[SITES[2]], metrics=["cka", "relative"],
                             skip_positions=2, batch_tokens=100, anchors=30, progress=False)
    assert skipped.n_tokens == int(later.sum()) == store.n_tokens * 30 // 32
    x, y = acts[SITES[0]][later], acts[SITES[2]][later]
    assert skipped.metrics["cka"][0][0] == pytest.approx(cka(x, y), rel=1e-9)
    assert skipped.metrics["relative"][0][0] == pytest.approx(relative_similarity(x, y, 30), rel=1e-9)


def test_store_comparison_refuses_bad_input(stores):
    a, b = stores
    with pytest.raises(ActlabError, match="same tokens"):
        compare_stores(a, b, progress=False)
    with pytest.raises(ActlabError, match="unknown metric"):
        compare_stores(a, a, metrics=["cca"], progress=False)
    with pytest.raises(ActlabError, match="no site"):
        compare_stores(a, a, sites=["blocks.9.resid_post"], progress=False)
    with pytest.raises(ActlabError, match="max_tokens"):
        compare_stores(a, a, max_tokens=10**6, progress=False)


def test_cli(stores):
    a, b = stores
    app = typer.Typer()
    register(app, Console(), Console(stderr=True), lambda model, dtype: make_tiny_lab("llama"))
    runner = CliRunner()
    res = runner.invoke(app, ["similarity", str(a.root), str(a.root), "--sites", "blocks.0.resid_post,blocks.2.*",
                              "--metric", "cka", "--metric", "relative", "--anchors", "20", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["sites_a"] == [SITES[0], SITES[2]] and set(data["metrics"]) == {"cka", "relative"}
    assert data["metrics"]["cka"][0][0] == pytest.approx(1.0)
    res = runner.invoke(app, ["similarity", str(a.root), str(a.root), "--max-tokens", "64"])
    assert res.exit_code == 0 and "cka over 64 tokens" in res.stdout
    res = runner.invoke(app, ["similarity", str(a.root), str(a.root), "--max-tokens", "64", "--skip-positions", "1"])
    assert res.exit_code == 0 and "cka over 62 tokens" in res.stdout  # two windows of 32, first tokens left out
    res = runner.invoke(app, ["similarity", str(a.root), str(b.root)])
    assert isinstance(res.exception, ActlabError) and "same tokens" in str(res.exception)
    res = runner.invoke(app, ["aqi", "tiny", "--pairs", "neutral"])
    assert isinstance(res.exception, ActlabError) and "two prompt sets" in str(res.exception)
