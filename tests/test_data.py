"""actlab.data: the austen corpus, local corpora, and the windowing protocol."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import PreTrainedTokenizerFast

import actlab.data.austen as austen_module
from actlab.data import Corpus, corpus, fetch_austen, token_windows
from actlab.data.windows import tokenize_stream
from actlab.errors import ActlabError
from bpe_text import SENTENCE, bpe_tokenizer

TEXT = SENTENCE * 8


def make_tokenizer(text: str = TEXT, vocab_size: int = 300) -> PreTrainedTokenizerFast:
    return bpe_tokenizer(text, vocab_size)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="module")
def small() -> Corpus:
    return Corpus("small", None, [TEXT, TEXT.upper()], {})


# --- austen ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def austen_home(tmp_path_factory: pytest.TempPathFactory):
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("austen needs apt-get and dpkg-deb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACTLAB_HOME", str(tmp_path_factory.mktemp("actlab_home")))
        try:
            folder = fetch_austen()
        except ActlabError as exc:  # no Debian mirror reachable: an environment problem, not a bug
            if str(exc).startswith("`apt-get download"):
                pytest.skip(str(exc))
            raise
        yield folder


def test_austen_six_novels_and_provenance(austen_home) -> None:
    provenance = json.loads((austen_home / "provenance.json").read_text())
    assert provenance["package"] == "r-cran-janeaustenr"
    assert len(provenance["deb_sha256"]) == 64
    titles = [n["title"] for n in provenance["novels"]]
    assert titles == ["Sense & Sensibility", "Pride & Prejudice", "Mansfield Park", "Emma",
                      "Northanger Abbey", "Persuasion"]
    for novel in provenance["novels"]:
        text = (austen_home / novel["file"]).read_text(encoding="utf-8")
        assert len(text) == novel["chars"] > 400_000
    everything = corpus("austen")
    assert everything.split == "all" and len(everything) == 6
    assert 3_900_000 < len(everything.text()) < 4_100_000  # DATA.md: 4.0 M characters


def test_austen_splits(austen_home) -> None:
    test, train, everything = corpus("austen:test"), corpus("austen", split="train"), corpus("austen")
    assert len(test) == 1 and test.documents[0].startswith("Persuasion")
    assert len(train) == 5 and train.documents[0].startswith("SENSE AND SENSIBILITY")
    assert train.documents + test.documents == everything.documents
    assert "Anne Elliot" in test.documents[0] and "Anne Elliot" not in train.text()
    assert test.provenance["split"] == "test" and test.provenance["split_novels"] == ["persuasion"]
    with pytest.raises(ActlabError, match="split"):
        corpus("austen:tset")
    with pytest.raises(ActlabError, match="two splits"):
        corpus("austen:test", split="train")


def test_austen_second_call_uses_cache(austen_home, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(austen_module, "_download_deb", no_download)
    assert fetch_austen() == austen_home
    assert len(corpus("austen:test")) == 1


def test_austen_without_apt_is_a_clear_error(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get on it
    with pytest.raises(ActlabError, match="apt-get"):
        fetch_austen()


# --- local corpora ----------------------------------------------------------------------------


def test_txt_jsonl_and_folder(tmp_path) -> None:
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n\n{"text": "two", "id": 3}\n', encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("third", encoding="utf-8")
    (tmp_path / "ignored.csv").write_text("x", encoding="utf-8")

    txt = corpus(str(tmp_path / "b.txt"))
    assert txt.documents == ["second"] and txt.split is None and txt.name == "b.txt"
    jsonl = corpus(tmp_path / "a.jsonl")
    assert jsonl.documents == ["one", "two"] and jsonl.text() == "one\n\ntwo"
    folder = corpus(str(tmp_path))
    assert folder.documents == ["one", "two", "second", "third"]
    assert folder.provenance["files"] == ["a.jsonl", "b.txt", "sub/c.txt"]
    assert "4 documents" in repr(folder)
    with pytest.raises(ActlabError, match="no split"):
        corpus(tmp_path / "b.txt", split="test")


def test_jsonl_bad_lines(tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": broken\n', encoding="utf-8")
    with pytest.raises(ActlabError, match="line 2"):
        corpus(bad)
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n', encoding="utf-8")
    with pytest.raises(ActlabError, match="line 2.*'text'"):
        corpus(bad)


def test_unknown_specs(tmp_path) -> None:
    with pytest.raises(ActlabError, match="austen"):
        corpus("no-such-corpus")
    (tmp_path / "x.csv").write_text("a,b", encoding="utf-8")
    with pytest.raises(ActlabError, match="neither .txt nor .jsonl"):
        corpus(tmp_path / "x.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ActlabError, match="no .txt or .jsonl"):
        corpus(tmp_path / "empty")
    with pytest.raises(ActlabError):  # no `datasets` here, or no network: either way one clear error
        corpus("hf:wikitext/wikitext-2-raw-v1")


# --- windows ----------------------------------------------------------------------------------


def test_non_overlapping_windows_tile_the_stream(tokenizer, small) -> None:
    stream = tokenize_stream(tokenizer, small.text())
    seq_len = 64
    w = token_windows(tokenizer, small, seq_len)
    n = len(stream) // seq_len
    assert w.input_ids.shape == w.loss_mask.shape == (n, seq_len)
    assert torch.equal(w.input_ids.flatten(), stream[: n * seq_len])
    assert w.protocol["tail_dropped"] == len(stream) - n * seq_len
    assert w.protocol["total_tokens"] == len(stream) and w.protocol["bos"] is False
    # every target but the first of each window is scored
    assert not w.loss_mask[:, 0].any() and w.loss_mask[:, 1:].all()
    assert w.tokens_scored == n * (seq_len - 1) == w.protocol["tokens_scored"]


def test_max_tokens(tokenizer, small) -> None:
    w = token_windows(tokenizer, small, 32, max_tokens=200)
    assert len(w) == 200 // 32 and w.protocol["tokens_in_windows"] == 192
    assert w.protocol["tail_dropped"] == 8 and w.protocol["max_tokens"] == 200
    full = token_windows(tokenizer, small, 32)
    assert torch.equal(w.input_ids, full.input_ids[: len(w)])
    assert w.protocol["tokens_sha256"] != full.protocol["tokens_sha256"]


def test_bos_windows(tokenizer, small) -> None:
    stream = tokenize_stream(tokenizer, small.text())
    w = token_windows(tokenizer, small, 33, add_bos=True)
    n = len(stream) // 32
    assert len(w) == n and w.protocol["stride"] == 32 and w.protocol["bos"] is True
    assert (w.input_ids[:, 0] == tokenizer.bos_token_id).all()
    assert torch.equal(w.input_ids[:, 1:].flatten(), stream[: n * 32])
    assert w.tokens_scored == n * 32  # with BOS every stream token is predicted once
    assert token_windows(tokenizer, small, 33).protocol["bos"] is False  # this tokenizer does not add BOS


@pytest.mark.parametrize("stride", [1, 7, 16, 31])
def test_stride_scores_each_token_once(tokenizer, small, stride) -> None:
    stream = tokenize_stream(tokenizer, small.text())
    seq_len = 32
    w = token_windows(tokenizer, small, seq_len, stride=stride, max_tokens=400)
    counts = torch.zeros(400, dtype=torch.long)
    for k in range(len(w)):
        start = k * stride
        assert torch.equal(w.input_ids[k], stream[start : start + seq_len])
        positions = w.loss_mask[k].nonzero().squeeze(-1) + start
        counts.index_add_(0, positions, torch.ones_like(positions))
    covered = w.protocol["tokens_in_windows"]
    assert covered == (len(w) - 1) * stride + seq_len and 400 - covered < stride
    assert counts[0] == 0 and (counts[1:covered] == 1).all() and (counts[covered:] == 0).all()


def test_window_errors(tokenizer, small) -> None:
    with pytest.raises(ActlabError, match="seq_len"):
        token_windows(tokenizer, small, 1)
    with pytest.raises(ActlabError, match="stride"):
        token_windows(tokenizer, small, 16, stride=17)
    with pytest.raises(ActlabError, match="stride"):
        token_windows(tokenizer, small, 16, stride=16, add_bos=True)
    with pytest.raises(ActlabError, match="fewer than one window"):
        token_windows(tokenizer, Corpus("tiny", None, ["a b c"]), 64)
    with pytest.raises(ActlabError, match="fewer than one window"):
        token_windows(tokenizer, small, 64, max_tokens=10)
