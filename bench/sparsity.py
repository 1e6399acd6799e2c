"""PPL-p% activation sparsity of smollm2-135m (Sparsing Law, arXiv 2411.02335) for p = 1 and 5.

Protocol: bfloat16 weights on the CPU (for speed; the CETT thresholds are computed in float32
from the recorded activations), 16 non-overlapping windows of 512 tokens of `austen:test`
(8,192 tokens), thresholds calibrated on the first 4 windows (2,048 tokens), binary search over
the CETT target in [0, 1] down to a bracket of 0.002. The activation ratio is counted on all
8,192 tokens with the truncation applied. Beside it, the fraction of neuron activations that are
exactly zero in the dense model ("straightforward" ReLU-style sparsity, which a SiLU-GLU model
lacks) is measured on the same tokens.

Run with the project's venv: `.venv/bin/python bench/sparsity.py` (single-threaded, ~10 min).
"""

from __future__ import annotations

import torch

import actlab as al
from actlab.data import token_windows
from actlab.read.sparsity import ppl_sparsity
from common import environment, machine, write_json

MODEL, DTYPE, CORPUS = "smollm2-135m", "bfloat16", "austen:test"
SEQ_LEN, MAX_TOKENS, CALIBRATION, TOLERANCE = 512, 8192, 2048, 0.002
PS = (1.0, 5.0)


def exact_zero_fraction(lab: al.Lab) -> float:
    """Share of `mlp.act` values that are exactly 0 in the dense model over the evaluation windows."""
    windows = token_windows(lab.tokenizer, CORPUS, SEQ_LEN, max_tokens=MAX_TOKENS)
    sites = lab.sites("blocks.*.mlp.act")
    zeros = total = 0
    for ids, _ in windows.batches(2):
        with lab.record(sites) as rec:
            lab.forward(ids, return_logits=False)
        for s in sites:
            zeros += int((rec[s] == 0).sum())
            total += rec[s].numel()
    return zeros / total


def main() -> None:
    torch.set_num_threads(1)
    before = machine()
    lab = al.load(MODEL, dtype=DTYPE)
    results = {}
    for p in PS:
        result = ppl_sparsity(lab, CORPUS, p, seq_len=SEQ_LEN, max_tokens=MAX_TOKENS, calibration_tokens=CALIBRATION,
                              tolerance=TOLERANCE, progress=False)
        print(result, flush=True)
        results[f"ppl_{p:g}"] = result.to_dict()
    zeros = exact_zero_fraction(lab)
    summary = {name: {"p": r["p"], "cett": r["cett"], "activation_ratio": r["activation_ratio"],
                      "sparsity": 1 - r["activation_ratio"], "ppl_dense": r["ppl_dense"], "ppl": r["ppl"],
                      "seconds": r["seconds"],
                      "layer_activation_ratio": [round(x, 4) for x in r["layer_activation_ratio"]]}
               for name, r in results.items()}
    print({k: (v["activation_ratio"], v["cett"]) for k, v in summary.items()}, "exact zeros", zeros)
    write_json("sparsity.json", {
        "model": MODEL, "dtype": DTYPE,
        "protocol": {"corpus": CORPUS, "seq_len": SEQ_LEN, "max_tokens": MAX_TOKENS,
                     "calibration_tokens": CALIBRATION, "tolerance": TOLERANCE, "ps": list(PS),
                     "threads": torch.get_num_threads()},
        "summary": summary, "dense_exact_zero_fraction": zeros, "results": results,
        **environment(before, "torch", "transformers")})


if __name__ == "__main__":
    main()
