"""ITDA (arXiv 2505.17769): matching pursuit against scikit-learn, exact recovery, dictionary growth,
provenance and Jaccard, artifacts, splicing, the `actlab dict` commands, and the embedded model."""

import numpy as np
import pytest
import torch
import typer
from sklearn.linear_model import orthogonal_mp
from typer.testing import CliRunner

import actlab as al
from actlab.cli.dict_commands import register
from actlab.errors import ActlabError
from actlab.read.itda import ITDA, ITDADictionary, jaccard, matching_pursuit
from actlab.read.splice import load_dictionary
from conftest import make_tiny_lab

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife. ") * 30


def unit_atoms(m: int, d: int, seed: int = 0) -> torch.Tensor:
    a = torch.randn(m, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a / a.norm(dim=1, keepdim=True)


def sparse_mixtures(atoms: torch.Tensor, n: int, k: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(atoms.shape[0], generator=g)[:k] for _ in range(n)])
    coef = (torch.rand(n, k, generator=g, dtype=atoms.dtype) + 0.5) * torch.sign(torch.randn(n, k, generator=g,
                                                                                              dtype=atoms.dtype))
    return torch.einsum("nk,nkd->nd", coef, atoms[idx])


def recon(codes, atoms):
    return torch.einsum("nk,nkd->nd", codes.values, atoms[codes.indices])


