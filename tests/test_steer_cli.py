"""`actlab steer`: train → save → GGUF → generate → eval on the embedded model, and one-line errors."""

import json

import pytest
from test_cli import actlab

import actlab as al

pytestmark = [pytest.mark.embedded, pytest.mark.xdist_group("embedded")]


def test_train_generate_eval(tmp_path):
    out, gguf = tmp_path / "v.steer", tmp_path / "v.gguf"
    res = actlab("steer", "train", "smollm2-135m", "--pairs", "sentiment:test", "--read", "mean",
                 "--sites", "blocks.8-9.resid_post", "--out", str(out), "--gguf", str(gguf))
    assert res.returncode == 0, res.stderr
    vec = al.steer.SteeringVector.load(out)
    assert vec.sites == ["blocks.8.resid_post", "blocks.9.resid_post"] and vec.data["split"]["name"] == "test"
    assert al.steer.SteeringVector.from_gguf(gguf).sites == vec.sites
    res = actlab("steer", "generate", "smollm2-135m", "--vector", str(gguf), "--alpha", "2",
                 "--prompt", "My day was", "--max-new-tokens", "5")
    assert res.returncode == 0, res.stderr
    assert "unsteered" in res.stdout and "steered (alpha 2)" in res.stdout
    res = actlab("steer", "eval", "smollm2-135m", "--vector", str(out), "--alpha", "1", "--metric", "none",
                 "--max-tokens", "128", "--seq-len", "64", "--json")
    assert res.returncode == 0, res.stderr
    effect = json.loads(res.stdout)
    assert effect["kind"] == "steering_effect" and effect["kl_mean"] > 0
    assert set(effect["baseline"]) == {"next-token entropy"}


def test_bad_input_is_one_line():
    res = actlab("steer", "train", "smollm2-135m", "--method", "lda")
    assert res.returncode == 2 and "unknown method" in res.stderr and "Traceback" not in res.stderr
    res = actlab("steer", "eval", "smollm2-135m", "--vector", "/nonexistent.steer")
    assert res.returncode == 2 and "not an actlab artifact" in res.stderr


def test_search_ranks_layers_and_saves_the_best(tmp_path):
    out = tmp_path / "best.steer"
    res = actlab("steer", "search", "smollm2-135m", "--pairs", "sentiment:test", "--metric", "none",
                 "--sites", "blocks.4-6.resid_post", "--out", str(out), "--json")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    ranked = [r["separation"] for r in result["layers"]]
    assert len(ranked) == 3 and ranked == sorted(ranked, reverse=True)
    assert al.steer.SteeringVector.load(out).sites == [result["chosen"]["site"]] == [result["layers"][0]["site"]]
