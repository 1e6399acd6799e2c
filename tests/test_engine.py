"""The record engine on every architecture: stock numerics, site identities, early stop, cleanup."""

import copy

import pytest
import torch

import actlab as al

PROMPTS = [[5, 17, 33, 40, 41, 60, 7], [9, 12, 70], [30, 31, 32, 33, 34]]


def _record_all(lab, prompts=PROMPTS, positions="all"):
    with lab.record("*", positions=positions) as rec:
        logits = lab.forward(prompts)
    return rec, logits


def test_actlab_attention_is_bit_identical_to_sdpa(tiny_lab):
    stock = copy.deepcopy(tiny_lab.model)
    stock.set_attn_implementation("sdpa")
    inputs = tiny_lab.tokenize(PROMPTS)
    with torch.inference_mode():
        expected = stock(**inputs).logits
        assert torch.equal(tiny_lab.model(**inputs).logits, expected)
        with tiny_lab.record("blocks.*.attn.q_rot"):  # the hooked attention path, still SDPA
            assert torch.equal(tiny_lab.model(**inputs).logits, expected)


def test_recording_does_not_change_the_output(tiny_lab):
    plain = tiny_lab.forward(PROMPTS)
    _, recorded = _record_all(tiny_lab)
    assert torch.allclose(plain, recorded, atol=1e-5)


def test_residual_identities(tiny_lab):
    rec, _ = _record_all(tiny_lab)
    for i in range(tiny_lab.n_layers - 1):
        assert torch.equal(rec[f"blocks.{i}.resid_post"], rec[f"blocks.{i + 1}.resid_pre"])
    if tiny_lab.catalog.parallel:
        return
    block = tiny_lab.model.get_submodule(f"{tiny_lab.adapter.layers}.0")
    attn_branch, mlp_branch = rec["blocks.0.attn.out"], rec["blocks.0.mlp.out"]
    if tiny_lab.model.config.model_type == "gemma3_text":  # Gemma-3 norms both branches
        attn_branch = block.post_attention_layernorm(attn_branch)
        mlp_branch = block.post_feedforward_layernorm(mlp_branch)
    assert torch.allclose(rec["blocks.0.resid_mid"], rec["blocks.0.resid_pre"] + attn_branch, atol=1e-5)
    assert torch.allclose(rec["blocks.0.resid_post"], rec["blocks.0.resid_mid"] + mlp_branch, atol=1e-5)


def test_projection_identities(tiny_lab):
    rec, logits = _record_all(tiny_lab)
    layer = f"{tiny_lab.adapter.layers}.1"
    o_proj = tiny_lab.model.get_submodule(f"{layer}.{tiny_lab.adapter.o_proj}")
    down = tiny_lab.model.get_submodule(f"{layer}.{tiny_lab.adapter.down_proj}")
    lm_head = tiny_lab.model.get_submodule(tiny_lab.adapter.lm_head)
    with torch.inference_mode():
        assert torch.allclose(o_proj(rec["blocks.1.attn.z"].flatten(1)), rec["blocks.1.attn.out"], atol=1e-5)
        assert torch.allclose(down(rec["blocks.1.mlp.act"]), rec["blocks.1.mlp.out"], atol=1e-5)
        assert torch.allclose(lm_head(rec["final_norm"]), rec["logits"], atol=1e-5)
    mask = tiny_lab.tokenize(PROMPTS)["attention_mask"].bool()
    assert torch.allclose(rec["logits"], logits[mask], atol=1e-5)


def test_attention_internals_agree(tiny_lab):
    """z = pattern · v per head, from q/k/v, q_rot/k_rot and the pattern recorded separately."""
    rec, _ = _record_all(tiny_lab)
    c = tiny_lab.catalog
    rep = c.n_heads // c.n_kv_heads
    for p, (pattern, v, z) in enumerate(zip(*(rec.per_prompt(f"blocks.2.attn.{s}") for s in ("pattern", "v", "z")))):
        n = v.shape[0]
        assert torch.allclose(pattern.sum(-1), torch.ones(n, c.n_heads), atol=1e-5)
        assert torch.all(pattern[..., :n].triu(1).transpose(0, 1)[:, torch.ones(n, n).triu(1).bool()] == 0)
        v_full = v.repeat_interleave(rep, dim=1)  # [keys, heads, d_head]
        assert torch.allclose(torch.einsum("thk,khd->thd", pattern[..., :n], v_full), z, atol=1e-5)
    if tiny_lab.model.config.model_type == "gpt2":  # no rotary embedding: the rotated sites are the plain ones
        assert torch.equal(rec["blocks.0.attn.k_rot"], rec["blocks.0.attn.k"])
        assert torch.equal(rec["blocks.0.attn.q_rot"], rec["blocks.0.attn.q"])


