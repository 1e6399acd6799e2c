"""AQI per layer on smollm2-135m: harmful vs harmless instructions (`al.data.prompts("refusal")`).

The 100 JailbreakBench goals against the 100 matched harmless instructions, chat-templated, one
activation per prompt (last token) at every `blocks.*.resid_post`, float32 on the CPU. For each
layer: Davies–Bouldin, Dunn, Xie–Beni, Calinski–Harabasz, AQI (DBS/DI form) and AQI (CHI/XB form,
ranked over the table), plus the learned layer pool. Control: the same activations with the
labels shuffled (seed 0), which any separation index must score worse.

Run with the project's venv: `.venv/bin/python bench/aqi.py` → `bench/results/aqi.json`.
"""

from __future__ import annotations

import time

import torch

import actlab as al
from actlab.engine.reading import read_activations
from actlab.read.clusters import aqi, cluster_scores
from common import environment, machine, write_json

SITES = "blocks.*.resid_post"


def main() -> None:
    torch.set_num_threads(1)
    before = machine()
    lab = al.load("smollm2-135m", dtype="float32")
    pairs = al.data.prompts("refusal")
    start = time.perf_counter()
    result = aqi(lab, pairs, sites=SITES, progress=False)
    seconds = time.perf_counter() - start
    print(result)
    a, b = pairs.formatted(lab.tokenizer)
    names = lab.sites(SITES)
    acts, _ = read_activations(lab, a + b, names, "last")
    labels = torch.cat([torch.zeros(len(a), dtype=torch.long), torch.ones(len(b), dtype=torch.long)])
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    control = [{"site": s, **cluster_scores(acts[s], shuffled)} for s in names]
    best = result.best
    print(f"best layer {best['site']}: AQI {best['aqi']:.4f}; pooled AQI {result.pooled['aqi']:.4f}; "
          f"shuffled-label AQI max {max(r['aqi'] for r in control):.4f}")
    write_json("aqi.json", {
        "model": "smollm2-135m", "dtype": "float32", "sites": SITES, "read": "last token",
        "data": result.data, "n_harmful": result.n_a, "n_harmless": result.n_b, "gamma": result.gamma,
        "seconds_aqi_call": seconds,
        "layers": result.rows, "pooled": result.pooled, "shuffled_label_control": control,
        "best_layer": best["site"],
        **environment(before, "torch", "transformers", "scikit-learn"),
    })


if __name__ == "__main__":
    main()
