"""Batched == one by one: recordings, edited logits and greedy generation, left and right padding.

Padding is the most common silent bug in activation libraries; here it must not exist, on every
architecture.
"""

import pytest
import torch

import actlab as al

PROMPTS = ["The cat sat on the mat.", "Hi", "Once upon a time there", "abc def"]
SITES = ["blocks.*.resid_post", "blocks.1.attn.k_rot", "blocks.1.attn.pattern", "blocks.2.mlp.act", "logits"]


def _record(lab, prompts, padding_side, edits=None, positions="all"):
    with lab.record(SITES, positions=positions) as rec, lab.edit(edits or {"embed": al.edits.scale(1.0)}):
        logits = lab.forward(prompts, padding_side=padding_side)
    return rec, logits


def _assert_close_padded(a, b):
    """Patterns are padded on the key axis to the longest prompt of the batch: compare the prefix."""
    assert torch.allclose(a[..., : b.shape[-1]], b, atol=2e-5), (a[..., : b.shape[-1]] - b).abs().max()
    assert torch.all(a[..., b.shape[-1]:] == 0)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_recordings_batched_equal_unbatched(tiny_lab, padding_side):
    d = torch.randn(tiny_lab.d_model)
    edits = {"blocks.0.resid_post": al.edits.add(d, alpha=2.0, positions=[1, -1])}
    batched, logits = _record(tiny_lab, PROMPTS, padding_side, edits)
    singles = [_record(tiny_lab, [p], padding_side, edits) for p in PROMPTS]
    for name in batched.keys():
        for got, (alone, _) in zip(batched.per_prompt(name), singles):
            _assert_close_padded(got, alone[name])
    mask = tiny_lab.tokenize(PROMPTS, padding_side)["attention_mask"].bool()
    expected = torch.cat([lg[0] for _, lg in singles])
    assert torch.allclose(logits[mask], expected, atol=2e-5)


def test_greedy_generation_batched_equals_unbatched(tiny_lab):
    d = torch.randn(tiny_lab.d_model)
    for edits in (None, {"blocks.1.resid_post": al.edits.add(d, alpha=4.0, positions="generated")}):
        with tiny_lab.edit(edits or {"embed": al.edits.scale(1.0)}):
            batched = tiny_lab.generate(PROMPTS, max_new_tokens=8, min_new_tokens=8)
            singles = [tiny_lab.generate(p, max_new_tokens=8, min_new_tokens=8) for p in PROMPTS]
        assert batched == singles


def test_padding_side_does_not_matter(tiny_lab):
    left, _ = _record(tiny_lab, PROMPTS, "left")
    right, _ = _record(tiny_lab, PROMPTS, "right")
    for name in left.keys():
        assert torch.allclose(left[name], right[name], atol=2e-5)
    assert torch.equal(left.index["position"], right.index["position"])


@pytest.mark.embedded
def test_embedded_model_batched_equals_unbatched(smollm2):
    prompts = ["The capital of France is", "Hello", "In the beginning God created the heaven and the earth."]
    with smollm2.record("blocks.*.resid_post", positions="last") as batched:
        smollm2.forward(prompts)
    for i, p in enumerate(prompts):
        with smollm2.record("blocks.*.resid_post", positions="last") as alone:
            smollm2.forward([p])
        for name in alone.keys():
            scale = alone[name].abs().max()
            assert torch.allclose(batched[name][i], alone[name][0], atol=1e-4 * scale), name
    assert smollm2.generate(prompts, max_new_tokens=12) == [smollm2.generate(p, max_new_tokens=12) for p in prompts]
