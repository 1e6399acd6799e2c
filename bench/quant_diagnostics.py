"""Per-layer quantization diagnostics on SmolLM2: outlier channels, kurtosis before/after the
transforms, quantization kernel (CrossQuant's metric) and output error per linear input.

    .venv/bin/python bench/quant_diagnostics.py     # about 5 minutes; bench/results/quant_diagnostics.json

Each recipe is calibrated on 16 windows of 512 tokens of austen:train (diagnostics on the first 4).
"""

from __future__ import annotations

import statistics

import torch

import actlab as al
from common import environment, machine, write_json

RECIPES = ["w8a8", "crossquant | w8a8", "crossquant(alpha=0.5) | w8a8", "w8 a8:static", "smoothquant | w8 a8:static",
           "smoothquant | rotate | w8 a8:static", "w4a4", "rotate | w4a4"]


def summarize(rows: list[dict]) -> dict:
    worst = sorted(rows, key=lambda r: -r["rel_mse"])[:5]
    return {
        "kernel_pct_mean": statistics.fmean(r["kernel_pct"] for r in rows),
        "kernel_pct_by_site": {site: statistics.fmean(r["kernel_pct"] for r in rows if r["group"].endswith(site))
                               for site in ("attn.in", "attn.z", "mlp.in", "mlp.act")},
        "kurtosis_before_max": max(r["kurtosis_before"] for r in rows),
        "kurtosis_after_max": max(r["kurtosis_after"] for r in rows),
        "kurtosis_after_median": statistics.median(r["kurtosis_after"] for r in rows),
        "rel_mse_median": statistics.median(r["rel_mse"] for r in rows),
        "worst": [{k: r[k] for k in ("group", "rel_mse", "kernel_pct", "kurtosis_before", "kurtosis_after",
                                     "outlier_channels")} for r in worst],
    }


def main() -> None:
    torch.set_num_threads(2)
    before = machine()
    lab = al.load("smollm2-135m")
    out = {}
    for recipe in RECIPES:
        qlab = al.compress.Recipe.parse(recipe).calibrate(lab, "austen:train", samples=16, seq_len=512,
                                                          progress=False, diagnostics=True)
        rows = qlab.quantization.layers
        out[recipe] = {"summary": summarize(rows), "layers": rows}
        s = out[recipe]["summary"]
        print(f"{recipe:40s} kernel {s['kernel_pct_mean']:5.1f} %  kurtosis max {s['kurtosis_before_max']:.0f} -> "
              f"{s['kurtosis_after_max']:.0f}  median rel. MSE {s['rel_mse_median']:.2e}", flush=True)
    write_json("quant_diagnostics.json", {"model": lab.fingerprint.to_dict(), "recipes": out,
                                          "calibration": "16 windows x 512 tokens of austen:train; diagnostics on 4",
                                          "environment": environment(before)})


if __name__ == "__main__":
    main()
