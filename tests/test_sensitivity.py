"""FlexQ-style sensitivity (`actlab.compress.sensitivity`): units switch in place exactly, the fast
path equals calibrating each single-unit recipe, plans parse, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_lab
from test_cli import actlab
from test_quant_recipes import IDS, TRAIN_HEAD

import actlab as al
from actlab.compress import Recipe, sensitivity
from actlab.compress.sensitivity import switchable

EVAL = dict(corpus="austen:test", seq_len=32, max_tokens=256, calibration=TRAIN_HEAD, samples=4, progress=False)
RECIPE = "smoothquant | w4 a6:static"  # coarse enough that the layers differ clearly


def _lab64():
    lab = make_tiny_lab("llama")
    lab.model.double()
    return lab


def test_units_switch_on_and_off_exactly():
    lab = _lab64()
    sites = [f"blocks.{i}.resid_post" for i in range(3)]
    with lab.record(sites) as rec:
        ref = lab.forward(IDS)
    qlab, switch, units = switchable(lab, Recipe.parse(RECIPE), "layer", TRAIN_HEAD, 4, 32)
    assert list(units) == ["blocks.0", "blocks.1", "blocks.2"] and len(units["blocks.1"]) == 7
    switch.only(set())       # every unit off: the (exactly) transformed float model
    assert torch.allclose(qlab.forward(IDS), ref, atol=1e-12 * ref.abs().max(), rtol=0)
    switch.only(units["blocks.1"])
    with qlab.record(sites) as got:
        out = qlab.forward(IDS)
    assert torch.allclose(got[sites[0]], rec[sites[0]], atol=1e-12, rtol=0)  # before the unit: untouched
    assert not torch.allclose(got[sites[1]], rec[sites[1]], atol=1e-6) and not torch.allclose(out, ref, atol=1e-6)
    switch.only(set().union(*units.values()))  # every unit on: the calibrated recipe itself
    assert torch.equal(qlab.forward(IDS), Recipe.parse(RECIPE).calibrate(lab, corpus=TRAIN_HEAD, samples=4, seq_len=32,
                                                                          progress=False).forward(IDS))


def test_fast_path_equals_calibrating_each_single_unit_recipe():
    lab = make_tiny_lab("llama")
    result = sensitivity(lab, RECIPE, "layer", **EVAL)
    assert [r["unit"] for r in result.rows] == ["blocks.0", "blocks.1", "blocks.2"]
    slow = {}
    for r in result.rows:
        p = r["pattern"]
        single = Recipe.parse(f"smoothquant | w4@{p} a6:static@{p}").calibrate(
            lab, corpus=TRAIN_HEAD, samples=4, seq_len=32, progress=False)
        slow[r["unit"]] = al.eval.kl_divergence(single, None, "austen:test", 32, max_tokens=256, reference=lab,
                                                progress=False).kl_mean
        ppl = al.eval.perplexity(single, "austen:test", 32, max_tokens=256, progress=False).ppl
        assert r["kl"] == pytest.approx(slow[r["unit"]], rel=1e-4) and r["ppl"] == pytest.approx(ppl, rel=1e-6)
    assert [r["unit"] for r in result.ranking()] == sorted(slow, key=lambda u: -slow[u])
    full = al.eval.kl_divergence(Recipe.parse(RECIPE).calibrate(lab, corpus=TRAIN_HEAD, samples=4, seq_len=32,
                                                                progress=False),
                                 None, "austen:test", 32, max_tokens=256, reference=lab, progress=False).kl_mean
    assert result.full["kl"] == pytest.approx(full, rel=1e-4)


def test_plans_parse_and_name_the_most_sensitive_units():
    lab = make_tiny_lab("llama")
    result = sensitivity(lab, "w6a6", "linear", metric="ppl", **EVAL)
    assert len(result.rows) == 21 and result.protocol["seq_len"] == 32
    top = [r["unit"] for r in result.ranking()[:2]]
    plan = result.plan(a8=2)
    assert plan == f"w6 a6 a8@{top[0]} a8@{top[1]}"
    assert Recipe.parse(plan).quantizer.resolve(top[0]) == ("int6:per_channel", "int8:per_token")
    assert result.plan(threshold=-1e9).count("a8@") == 21 and result.plan(a8=0) == "w6 a6"
    assert "blocks.0.mlp.down_proj" in result.to_json()
    with pytest.raises(al.ActlabError, match="exactly one"):
        result.plan()
    with pytest.raises(al.ActlabError, match="between 0 and 21"):
        result.plan(a8=22)
    mixed = sensitivity(lab, "w6a6 a16@*.down_proj", "layer", **EVAL)  # a layer with float and int6 inputs
    assert mixed.rows[0]["inputs"] == ["fp", "int6:per_token"]
    with pytest.raises(al.ActlabError, match="not one int format"):
        mixed.plan(a8=1)


@pytest.mark.parametrize("recipe,unit,match", [
    ("llmfp4", "layer", "w/a quantization stage"),
    ("w6a6", "block", "unit must be one of layer, linear"),
    ("fp", "layer", "w/a quantization stage"),
])
def test_bad_input_is_refused(recipe, unit, match):
    with pytest.raises(al.ActlabError, match=match):
        sensitivity(make_tiny_lab("llama"), recipe, unit, **EVAL)


@pytest.mark.embedded
@pytest.mark.xdist_group("embedded")
def test_cli_sensitivity_json_and_plan():
    res = actlab("quant", "sensitivity", "smollm2-135m", "--recipe", "w6a6", "--seq-len", "32", "--max-tokens", "64",
                 "--samples", "1", "--a8", "3", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert len(out["rows"]) == 30 and out["plan"].startswith("w6 a6 a8@blocks.") and out["plan"].count("a8@") == 3


@pytest.mark.parametrize("args, message", [
    (("--recipe", "w6a6 | rotate"), "must come last"),
    (("--unit", "block"), "unit must be one of layer, linear"),
])
def test_cli_bad_input_is_one_line_and_exit_code_2(args, message):
    res = actlab("quant", "sensitivity", "smollm2-135m", *args)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and message in lines[0], res.stderr
