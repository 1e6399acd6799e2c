"""KV-cache quantization: packing, codecs, the packed cache against teacher-forced fake quantization,
pre-RoPE storage, byte counts, XQuant rematerialization (tiny random models)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_lab

import actlab as al
from actlab.compress.kv import KVQuant, XQuant
from actlab.compress.kv.codecs import ChannelCodec, Sparse, TokenCodec, TokenGroupCodec, fit_levels, uniform_levels
from actlab.compress.kv.packing import pack_codes, packed_bytes, unpack_codes
from actlab.data.corpus import Corpus
from actlab.errors import ActlabError

TRAIN = Corpus("austen-head", "train", [al.data.corpus("austen", split="train").text()[:6000]])
TEST = Corpus("austen-test-head", "test", [al.data.corpus("austen", split="test").text()[:3000]])
ROPE_ARCHS = ["llama", "qwen3", "gemma3", "gpt_neox", "phi3"]


def _ids(lab, n=2, t=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, 90, (n, t), generator=g)


def _decoded_logits(lab, ids, kv, context=8):
    """Logits from a prefill of `context` tokens then one token per step through kv's packed cache."""
    with torch.inference_mode(), kv.cache(lab) as cache:
        out = [lab.model(input_ids=ids[:, :context], cache=cache).logits]
        for t in range(context, ids.shape[1]):
            out.append(lab.model(input_ids=ids[:, t:t + 1], cache=cache).logits)
        return torch.cat(out, 1), cache.memory()


def _forced_logits(lab, ids, kv):
    with torch.inference_mode(), lab.edit(kv.edits(lab)):
        return lab.model(input_ids=ids, use_cache=False).logits


# ---------------------------------------------------------------- packing and codecs
@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_unpack_roundtrip_and_size(bits):
    codes = torch.randint(0, 2 ** bits, (2, 3, 37), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape[-1] == packed_bytes(37, bits) == -(-37 * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, 37), codes)


def test_token_codec_error_within_half_a_step_and_outliers_exact():
    x = torch.randn(2, 5, 64)
    x[0, 1, 3] = 40.0
    codec = TokenCodec(4, 32, uniform_levels(4), outliers=0.05)
    enc = codec.encode(x)
    y = codec.decode(enc)
    mask = torch.zeros_like(x, dtype=torch.bool)
    Sparse.scatter(enc.outliers, mask.float())  # positions exist
    assert y[0, 1, 3] == torch.tensor(40.0).half().float()  # the spike is kept
    plain = TokenCodec(4, 32, uniform_levels(4))
    yp = plain.decode(plain.encode(x))
    step = (x.view(2, 5, 2, 32).amax(-1) - x.view(2, 5, 2, 32).amin(-1)) / 15
    assert ((yp - x).abs().view(2, 5, 2, 32) <= step[..., None] / 2 + 1e-3).all()
    assert (y - x).abs().mean() < (yp - x).abs().mean()  # excluding the spike narrows the range


def test_sparse_outliers_survive_appends_with_batches():
    torch.manual_seed(0)
    parts = []
    xs = [torch.randn(3, t, 16) for t in (4, 1, 2)]
    for x in xs:
        parts.append(Sparse.from_mask(x, x.abs() > 1.5))
    full = torch.cat(xs, 1)
    out = Sparse.cat(parts).scatter(torch.zeros_like(full))
    assert torch.equal(out, torch.where(full.abs() > 1.5, full.half().float(), torch.zeros_like(full)))


def test_channel_codec_keeps_values_outside_calibrated_range():
    lo, hi = -torch.ones(8), torch.ones(8)
    codec = ChannelCodec(3, uniform_levels(3), lo, hi, sparse=True)
    x = torch.tensor([[[0.5, 3.0, -2.0, 0.0, 0.1, -0.9, 0.99, 7.0]]])
    y = codec.decode(codec.encode(x))
    assert y[0, 0, 1] == 3.0 and y[0, 0, 2] == -2.0 and y[0, 0, 7] == 7.0
    assert ((y - x).abs() <= 1 / 7 + 1e-3).all()


def test_token_group_codec_ranges_per_channel_per_group():
    x = torch.randn(1, 10, 4)
    x[:, :4, 0] *= 100
    codec = TokenGroupCodec(4, 4, uniform_levels(4))
    y = codec.decode(codec.encode(x))
    assert (y[:, 4:, 0] - x[:, 4:, 0]).abs().max() < 0.5  # later groups do not pay for the first one's range


