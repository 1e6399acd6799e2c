"""Behaviour on the real embedded models: loading, outliers, steering, evaluation, Gemma-3."""

import pytest
import torch

import actlab as al

pytestmark = [pytest.mark.embedded, pytest.mark.xdist_group("embedded")]


def test_smollm2_loads_with_its_shape_and_fingerprint(smollm2):
    assert (smollm2.n_layers, smollm2.d_model) == (30, 576)
    assert smollm2.site("blocks.0.attn.k").shape == (3, 64)
    assert len(smollm2.sites()) == 30 * 15 + 3
    fp = smollm2.fingerprint
    assert fp.name == "smollm2-135m" and len(fp.weights_sha256) == 16
    again = al.load("smollm2-135m", dtype="bfloat16")  # the hash is of the files: same for any dtype
    assert again.fingerprint == fp and again.dtype == torch.bfloat16


def test_massive_activations_exist(smollm2):
    """Sun et al. 2024: a few residual channels reach thousands while the median stays small."""
    with smollm2.record("blocks.15.resid_post") as rec:
        smollm2.forward(["The capital of France is Paris.", "I walked home in the rain yesterday."])
    absmax = rec["blocks.15.resid_post"].abs().amax(0)
    assert absmax.argmax().item() == 507
    assert absmax.max() > 1000 and absmax.max() > 100 * absmax.median()


def test_steering_moves_generation_and_zero_alpha_does_not(smollm2):
    pos = ["I love this, it is wonderful and happy."]
    neg = ["I hate this, it is terrible and sad."]
    with smollm2.record("blocks.12.resid_post", positions="last") as rec:
        smollm2.forward(pos + neg)
    x = rec["blocks.12.resid_post"]
    direction = x[0] - x[1]
    prompt = "My day today was"
    plain = smollm2.generate(prompt, max_new_tokens=12)
    with smollm2.edit({"blocks.12.resid_post": al.edits.add(direction, alpha=0.0)}):
        assert smollm2.generate(prompt, max_new_tokens=12) == plain
    with smollm2.edit({"blocks.12.resid_post": al.edits.add(direction, alpha=2.0)}):
        steered = smollm2.generate(prompt, max_new_tokens=12)
    assert steered != plain


def test_perplexity_and_divergence_on_austen(smollm2):
    res = al.eval.perplexity(smollm2, al.data.corpus("austen", split="test"), seq_len=512, max_tokens=2048,
                             progress=False)
    assert res.tokens_scored == 4 * 511 and 5 < res.ppl < 60
    assert res.fingerprint["weights_sha256"] == smollm2.fingerprint.weights_sha256
    kl = al.eval.kl_divergence(smollm2, {"blocks.*.mlp.act": al.edits.fake_quantize(bits=4)}, "austen:test",
                               seq_len=256, max_tokens=512, progress=False)
    assert kl.kl_mean > 0.01 and kl.top1_agreement < 1.0


def test_gemma3_sites_attention_and_padding(gemma3):
    assert gemma3.site("blocks.0.attn.q").shape == (4, 256)
    assert gemma3.site("blocks.0.attn.k").shape == (1, 256)
    prompts = ["The quick brown fox", "Hello"]
    with gemma3.record(["blocks.3.attn.pattern", "blocks.3.resid_post"], positions="last") as rec:
        gemma3.forward(prompts)
    assert torch.allclose(rec["blocks.3.attn.pattern"].sum(-1), torch.ones(2, 4), atol=1e-4)
    with gemma3.record("blocks.3.resid_post", positions="last") as alone:
        gemma3.forward(prompts[1:])
    scale = alone["blocks.3.resid_post"].abs().max()
    assert torch.allclose(rec["blocks.3.resid_post"][1], alone["blocks.3.resid_post"][0], atol=1e-4 * scale)
    assert gemma3.generate(prompts, max_new_tokens=6) == [gemma3.generate(p, max_new_tokens=6) for p in prompts]


def test_loading_errors_and_references(tmp_path):
    from actlab.models.loading import resolve

    assert resolve("HuggingFaceTB/SmolLM2-135M") == ("HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M")
    with pytest.raises(al.ActlabError, match="did you mean: smollm2-135m"):
        al.load("smollm2-13m")
    with pytest.raises(al.ActlabError, match="no such GGUF"):
        al.load(str(tmp_path / "missing.gguf"))
    with pytest.raises(al.ActlabError, match="no config.json"):
        al.load(str(tmp_path))
    with pytest.raises(al.ActlabError, match="unknown dtype"):
        al.load("smollm2-135m", dtype="float8")


def test_local_folder_loads_the_same_model(smollm2):
    folder = al.load(str(smollm2.source))
    assert folder.fingerprint.weights_sha256 == smollm2.fingerprint.weights_sha256


def test_a_gguf_file_converts_once_and_matches_the_embedded_model(smollm2, tmp_path, monkeypatch):
    from actlab.models import EMBEDDED

    monkeypatch.setenv("ACTLAB_HOME", str(tmp_path))
    gguf = EMBEDDED["smollm2-135m"].gguf()
    lab = al.load(str(gguf))
    assert lab.source.parent == tmp_path / "models" and (lab.source / "model.safetensors").exists()
    prompt = ["The capital of France is"]
    assert torch.equal(lab.forward(prompt), smollm2.forward(prompt))
