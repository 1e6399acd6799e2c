"""KV-cache methods on the embedded SmolLM2: KVQuant's features rank as the paper says, the
packed cache agrees with fake quantization, and `actlab kv compare`."""

import json

import pytest
from test_cli import actlab

import actlab as al
from actlab.compress.kv import KVQuant
from actlab.compress.kv.presets import kv_method

pytestmark = [pytest.mark.embedded, pytest.mark.xdist_group("embedded")]
EVAL = dict(seq_len=256, max_tokens=1024, progress=False)


def test_per_channel_pre_rope_keys_beat_per_token_keys_at_3_bits(smollm2):
    """KVQuant's central claim: keys have outlier channels, so per-channel key quantization
    (before RoPE) beats per-token key quantization at the same bits."""
    base = al.eval.perplexity(smollm2, "austen:test", **EVAL).ppl
    per_token = KVQuant(bits=3, keys="per_token", pre_rope=False).calibrate(smollm2)
    per_channel = KVQuant(bits=3).calibrate(smollm2, "austen:train", samples=2, seq_len=256, progress=False)
    a = al.eval.perplexity(smollm2, "austen:test", kv=per_token, **EVAL).ppl
    b = al.eval.perplexity(smollm2, "austen:test", kv=per_channel, **EVAL).ppl
    assert base < b < a


def test_packed_cache_agrees_with_fake_quant_on_smollm2(smollm2):
    """The two protocols measure the same error: bit-exact agreement is impossible (a decode step's
    one-row matmul differs from a full pass in the last float bits, which can flip a 3-bit rounding
    or a top-k outlier choice), so their gap must be small against the quantization's own effect."""
    kv = kv_method("kvquant3(fisher=false)").calibrate(smollm2, "austen:train", samples=2, seq_len=256, progress=False)
    r = al.eval.cache_perplexity(smollm2, "austen:test", context=96, score=32, kv=kv, max_tokens=512, progress=False)
    base = al.eval.cache_perplexity(smollm2, "austen:test", context=96, score=32, max_tokens=512, progress=False)
    effect = abs(r.teacher_forced_ppl - base.ppl)
    assert effect > 0.01 * base.ppl
    assert abs(r.ppl - r.teacher_forced_ppl) < 0.35 * effect
    assert r.memory["compression"] > 4


def test_kv_cli_compare_json():
    res = actlab("kv", "compare", "smollm2-135m", "--methods", "kv16", "pertoken4", "--samples", "1",
                 "--seq-len", "128", "--max-tokens", "256", "--context", "48", "--score", "16",
                 "--cache-tokens", "128", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    rows = {r["method"]: r for r in data["rows"]}
    assert rows["kv16"]["compression"] == pytest.approx(1.0) and abs(rows["kv16"]["delta_pct"]) < 0.1
    assert 3 < rows["pertoken4"]["compression"] < 4 and rows["pertoken4"]["delta_pct"] > rows["kv16"]["delta_pct"]


def test_kv_cli_bad_method_is_one_line():
    res = actlab("kv", "compare", "smollm2-135m", "--methods", "kvqant3")
    assert res.returncode == 2 and "did you mean" in res.stderr and "Traceback" not in res.stderr
