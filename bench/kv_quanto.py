"""transformers' own `QuantizedCache` (optimum-quanto backend) on the cache-in-the-loop protocol of
`bench/kv_cache.py`, in `.venv-quant` (where optimum-quanto installs):

    bash bench/setup_quant_bench_env.sh
    .venv-quant/bin/python bench/kv_quanto.py [cache_tokens]

Same windows as `kv_cache.py` (austen:test, 384 prefilled + 128 decoded tokens per window,
2,048 tokens by default), float32. `QuantizedCache` returns full precision on its first update
and keeps the newest `residual_length` tokens in full precision; it has no teacher-forced
equivalent, so only the cache protocol is reported. Bytes are read from the tensors it holds
(quanto's packed data, scales and shifts, and the full-precision residual).
Writes bench/results/kv_quanto.json.
"""

from __future__ import annotations

import sys

import torch
from transformers import QuantizedCache

import actlab as al
from common import environment, machine, write_json


def _nbytes(obj) -> int:
    """Bytes of a tensor or of a quanto tensor's parts (`_data`, `_scale`, `_shift`)."""
    if obj is None:
        return 0
    parts = [getattr(obj, a) for a in ("_data", "_scale", "_shift") if hasattr(obj, a)]
    if parts:
        return sum(_nbytes(p) for p in parts)
    return obj.numel() * obj.element_size() if isinstance(obj, torch.Tensor) else 0


class QuantoCache:
    """A KV-method-shaped wrapper: `cache(lab)` gives transformers' QuantizedCache; no fake path."""

    def __init__(self, bits: int, residual: int):
        self.bits, self.residual, self.label = bits, residual, f"QuantizedCache(quanto, {bits} bits, residual {residual})"
        self.last = None

    def edits(self, lab):
        return None

    def cache(self, lab):
        self.last = QuantizedCache(backend="quanto", config=lab.model.config, nbits=self.bits,
                                   residual_length=self.residual)
        return self.last

    def memory(self, lab) -> dict:
        c = lab.catalog
        total = tokens = 0
        for layer in self.last.layers:
            total += _nbytes(layer._quantized_keys) + _nbytes(layer._quantized_values)
            total += _nbytes(layer.keys) + _nbytes(layer.values)
            tokens = layer.cumulative_length
        batch = self.last.layers[0].keys.shape[0] if self.last.layers[0].keys.dim() == 4 else 1
        fp16 = 2 * 2 * c.n_kv_heads * c.head_dim * c.n_layers * tokens * batch
        return {"total": total, "tokens": tokens, "batch": batch, "bytes_per_token": total / (tokens * batch),
                "compression": fp16 / total}


def main() -> None:
    cache_tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
    torch.set_num_threads(2)
    before = machine()
    lab = al.load("smollm2-135m", dtype="float32")
    base = al.eval.cache_perplexity(lab, "austen:test", 384, 128, max_tokens=cache_tokens, progress=False)
    rows = []
    for bits, residual in ((4, 128), (2, 128), (4, 32), (2, 32)):
        kv = QuantoCache(bits, residual)
        r = al.eval.cache_perplexity(lab, "austen:test", 384, 128, kv=kv, max_tokens=cache_tokens,
                                     teacher_forced=False, progress=False)
        row = {"method": kv.label, "cache_ppl": r.ppl, "cache_delta_pct": 100 * (r.ppl / base.ppl - 1),
               "memory": kv.memory(lab)}
        print(row, flush=True)
        rows.append(row)
    write_json("kv_quanto.json", {"model": lab.name, "base_cache_ppl": base.ppl, "protocol": base.protocol,
                                  "rows": rows, "environment": environment(before)})


if __name__ == "__main__":
    main()
