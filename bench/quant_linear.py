"""Fake-quantized decoder linears on SmolLM2: perplexity on Austen (test), the issue-5 baselines.

    .venv/bin/python bench/quant_linear.py     # writes bench/results/quant_linear.json (about 5 minutes)

Protocol: austen:test, seq_len 512, 16,384 tokens (32 windows), float32. Static activation
scales are calibrated on 8 windows of 512 tokens of austen:train. No transform yet: these are
the naive baselines that SmoothQuant, rotations and the rest must beat.
"""

from __future__ import annotations

import time

import actlab as al
from actlab.compress.linear import fake_quantize_linears
from common import write_json

TOKENS, SEQ = 16384, 512
SETTINGS = {
    "W8A8 per-channel / per-token": ("int8:per_channel", "int8:per_token"),
    "W8A8 per-channel / per-tensor dynamic": ("int8:per_channel", "int8:per_tensor"),
    "W8A8 per-channel / per-tensor static": ("int8:per_channel", "int8:per_tensor:static"),
    "A8 per-tensor static only": (None, "int8:per_tensor:static"),
    "W8 per-channel only": ("int8:per_channel", None),
    "W4A4 per-channel / per-token": ("int4:per_channel", "int4:per_token"),
}


def main() -> None:
    lab = al.load("smollm2-135m")
    test = al.data.corpus("austen", split="test")
    train = al.data.token_windows(lab.tokenizer, "austen:train", SEQ, max_tokens=8 * SEQ)
    calibration = [ids[0].tolist() for ids, _ in train.batches(1)]  # token ids: no re-tokenization
    base = al.eval.perplexity(lab, test, SEQ, max_tokens=TOKENS, progress=False)
    rows = {"fp32": {"ppl": base.ppl, "delta_pct": 0.0}}
    print(f"fp32 {base.ppl:.3f}", flush=True)
    for name, (weights, inputs) in SETTINGS.items():
        started = time.perf_counter()
        with fake_quantize_linears(lab, weights=weights, inputs=inputs, calibration=calibration):
            res = al.eval.perplexity(lab, test, SEQ, max_tokens=TOKENS, progress=False)
        rows[name] = {"weights": weights, "inputs": inputs, "ppl": res.ppl,
                      "delta_pct": 100 * (res.ppl / base.ppl - 1), "seconds": time.perf_counter() - started}
        print(f"{name}: {res.ppl:.3f} ({rows[name]['delta_pct']:+.1f} %)", flush=True)
    write_json("quant_linear.json", {"model": lab.fingerprint.to_dict(), "protocol": base.protocol,
                                     "calibration": "8 windows x 512 tokens of austen:train",
                                     "results": rows})


if __name__ == "__main__":
    main()
