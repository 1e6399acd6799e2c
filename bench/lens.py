"""Logit lens and latent language on the embedded models, the numbers quoted in docs/reading.md.

    .venv/bin/python bench/lens.py          # 7 minutes on one thread of a busy 2-core machine

float32, one thread.
- Exactness: the lens of the last block against the model's own logits (max |difference|) on
  both embedded models.
- SmolLM2-135M on "The capital of France is": rank and probability of " Paris" per layer, and
  the heatmap of every position (docs/img/lens_smollm2_paris.png).
- Latent language (Wendler et al., arXiv 2402.10588; Zhong et al., arXiv 2408.10811): lens
  probability of the English, source and target word at the last token of 4-shot translation
  prompts over the project's 60-concept word list, on gemma3-270m (fr→de, fr→zh, de→ja, es→ja)
  and smollm2-135m (fr→de, de→it, es→fr); curves in docs/img/lens_latent_<model>.png.
Writes bench/results/lens.json.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

torch.set_num_threads(1)

import actlab as al  # noqa: E402
from actlab.read.languages import latent_language  # noqa: E402
from actlab.read.lens import LogitLens, residuals, unembed  # noqa: E402
from common import environment, machine, write_json  # noqa: E402

IMAGES = Path(__file__).resolve().parent.parent / "docs" / "img"
EXACT_PROMPTS = ["The capital of France is", "Once upon a time, a young girl", "2 + 2 ="]
PAIRS = {"gemma3-270m": [("fr", "de"), ("fr", "zh"), ("de", "ja"), ("es", "ja")],
         "smollm2-135m": [("fr", "de"), ("de", "it"), ("es", "fr")]}


def exactness(lab) -> float:
    """Max |lens(last block) − logits| over every position of a few prompts (one prompt at a time)."""
    worst = 0.0
    for prompt in EXACT_PROMPTS:
        resid, _, _ = residuals(lab, [prompt], positions="all", progress=False)
        worst = max(worst, float((unembed(lab, resid[:, -1]) - lab.forward([prompt])[0].float()).abs().max()))
    return worst


def main() -> None:
    before = machine()
    started = time.perf_counter()
    IMAGES.mkdir(parents=True, exist_ok=True)
    out: dict = {"dtype": "float32", "models": {}}
    for name, pairs in PAIRS.items():
        lab = al.load(name, dtype="float32")
        entry: dict = {"max_abs_diff_last_layer_vs_logits": exactness(lab)}
        if name == "smollm2-135m":
            lens = LogitLens(top_k=5, positions="all", progress=False).run(lab, "The capital of France is",
                                                                           target=" Paris")
            lens.heatmap(IMAGES / "lens_smollm2_paris.png")
            last = len(lens.positions) - 1
            entry["paris"] = {"layers": lens.layers, "rank": lens.target_rank[last], "prob": lens.target_prob[last],
                              "top1": [depth[0] for depth in lens.top_tokens[last]]}
        result = latent_language(lab, pairs, n_shots=4, seed=0, progress=False)
        result.plot(IMAGES / f"lens_latent_{name.split('-')[0]}.png")
        entry["latent_language"] = result.to_dict()
        print(result, flush=True)
        for row in result.summary():
            print(row, flush=True)
        out["models"][name] = entry
    out["seconds"] = time.perf_counter() - started
    write_json("lens.json", {**out, **environment(before, "torch", "transformers")})


if __name__ == "__main__":
    main()
