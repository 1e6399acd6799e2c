"""The activation store: layout, codecs, statistics against numpy, readers, verification, errors."""

import numpy as np
import pytest
import torch

import actlab as al
from actlab.store.stats import SiteStats
from conftest import make_tiny_lab

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife. ") * 40
SITES = ["blocks.0.resid_post", "blocks.2.mlp.act", "blocks.1.attn.k"]


@pytest.fixture(scope="module")
def lab():
    return make_tiny_lab("llama")


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(TEXT + "\n\n" + TEXT.upper())
    return path


def _harvest(lab, corpus_file, out, **kw):
    args = dict(tokens=2048, seq_len=32, batch_size=4, chunk_windows=8, dtype="float32", progress=False)
    return al.harvest(lab, str(corpus_file), SITES, out, **{**args, **kw})


def test_layout_matches_the_windows_and_an_in_memory_recording(lab, corpus_file, tmp_path):
    store = _harvest(lab, corpus_file, tmp_path / "s.zarr")
    m = store.manifest
    windows = al.data.token_windows(lab.tokenizer, al.data.corpus(str(corpus_file)), 32, max_tokens=2048)
    assert store.n_tokens == m.n_tokens == len(windows) * 32 and m.progress.complete
    assert np.array_equal(store.index("tokens"), windows.input_ids.flatten().numpy())
    assert np.array_equal(store.index("positions"), np.tile(np.arange(32), len(windows)))
    docs = store.index("documents")
    assert docs[0] == 0 and np.all(np.diff(docs) >= 0)  # one document after the other
    with lab.record(SITES) as rec:
        lab.forward(windows.input_ids[:4])
    for site in SITES:
        assert torch.equal(store[site][:128], rec[site])
        assert store[site].shape == (store.n_tokens, *lab.site(site).shape)
    assert m.fingerprint == lab.fingerprint.to_dict() and m.corpus["seq_len"] == 32


