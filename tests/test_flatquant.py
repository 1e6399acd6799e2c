"""FlatQuant on tiny random models: exact in float, training lowers its objective, invertible
transforms folded as documented, learned clipping reaches the quantizers, parsing."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_lab
from test_quant_recipes import CALIB, IDS, _lab64, _outputs

import actlab as al
from actlab.compress import FlatQuant, Recipe
from actlab.compress.flatquant import fit_group, kron_factors
from actlab.compress.qlinear import QuantLinear

FAST = "flatquant(steps=3,rows=64)"


def _linears(lab) -> dict[str, QuantLinear]:
    return {m.name: m for m in lab.model.modules() if isinstance(m, QuantLinear)}


@pytest.mark.parametrize("arch", ["llama", "qwen3", "opt"])
@pytest.mark.parametrize("recipe", [FAST, "flatquant(steps=3,rows=64,init=hadamard,clip=false)", f"rotate | {FAST}"])
def test_flatquant_preserves_every_block_output_in_float(arch, recipe):
    lab = _lab64(arch)
    sites = lab.sites("blocks.*.attn.out") + lab.sites("blocks.*.mlp.out")
    ref, ref_logits = _outputs(lab, sites)
    got, logits = _outputs(Recipe.parse(recipe).calibrate(lab, **CALIB), sites)
    for s in sites:
        assert (got[s] - ref[s]).abs().max() / ref[s].abs().max() < 1e-10, s
    assert torch.allclose(logits, ref_logits, atol=1e-10, rtol=0)


def test_training_lowers_the_group_objective():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 96, generator=gen)
    x[:, 5] *= 40  # an outlier channel
    w = torch.randn(64, 96, generator=gen) * 0.1
    for init in ("identity", "hadamard"):
        fit = fit_group(x, w, steps=40, lr=1e-2, init=init)
        assert fit.loss_end < 0.9 * fit.loss_start, (init, fit.loss_start, fit.loss_end)
        assert torch.linalg.cond(fit.matrix) < 1e4
        assert fit.weight_clip.shape == (64,) and 0 < fit.input_clip < 1


def test_learned_transform_is_invertible_and_folds_into_the_weights():
    lab = _lab64("llama")
    qlab = Recipe.parse(FAST).calibrate(lab, **CALIB)
    assert all(v == ["transform:online"] for v in qlab.quantization.groups.values())  # nothing folded elsewhere
    original = dict(lab.model.named_parameters())
    prefix = lab.adapter.layers + "."
    for name, q in _linears(qlab).items():
        (kind, m), = q.ops                                   # one online matrix: diag(1/c) (P1 ⊗ P2)
        assert kind == "matmul" and torch.linalg.cond(m) < 1e6
        w0 = original[prefix + name.removeprefix("blocks.") + ".weight"]
        assert torch.allclose(q.weight @ m.T, w0, atol=1e-10)  # W' = W M^-T
        assert q.weight_clip.shape == (q.out_features,) and 0 < q.input_clip < 1


def test_learned_clipping_reaches_the_quantization_stage():
    lab = make_tiny_lab("llama")
    fq = Recipe.parse(f"{FAST} | fp").calibrate(lab, **CALIB)
    qlab = Recipe.parse(f"{FAST} | w4a4").calibrate(lab, **CALIB)
    explicit = Recipe.parse(f"{FAST} | w4 a4:clip=0.5").calibrate(lab, **CALIB)
    name = "blocks.1.mlp.up_proj"
    f, q = _linears(fq)[name], _linears(qlab)[name]
    assert q.input_quantizer.clip == pytest.approx(f.input_clip)
    assert _linears(explicit)[name].input_quantizer.clip == 0.5   # the recipe's own clip wins
    bound = f.weight.abs().amax(1) * f.weight_clip
    assert torch.allclose(q.weight.abs().amax(1), bound, rtol=1e-5)  # rows clamped, then absmax-quantized
    assert not torch.allclose(qlab.forward(IDS), lab.forward(IDS), atol=1e-4)


def test_kron_factors_and_impossible_hadamard_starts():
    assert kron_factors(576) == (24, 24) and kron_factors(1536) == (32, 48) and kron_factors(96) == (8, 12)
    assert kron_factors(13) == (1, 13)
    with pytest.raises(al.ActlabError, match="no Hadamard matrix of order 13.*init=identity"):
        fit_group(torch.randn(8, 13), torch.randn(4, 13), steps=1, init="hadamard")


@pytest.mark.parametrize("text", [
    "flatquant | w4a4", "flatquant(w=4,a=4,steps=50,lr=0.01,clip=false,init=hadamard,sites=attn.in+mlp.in) | w4a4",
    "rotate | flatquant(rows=128) | w4:clip=mse a4",
])
def test_flatquant_recipes_round_trip(text):
    r = Recipe.parse(text)
    assert Recipe.parse(str(r)) == r
    assert isinstance(next(s for s in r.stages if isinstance(s, FlatQuant)), FlatQuant)


@pytest.mark.parametrize("text,match", [
    ("flatquant(w=9)", r"w must be an integer number of bits in 2\.\.8"),
    ("flatquant(a=4.5)", "a must be an integer"),
    ("flatquant(steps=-1)", "steps must be an integer >= 0"),
    ("flatquant(lr=0)", "lr must be a positive number"),
    ("flatquant(clip=maybe)", "clip must be true or false"),
    ("flatquant(init=random)", "init must be identity or hadamard"),
    ("flatquant(sites=mlp)", "unknown site 'mlp'"),
    ("flatquant(step=5)", "did you mean: steps"),
])
def test_bad_flatquant_arguments(text, match):
    with pytest.raises(al.ActlabError, match=match):
        Recipe.parse(text)
