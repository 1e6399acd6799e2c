"""The command line: tables, JSON, and one-line errors with exit code 2."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.xdist_group("embedded")


def actlab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "actlab", *args], capture_output=True, text=True, timeout=600)


def test_models_lists_the_embedded_models():
    res = actlab("models", "--json")
    assert res.returncode == 0
    data = json.loads(res.stdout)
    assert "smollm2-135m" in data["embedded"] and "gpt_neox" in data["architectures"]


@pytest.mark.embedded
def test_sites_and_ppl_json():
    res = actlab("sites", "smollm2-135m", "blocks.1-2.attn.k", "--json")
    assert res.returncode == 0 and json.loads(res.stdout) == {"blocks.1.attn.k": [3, 64], "blocks.2.attn.k": [3, 64]}
    res = actlab("ppl", "smollm2-135m", "--corpus", "austen:test", "--seq-len", "128", "--max-tokens", "256", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["kind"] == "perplexity" and out["protocol"]["seq_len"] == 128 and out["ppl"] > 1


@pytest.mark.embedded
def test_scan_json_reports_the_massive_channel():
    res = actlab("scan", "smollm2-135m", "--tokens", "256", "--seq-len", "128", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert len(out["layers"]) == 30
    assert out["layers"][15]["top_channels"][0][0] == 507


@pytest.mark.parametrize("args, message", [
    (("sites", "smolm2"), "did you mean: smollm2-135m"),
    (("sites", "smollm2-135m", "blocks.0.resid_pots"), "did you mean: blocks.0.resid_post"),
    (("ppl", "smollm2-135m", "--corpus", "austin"), "unknown corpus"),
    (("ppl", "smollm2-135m", "--seq-len", "1"), "--seq-len"),
    (("pppl",), "No such command"),
    (("fetch", "nothing"), "nothing called"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, message):
    res = actlab(*args)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.stderr