def test_fit_levels_recovers_planted_clusters_and_qnorm_keeps_moments():
    centres = torch.tensor([-0.8, -0.1, 0.3, 0.9])
    u = (centres[torch.randint(0, 4, (4000,))] + 0.01 * torch.randn(4000)).clamp(-1, 1)
    levels, decoded = fit_levels(u, None, 2)
    assert torch.allclose(levels, centres, atol=0.02) and torch.equal(levels, decoded)
    skew = torch.rand(5000) ** 3 * 2 - 1
    q, out = fit_levels(skew, None, 1, qnorm=True)
    deq = out[torch.bucketize(skew, (q[1:] + q[:-1]) / 2)]
    assert abs(deq.mean() - skew.mean()) < 1e-3 and abs(deq.std() - skew.std()) < 1e-3


def test_fisher_weights_pull_levels_towards_sensitive_values():
    u = torch.linspace(-1, 1, 2001)
    w = (u > 0.5).float() * 100 + 1
    assert (fit_levels(u, w, 2)[0] > 0.5).sum() > (fit_levels(u, None, 2)[0] > 0.5).sum()


# ---------------------------------------------------------------- the packed cache
@pytest.mark.parametrize("arch", ROPE_ARCHS + ["opt"])
def test_float32_cache_with_pre_rope_keys_equals_the_model(arch):
    """Keys un-rotated, stored, re-rotated on read: with nothing quantized the logits are the model's."""
    lab = make_tiny_lab(arch)
    ids = _ids(lab)
    kv = KVQuant(bits=32, pre_rope=True).calibrate(lab)
    with torch.inference_mode():
        ref = lab.model(input_ids=ids, use_cache=False).logits
    got, memory = _decoded_logits(lab, ids, kv)
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-4)
    assert memory.tokens == ids.shape[1] and memory.batch == 2


@pytest.mark.parametrize("kv", [
    KVQuant(bits=16, pre_rope=False),
    KVQuant(bits=4, keys="per_token", pre_rope=False),
    KVQuant(bits=3, pre_rope=True),
    KVQuant(bits=2, pre_rope=True, nonuniform=True, outliers=0.05, qnorm=True, sinks=2),
], ids=str)
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_cache_in_the_loop_equals_teacher_forced_fake_quant(arch, kv):
    """Per-token values and offline per-channel keys quantize each token on its own, so the packed
    cache (prefill, then one token per step) returns exactly what the fake quantization computes."""
    lab = make_tiny_lab(arch)
    kv.calibrate(lab, TRAIN, samples=4, seq_len=32, progress=False)
    ids = _ids(lab)
    forced = _forced_logits(lab, ids, kv)
    got, _ = _decoded_logits(lab, ids, kv)
    tol = 1e-3 if kv.pre_rope and kv.bits <= 8 else 1e-5  # un-rotating can move a value across a rounding edge
    close = torch.isclose(got, forced, atol=tol, rtol=1e-3).float().mean()
    assert close > 0.99
    with torch.inference_mode():
        ref = lab.model(input_ids=ids, use_cache=False).logits
    if kv.bits <= 8:
        assert not torch.allclose(got, ref, atol=1e-3)  # the quantization does something


def test_byte_count_is_read_from_the_tensors_held():
    lab = make_tiny_lab("llama")
    c = lab.catalog
    kv = KVQuant(bits=3, keys="per_token", pre_rope=False).calibrate(lab)
    ids = _ids(lab, n=2, t=20)
    _, m = _decoded_logits(lab, ids, kv)
    channels = c.n_kv_heads * c.head_dim
    per_stream = 2 * 20 * (packed_bytes(channels, 3) + c.n_kv_heads * 2 * 2)  # codes + (mid, half) fp16 per head
    levels = 2 * 2 ** 3
    assert m.total == c.n_layers * 2 * (per_stream + levels)
    assert m.fp16_kv == c.n_layers * 2 * 2 * 20 * channels * 2
    assert m.compression == pytest.approx(m.fp16_kv / m.total)


def test_kivi_residual_window_and_groups():
    lab = make_tiny_lab("llama")
    kv = KVQuant(bits=2, key_group=4, pre_rope=False, residual=3).calibrate(lab)
    ids = _ids(lab, n=1, t=17)
    with torch.inference_mode(), kv.cache(lab) as cache:
        lab.model(input_ids=ids[:, :10], cache=cache)
        stream = cache.layers[0].keys_stream
        body = unpack_codes(stream.codes, 2, stream.channels).shape[1]
        assert body % 4 == 0 and 3 <= stream.window.shape[1] < 3 + 4 and body + stream.window.shape[1] == 10
        for t in range(10, 17):
            lab.model(input_ids=ids[:, t:t + 1], cache=cache)
        assert cache.memory().tokens == 17


