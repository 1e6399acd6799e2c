"""Logit lens: the last layer equals the model's logits on every architecture, batches equal single
prompts, targets are ranked right; the latent-language analysis reads the same lens."""

import json

import pytest
import torch

from conftest import make_tiny_lab

from actlab.errors import ActlabError
from actlab.read.languages import CODES, LANGUAGES, WORDS, first_token, latent_language, translation_prompts
from actlab.read.lens import LogitLens, lens_sites, residuals, unembed

PROMPTS = ["hello world", "ab", "The quick brown fox"]


def test_last_layer_is_the_models_logits(tiny_lab):
    resid, prompt_of, position_of = residuals(tiny_lab, PROMPTS, positions="all", batch_size=3, progress=False)
    assert resid.shape == (sum(len(p) for p in PROMPTS), tiny_lab.n_layers + 1, tiny_lab.d_model)
    lens_logits = unembed(tiny_lab, resid[:, -1])
    reference = []
    for p in PROMPTS:  # one prompt at a time, no padding: the model's own logits
        reference.append(tiny_lab.forward([p])[0])
    reference = torch.cat(reference)
    torch.testing.assert_close(lens_logits, reference.float(), rtol=1e-5, atol=1e-5)
    assert prompt_of.tolist() == [i for i, p in enumerate(PROMPTS) for _ in p]
    assert position_of.tolist() == [j for p in PROMPTS for j in range(len(p))]


def test_first_row_is_the_stream_entering_block_0(tiny_lab):
    resid, _, _ = residuals(tiny_lab, PROMPTS[:1], positions="all", progress=False)
    with tiny_lab.record(lens_sites(tiny_lab)[:1]) as rec:
        tiny_lab.forward(PROMPTS[:1])
    torch.testing.assert_close(resid[:, 0], rec["blocks.0.resid_pre"])


def test_result_matches_softmax_and_ranks_the_target(tiny_lab):
    lens = LogitLens(top_k=3, positions="all", progress=False).run(tiny_lab, PROMPTS[0], target="o")
    logits = tiny_lab.forward([PROMPTS[0]])[0].float()
    probs = logits.softmax(-1)
    top = probs.topk(3, dim=-1)
    assert [row[-1] for row in lens.top_ids] == top.indices.tolist()
    torch.testing.assert_close(torch.tensor([row[-1] for row in lens.top_probs]), top.values, rtol=1e-5, atol=1e-6)
    o = tiny_lab.tokenizer("o", add_special_tokens=False)["input_ids"][0]
    torch.testing.assert_close(torch.tensor([row[-1] for row in lens.target_prob]), probs[:, o], rtol=1e-5, atol=1e-7)
    assert [row[-1] for row in lens.target_rank] == (probs > probs[:, o:o + 1]).sum(-1).tolist()
    assert lens.tokens == list(PROMPTS[0]) and lens.layers[0] == "embed" and len(lens.layers) == tiny_lab.n_layers + 1


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_batched_equals_unbatched(arch):
    lab = make_tiny_lab(arch)
    lens = LogitLens(top_k=4, positions="all", batch_size=3, progress=False)
    batched = lens.run(lab, PROMPTS, target=["h", None, "x"])
    single = [LogitLens(top_k=4, positions="all", batch_size=1, progress=False).run(lab, p, target=t)
              for p, t in zip(PROMPTS, ["h", None, "x"])]
    assert batched.top_ids == [row for s in single for row in s.top_ids]
    torch.testing.assert_close(torch.tensor(batched.top_probs), torch.tensor([r for s in single for r in s.top_probs]))
    n0, n1 = len(PROMPTS[0]), len(PROMPTS[1])
    assert batched.target_rank[:n0] == single[0].target_rank
    assert all(r == [-1] * len(batched.layers) for r in batched.target_rank[n0:n0 + n1])  # no target for prompt 1
    assert batched.target[n0] is None and batched.target[0] == "h"


def test_table_json_and_heatmap(tiny_lab, tmp_path):
    lens = LogitLens(top_k=2, positions="all", progress=False).run(tiny_lab, ["hi there", "yo"], target="e")
    text = str(lens)
    assert "embed" in text and "target rank" in text
    data = json.loads(lens.to_json())
    assert data["kind"] == "logit_lens" and len(data["top_probs"]) == len("hi there") + 2
    path = lens.heatmap(tmp_path / "lens.png", prompt=0)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input(tiny_lab):
    with pytest.raises(ActlabError, match="no prompts"):
        LogitLens().run(tiny_lab, [])
    with pytest.raises(ActlabError, match="top_k"):
        LogitLens(top_k=0).run(tiny_lab, "hi")
    with pytest.raises(ActlabError, match="2 targets for 1 prompts"):
        LogitLens(progress=False).run(tiny_lab, ["hi"], target=["a", "b"])
    with pytest.raises(ActlabError, match="outside the vocabulary"):
        LogitLens(progress=False).run(tiny_lab, "hi", target=10**6)
    lens = LogitLens(progress=False).run(tiny_lab, "hi")
    with pytest.raises(ActlabError, match="out of range"):
        lens.table(row=5)
    with pytest.raises(ActlabError, match="no rows for prompt"):
        lens.heatmap("/tmp/never.png", prompt=3)


