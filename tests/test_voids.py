"""Layer voids (LAC): the rule on hand-made norms, the hooks against the rule, exact skipping on every
architecture, batched == unbatched, prefill and generation counted apart, and bad input."""

import math

import pytest
import torch
from conftest import make_tiny_lab

from actlab import Lab
from actlab.errors import ActlabError
from actlab.read.lens import unembed
from actlab.read.voids import LayerVoids, SkipLayers, lac_active, lac_threshold, layer_voids

PROMPTS = ["hello world", "ab", "The quick brown fox"]


def test_rule_on_hand_made_norms():
    # token 0: deltas 2, 1, 0.5, 3.5, 0.2; token 1: deltas -0.5, 1.5, 0.1, 2.0, -1.0
    norms = torch.tensor([[1.0, 3.0, 4.0, 4.5, 8.0, 8.2], [1.0, 0.5, 2.0, 2.1, 4.1, 3.1]]).T
    active = lac_active(norms, alpha=0.5)
    # token 0: τ = 0, 0 (range of one value), 0.5·1, 0.5·1.5, 0.5·3 -> 0.5 ≥ 0.5 is active, 0.2 < 1.5 a void
    # token 1: τ = 0 (−0.5 < 0: void), 0, 0.5·2 = 1 (0.1 void), 0.5·2 = 1 (2 active), 0.5·2.5 (−1 void)
    assert active.T.tolist() == [[True, True, True, True, False], [False, True, False, True, False]]
    assert active.sum(1).tolist() == [1, 2, 1, 2, 0]
    assert lac_active(norms, alpha=-math.inf).all()
    assert lac_threshold([], 0.8) == 0.0


def _norms(lab, prompt):
    sites = ["blocks.0.resid_pre", *(f"blocks.{i}.resid_post" for i in range(lab.n_layers))]
    with lab.record(sites) as rec:
        lab.forward([prompt])
    return torch.stack([rec[s].float().norm(dim=-1) for s in sites])  # [n_layers + 1, tokens]


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt_neox"])
def test_hooks_follow_the_rule(arch):
    lab = make_tiny_lab(arch)
    for alpha in (0.0, 0.5, 0.9):
        voids = LayerVoids(alpha)
        with lab.edit(voids):
            lab.forward([PROMPTS[2]])
        assert torch.equal(voids.masks("prefill"), lac_active(_norms(lab, PROMPTS[2]), alpha).T)


def test_every_layer_active_is_the_plain_model(tiny_lab):
    plain = tiny_lab.forward(PROMPTS)
    for mode in ("skip", "exit"):
        voids = LayerVoids(-math.inf, mode)
        with tiny_lab.edit(voids):
            edited = tiny_lab.forward(PROMPTS)
        assert torch.equal(edited, plain)
        assert voids.masks().all() and voids.result(tiny_lab).prefill.fraction_used == 1.0


