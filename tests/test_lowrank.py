"""EoRA and SVD compensation (`actlab.compress.lowrank`) on tiny models: exactness at full rank,
EoRA's optimality on the calibration inputs, recipe grammar, bits, the activation-store path."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_lab
from test_quant_recipes import CALIB, IDS, TRAIN_HEAD

import actlab as al
from actlab.compress import Recipe, eora_factors, svd_factors
from actlab.compress.calibration import observing, run_windows
from actlab.compress.qlinear import QuantLinear


def _lab64(arch="llama"):
    lab = make_tiny_lab(arch)
    lab.model.double()
    return lab


def _quantlinears(lab):
    return [m for m in lab.model.modules() if isinstance(m, QuantLinear)]


@pytest.mark.parametrize("recipe", ["w3 | svd(rank=96)", "w3 | eora(rank=96)",
                                    "rotate | w4:per_group:32 | eora(rank=96)"])
def test_full_rank_compensation_recovers_the_float_model(recipe):
    lab = _lab64()
    qlab = Recipe.parse(recipe).calibrate(lab, **CALIB)
    ref, got = lab.forward(IDS), qlab.forward(IDS)
    uncompensated = Recipe.parse(recipe.rsplit("|", 1)[0]).calibrate(lab, **CALIB).forward(IDS)
    assert not torch.allclose(uncompensated, ref, atol=1e-3)
    assert torch.allclose(got, ref, atol=1e-9 * ref.abs().max(), rtol=0)
    # rank 96 is clamped to min(in, out) per linear (64, or 32 for the k/v projections)
    assert all(q.lowrank[0].shape[0] == min(q.in_features, q.out_features) for q in _quantlinears(qlab))


def test_eora_output_error_is_at_most_svd_at_every_rank():
    lab = _lab64()
    qlab = Recipe.parse("w3").calibrate(lab, **CALIB)
    ids = al.data.token_windows(lab.tokenizer, TRAIN_HEAD, 32, max_tokens=4 * 32).input_ids[:4]
    q = qlab.model.model.layers[1].mlp.down_proj
    rows = []
    with observing([q], lambda _, x2: rows.append(x2.clone())):
        run_windows(qlab.model, ids)
    x = torch.cat(rows)                                            # [tokens, in]
    delta = (lab.model.model.layers[1].mlp.down_proj.weight - q.weight).detach()
    cov = x.T @ x / x.shape[0]
    floor = 1e-12 * float((delta @ x.T).norm())  # both reach ~0 at full rank
    for rank in range(1, 65):
        errors = {}
        for name, (a, b) in {"eora": eora_factors(delta, cov, rank), "svd": svd_factors(delta, rank)}.items():
            errors[name] = float(((delta - b @ a) @ x.T).norm())
        assert errors["eora"] <= errors["svd"] * (1 + 1e-9) + floor, (rank, errors)
        assert rank == 64 or errors["eora"] < errors["svd"]  # strictly better below full rank on real inputs
    # the recipe stage computes the same factors from the same calibration inputs
    a, b = eora_factors(delta, cov, 8)
    staged = Recipe.parse("w3 | eora(rank=8)").calibrate(lab, **CALIB).model.model.layers[1].mlp.down_proj.lowrank
    assert torch.allclose(staged[1] @ staged[0], b @ a, atol=1e-10)


def test_low_rank_factors_count_in_the_weight_bits():
    lab = make_tiny_lab("llama")
    plain = Recipe.parse("w4").calibrate(lab, **CALIB).quantization.bits["weights"]
    qlab = Recipe.parse("w4 | svd(rank=8)").calibrate(lab, **CALIB)
    linears = _quantlinears(qlab)
    extra = 16 * 8 * sum(q.in_features + q.out_features for q in linears) / sum(q.weight.numel() for q in linears)
    assert qlab.quantization.bits["weights"] == pytest.approx(plain + extra)
    assert "lowrank=8" in repr(linears[0])


def test_only_quantized_linears_get_a_residual_path():
    qlab = Recipe.parse("w4@*.down_proj | eora(rank=4)").calibrate(make_tiny_lab("llama"), **CALIB)
    assert {q.name.rsplit(".", 1)[1] for q in _quantlinears(qlab) if q.lowrank is not None} == {"down_proj"}


@pytest.mark.parametrize("text", ["rotate | w4 | eora(rank=64)", "w4:per_group:32 a8 | svd", "w3 | svd(rank=16)",
                                  "w4 | eora(rank=8,store=/tmp/some.zarr)"])
def test_compensation_recipes_round_trip(text):
    r = Recipe.parse(text)
    assert Recipe.parse(str(r)) == r and str(r) == text


@pytest.mark.parametrize("text,match", [
    ("eora(rank=16)", "put a quantization stage before it"),
    ("rotate | svd", "put a quantization stage before it"),
    ("w4 | eora | svd", "only one compensation stage"),
    ("w4 | eora | rotate", "must come last"),
    ("w4 | eora(rank=0)", "rank must be a positive integer"),
    ("w4 | eora(rnk=3)", "did you mean: rank"),
])
def test_bad_compensation_recipes(text, match):
    with pytest.raises(al.ActlabError, match=match):
        Recipe.parse(text)


def test_kernel_int8_is_refused():
    with pytest.raises(al.ActlabError, match="kernel=int8"):
        Recipe.parse("w8a8 kernel=int8 | svd(rank=4)").calibrate(make_tiny_lab("llama"), **CALIB)


def test_eora_from_store_covariance_matches_calibration(tmp_path):
    lab = make_tiny_lab("llama")
    al.harvest(lab, TRAIN_HEAD, ["blocks.0.mlp.act"], tmp_path / "s.zarr", tokens=4 * 32, seq_len=32,
               batch_size=4, dtype="float32", covariance=True, progress=False)
    only = "w3@blocks.0.mlp.down_proj"  # nothing before it is quantized: the store saw the same inputs
    a = Recipe.parse(f"{only} | eora(rank=8)").calibrate(lab, **CALIB).forward(IDS)
    b = Recipe.parse(f"{only} | eora(rank=8,store={tmp_path / 's.zarr'})").calibrate(lab, **CALIB).forward(IDS)
    assert torch.allclose(a, b, atol=1e-4 * a.abs().max())
    with pytest.raises(al.ActlabError, match="was transformed"):
        Recipe.parse(f"rotate | {only} | eora(store={tmp_path / 's.zarr'})").calibrate(lab, **CALIB)
    with pytest.raises(al.ActlabError, match="harvest it with covariance=True"):
        Recipe.parse(f"w3@blocks.0.mlp.up_proj | eora(store={tmp_path / 's.zarr'})").calibrate(lab, **CALIB)
