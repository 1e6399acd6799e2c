"""Built-in edits: each does exactly what it says, only where its positions say, in order."""

import pytest
import torch

import actlab as al

PROMPTS = [[5, 17, 33, 40, 41, 60, 7], [9, 12, 70]]
SITE = "blocks.1.resid_post"


def _run(lab, edits, sites=SITE, positions="all"):
    with lab.record(sites, positions=positions) as rec, lab.edit(edits):
        logits = lab.forward(PROMPTS)
    return rec, logits


def _base(lab, sites=SITE):
    with lab.record(sites) as rec:
        logits = lab.forward(PROMPTS)
    return rec, logits


def test_add_shifts_exactly_the_selected_tokens(tiny_lab):
    base, base_logits = _base(tiny_lab)
    d = torch.randn(tiny_lab.d_model)
    edited, logits = _run(tiny_lab, {SITE: al.edits.add(d, alpha=3.0, positions="last")})
    delta = edited[SITE] - base[SITE]
    last = torch.tensor([i == len(p) - 1 for p in PROMPTS for i in range(len(p))])
    assert torch.allclose(delta[last], (3.0 * d).expand(2, -1), atol=1e-5)
    assert torch.all(delta[~last] == 0)
    assert not torch.allclose(logits, base_logits)


def test_scale_clamp_zero_neurons(tiny_lab):
    base, _ = _base(tiny_lab, ["blocks.0.mlp.act", SITE])
    edited, _ = _run(tiny_lab, {SITE: al.edits.scale(0.5), "blocks.0.mlp.act": al.edits.zero_neurons([0, 5])},
                     sites=["blocks.0.mlp.act", SITE])
    assert torch.all(edited["blocks.0.mlp.act"][:, [0, 5]] == 0)
    assert torch.equal(edited["blocks.0.mlp.act"][:, 1:5], base["blocks.0.mlp.act"][:, 1:5])
    clamped, _ = _run(tiny_lab, {SITE: al.edits.clamp(min=-0.01, max=0.01)})
    assert clamped[SITE].abs().max() <= 0.01 + 1e-7


def test_project_out_and_set_projection(tiny_lab):
    d = torch.randn(tiny_lab.d_model)
    u = d / d.norm()
    removed, _ = _run(tiny_lab, {SITE: al.edits.project_out(d)})
    assert torch.allclose(removed[SITE] @ u, torch.zeros(10), atol=1e-5)
    clamped, _ = _run(tiny_lab, {SITE: al.edits.set_projection(d, value=2.5)})
    assert torch.allclose(clamped[SITE] @ u, torch.full((10,), 2.5), atol=1e-5)
    with pytest.raises(al.ActlabError, match="zero norm"):
        _run(tiny_lab, {SITE: al.edits.project_out(torch.zeros(tiny_lab.d_model))})


def test_edits_compose_in_order(tiny_lab):
    d = torch.randn(tiny_lab.d_model)
    add_then_scale, _ = _run(tiny_lab, {SITE: [al.edits.add(d), al.edits.scale(2.0)]})
    scale_then_add, _ = _run(tiny_lab, {SITE: [al.edits.scale(2.0), al.edits.add(d)]})
    assert torch.allclose(add_then_scale[SITE] - scale_then_add[SITE], d.expand(10, -1), atol=1e-5)
    with tiny_lab.edit({SITE: al.edits.add(d)}):  # nested contexts compose in entry order too
        nested, _ = _run(tiny_lab, {SITE: al.edits.scale(2.0)})
    assert torch.allclose(nested[SITE], add_then_scale[SITE], atol=1e-6)


def test_replace_patches_a_clean_run_into_another(tiny_lab):
    clean = [[11, 12, 13, 14, 15, 16, 17], [20, 21, 22]]
    with tiny_lab.record("blocks.0.resid_post") as rec:
        clean_logits = tiny_lab.forward(clean)
    with tiny_lab.edit({"blocks.0.resid_post": al.edits.replace(rec["blocks.0.resid_post"])}):
        patched = tiny_lab.forward(PROMPTS)
    mask = tiny_lab.tokenize(PROMPTS)["attention_mask"].bool()
    assert torch.allclose(patched[mask], clean_logits[mask], atol=1e-5)


def test_zeroing_values_zeroes_z(tiny_lab):
    """An edit of a (possibly fused) projection part reaches attention: v = 0 makes z = 0."""
    edited, _ = _run(tiny_lab, {"blocks.1.attn.v": al.edits.scale(0.0)}, sites=["blocks.1.attn.z", "blocks.1.attn.q"])
    base, _ = _base(tiny_lab, ["blocks.1.attn.q"])
    assert torch.allclose(edited["blocks.1.attn.z"], torch.zeros_like(edited["blocks.1.attn.z"]), atol=1e-6)
    assert torch.equal(edited["blocks.1.attn.q"], base["blocks.1.attn.q"])  # q untouched in the fused output


def test_zero_keys_give_uniform_attention(tiny_lab):
    edited, _ = _run(tiny_lab, {"blocks.0.attn.k_rot": al.edits.scale(0.0)}, sites="blocks.0.attn.pattern")
    for pattern in edited.per_prompt("blocks.0.attn.pattern"):
        n = pattern.shape[0]
        expected = torch.ones(n, n).tril() / torch.arange(1, n + 1)[:, None]
        assert torch.allclose(pattern[:, 0, :n], expected, atol=1e-5)


def test_pattern_edit_changes_the_output(tiny_lab):
    def flatten(x, ctx):  # any callable (activation, ctx) -> activation is an edit
        real = (x > 0).to(x.dtype)
        return real / real.sum(-1, keepdim=True)

    edited, _ = _run(tiny_lab, {"blocks.0.attn.pattern": flatten}, sites=["blocks.0.attn.pattern"])
    for pattern in edited.per_prompt("blocks.0.attn.pattern"):
        n = pattern.shape[0]
        assert torch.allclose(pattern[:, 0, :n].sum(-1), torch.ones(n), atol=1e-5)
        assert torch.allclose(pattern[-1, 0, :n], torch.full((n,), 1 / n), atol=1e-5)


def test_resid_mid_edit_is_a_delta_on_the_attention_branch(tiny_lab):
    if tiny_lab.catalog.parallel:
        pytest.skip("no resid_mid in parallel blocks")
    site = "blocks.0.resid_mid"
    base, _ = _base(tiny_lab, [site])
    d = torch.randn(tiny_lab.d_model)
    edited, _ = _run(tiny_lab, {site: al.edits.add(d, alpha=2.0)}, sites=[site])
    assert torch.allclose(edited[site] - base[site], (2.0 * d).expand(10, -1), atol=1e-5)


def test_fake_quantize_is_close_but_not_equal(tiny_lab):
    base, _ = _base(tiny_lab)
    edited, _ = _run(tiny_lab, {SITE: al.edits.fake_quantize(bits=4)})
    err = (edited[SITE] - base[SITE]).abs().max()
    assert 0 < err < base[SITE].abs().max() / 7 + 1e-6


def test_bad_edits_are_clear_errors(tiny_lab):
    with pytest.raises(al.ActlabError, match="not callable"):
        with tiny_lab.edit({SITE: 3.0}):
            pass
    with pytest.raises(al.ActlabError, match="unknown positions"):
        _run(tiny_lab, {SITE: al.edits.scale(2.0, positions="middle")})
    with pytest.raises(al.ActlabError, match="did you mean"):
        with tiny_lab.edit({"blocks.1.resid_pots": al.edits.scale(2.0)}):
            pass