def _without_block(arch, layer):
    lab = make_tiny_lab(arch)
    parent_path, name = lab.adapter.layers.rsplit(".", 1)
    parent = lab.model.get_submodule(parent_path)
    blocks = getattr(parent, name)
    setattr(parent, name, torch.nn.ModuleList([b for i, b in enumerate(blocks) if i != layer]))
    lab.model.config.num_hidden_layers -= 1
    if getattr(lab.model.config, "layer_types", None):
        lab.model.config.layer_types = [t for i, t in enumerate(lab.model.config.layer_types) if i != layer]
    return lab


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2", "gpt_neox", "opt", "phi3"])
def test_skipping_a_block_for_every_token_is_running_without_it(arch):
    lab = make_tiny_lab(arch)
    with lab.edit(SkipLayers([1])):
        skipped = lab.forward(PROMPTS[:1])
    removed = _without_block(arch, 1).model(**lab.tokenize(PROMPTS[:1]), use_cache=False).logits
    torch.testing.assert_close(skipped, removed, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(skipped, lab.forward(PROMPTS[:1]))


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_skip_mode_equals_a_plain_torch_reference(arch):
    """Replay the recorded per-token decisions with bare torch hooks: block output := input at voids."""
    lab = make_tiny_lab(arch)
    voids = LayerVoids(0.5, "skip")
    with lab.edit(voids):
        skipped = lab.forward([PROMPTS[2]])
    void = ~voids.masks()  # [tokens, layers]
    assert void.any() and not void.all()
    handles, inputs = [], {}
    for i, block in enumerate(lab.model.get_submodule(lab.adapter.layers)):
        def pre(module, args, kwargs, i=i):
            inputs[i] = args[0] if args else kwargs["hidden_states"]

        def post(module, args, output, i=i):
            out = output[0] if isinstance(output, tuple) else output
            new = torch.where(void[None, :, i, None], inputs[i], out)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handles += [block.register_forward_pre_hook(pre, with_kwargs=True), block.register_forward_hook(post)]
    try:
        reference = lab.model(**lab.tokenize([PROMPTS[2]]), use_cache=False).logits
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(skipped, reference, rtol=1e-5, atol=1e-6)


def test_exit_mode_reads_the_deepest_active_block():
    lab = make_tiny_lab("llama")
    trace = LayerVoids(0.9, "trace")
    with lab.edit(trace):
        lab.forward([PROMPTS[2]])
    active = trace.masks()
    sites = ["blocks.0.resid_pre", *(f"blocks.{i}.resid_post" for i in range(lab.n_layers))]
    with lab.record(sites) as rec:
        lab.forward([PROMPTS[2]])
    stream = torch.stack([rec[s] for s in sites], dim=1)  # [tokens, layers + 1, d]
    deepest = torch.tensor([max([0] + [l + 1 for l in range(lab.n_layers) if row[l]]) for row in active.tolist()])
    assert (deepest < lab.n_layers).any()  # some token exits early
    expected = unembed(lab, stream[torch.arange(len(deepest)), deepest])
    with lab.edit(LayerVoids(0.9, "exit")):
        exited = lab.forward([PROMPTS[2]])[0]
    torch.testing.assert_close(exited.float(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "opt"])
def test_batched_equals_unbatched(arch):
    lab = make_tiny_lab(arch)
    batched = LayerVoids(0.5, "skip")
    with lab.edit(batched):
        logits = lab.forward(PROMPTS)  # left padding
    single = LayerVoids(0.5, "skip")
    with lab.edit(single):
        alone = [lab.forward([p])[0] for p in PROMPTS]
    assert torch.equal(batched.masks(), single.masks())
    width = logits.shape[1]
    for i, p in enumerate(PROMPTS):
        torch.testing.assert_close(logits[i, width - len(p):], alone[i], rtol=1e-5, atol=1e-5)


def test_prefill_and_generation_counted_apart():
    lab = make_tiny_lab("qwen2")
    result = layer_voids(lab, PROMPTS[:2], alpha=0.5, mode="skip", max_new_tokens=4)
    assert result.prefill.tokens == len(PROMPTS[0]) + len(PROMPTS[1])  # padding not counted
    assert result.generation.tokens == 2 * 3  # the last generated token is never fed back
    assert len(result.prefill.active_rate) == lab.n_layers
    m = torch.cat([torch.tensor([result.prefill.fraction_used]), torch.tensor(result.prefill.active_rate)])
    assert ((m >= 0) & (m <= 1)).all()
    assert math.isclose(result.prefill.fraction_used, sum(result.prefill.active_rate) / lab.n_layers, rel_tol=1e-6)
    assert "layers used" in str(result) and result.to_dict()["kind"] == "layer_voids"


def test_bad_input():
    lab = make_tiny_lab("llama")
    with pytest.raises(ActlabError, match="unknown mode"):
        LayerVoids(0.8, "drop")
    with pytest.raises(ActlabError, match="alpha"):
        LayerVoids(float("nan"))
    with pytest.raises(ActlabError, match="among 0-2"):
        with lab.edit(SkipLayers([3])):
            pass
    with pytest.raises(ActlabError, match="unknown phase"):
        LayerVoids().masks("decode")
    with pytest.raises(ActlabError, match="max_new_tokens"):
        layer_voids(lab, "hi", max_new_tokens=0)
    voids = LayerVoids()
    with lab.edit(voids):
        lab.forward(["hi"])
    with pytest.raises(ActlabError, match="reset"):
        voids.edits(Lab.from_model(_without_block("llama", 0).model, lab.tokenizer))


@pytest.mark.embedded
@pytest.mark.xdist_group("embedded")
def test_smollm2_voids_cost_perplexity(smollm2):
    import actlab as al

    base = al.eval.perplexity(smollm2, "austen:test", seq_len=256, max_tokens=512, progress=False)
    voids = LayerVoids(0.8, "skip")
    skipped = al.eval.perplexity(smollm2, "austen:test", seq_len=256, max_tokens=512, edits=voids, progress=False)
    used = voids.result(smollm2).prefill
    assert used.tokens == skipped.tokens_scored + 2  # every window's tokens, the first of each unscored
    assert 0.0 < used.fraction_used < 0.6 and used.active_rate[0] == 1.0
    assert skipped.ppl > base.ppl  # skipping most blocks of a small model costs perplexity


def test_cli_voids():
    import json

    import typer
    from rich.console import Console
    from typer.testing import CliRunner

    from actlab.cli.lens_commands import register

    app = typer.Typer()
    register(app, Console(width=200), Console(stderr=True), lambda model, dtype: make_tiny_lab(model))
    runner = CliRunner()
    res = runner.invoke(app, ["voids", "llama", "--max-tokens", "256", "--seq-len", "64", "--threshold", "0.5",
                              "--prompt", "hello", "--max-new-tokens", "3", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["corpus"]["prefill"]["tokens"] == 256 and report["generation"]["generation"]["tokens"] == 2
    assert report["perplexity"]["ratio"] == report["perplexity"]["voids"] / report["perplexity"]["plain"]
    res = runner.invoke(app, ["voids", "llama", "--max-tokens", "128", "--seq-len", "64", "--mode", "trace"])
    assert res.exit_code == 0 and "layers used" in res.stdout and "+0.0 %" in res.stdout
    res = runner.invoke(app, ["voids", "llama", "--mode", "drop"])
    assert isinstance(res.exception, ActlabError) and "unknown mode 'drop'" in str(res.exception)


def test_depth_used_is_the_deepest_active_block():
    lab = make_tiny_lab("llama")
    voids = LayerVoids(0.9)
    with lab.edit(voids):
        lab.forward([PROMPTS[2]])
    masks = voids.masks().tolist()
    deepest = [max([0] + [l + 1 for l, on in enumerate(row) if on]) for row in masks]
    stats = voids.result(lab).prefill
    assert math.isclose(stats.depth_used, sum(deepest) / len(deepest) / lab.n_layers, rel_tol=1e-6)
    assert stats.fraction_used <= stats.depth_used <= 1.0
