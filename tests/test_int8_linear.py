"""Int8Linear (W8A8 through torch._int_mm / oneDNN) against its float fake-quant twin, and model swaps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_model
from torch import nn

from actlab.compress.int8 import Int8Linear, decoder_linears, restore_linears, swap_linears, w8a8_reference

BACKENDS = ["int_mm", "onednn"]


def _linear(k: int, n: int, bias: bool, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("tokens", [1, 3, 17, 512])
@pytest.mark.parametrize(("k", "n"), [(576, 1536), (1536, 576), (37, 11)])
def test_matches_reference(backend, bias, tokens, k, n):
    lin = _linear(k, n, bias)
    q = Int8Linear.from_linear(lin)
    q.backend = backend
    x = torch.randn(tokens, k, generator=torch.Generator().manual_seed(1)) * 3
    ref = w8a8_reference(x, lin)
    out = q(x)
    assert out.shape == ref.shape and out.dtype == x.dtype
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
    # and it is a quantisation of the float linear, not something else
    exact = F.linear(x, lin.weight, lin.bias)
    assert (out - exact).abs().max() <= 0.05 * exact.abs().max()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shape_and_dtype(backend, dtype):
    lin = _linear(64, 96, True)
    q = Int8Linear.from_linear(lin)
    q.backend = backend
    x = torch.randn(2, 5, 64).to(dtype)
    out = q(x)
    assert out.shape == (2, 5, 96) and out.dtype == dtype
    ref = w8a8_reference(x, lin)
    assert ref.dtype == dtype
    assert (out.float() - ref.float()).abs().max() <= 2e-2 * ref.float().abs().max()  # bf16 rounding


def test_zero_rows_and_given_scale():
    lin = _linear(32, 16, True)
    q = Int8Linear.from_linear(lin)
    out = q(torch.zeros(4, 32))
    assert torch.allclose(out, lin.bias.detach().expand(4, 16))
    scale = lin.weight.detach().abs().amax(-1) / 127
    q2 = Int8Linear.from_linear(lin, weight_scale=scale)
    assert torch.equal(q2.qweight, q.qweight)
    assert torch.allclose(q2.weight_scale, q.weight_scale)


def test_selection():
    assert decoder_linears("model.layers.0.self_attn.q_proj", None)
    assert decoder_linears("model.layers.11.mlp.down_proj", None)
    assert not decoder_linears("lm_head", None)
    assert not decoder_linears("model.embed_tokens", None)


def test_swap_restore_round_trip():
    model = tiny_model("llama")
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
        originals = swap_linears(model, decoder_linears)
        assert len(originals) == 3 * 7  # q, k, v, o, gate, up, down per layer
        assert all(isinstance(model.get_submodule(n), Int8Linear) for n in originals)
        assert isinstance(model.lm_head, nn.Linear) and not isinstance(model.lm_head, Int8Linear)
        swapped = model(ids).logits
        restore_linears(model, originals)
        after = model(ids).logits
    assert torch.equal(before, after)
    assert all(type(model.get_submodule(n)) is nn.Linear for n in originals)
    kl = F.kl_div(swapped.log_softmax(-1), before.log_softmax(-1), log_target=True, reduction="batchmean")
    assert 0 < kl.item() < 1e-3
    assert (swapped.argmax(-1) == before.argmax(-1)).float().mean() > 0.9
