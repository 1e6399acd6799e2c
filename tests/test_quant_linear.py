"""Fake quantization of decoder linears: exact at the first site, weights restored, static needs calibration."""

import pytest
import torch

from actlab.compress import Quantizer
from actlab.compress.linear import fake_quantize_linears, quantized_weights
from actlab.errors import ActlabError
from conftest import make_tiny_lab

PROMPTS = ["hello there, general", "a b c", "the quick brown fox"]


@pytest.fixture(scope="module")
def lab():
    return make_tiny_lab("llama")


def test_weights_are_quantized_inside_and_restored_after(lab):
    base = lab.forward(PROMPTS)
    q = Quantizer.parse("int4:per_channel")
    w = lab.model.model.layers[0].mlp.down_proj.weight
    expected = q(w.detach().clone())
    with quantized_weights(lab.model, q) as n:
        assert n == 7 * lab.n_layers  # q, k, v, o, gate, up, down per block
        assert torch.equal(lab.model.model.layers[0].mlp.down_proj.weight, expected)
        assert not torch.allclose(lab.forward(PROMPTS), base)
    assert torch.equal(lab.forward(PROMPTS), base)


def test_inputs_are_quantized_per_token_at_the_input_sites(lab):
    site = "blocks.0.attn.in"  # nothing upstream of it is quantized
    with lab.record(site) as plain:
        lab.forward(PROMPTS)
    with fake_quantize_linears(lab, inputs="int4:per_token"), lab.record(site) as quantized:
        lab.forward(PROMPTS)
    assert torch.equal(quantized[site], Quantizer.parse("int4:per_token")(plain[site]))


def test_w8a8_stays_close_and_static_scales_need_calibration(lab):
    base = torch.log_softmax(lab.forward(PROMPTS), -1)
    with fake_quantize_linears(lab, weights="int8:per_channel", inputs="int8:per_token"):
        quant = torch.log_softmax(lab.forward(PROMPTS), -1)
    kl = (base.exp() * (base - quant)).sum(-1).mean()
    assert 0 < float(kl) < 1e-2
    with pytest.raises(ActlabError, match="calibration"):
        with fake_quantize_linears(lab, inputs="int8:per_tensor:static"):
            pass
    with fake_quantize_linears(lab, inputs="int8:per_tensor:static", calibration=PROMPTS):
        assert lab.forward(PROMPTS).shape == base.shape