def test_omp_matches_scikit_learn_and_batched_equals_unbatched():
    atoms, x = unit_atoms(40, 16), torch.randn(30, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours = recon(matching_pursuit(x, atoms, 5, orthogonal=True), atoms)
    coef = orthogonal_mp(atoms.T.numpy(), x.T.numpy(), n_nonzero_coefs=5)  # [m, n]
    np.testing.assert_allclose(ours.numpy(), (atoms.T.numpy() @ coef).T, atol=1e-9)
    for orthogonal in (False, True):
        batched = matching_pursuit(x, atoms, 5, orthogonal)
        rows = [matching_pursuit(x[i:i + 1], atoms, 5, orthogonal) for i in range(x.shape[0])]
        assert torch.equal(batched.indices, torch.cat([r.indices for r in rows]))
        torch.testing.assert_close(batched.values, torch.cat([r.values for r in rows]), rtol=0, atol=1e-12)


def test_mp_follows_the_residual_by_hand():
    atoms, x = unit_atoms(12, 6), torch.randn(1, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    codes, r = matching_pursuit(x, atoms, 3), x[0].clone()
    for s in range(3):
        c = atoms @ r
        j = int(c.abs().argmax())
        assert int(codes.indices[0, s]) == j and float(codes.values[0, s]) == pytest.approx(float(c[j]), abs=1e-12)
        r = r - c[j] * atoms[j]
    torch.testing.assert_close(x[0] - recon(codes, atoms)[0], r)


def test_exact_on_combinations_of_at_most_k_atoms_it_contains():
    atoms = unit_atoms(60, 128)  # incoherent enough for OMP to find every support
    mixtures = sparse_mixtures(atoms, 300, 4)
    data = torch.cat([3.0 * atoms, mixtures]).float()
    dico = ITDA(size=1000, k=4, pursuit="omp", threshold=1e-3, batch_size=60, progress=False).fit(data)
    rows = dico.provenance["rows"].sort().values
    assert dico.n_latents == 60 and torch.equal(rows, torch.arange(60))  # the atoms joined, no mixture did
    torch.testing.assert_close(dico.reconstruct(mixtures.float()), mixtures.float(), atol=1e-4, rtol=0)
    orthonormal = torch.linalg.qr(torch.randn(24, 24, generator=torch.Generator().manual_seed(4)))[0].T
    mp = ITDA(size=24, k=3, pursuit="mp", progress=False).fit(orthonormal)  # MP is exact on orthogonal atoms
    combos = sparse_mixtures(orthonormal.double(), 50, 3).float()
    torch.testing.assert_close(mp.reconstruct(combos), combos, atol=1e-5, rtol=0)
    assert dico.fve(mixtures.float()) > 1 - 1e-8


def test_an_atom_encodes_to_exactly_itself_and_growth_stops_at_size():
    x = torch.randn(500, 20, generator=torch.Generator().manual_seed(5)) * 4
    x[100] = x[7]  # a duplicate inside one batch joins at most once
    for pursuit in ("mp", "omp"):
        dico = ITDA(size=64, k=6, threshold=0.01, pursuit=pursuit, batch_size=128, progress=False).fit(x)
        assert dico.n_latents == 64 and dico.data["tokens_seen"] == 128   # full after the first batch
        rows = dico.provenance["rows"]
        assert len(set(rows.tolist())) == 64 and 100 not in rows.tolist()
        torch.testing.assert_close(dico.atoms, x[rows] / x[rows].norm(dim=1, keepdim=True))
        codes = dico.encode(x[rows])
        torch.testing.assert_close(codes.indices[:, 0], torch.arange(64))
        torch.testing.assert_close(dico.reconstruct(x[rows]), x[rows], atol=1e-4, rtol=1e-5)
    grown = ITDA(size=10_000, k=6, threshold=0.5, batch_size=100, progress=False).fit(x)
    assert 20 < grown.n_latents < 500 and grown.data["tokens_seen"] == 500


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_lab("llama")


@pytest.fixture(scope="module")
def stores(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("itda")
    (root / "text.txt").write_text(TEXT + "\n\n" + TEXT.upper())
    args = dict(tokens=1024, seq_len=32, batch_size=4, chunk_windows=8, dtype="float32", progress=False)
    a = al.harvest(tiny, str(root / "text.txt"), ["blocks.0.resid_post", "blocks.1.resid_post"], root / "a.zarr",
                   **args)
    b = al.harvest(tiny, str(root / "text.txt"), ["blocks.1.resid_post"], root / "b.zarr", **{**args, "seq_len": 16})
    return a, b, root / "text.txt"


def test_provenance_jaccard_and_round_trip(stores, tmp_path):
    a, b, _ = stores
    fit = ITDA(size=48, k=4, min_position=1, batch_size=256, progress=False)
    d0, d1 = fit.fit(a, "blocks.0.resid_post"), fit.fit(a, "blocks.1.resid_post")
    rows = d0.provenance["rows"].numpy()
    assert np.array_equal(d0.provenance["tokens"].numpy(), a.index("tokens")[rows])
    assert np.array_equal(d0.provenance["positions"].numpy(), a.index("positions")[rows])
    assert (d0.provenance["positions"] >= 1).all() and d0.fingerprint == a.manifest.fingerprint
    torch.testing.assert_close(d0.atoms[0], a["blocks.0.resid_post"][int(rows[0])] /
                               a["blocks.0.resid_post"][int(rows[0])].norm())
    k0 = {(int(r) // 32, int(p)) for r, p in zip(rows, d0.provenance["positions"])}
    k1 = {(int(r) // 32, int(p)) for r, p in zip(d1.provenance["rows"], d1.provenance["positions"])}
    assert d0.keys() == k0 and jaccard(d0, d1) == pytest.approx(len(k0 & k1) / len(k0 | k1))
    assert jaccard(d0, d0) == 1.0 and 0.0 <= jaccard(d0, d1) < 1.0
    with pytest.raises(ActlabError, match="different token streams"):
        jaccard(d1, fit.fit(b, "blocks.1.resid_post"))
    d0.save(tmp_path / "d0.itda")
    back = load_dictionary(tmp_path / "d0.itda")
    assert isinstance(back, ITDADictionary) and back.keys() == d0.keys() and back.site == d0.site
    assert all(torch.equal(back.provenance[n], d0.provenance[n]) for n in d0.provenance)
    x = a["blocks.0.resid_post"][:64]
    torch.testing.assert_close(back.reconstruct(x), d0.reconstruct(x))
    assert back.fve(a, min_position=1) == pytest.approx(d0.fve(a, min_position=1))
    contexts = d0.contexts(tiny_tokenizer(), a, width=4)
    assert len(contexts) == 48 and all("[[" in c for c in contexts)


def tiny_tokenizer():
    from conftest import char_tokenizer

    return char_tokenizer()


def test_splicing_a_complete_dictionary_changes_nothing(tiny):
    site, d, text = "blocks.1.resid_post", tiny.d_model, al.data.Corpus("text", None, [TEXT])
    basis = ITDA(size=d, k=d, pursuit="omp", progress=False).fit(torch.eye(d) * 2, site=site)
    exact = basis.delta_ce(tiny, text, seq_len=32, max_tokens=256)
    assert abs(exact.delta) < 1e-4 and exact.tokens_scored > 0
    coarse = ITDA(size=d, k=1, pursuit="omp", progress=False).fit(torch.eye(d) * 2, site=site)
    assert abs(coarse.delta_ce(tiny, text, seq_len=32, max_tokens=256).delta) > 1e-3  # random weights: either sign


def test_bad_input_is_a_clear_error(stores, tiny):
    a, _, _ = stores
    with pytest.raises(ActlabError, match="unknown pursuit"):
        ITDA(pursuit="lasso")
    with pytest.raises(ActlabError, match="at least 1"):
        ITDA(size=0)
    with pytest.raises(ActlabError, match="name the site"):
        ITDA().fit(a)
    with pytest.raises(ActlabError, match="no site"):
        ITDA().fit(a, "blocks.7.resid_post")
    with pytest.raises(ActlabError, match="not list"):
        ITDA().fit([[1.0, 2.0]])
    dico = ITDA(size=8, k=2, progress=False).fit(torch.randn(20, 5))
    with pytest.raises(ActlabError, match="width 5"):
        dico.encode(torch.randn(3, 6))
    with pytest.raises(ActlabError, match="without a site"):
        dico.check(tiny)
    with pytest.raises(ActlabError, match="min_position needs token positions"):
        ITDA(min_position=1).fit(torch.randn(20, 5))


def test_cli_fit_eval_jaccard(stores, tmp_path):
    a, _, text = stores
    app, runner = typer.Typer(), CliRunner()
    from rich.console import Console

    register(app, Console(), Console(stderr=True), lambda model, dtype: make_tiny_lab("llama"))
    args = ["dict", "fit", str(a.root), "--size", "32", "--k", "4", "--min-position", "1", "--json"]
    for name, site in (("l0", "blocks.0.resid_post"), ("l1", "blocks.1.resid_post")):
        res = runner.invoke(app, [*args, "--site", site, "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
    assert load_dictionary(tmp_path / "l0").n_latents == 32
    res = runner.invoke(app, ["dict", "fit", str(a.root), "--site", "blocks.0.resid_post", "--kind", "topk-sae",
                              "--size", "32", "--k", "4", "--epochs", "2", "--out", str(tmp_path / "sae"), "--json"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["dict", "eval", str(tmp_path / "sae"), str(a.root), "--model", "tiny",
                              "--corpus", str(text), "--ce-tokens", "128", "--seq-len", "32", "--json"])
    assert res.exit_code == 0, res.output
    assert '"delta_ce"' in res.output and '"fve"' in res.output
    res = runner.invoke(app, ["dict", "jaccard", str(tmp_path / "l0"), str(tmp_path / "l1")])
    expected = jaccard(ITDADictionary.load(tmp_path / "l0"), ITDADictionary.load(tmp_path / "l1"))
    assert res.exit_code == 0 and float(res.output) == pytest.approx(expected, abs=1e-4)
    res = runner.invoke(app, ["dict", "fit", str(a.root), "--site", "blocks.0.resid_post", "--kind", "nmf"])
    assert isinstance(res.exception, ActlabError) and "unknown kind" in str(res.exception)
    res = runner.invoke(app, ["dict", "eval", str(tmp_path / "nothing"), str(a.root)])
    assert isinstance(res.exception, ActlabError) and "not a saved dictionary" in str(res.exception)


@pytest.mark.embedded
@pytest.mark.xdist_group("embedded")
def test_itda_on_smollm2_explains_most_variance_and_splices(smollm2, tmp_path):
    site = "blocks.12.resid_post"
    store = al.harvest(smollm2, "austen:train", [site], tmp_path / "s.zarr", tokens=2048, seq_len=256,
                       dtype="float32", progress=False)
    dico = ITDA(size=512, k=16, min_position=1, progress=False).fit(store, site)
    assert 100 < dico.n_latents <= 512 and dico.fingerprint["name"] == "smollm2-135m"
    fve = dico.fve(store, min_position=1)
    assert 0.5 < fve < 1.0
    ce = dico.delta_ce(smollm2, "austen:test", seq_len=128, max_tokens=512, positions=lambda ctx: ctx.positions >= 1)
    assert 0.0 < ce.delta < 3.0
