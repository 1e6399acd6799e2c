"""Fake quantization of the decoder's linear layers: weights once, inputs at run time.

The input of every decoder linear is a site: `attn.in` feeds q/k/v, `attn.z` feeds o_proj,
`mlp.in` feeds gate/up and `mlp.act` feeds the down projection. Input quantization is a
`FakeQuantize` edit at those sites (per-token scales span the whole token, all heads of `attn.z`
together); static scales are calibrated per site on calibration text. Weights are replaced by
their quantize-dequantize copies while the context is open and restored afterwards.
`lm_head` and the embeddings are never touched; weights of non-`nn.Linear` projections (GPT-2's
`Conv1D`) are not quantized yet.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from actlab.compress.int8 import decoder_linears
from actlab.compress.quantizer import Quantizer
from actlab.engine.edits import FakeQuantize
from actlab.errors import ActlabError

INPUT_SITES = ("attn.in", "attn.z", "mlp.in", "mlp.act")


def _per_token_view(q: Quantizer):
    """Quantize `[batch, seq, *site]` with the site flattened, so one token is one row."""
    return lambda x: q(x.flatten(2)).view_as(x)


def input_quantizers(lab, spec: Quantizer | str, calibration: Sequence | None = None,
                     batch_size: int = 4) -> dict[str, Quantizer]:
    """One quantizer per input site of every block; static ones calibrated on `calibration`
    (prompts or token-id lists)."""
    base = spec if isinstance(spec, Quantizer) else Quantizer.parse(spec)
    sites = [s for c in INPUT_SITES for s in lab.sites(f"blocks.*.{c}")]
    quantizers = {s: copy.deepcopy(base) for s in sites}
    if not base.dynamic:
        if not calibration:
            raise ActlabError("static input scales need calibration prompts (calibration=...)")
        for start in range(0, len(calibration), batch_size):
            with lab.record(sites, positions="all") as rec:
                lab.forward(list(calibration[start:start + batch_size]), return_logits=False)
            for s in sites:
                quantizers[s].calibrate(rec[s].flatten(1))
    return quantizers


@contextmanager
def quantized_weights(model: torch.nn.Module, spec: Quantizer | str) -> Iterator[int]:
    """Replace every decoder linear's weight by its fake-quantized copy; restore on exit. Yields the count."""
    q = spec if isinstance(spec, Quantizer) else Quantizer.parse(spec)
    saved = []
    try:
        with torch.no_grad():
            for name, module in model.named_modules():
                if isinstance(module, torch.nn.Linear) and decoder_linears(name, module):
                    saved.append((module, module.weight.data))
                    module.weight.data = q(module.weight.data)
        yield len(saved)
    finally:
        for module, original in saved:
            module.weight.data = original


@contextmanager
def fake_quantize_linears(lab, weights: Quantizer | str | None = None, inputs: Quantizer | str | None = None,
                          calibration: Sequence | None = None) -> Iterator[None]:
    """W`weights` A`inputs` fake quantization of the decoder linears while the block runs."""
    edits = {}
    if inputs is not None:
        edits = {s: FakeQuantize(quantizer=_per_token_view(q))
                 for s, q in input_quantizers(lab, inputs, calibration).items()}
    with quantized_weights(lab.model, weights) if weights is not None else _nothing(), \
            lab.edit(edits) if edits else _nothing():
        yield


@contextmanager
def _nothing() -> Iterator[None]:
    yield