def test_positions_last_and_indices(tiny_lab):
    full, _ = _record_all(tiny_lab)
    last, _ = _record_all(tiny_lab, positions="last")
    every = full.per_prompt("blocks.1.resid_post")
    assert torch.equal(last["blocks.1.resid_post"], torch.stack([e[-1] for e in every]))
    firsts, _ = _record_all(tiny_lab, positions=[0, -1])
    assert firsts["blocks.1.resid_post"].shape[0] == 2 * len(PROMPTS)
    masks = [[i % 2 == 0 for i in range(len(p))] for p in PROMPTS]
    masked, _ = _record_all(tiny_lab, positions=masks)
    assert torch.equal(masked["blocks.1.resid_post"], torch.cat([e[::2] for e in every]))
    assert masked.index["position"].tolist() == [i for p in PROMPTS for i in range(0, len(p), 2)]


def test_early_stop_records_the_same_and_skips_later_blocks(tiny_lab):
    with tiny_lab.record("blocks.0-1.resid_post") as full:
        tiny_lab.forward(PROMPTS)
    calls = []
    last_block = tiny_lab.model.get_submodule(f"{tiny_lab.adapter.layers}.2")
    handle = last_block.register_forward_hook(lambda *a: calls.append(1))
    try:
        with tiny_lab.record("blocks.0-1.resid_post") as rec:
            assert tiny_lab.forward(PROMPTS, return_logits=False) is None
    finally:
        handle.remove()
    assert calls == []
    assert torch.equal(rec["blocks.1.resid_post"], full["blocks.1.resid_post"])


def _no_hooks_left(lab):
    for module in lab.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert getattr(module, "_actlab_attention_handler", None) is None


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_hooks_are_removed_on_exceptions(tiny_lab, error):
    with pytest.raises(error):
        with tiny_lab.record("blocks.*.attn.pattern"), tiny_lab.edit({"blocks.0.resid_post": al.edits.scale(2.0)}):
            tiny_lab.forward(PROMPTS)
            raise error("stop")
    _no_hooks_left(tiny_lab)


def test_recording_during_generate_covers_prefill_and_steps(tiny_lab):
    with tiny_lab.record("blocks.1.resid_post", positions="last") as rec:
        tiny_lab.generate(["hello", "hi"], max_new_tokens=4, min_new_tokens=4)
    index = rec.index
    assert rec["blocks.1.resid_post"].shape[0] == 2 * 4  # prefill + 3 steps (the 4th token is never fed)
    assert index["call"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert index["prompt"].tolist() == [0, 1] * 4
    assert index["position"].tolist() == [4, 1, 5, 2, 6, 3, 7, 4]


def test_prompt_numbers_continue_across_calls(tiny_lab):
    with tiny_lab.record("blocks.0.resid_post", positions="last") as rec:
        tiny_lab.forward(PROMPTS[:2])
        tiny_lab.forward(PROMPTS[2:])
    assert rec.index["prompt"].tolist() == [0, 1, 2]


def test_recording_dtype_and_unknown_site(tiny_lab):
    with tiny_lab.record("blocks.0.resid_post", dtype="bfloat16") as rec:
        tiny_lab.forward(PROMPTS)
    assert rec["blocks.0.resid_post"].dtype == torch.bfloat16
    with pytest.raises(al.ActlabError, match="not recorded"):
        rec["blocks.1.resid_post"]


def test_calling_the_decoder_stack_directly_is_recorded(tiny_lab):
    base = tiny_lab.model.get_submodule(tiny_lab.adapter.layers.rsplit(".", 1)[0])
    inputs = tiny_lab.tokenize(PROMPTS)
    with torch.inference_mode(), tiny_lab.record("blocks.1.resid_post") as direct:
        base(**inputs)
    with tiny_lab.record("blocks.1.resid_post") as full:
        tiny_lab.forward(PROMPTS)
    assert torch.equal(direct["blocks.1.resid_post"], full["blocks.1.resid_post"])


def test_attention_sites_need_the_actlab_attention(tiny_lab):
    tiny_lab.model.set_attn_implementation("sdpa")
    with pytest.raises(al.ActlabError, match="set_attn_implementation"):
        with tiny_lab.record("blocks.0.attn.pattern"):
            pass
    _no_hooks_left(tiny_lab)
    with tiny_lab.record("blocks.0.resid_post") as rec:  # other sites work with any attention
        tiny_lab.forward(PROMPTS)
    assert rec["blocks.0.resid_post"].shape[0] == sum(map(len, PROMPTS))