def test_word_list_and_prompts():
    assert len(WORDS) >= 50 and all(set(w) == set(CODES) and all(w.values()) for w in WORDS)
    assert len({w["en"] for w in WORDS}) == len(WORDS)
    prompts = translation_prompts("fr", "de", n_shots=2, seed=1)
    concept, prompt = prompts[0]
    lines = prompt.split("\n")
    assert len(lines) == 3 and lines[-1] == f'Français: "{concept["fr"]}" - Deutsch: "'
    assert all(concept["fr"] not in line.split(" - ")[0] for line in lines[:-1])  # demonstrations are other concepts
    assert translation_prompts("fr", "de", n_shots=2, seed=1) == prompts
    with pytest.raises(ActlabError, match="unknown language"):
        translation_prompts("fr", "xx")
    with pytest.raises(ActlabError, match="both"):
        translation_prompts("fr", "fr")


def test_latent_language_reads_the_lens():
    lab = make_tiny_lab("llama")
    result = latent_language(lab, [("fr", "de")], n_shots=1, progress=False)
    curve = result.pairs[0]
    assert len(result.layers) == lab.n_layers + 1 and curve.n_prompts + curve.n_dropped == len(WORDS)
    kept = [(c, p) for c, p in translation_prompts("fr", "de", n_shots=1)
            if len({first_token(lab.tokenizer, p, c[lang]) for lang in ("en", "fr", "de")}) == 3]
    assert len(kept) == curve.n_prompts
    lens = LogitLens(top_k=1, progress=False).run(lab, [p for _, p in kept], target=[c["de"] for c, _ in kept])
    expected = torch.tensor(lens.target_prob).mean(0)  # the char tokenizer: the word's first token is its first char
    torch.testing.assert_close(torch.tensor(curve.prob["target"]), expected, rtol=1e-5, atol=1e-8)
    assert json.loads(result.to_json())["summary"][0]["pair"] == "fr→de"
    with pytest.raises(ActlabError, match="English is the reference"):
        latent_language(lab, [("en", "de")])
    assert LANGUAGES["ja"] == "日本語"


@pytest.mark.embedded
@pytest.mark.xdist_group("embedded")
def test_smollm2_lens_finds_paris_late(smollm2):
    lens = LogitLens(top_k=5, progress=False).run(smollm2, "The capital of France is", target=" Paris")
    ranks, probs = lens.target_rank[0], lens.target_prob[0]
    assert ranks[-1] == 0 and lens.top_tokens[0][-1][0] == " Paris"
    assert ranks[0] > 100 and probs[-1] > 10 * max(probs[: len(probs) // 2])  # absent early, decided late


def _cli():
    import typer
    from rich.console import Console
    from typer.testing import CliRunner

    from actlab.cli.lens_commands import register

    app = typer.Typer()
    register(app, Console(width=200), Console(stderr=True), lambda model, dtype: make_tiny_lab(model))
    return app, CliRunner()


def test_cli_lens(tmp_path):
    app, runner = _cli()
    res = runner.invoke(app, ["lens", "llama", "--prompt", "hello", "--target", "o", "--top", "3", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["kind"] == "logit_lens" and len(data["top_ids"][0][0]) == 3 and data["target"] == ["o"]
    plot = tmp_path / "lens.png"
    res = runner.invoke(app, ["lens", "gpt2", "--prompt", "hello", "--all-positions", "--plot", str(plot)])
    assert res.exit_code == 0 and "target" not in res.stdout and "embed" in res.stdout and plot.exists()
    res = runner.invoke(app, ["lens", "llama", "--latent-language", "fr:de", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["pairs"][0]["source"] == "fr"


def test_cli_lens_bad_input():
    app, runner = _cli()
    res = runner.invoke(app, ["lens", "llama"])
    assert isinstance(res.exception, ActlabError) and "--prompt or --latent-language" in str(res.exception)
    res = runner.invoke(app, ["lens", "llama", "--latent-language", "fr-de"])
    assert isinstance(res.exception, ActlabError) and "pairs like fr:de" in str(res.exception)
    res = runner.invoke(app, ["lens", "llama", "--latent-language", "fr:xx"])
    assert isinstance(res.exception, ActlabError) and "unknown language 'xx'" in str(res.exception)


def test_latent_language_summary_on_hand_made_curves(tmp_path):
    from actlab.read.languages import LatentLanguageResult, PairCurve

    curve = PairCurve("fr", "de", 10, 0, {"en": [0.0, 0.005, 0.3, 0.2, 0.01],
                                         "source": [0.0, 0.001, 0.1, 0.4, 0.0],
                                         "target": [0.0, 0.0, 0.05, 0.1, 0.9]})
    result = LatentLanguageResult(["embed", "0", "1", "2", "3"], [curve], n_shots=4)
    (row,) = result.summary()
    assert row["en_leads"] == ["1"]  # layer 0: English ahead but below the floor; layer 2: the source leads
    assert row["en_above_target"] == ["1", "2"] and row["peak_en_layer"] == "1" and row["final_target"] == 0.9
    assert "fr→de" in str(result)
    assert result.plot(tmp_path / "latent.png").read_bytes()[:4] == b"\x89PNG"
