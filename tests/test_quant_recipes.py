"""Recipes, transforms and rotations on tiny random models: exactness, folding, parsing, quantization."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_lab

import actlab as al
from actlab.compress import CrossQuantizer, Recipe, hadamard, quantization_kernel, rotation, w8a8_reference
from actlab.compress.llmfp4 import fp_formats
from actlab.compress.qlinear import QuantLinear
from actlab.data.corpus import Corpus

LINEAR_ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3", "gpt_neox", "opt", "phi3"]  # gpt2 uses Conv1D
TRANSFORMS = ["smoothquant", "smoothquant(alpha=0.8,sites=attn.in+mlp.in)", "outliertune", "rotate",
              "rotate(kind=random,seed=2)", "smoothquant | rotate", "outliertune | rotate", "rotate(fold_gain=false)"]
# the head of austen:train: tokenizing the whole split with the character tokenizer would dominate
TRAIN_HEAD = Corpus("austen-head", "train", [al.data.corpus("austen", split="train").text()[:8000]])
CALIB = dict(corpus=TRAIN_HEAD, samples=4, seq_len=32, progress=False)
IDS = torch.randint(4, 100, (2, 24), generator=torch.Generator().manual_seed(1))


def _lab64(arch):
    lab = make_tiny_lab(arch)
    lab.model.double()
    return lab


def _outputs(lab, sites):
    with lab.record(sites) as rec:
        logits = lab.forward(IDS)
    return {s: rec[s] for s in sites}, logits


# ---------------------------------------------------------------- rotations
@pytest.mark.parametrize("n", [1, 2, 12, 20, 28, 36, 64, 96, 576, 640, 1536])
def test_hadamard_is_orthonormal_with_equal_magnitudes(n):
    h = hadamard(n)
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=h.dtype), atol=1e-12)
    assert torch.allclose(h.abs(), torch.full_like(h, n**-0.5))


def test_hadamard_names_the_way_out_for_impossible_orders():
    with pytest.raises(al.ActlabError, match="kind=random"):
        hadamard(22)


@pytest.mark.parametrize("kind", ["hadamard", "random"])
def test_rotations_are_orthogonal_and_seeded(kind):
    a, b, c = rotation(96, kind, 0), rotation(96, kind, 0), rotation(96, kind, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a @ a.T, torch.eye(96, dtype=a.dtype), atol=1e-12)


# ---------------------------------------------------------------- exactness of transforms
@pytest.mark.parametrize("arch", LINEAR_ARCHS)
def test_transforms_preserve_every_block_output(arch):
    lab = _lab64(arch)
    sites = lab.sites("blocks.*.attn.out") + lab.sites("blocks.*.mlp.out")
    ref, ref_logits = _outputs(lab, sites)
    # Gemma-3's norms compute in float32 whatever the model dtype: folded gains round there
    tol = 1e-5 if arch == "gemma3" else 1e-12
    for recipe in TRANSFORMS if arch in ("llama", "gemma3", "opt") else TRANSFORMS[::3]:
        qlab = Recipe.parse(recipe).calibrate(lab, **CALIB)
        got, logits = _outputs(qlab, sites)
        for s in sites:
            err = (got[s] - ref[s]).abs().max() / ref[s].abs().max()
            assert err < tol, (recipe, s, float(err))
        assert torch.allclose(logits, ref_logits, atol=tol, rtol=0)


def test_rotation_keeps_dead_norm_channels_finite():
    lab = _lab64("gemma3")
    with torch.no_grad():  # Gemma's gain is 1 + w: w = -1 kills a channel, as in gemma3-270m
        lab.model.model.layers[1].pre_feedforward_layernorm.weight[:5] = -1.0
    ref = lab.forward(IDS)
    got = Recipe.parse("rotate").calibrate(lab, **CALIB).forward(IDS)
    assert torch.isfinite(got).all() and torch.allclose(got, ref, atol=1e-5 * ref.abs().max())


def test_calibrate_leaves_the_original_lab_untouched():
    lab = _lab64("llama")
    before = {k: v.clone() for k, v in lab.model.state_dict().items()}
    Recipe.parse("smoothquant | rotate | w4a4").calibrate(lab, **CALIB)
    after = lab.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(isinstance(m, QuantLinear) for m in lab.model.modules())


def test_folds_go_where_the_papers_put_them():
    qlab = Recipe.parse("smoothquant").calibrate(_lab64("llama"), **CALIB)
    folds = qlab.quantization.groups
    assert folds["blocks.0.attn.in"] == ["scale:norm"]      # into input_layernorm
    assert folds["blocks.0.mlp.in"] == ["scale:norm"]       # into post_attention_layernorm
    assert folds["blocks.0.mlp.act"] == ["scale:rows"]      # into up_proj
    assert folds["blocks.0.attn.z"] == ["scale:rows"]       # into v_proj, tied over the 2 query heads per kv head
    ops = [q.ops for q in qlab.model.modules() if isinstance(q, QuantLinear)]
    assert all(o == [] for o in ops)                        # nothing left to run online
    neox = Recipe.parse("outliertune").calibrate(_lab64("gpt_neox"), **CALIB).quantization.groups
    assert neox["blocks.0.attn.in"] == ["shift:norm", "scale:norm"]  # LayerNorm has a bias to take the shift


def test_groups_share_inputs():
    qlab = Recipe.parse("smoothquant").calibrate(_lab64("llama"), **CALIB)
    assert set(qlab.quantization.groups) == {f"blocks.{i}.{s}" for i in range(3)
                                             for s in ("attn.in", "attn.z", "mlp.in", "mlp.act")}


# ---------------------------------------------------------------- quantization stage
def test_w8a8_layer_equals_the_reference_twin():
    lab = make_tiny_lab("llama")
    qlab = Recipe.parse("w8a8").calibrate(lab, **CALIB)
    x = torch.randn(5, 64)
    original = lab.model.model.layers[1].mlp.up_proj
    quant = qlab.model.model.layers[1].mlp.up_proj
    assert torch.allclose(quant(x), w8a8_reference(x, original), atol=1e-6)


def test_static_scales_come_from_float_inputs():
    lab = make_tiny_lab("llama")
    qlab = Recipe.parse("a8:per_tensor:static").calibrate(lab, **CALIB)
    ids = al.data.token_windows(lab.tokenizer, TRAIN_HEAD, 32, max_tokens=4 * 32).input_ids[:4]
    with lab.record("blocks.1.mlp.act") as rec:
        lab.model(input_ids=ids)
    q = qlab.model.model.layers[1].mlp.down_proj
    assert torch.allclose(q.input_quantizer._hi.flatten()[0], rec["blocks.1.mlp.act"].abs().max(), rtol=1e-6)
    assert q.weight_quantizer is None


def test_overrides_and_lm_head():
    qlab = Recipe.parse("w8a8 a16@*.down_proj w4@blocks.0.* w8@lm_head").calibrate(make_tiny_lab("llama"), **CALIB)
    layers = qlab.model.model.layers
    assert layers[1].mlp.down_proj.input_quantizer is None
    assert str(layers[1].mlp.up_proj.input_quantizer) == "int8:per_token"
    assert str(layers[0].self_attn.q_proj.weight_quantizer) == "int4:per_channel"
    assert isinstance(qlab.model.lm_head, QuantLinear) and qlab.model.lm_head.input_quantizer is None
    assert qlab.model.get_input_embeddings().weight.data_ptr() != qlab.model.lm_head.weight.data_ptr()
    by_site = Recipe.parse("w8a8 a16@blocks.*.mlp.act").calibrate(make_tiny_lab("llama"), **CALIB)
    assert by_site.model.model.layers[2].mlp.down_proj.input_quantizer is None
    assert by_site.model.model.layers[2].mlp.up_proj.input_quantizer is not None


def test_int8_kernel_matches_its_fake_quant_twin():
    lab = make_tiny_lab("llama")
    fake = Recipe.parse("smoothquant | w8a8").calibrate(lab, **CALIB)
    real = Recipe.parse("smoothquant | w8a8 kernel=int8").calibrate(lab, **CALIB)
    assert isinstance(real.model.model.layers[0].mlp.down_proj.kernel, al.compress.Int8Linear)
    a, b = fake.forward(IDS), real.forward(IDS)
    assert (a - b).abs().max() < 1e-4 * a.abs().max()
    with pytest.raises(al.ActlabError, match="kernel=int8"):
        Recipe.parse("w4a8 kernel=int8").calibrate(lab, **CALIB)


def test_quantized_lab_is_batch_invariant():
    lab = make_tiny_lab("llama")
    qlab = Recipe.parse("rotate | w4a4").calibrate(lab, **CALIB)
    prompts = ["short one", "a noticeably longer prompt here"]
    batched = qlab.forward(prompts)[:, -1]
    single = torch.cat([qlab.forward([p])[:, -1] for p in prompts])
    assert torch.allclose(batched, single, atol=1e-5)


def test_quantization_changes_outputs_and_reports_bits():
    lab = make_tiny_lab("llama")
    ref = lab.forward(IDS)
    qlab = Recipe.parse("w4:per_group:32 a4").calibrate(lab, **CALIB)
    assert not torch.allclose(qlab.forward(IDS), ref, atol=1e-6)
    assert qlab.quantization.bits["weights"] == pytest.approx(4 + 16 / 32)
    assert qlab.quantization.bits["inputs"] == ["int4:per_token"]


# ---------------------------------------------------------------- CrossQuant, LLM-FP4
def test_crossquant_scales_by_row_and_column_and_shrinks_the_kernel():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, generator=gen)
    x[:, 3] *= 100  # an outlier channel
    cq = CrossQuantizer("int8", alpha=0.15).calibrate(x)
    per_token = al.compress.Quantizer.parse("int8:per_token")
    assert quantization_kernel(x, cq(x)) < quantization_kernel(x, per_token(x))
    t, c = x.abs().amax(1, keepdim=True), x.abs().amax(0)
    scale = t**0.15 * c**0.85 / 127
    assert torch.allclose(cq(x), torch.round(x / scale).clamp(-127, 127) * scale)
    assert quantization_kernel(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 2.0])) == 0.5


def test_crossquant_recipe_uses_the_cross_quantizer():
    qlab = Recipe.parse("crossquant(alpha=0.3) | w8a8").calibrate(make_tiny_lab("llama"), **CALIB)
    q = qlab.model.model.layers[0].self_attn.q_proj.input_quantizer
    assert isinstance(q, CrossQuantizer) and q.alpha == 0.3 and q.columns is not None


def test_llmfp4_searches_fp_formats_and_keeps_pow2_factors_in_the_weights():
    assert [f.name for f in fp_formats(4)] == ["e1m2", "e2m1", "e3m0"]
    qlab = Recipe.parse("llmfp4").calibrate(make_tiny_lab("llama"), **CALIB)
    for q in (m for m in qlab.model.modules() if isinstance(m, QuantLinear)):
        assert q.weight_quantizer.format.bits == 4 and q.input_quantizer.format.bits == 4
        s = q.column_pow2
        assert torch.equal(torch.exp2(torch.log2(s).round()), s)  # powers of two
        base = q.weight / s[None, :]                                # each row: at most 15 FP4 levels x one scale
        assert max(len(torch.unique(row)) for row in base) <= 15


# ---------------------------------------------------------------- parsing
@pytest.mark.parametrize("text", [
    "smoothquant(alpha=0.5) | w8:per_channel a8:per_tensor:static", "rotate(kind=random,seed=3) | w4:per_group:64 a4",
    "outliertune | w8a8 a16@*.down_proj", "w8a8 kernel=int8", "fp", "llmfp4(w=4,a=6)",
    "crossquant(alpha=0.3) | wfp8_e4m3 afp8_e4m3:static",
])
def test_recipe_strings_round_trip(text):
    r = Recipe.parse(text)
    assert Recipe.parse(str(r)) == r


@pytest.mark.parametrize("text,match", [
    ("smothquant | w8a8", "did you mean: smoothquant"),
    ("w8a8 | rotate", "must come last"),
    ("rotate(knd=random)", "did you mean: kind"),
    ("rotate(kind=foo)", "hadamard or random"),
    ("w8 a9x", "term 'a9x'"),
    ("rotate || w8a8", "empty stage"),
    ("w4:per_group", "group size"),
    ("smoothquant(alpha=2)", r"alpha must be in \[0, 1\]"),
])
def test_bad_recipes_point_at_the_bad_part(text, match):
    with pytest.raises(al.ActlabError, match=match):
        Recipe.parse(text)


def test_recipe_files(tmp_path):
    (tmp_path / "r.yaml").write_text(
        "transforms:\n  - smoothquant: {alpha: 0.6}\n  - rotate\nweights: int4:per_group:32\ninputs: int8:per_token\n"
        "overrides:\n  '*.down_proj': {inputs: null}\n")
    (tmp_path / "r.toml").write_text('recipe = "smoothquant(alpha=0.6) | rotate | w4:per_group:32 a8 afp@*.down_proj"\n')
    assert Recipe.parse(tmp_path / "r.yaml") == Recipe.parse(tmp_path / "r.toml")
    (tmp_path / "bad.yaml").write_text("weigths: int8\n")
    with pytest.raises(al.ActlabError, match="did you mean: weights"):
        Recipe.parse(tmp_path / "bad.yaml")


# ---------------------------------------------------------------- compare and diagnostics
def test_compare_runs_every_recipe_on_one_protocol():
    lab = make_tiny_lab("llama")
    table = al.compress.compare(lab, ["fp", "w8a8", "rotate | w4a4"], "austen:test", 32, 256,
                                calibration=TRAIN_HEAD, samples=4, kl_tokens=128, progress=False)
    rows = table.rows
    assert [r["recipe"] for r in rows] == ["fp", "w8 a8", "rotate | w4 a4"]
    assert rows[0]["delta_pct"] == 0 and rows[1]["kl"] >= 0 and 0 <= rows[2]["top1"] <= 1
    assert table.protocol["seq_len"] == 32 and rows[1]["calibration"]["windows"] == 4
    assert "rotate | w4 a4" in table.to_json()


def test_diagnostics_report_every_group():
    qlab = Recipe.parse("smoothquant | w8 a8:static").calibrate(make_tiny_lab("llama"), diagnostics=True, **CALIB)
    rows = qlab.quantization.layers
    assert len(rows) == 12
    for r in rows:
        assert r["kurtosis_before"] > 0 and r["kurtosis_after"] > 0 and 0 <= r["kernel_pct"] <= 100
        assert r["absmax_after"] <= r["absmax_before"] * 10 and r["rel_mse"] >= 0