def test_batched_cache_equals_one_sequence_at_a_time():
    lab = make_tiny_lab("llama")
    kv = KVQuant(bits=3, nonuniform=True, outliers=0.05).calibrate(lab, TRAIN, samples=4, seq_len=32, progress=False)
    ids = _ids(lab, n=3, t=16)
    both, _ = _decoded_logits(lab, ids, kv)
    for i in range(3):
        one, _ = _decoded_logits(lab, ids[i:i + 1], kv)
        assert torch.allclose(one, both[i:i + 1], atol=1e-5)


def test_generate_with_a_packed_cache_reports_memory():
    lab = make_tiny_lab("llama")
    kv = KVQuant(bits=4, keys="per_token", pre_rope=False).calibrate(lab)
    text = lab.generate(["hello there", "a"], max_new_tokens=5, kv=kv)
    assert len(text) == 2
    memory = lab.last_cache_memory
    assert memory.tokens == lab.tokenize(["hello there", "a"])["input_ids"].shape[1] + 5 - 1
    assert memory.compression > 2


def test_cache_perplexity_agrees_with_teacher_forced_and_reports_bytes():
    lab = make_tiny_lab("llama")
    kv = KVQuant(bits=4, keys="per_token", pre_rope=False).calibrate(lab)
    r = al.eval.cache_perplexity(lab, TEST, context=12, score=8, kv=kv, max_tokens=200, progress=False)
    assert r.ppl == pytest.approx(r.teacher_forced_ppl, rel=1e-4)
    assert r.memory["compression"] > 2 and r.tokens_scored == 8 * (200 // 20)
    base = al.eval.cache_perplexity(lab, TEST, context=12, score=8, max_tokens=200, progress=False)
    plain = al.eval.perplexity(lab, TEST, seq_len=20, max_tokens=200, progress=False)
    assert base.ppl == pytest.approx(base.teacher_forced_ppl, rel=1e-5) and base.memory == {}
    assert plain.tokens_scored > base.tokens_scored


def test_perplexity_with_kv_applies_the_fake_quantization():
    lab = make_tiny_lab("llama")
    base = al.eval.perplexity(lab, TEST, seq_len=32, max_tokens=256, progress=False)
    kv = KVQuant(bits=2, keys="per_token", pre_rope=False).calibrate(lab)
    q = al.eval.perplexity(lab, TEST, seq_len=32, max_tokens=256, kv=kv, progress=False)
    assert q.ppl != base.ppl and q.edits == {"kv": kv.label}


# ---------------------------------------------------------------- XQuant
@pytest.mark.parametrize("xq", [XQuant(bits=4, mode="x"), XQuant(bits=4, mode="latent"),
                                XQuant(bits=3, cross_layer=True)], ids=str)
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_xquant_cache_equals_teacher_forced(arch, xq):
    lab = make_tiny_lab(arch)
    xq.calibrate(lab)
    ids = _ids(lab)
    forced = _forced_logits(lab, ids, xq)
    got, memory = _decoded_logits(lab, ids, xq)
    assert torch.isclose(got, forced, atol=1e-3, rtol=1e-3).float().mean() > 0.99
    c = lab.catalog
    channels = c.d_model if xq.resolved_mode(lab) == "x" else 2 * c.n_kv_heads * c.head_dim
    assert memory.codes == c.n_layers * 2 * 24 * packed_bytes(channels // (1 if channels == c.d_model else 2), xq.bits) \
        * (1 if channels == c.d_model else 2)


def test_xquant_latent_split_is_exact_and_8_bits_is_close():
    lab = make_tiny_lab("llama")
    xq = XQuant(bits=8, mode="latent").calibrate(lab)
    r = xq.layers[0]
    w = lab.model.model.layers[0].self_attn.k_proj.weight
    assert torch.allclose(r.up_k @ r.down_k.T, w, atol=1e-5)
    ids = _ids(lab)
    with torch.inference_mode():
        ref = lab.model(input_ids=ids, use_cache=False).logits
    assert (_forced_logits(lab, ids, xq) - ref).abs().max() < 0.05


def test_kv_errors_are_clear():
    lab = make_tiny_lab("llama")
    with pytest.raises(ActlabError, match="calibrate"):
        KVQuant(bits=4).edits(lab)
    with pytest.raises(ActlabError, match="bits"):
        KVQuant(bits=12)
    with pytest.raises(ActlabError, match="key_group"):
        KVQuant(keys="per_token", key_group=32)
    with pytest.raises(ActlabError, match="separate"):
        XQuant(bits=4).calibrate(make_tiny_lab("phi3"))
    with pytest.raises(ActlabError, match="calibrated on tiny-llama"):
        KVQuant(bits=4, keys="per_token", pre_rope=False).calibrate(lab).cache(make_tiny_lab("qwen3"))
