"""actlab.eval on a tiny random Llama: exactness against HF's own loss, batching, KL, entropy, JSON."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import actlab.eval as ev
from actlab import Lab
from actlab.data import Corpus, token_windows
from actlab.errors import ActlabError
from bpe_text import SENTENCE, bpe_tokenizer

TEXT = SENTENCE
CORPUS = Corpus("pride", None, [TEXT * 6, TEXT.upper() * 6, TEXT[::-1] * 6], {})
DOUBLE_LOGITS = {"logits": lambda activation, ctx: activation * 2.0}  # an edit as DESIGN §2 defines it


def make_tokenizer() -> PreTrainedTokenizerFast:
    return bpe_tokenizer(TEXT)


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(config).to(torch.float32)
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def make_lab():
    """The one place that builds labs from in-memory models."""

    def build(model, tokenizer, name: str = "tiny-llama"):
        return Lab.from_model(model, tokenizer, name=name)

    return build


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="module")
def lab(make_lab, tokenizer):
    return make_lab(tiny_llama(len(tokenizer)), tokenizer)


def hf_loss(model, input_ids: torch.Tensor) -> float:
    with torch.no_grad():
        return model(input_ids=input_ids, labels=input_ids).loss.item()


def test_perplexity_matches_hf_loss_single_window(lab) -> None:
    result = ev.perplexity(lab, CORPUS, seq_len=64, max_tokens=64, progress=False)
    windows = token_windows(lab.tokenizer, CORPUS, 64, max_tokens=64)
    assert len(windows) == 1 and result.tokens_scored == 63
    assert result.ppl == pytest.approx(math.exp(hf_loss(lab.model, windows.input_ids)), rel=1e-5)


def test_perplexity_many_windows_and_batching(lab) -> None:
    windows = token_windows(lab.tokenizer, CORPUS, 48)
    assert len(windows) >= 5
    # equal-length windows: the mean NLL is the mean of HF's per-window losses
    expected = sum(hf_loss(lab.model, w[None]) for w in windows.input_ids) / len(windows)
    one = ev.perplexity(lab, CORPUS, seq_len=48, batch_size=1, progress=False)
    four = ev.perplexity(lab, CORPUS, seq_len=48, batch_size=4, progress=False)
    assert one.nll_mean == pytest.approx(expected, rel=1e-5)
    assert four.ppl == pytest.approx(one.ppl, rel=1e-5)
    assert one.protocol == four.protocol and ev.same_protocol(one, four)
    assert not ev.same_protocol(one, ev.perplexity(lab, CORPUS, seq_len=32, progress=False))


def test_stride_protocol_matches_hf_recipe(lab) -> None:
    """The sliding-window recipe of the HF perplexity guide, limited to full windows."""
    seq_len, stride = 40, 16
    result = ev.perplexity(lab, CORPUS, seq_len=seq_len, stride=stride, max_tokens=300, progress=False)
    stream = lab.tokenizer(CORPUS.text(), add_special_tokens=False, return_tensors="pt").input_ids[:, :300]
    nll_sum, n_scored, prev_end = 0.0, 0, 0
    for begin in range(0, stream.shape[1] - seq_len + 1, stride):
        end = begin + seq_len
        target_len = end - prev_end
        input_ids = stream[:, begin:end]
        labels = input_ids.clone()
        labels[:, :-target_len] = -100
        n = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            nll_sum += lab.model(input_ids=input_ids, labels=labels).loss.item() * n
        n_scored += n
        prev_end = end
    assert result.tokens_scored == n_scored == prev_end - 1
    assert result.nll_mean == pytest.approx(nll_sum / n_scored, rel=1e-5)


def test_perplexity_with_edits_and_spec_errors(lab) -> None:
    plain = ev.perplexity(lab, CORPUS, seq_len=64, progress=False)
    edited = ev.perplexity(lab, CORPUS, seq_len=64, edits=DOUBLE_LOGITS, progress=False)
    assert edited.ppl != pytest.approx(plain.ppl, rel=1e-3)
    assert edited.edits is not None and plain.edits is None
    assert ev.perplexity(lab, CORPUS, seq_len=64, progress=False).ppl == plain.ppl  # hooks were removed
    with pytest.raises(ActlabError):
        ev.perplexity(lab, "no-such-corpus", progress=False)


def test_kl_of_reference_with_itself_is_zero(lab, make_lab) -> None:
    same = ev.kl_divergence(lab, None, CORPUS, seq_len=32, max_tokens=256, progress=False)
    assert same.kl_mean == 0.0 and same.top1_agreement == 1.0 and same.tokens == 8 * 32
    twin = make_lab(copy.deepcopy(lab.model), lab.tokenizer, name="twin")
    result = ev.kl_divergence(twin, None, CORPUS, seq_len=32, max_tokens=256, reference=lab, progress=False)
    assert result.kl_mean < 1e-6 and result.top1_agreement == 1.0
    assert result.reference_fingerprint["name"] == "tiny-llama" and result.fingerprint["name"] == "twin"


def test_kl_of_perturbed_model_and_edits(lab, make_lab) -> None:
    perturbed = copy.deepcopy(lab.model)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    other = make_lab(perturbed, lab.tokenizer, name="perturbed")
    result = ev.kl_divergence(other, None, CORPUS, seq_len=32, max_tokens=256, reference=lab, progress=False)
    assert result.kl_mean > 1e-3 and 0.0 <= result.top1_agreement <= 1.0
    q = result.kl_quantiles
    assert 0 <= q["p50"] <= q["p90"] <= q["p99"] <= q["max"] and result.kl_std > 0
    # sharper logits (×2) keep the argmax: KL > 0, agreement exactly 1
    edited = ev.kl_divergence(lab, DOUBLE_LOGITS, CORPUS, seq_len=32, max_tokens=256, batch_size=3, progress=False)
    assert edited.kl_mean > 1e-3 and edited.top1_agreement == 1.0 and "logits" in edited.edits


def test_results_round_trip_json(lab) -> None:
    results = [
        ev.perplexity(lab, CORPUS, seq_len=32, max_tokens=128, progress=False),
        ev.kl_divergence(lab, DOUBLE_LOGITS, CORPUS, seq_len=32, max_tokens=128, progress=False),
        ev.entropy(lab, CORPUS, seq_len=32, max_tokens=128, progress=False),
    ]
    for result in results:
        data = json.loads(result.to_json())
        assert data["kind"] == result.kind and data["protocol"]["seq_len"] == 32
        assert data["fingerprint"] == lab.fingerprint.to_dict() and data["fingerprint"]["name"] == "tiny-llama"
        back = type(result).from_json(result.to_json())
        assert back == result
        assert ev.result_from_dict(data) == ev.result_from_json(result.to_json()) == result
        text = str(result)
        assert result.kind in text and "tiny-llama" in text
    with pytest.raises(ActlabError):
        ev.EntropyResult.from_json(results[0].to_json())


def test_entropy_of_uniform_logits_is_log_vocab(lab, make_lab) -> None:
    model = copy.deepcopy(lab.model)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    uniform = make_lab(model, lab.tokenizer, name="uniform")
    vocab = model.config.vocab_size
    on_corpus = ev.entropy(uniform, CORPUS, seq_len=32, max_tokens=128, progress=False)
    assert on_corpus.entropy_mean == pytest.approx(math.log(vocab), rel=1e-6) and on_corpus.tokens == 128
    on_prompts = ev.entropy(uniform, ["a truth", "It is"], progress=False)
    assert on_prompts.entropy_mean == pytest.approx(math.log(vocab), rel=1e-6) and on_prompts.tokens == 2


def test_entropy_prompts_batched_equals_single(lab) -> None:
    prompts = ["It is a truth", "a single man", "in want of a wife", "It is a truth universally", "man"]
    one = ev.entropy(lab, prompts, batch_size=1, progress=False)
    many = ev.entropy(lab, prompts, batch_size=4, progress=False)
    assert one.tokens == many.tokens == 5 and one.protocol["positions"] == "last"
    assert many.entropy_mean == pytest.approx(one.entropy_mean, rel=1e-5)
    assert 0 < one.entropy_mean < math.log(lab.model.config.vocab_size)
    with pytest.raises(ActlabError):
        ev.entropy(lab, [], progress=False)
