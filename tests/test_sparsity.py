"""PPL-p% activation sparsity (arXiv 2411.02335): CETT by hand, the truncation edit, the search, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from rich.console import Console
from typer.testing import CliRunner

from actlab.cli.sparsity_commands import register
from actlab.data import Corpus, token_windows
from actlab.errors import ActlabError
from actlab.eval.perplexity import perplexity
from actlab.read.sparsity import (
    CettTruncation, LayerCalibration, SparsityResult, calibrate, down_projection, ppl_sparsity, truncation_edits,
)
from conftest import make_tiny_lab

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife. However little known the feelings or views of such a man may be. ") * 12
CORPUS = Corpus("austen-snippet", None, [TEXT, TEXT.upper()], {})


def _hand_cett(acts: torch.Tensor, weight: torch.Tensor, threshold: float) -> float:
    """CETT with explicit loops over tokens and neurons (sums in float64, magnitudes in float32 as compared)."""
    magnitudes = acts.abs() * weight.norm(dim=0)
    acts, weight = acts.double(), weight.double()
    ratios = []
    for t, a in enumerate(acts):
        full = torch.zeros(weight.shape[0], dtype=torch.float64)
        tail = torch.zeros(weight.shape[0], dtype=torch.float64)
        for i in range(a.shape[0]):
            contribution = a[i] * weight[:, i]
            full += contribution
            if float(magnitudes[t, i]) <= threshold:
                tail += contribution
        ratios.append(float(tail.norm() / full.norm()))
    return sum(ratios) / len(ratios)


def test_threshold_realizes_the_target_cett_by_hand():
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(40, 48, generator=gen) * torch.rand(48, generator=gen) * 3
    acts[acts.abs() < 0.1] = 0.0  # exact zeros, as ReLU would give
    weight = torch.randn(16, 48, generator=gen)
    layer = LayerCalibration(acts, weight)
    for target in (0.0, 0.05, 0.2, 0.5):
        threshold, realized = layer.threshold(target)
        assert realized == pytest.approx(_hand_cett(acts, weight, threshold), abs=1e-5)
        assert realized <= target
        above = layer.candidates[layer.candidates > threshold]
        assert layer.cett(float(above[0])) > target  # the next candidate overshoots
        assert realized > target - 0.02  # and the grid is fine enough to land close
    assert layer.threshold(0.0)[0] == 0.0
    assert layer.threshold(1.0)[1] == pytest.approx(1.0)  # everything truncated


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "opt", "gemma3"])
def test_down_projection_reproduces_mlp_out(arch):
    lab = make_tiny_lab(arch)
    with lab.record(["blocks.1.mlp.act", "blocks.1.mlp.out"]) as rec:
        lab.forward(["a small prompt", "another one"])
    module = lab.model.get_submodule(lab.site("blocks.1.mlp.act").module)
    bias = 0 if module.bias is None else module.bias.detach()
    expected = rec["blocks.1.mlp.act"] @ down_projection(lab, 1).T + bias
    torch.testing.assert_close(expected, rec["blocks.1.mlp.out"], atol=1e-5, rtol=1e-4)


def test_cett_zero_leaves_logits_identical(tiny_lab):
    ids = token_windows(tiny_lab.tokenizer, CORPUS, 32, max_tokens=96).input_ids
    layers = calibrate(tiny_lab, ids)
    thresholds = [layer.threshold(0.0)[0] for layer in layers]
    dense = tiny_lab.forward(ids)
    with tiny_lab.edit(truncation_edits(tiny_lab, thresholds)):
        sparse = tiny_lab.forward(ids)
    assert torch.equal(dense, sparse)


def test_edit_realizes_the_calibrated_cett_and_counts_truncations():
    lab = make_tiny_lab("llama")  # no down-projection bias: mlp.out is the neurons' sum
    ids = token_windows(lab.tokenizer, CORPUS, 32, max_tokens=128).input_ids
    layer = calibrate(lab, ids)[1]
    threshold, realized = layer.threshold(0.3)
    edit = CettTruncation(threshold=threshold, column_norms=down_projection(lab, 1).norm(dim=0))
    sites = ["blocks.1.mlp.act", "blocks.1.mlp.out"]
    with lab.record(sites) as dense:
        lab.forward(ids)
    with lab.edit({"blocks.1.mlp.act": edit}), lab.record(sites) as sparse:
        lab.forward(ids)
    out, cut = dense["blocks.1.mlp.out"], sparse["blocks.1.mlp.out"]
    assert float(((out - cut).norm(dim=-1) / out.norm(dim=-1)).mean()) == pytest.approx(realized, abs=1e-4)
    mask = dense["blocks.1.mlp.act"].abs() * edit.column_norms <= threshold
    assert edit.truncated == int(mask.sum()) and edit.total == mask.numel()
    assert torch.equal(sparse["blocks.1.mlp.act"] == 0, mask | (dense["blocks.1.mlp.act"] == 0))


def test_search_brackets_the_largest_cett_within_p():
    lab = make_tiny_lab("llama")
    p, kwargs = 0.2, dict(seq_len=32, max_tokens=512)
    result = ppl_sparsity(lab, CORPUS, p, calibration_tokens=128, tolerance=0.02, progress=False, **kwargs)
    limit = result.ppl_dense * (1 + p / 100)
    assert result.ppl_dense == pytest.approx(perplexity(lab, CORPUS, progress=False, **kwargs).ppl)
    again = perplexity(lab, CORPUS, edits=result, progress=False, **kwargs).ppl  # the result is its edits
    assert again == pytest.approx(result.ppl) and again <= limit
    assert result.cett_rejected is not None and 0 < result.cett_rejected - result.cett <= 0.02
    rejected = next(s for s in result.steps if s.cett == result.cett_rejected)
    assert perplexity(lab, CORPUS, edits=truncation_edits(lab, rejected.thresholds), progress=False, **kwargs).ppl > limit
    assert all(s.accepted == (s.ppl <= limit) for s in result.steps)
    assert len(result.steps) == 6 and [s.cett for s in result.steps][:2] in ([0.5, 0.25], [0.5, 0.75])
    assert result.activation_ratio == pytest.approx(sum(result.layer_activation_ratio) / lab.n_layers)
    assert all(0 < r <= 1 for r in result.layer_activation_ratio)
    assert SparsityResult.from_json(result.to_json()) == result
    assert "activation ratio" in str(result)


def test_bad_input_is_a_clear_error():
    lab = make_tiny_lab("llama")
    with pytest.raises(ActlabError, match="p .* must be positive"):
        ppl_sparsity(lab, CORPUS, p=0, seq_len=32, max_tokens=128)
    with pytest.raises(ActlabError, match="tolerance"):
        ppl_sparsity(lab, CORPUS, p=1, seq_len=32, max_tokens=128, tolerance=1.0)
    with pytest.raises(ActlabError, match="one threshold per block"):
        truncation_edits(lab, [0.1])
    with pytest.raises(ActlabError, match="do not fit"):
        LayerCalibration(torch.zeros(4, 8), torch.zeros(3, 7))


def _cli(lab) -> typer.Typer:
    app = typer.Typer()
    register(app, Console(), Console(stderr=True), lambda model, dtype: lab)
    return app


def test_cli_prints_json_and_tables(tmp_path):
    text = tmp_path / "snippet.txt"
    text.write_text(TEXT)
    lab = make_tiny_lab("llama")
    args = ["sparsity", "tiny", "--p", "1", "--corpus", str(text), "--seq-len", "32", "--max-tokens", "256",
            "--calibration-tokens", "64", "--tolerance", "0.1"]
    res = CliRunner().invoke(_cli(lab), [*args, "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["kind"] == "ppl_sparsity" and data["p"] == 1 and len(data["layer_activation_ratio"]) == lab.n_layers
    res = CliRunner().invoke(_cli(lab), args)
    assert res.exit_code == 0 and "PPL-1% per layer" in res.stdout


def test_cli_bad_input():
    res = CliRunner().invoke(_cli(make_tiny_lab("llama")), ["sparsity", "tiny", "--p", "0"])
    assert isinstance(res.exception, ActlabError) and "--p must be positive" in str(res.exception)


@pytest.mark.embedded
@pytest.mark.xdist_group("embedded")
def test_smollm2_has_activation_sparsity_within_p(smollm2):
    result = ppl_sparsity(smollm2, "austen:test", p=5.0, seq_len=128, max_tokens=256, calibration_tokens=128,
                          tolerance=0.1, progress=False)
    assert result.ppl <= result.ppl_dense * 1.05 and result.cett_rejected is not None
    assert 0.2 < result.activation_ratio < 0.95  # a SiLU model is far from dense at 5 %
    assert all(0 < r < 1 for r in result.layer_activation_ratio)
