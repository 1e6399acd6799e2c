"""TopK SAE (arXiv 2406.04093): the loss falls, a planted sparse dictionary is recovered, decoder
rows stay unit-norm, training stops at a target FVE, dead latents, shuffled reading, artifacts, bad input."""

import pytest
import torch

import actlab as al
from actlab.errors import ActlabError
from actlab.read.sae import SparseAutoencoder, TopKSAE
from actlab.read.splice import activation_source, load_dictionary


def planted(n: int = 12_000, d: int = 48, m: int = 96, k: int = 3, seed: int = 0):
    """Rows that are sums of k of m unit atoms (positive coefficients) plus an offset."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(m, d, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    idx = torch.stack([torch.randperm(m, generator=g)[:k] for _ in range(n)])
    coef = torch.rand(n, k, generator=g) * 2 + 1
    return torch.einsum("nk,nkd->nd", coef, atoms[idx]) + 0.5, atoms


@pytest.fixture(scope="module")
def trained():
    x, atoms = planted()
    sae = TopKSAE(n_latents=96, k=3, lr=4e-3, batch_size=256, epochs=8, eval_every=10, dead_tokens=20_000,
                  progress=False).fit(x)
    return sae, x, atoms


def test_loss_falls_and_planted_atoms_are_recovered(trained):
    sae, x, atoms = trained
    losses = [h["loss"] for h in sae.history]
    assert losses[-1] < 0.4 * losses[0]
    assert sae.fve(x) > 0.95
    best = (sae.W_dec @ atoms.T).max(0).values  # each planted atom's closest decoder row
    assert (best > 0.95).float().mean() > 0.9
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(96))
    codes = sae.encode(x[:100])
    assert codes.indices.shape == (100, 3) and (codes.values >= 0).all()


def test_encode_decode_matches_the_formula(trained):
    sae, x, _ = trained
    pre = (x[:50] / sae.scale - sae.b_pre) @ sae.W_enc + sae.b_enc
    z = torch.zeros_like(pre)
    top = pre.topk(sae.k, dim=-1)
    z.scatter_(1, top.indices, top.values.relu())
    expected = (z @ sae.W_dec + sae.b_pre) * sae.scale
    torch.testing.assert_close(sae.reconstruct(x[:50]), expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(sae.encode(x[:50]).dense(sae.n_latents), z)
    torch.testing.assert_close(sae.reconstruct(x[:50], batch_size=7), sae.reconstruct(x[:50]))


def test_round_trip(trained, tmp_path):
    sae, x, _ = trained
    sae.save(tmp_path / "p.sae")
    back = load_dictionary(tmp_path / "p.sae")
    assert isinstance(back, SparseAutoencoder) and back.k == sae.k and back.scale == sae.scale
    assert back.history == sae.history and back.params == sae.params
    torch.testing.assert_close(back.reconstruct(x[:200]), sae.reconstruct(x[:200]))


def test_training_stops_at_the_target_fve():
    x, _ = planted(n=6000)
    sae = TopKSAE(n_latents=96, k=3, lr=4e-3, batch_size=256, epochs=20, eval_every=5, target_fve=0.93,
                  progress=False).fit(x)
    assert sae.history[-1]["fve"] >= 0.93 > sae.history[0]["fve"]
    assert sae.data["steps"] < 20 * (6000 // 256) and sae.data["steps"] == sae.history[-1]["step"]
    timed = TopKSAE(n_latents=96, k=3, batch_size=256, epochs=20, max_seconds=0.0, progress=False).fit(x)
    assert timed.data["steps"] == 1 and timed.history[-1]["step"] == 1


def test_dead_latents_are_counted_and_get_the_auxk_loss():
    x, _ = planted(n=6000, m=16, k=2)
    sae = TopKSAE(n_latents=64, k=2, lr=4e-3, batch_size=256, epochs=4, eval_every=5, dead_tokens=1024,
                  progress=False).fit(x)
    assert max(h["dead"] for h in sae.history) > 0          # 64 latents for 16 atoms: many go dead
    assert any(h["aux"] > 0 for h in sae.history)           # and the AuxK loss sees them


def test_store_training_and_bad_input(tmp_path):
    from conftest import make_tiny_lab

    lab = make_tiny_lab("llama")
    text = tmp_path / "t.txt"
    text.write_text("It is a truth universally acknowledged, that a single man must be in want of a wife. " * 40)
    store = al.harvest(lab, str(text), ["blocks.1.resid_post"], tmp_path / "s.zarr", tokens=1024, seq_len=32,
                       batch_size=4, chunk_windows=8, dtype="float32", progress=False)
    src = activation_source(store, "blocks.1.resid_post", min_position=1)
    for source in (src, activation_source(store["blocks.1.resid_post"][:])):  # filtered store, tensor
        seen, rows = torch.cat(list(source.shuffled(100, seed=3))), source.head(source.n)
        assert not torch.equal(seen, rows)  # every row once, in another order
        torch.testing.assert_close(seen[seen[:, 0].argsort()], rows[rows[:, 0].argsort()], rtol=0, atol=0)
    sae = TopKSAE(n_latents=64, k=4, epochs=2, batch_size=128, min_position=1, progress=False).fit(
        store, "blocks.1.resid_post")
    assert sae.site == "blocks.1.resid_post" and sae.fingerprint == store.manifest.fingerprint
    assert sae.data["tokens"] == 1024 and sae.data["steps"] == 2 * -(-(1024 - 32) // 128)
    sae.check(lab)
    with pytest.raises(ActlabError, match="fitted on tiny-llama"):
        sae.check(make_tiny_lab("gpt2"))
    with pytest.raises(ActlabError, match="cannot exceed"):
        TopKSAE(n_latents=8, k=9)
    with pytest.raises(ActlabError, match="at least 1"):
        TopKSAE(epochs=0)
    with pytest.raises(ActlabError, match="non-empty"):
        TopKSAE().fit(torch.zeros(0, 4))
    with pytest.raises(ActlabError, match="holds a 'topk_sae' artifact"):
        from actlab.read.itda import ITDADictionary

        sae.save(tmp_path / "x.sae")
        ITDADictionary.load(tmp_path / "x.sae")