def test_statistics_equal_numpy_on_the_full_data(lab, corpus_file, tmp_path):
    store = _harvest(lab, corpus_file, tmp_path / "s.zarr", covariance=True)
    for site in SITES:
        x = store[site][:].reshape(store.n_tokens, -1).double().numpy()
        s = store.stats[site]
        assert s.n == x.shape[0]
        np.testing.assert_allclose(s.mean, x.mean(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(s.var, x.var(0), rtol=1e-5, atol=1e-9)
        np.testing.assert_array_equal(s.min, x.min(0))
        np.testing.assert_array_equal(s.absmax, np.abs(x).max(0))
        kurt = ((x - x.mean(0)) ** 4).mean(0) / x.var(0) ** 2
        np.testing.assert_allclose(s.kurtosis, kurt, rtol=1e-4)
        np.testing.assert_allclose(s.cov, np.cov(x.T, bias=True), rtol=1e-4, atol=1e-8)
        assert s.norm_hist.sum() == x.shape[0]
        median = np.median(np.abs(x[::8]))
        assert abs(s.abs_quantile(0.5) / median - 1) < 0.2  # 4 bins per octave: within ~19 %


def test_merge_does_not_depend_on_the_split():
    torch.manual_seed(0)
    x = torch.randn(1000, 6) * torch.tensor([1.0, 10, 100, 0.1, 1, 5]) + 3
    x[17, 2] = 5000.0
    xn = x.double().numpy()
    d = xn - xn.mean(0)
    truth = {"mean": xn.mean(0), "m2": (d**2).sum(0), "m4": (d**4).sum(0)}
    scale = np.sqrt(np.outer(truth["m2"], truth["m2"]))  # off-diagonal comoments cancel: judge by this
    for sizes in ([1000], [1, 999], [300, 300, 400], [7] * 142 + [6]):
        s = SiteStats(6, covariance=True)
        for part in x.split(sizes):
            s.merge(SiteStats.of(part, covariance=True))
        for name, expected in truth.items():
            np.testing.assert_allclose(getattr(s, name), expected, rtol=1e-5, atol=1e-9)
        assert np.all(np.abs(s.comoment - d.T @ d) <= 1e-5 * scale)
        # the third moment cancels: its error is judged against the size of its terms
        np.testing.assert_allclose(s.m3, (d**3).sum(0), atol=1e-5 * np.abs(d**3).sum(0).max())
        assert s.n == 1000 and s.norm_hist.sum() == 1000


@pytest.mark.parametrize("codec", ["float16", "bfloat16", "int8"])
def test_codecs_round_trip(lab, corpus_file, tmp_path, codec):
    exact = _harvest(lab, corpus_file, tmp_path / "f32.zarr")
    store = _harvest(lab, corpus_file, tmp_path / f"{codec}.zarr", dtype=codec)
    x, y = exact["blocks.0.resid_post"][:], store["blocks.0.resid_post"][:]
    if codec == "float16":
        assert torch.equal(y, x.half())
    elif codec == "bfloat16":
        assert torch.equal(y, x.bfloat16())
    else:
        scale = x.abs().amax(1, keepdim=True) / 127
        assert torch.all((y - x).abs() <= scale / 2 + 1e-6)
        stored = store.group["blocks.0.resid_post"]
        assert stored.dtype == np.int8 and store.group["blocks.0.resid_post.scale"].shape == (store.n_tokens,)
    err = ((y.float() - x) ** 2).sum() / (x**2).sum()
    assert store.stats["blocks.0.resid_post"].codec_relative_error == pytest.approx(err.sqrt().item(), rel=1e-4)
    assert exact.stats["blocks.0.resid_post"].codec_relative_error == 0
    assert store.stats["blocks.0.resid_post"].n == exact.stats["blocks.0.resid_post"].n  # stats from full precision
    np.testing.assert_array_equal(store.stats["blocks.0.resid_post"].max, exact.stats["blocks.0.resid_post"].max)


def test_readers_slices_batches_and_dataset(lab, corpus_file, tmp_path):
    store = _harvest(lab, corpus_file, tmp_path / "s.zarr")
    site = store["blocks.0.resid_post"]
    full = site[:]
    assert torch.equal(site[100:300], full[100:300]) and torch.equal(site[-1], full[-1])
    idx = np.array([5, 900, 3, 1500])
    assert torch.equal(site[idx], full[idx])
    with pytest.raises(IndexError):
        site[store.n_tokens]
    plain = list(store.batches("blocks.0.resid_post", batch_size=100))
    assert torch.equal(torch.cat(plain), full) and plain[0].shape[0] == 100
    a = torch.cat(list(store.batches("blocks.0.resid_post", 100, shuffle=True, seed=1, buffer_chunks=2)))
    b = torch.cat(list(store.batches("blocks.0.resid_post", 100, shuffle=True, seed=1, buffer_chunks=2)))
    c = torch.cat(list(store.batches("blocks.0.resid_post", 100, shuffle=True, seed=2, buffer_chunks=2)))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, full)
    def same_rows(x, y):  # the same multiset of rows, in any order
        (ux, cx), (uy, cy) = torch.unique(x, dim=0, return_counts=True), torch.unique(y, dim=0, return_counts=True)
        return torch.equal(ux, uy) and torch.equal(cx, cy)

    assert same_rows(a, full)
    loader = torch.utils.data.DataLoader(store.dataset("blocks.0.resid_post", 100, shuffle=False), batch_size=None)
    assert torch.equal(torch.cat(list(loader)), full)
    mixed = torch.cat(list(al.store.MixingBuffer(iter(plain), capacity=400, batch_size=50, seed=0)))
    assert same_rows(mixed, full) and not torch.equal(mixed, full)


def test_verify_names_damaged_chunks(lab, corpus_file, tmp_path):
    store = _harvest(lab, corpus_file, tmp_path / "s.zarr")
    assert store.verify().ok
    chunk_file = tmp_path / "s.zarr" / "blocks.0.resid_post" / "c" / "1" / "0"
    data = bytearray(chunk_file.read_bytes())
    data[100] ^= 0xFF
    chunk_file.write_bytes(bytes(data))
    (tmp_path / "s.zarr" / "tokens" / "c" / "3").unlink()
    report = al.open_store(tmp_path / "s.zarr").verify()
    assert not report.ok and set(report.damaged) == {("blocks.0.resid_post", 1), ("tokens", 3)}


def test_clear_errors(lab, corpus_file, tmp_path):
    out = tmp_path / "s.zarr"
    store = _harvest(lab, corpus_file, out)
    with pytest.raises(al.ActlabError, match="did you mean"):
        store["blocks.0.resid_pots"]
    with pytest.raises(al.ActlabError, match="recorded from"):
        al.open_store(out, make_tiny_lab("qwen2"))
    with pytest.raises(al.ActlabError, match="exists"):
        _harvest(lab, corpus_file, out)
    with pytest.raises(al.ActlabError, match="its seq_len differs"):
        _harvest(lab, corpus_file, out, seq_len=16, resume=True)
    with pytest.raises(al.ActlabError, match="shape varies"):
        al.harvest(lab, str(corpus_file), "blocks.0.attn.pattern", tmp_path / "p.zarr", tokens=256, seq_len=32)
    with pytest.raises(al.ActlabError, match="unknown store dtype"):
        _harvest(lab, corpus_file, tmp_path / "q.zarr", dtype="int4")
    with pytest.raises(al.ActlabError, match="multiple of batch_size"):
        _harvest(lab, corpus_file, tmp_path / "r.zarr", chunk_windows=6)
    with pytest.raises(al.ActlabError, match="not an actlab store"):
        al.open_store(tmp_path)
