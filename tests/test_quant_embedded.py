"""Recipes on the embedded SmolLM2: exact transforms at d_model 576 / 1536 (not powers of two),
the transforms fixing static W8A8, and `actlab quant eval|compare`."""

import json

import pytest
import torch
from test_cli import actlab

import actlab as al
from actlab.compress import Recipe

pytestmark = [pytest.mark.embedded, pytest.mark.xdist_group("embedded")]
SMALL = dict(corpus="austen:train", samples=4, seq_len=256, progress=False)


def test_transforms_are_exact_on_smollm2(smollm2):
    ids = torch.tensor([al.data.token_windows(smollm2.tokenizer, "austen:test", 64).input_ids[0].tolist()])
    ref = smollm2.forward(ids)
    for recipe in ("smoothquant | rotate", "outliertune"):
        got = Recipe.parse(recipe).calibrate(smollm2, **SMALL).forward(ids)
        assert (got - ref).abs().max() < 2e-3 * ref.abs().max(), recipe  # float32 rounding through 30 blocks


def test_transforms_fix_static_w8a8_on_smollm2(smollm2):
    def ppl(recipe):
        qlab = Recipe.parse(recipe).calibrate(smollm2, **SMALL)
        return al.eval.perplexity(qlab, "austen:test", 256, max_tokens=1024, progress=False).ppl

    base = al.eval.perplexity(smollm2, "austen:test", 256, max_tokens=1024, progress=False).ppl
    naive, fixed = ppl("w8 a8:static"), ppl("smoothquant | rotate | w8 a8:static")
    assert naive > 1.3 * base          # the massive activations break per-tensor scales
    assert fixed < 1.1 * base < naive


def test_quant_cli(tmp_path):
    res = actlab("quant", "eval", "smollm2-135m", "--recipe", "smoothquant | w8a8", "--samples", "2", "--seq-len", "128",
                 "--max-tokens", "512", "--kl-tokens", "256", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["rows"]
    assert [r["recipe"] for r in rows] == ["fp", "smoothquant | w8 a8"]
    assert rows[0]["delta_pct"] == 0 and abs(rows[1]["delta_pct"]) < 10 and rows[1]["top1"] > 0.8
    recipe = tmp_path / "r.toml"
    recipe.write_text('recipe = "rotate | w4a4"\n')
    res = actlab("quant", "compare", "smollm2-135m", "--recipes", "w8a8", str(recipe), "--samples", "2",
                 "--seq-len", "128", "--max-tokens", "256", "--kl-tokens", "0")
    assert res.returncode == 0, res.stderr
    assert "rotate | w4 a4" in res.stdout and "ΔPPL" in res.stdout


def test_quant_cli_bad_recipe_is_one_line():
    res = actlab("quant", "eval", "smollm2-135m", "--recipe", "smothquant | w8a8")
    assert res.returncode == 2 and "did you mean: smoothquant" in res.stderr and "Traceback" not in res.stderr
