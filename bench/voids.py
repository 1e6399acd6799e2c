"""Layer voids (LAC, arXiv 2505.14467) on SmolLM2-135M, the numbers quoted in docs/reading.md.

    .venv/bin/python bench/voids.py          # 13 minutes on one thread of a busy 2-core machine

float32, one thread. For each LAC alpha and skipping mode ("skip": void blocks leave the
residual unchanged, as the paper describes; "exit": the author's code, the final residual is the
deepest active block's output), decisions made online from the run being edited:
- perplexity on austen:test (8,192 tokens, windows of 512) and the fraction of blocks used there;
- multiple-choice accuracy on 60 `capital` facts (4 options, log-likelihood scoring);
- prefill / generation block usage on 4 prompts with 24 greedy tokens each.
Plus the per-layer activation rates of the unedited model at the paper's alpha 0.8 (prefill vs
generation), drawn to docs/img/voids_rates.png. Writes bench/results/voids.json.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

torch.set_num_threads(1)

import actlab as al  # noqa: E402
from actlab.eval.choice import multiple_choice  # noqa: E402
from actlab.read.voids import LayerVoids, VoidsResult, layer_voids  # noqa: E402
from common import environment, machine, write_json  # noqa: E402

CORPUS, SEQ_LEN, MAX_TOKENS = "austen:test", 512, 8192
PROMPTS = ["The capital of France is", "Once upon a time, a young girl", "The best way to learn is",
           "Water boils at a temperature of"]
NEW_TOKENS, N_QUESTIONS = 24, 60
SWEEP = {"skip": (-0.5, -0.2, 0.0, 0.8), "exit": (0.0, 0.5, 0.8)}
IMAGE = Path(__file__).resolve().parent.parent / "docs" / "img" / "voids_rates.png"


def evaluate(lab, questions, voids: LayerVoids | None) -> dict:
    """Perplexity (and the voids' block usage on the corpus), then multiple-choice accuracy."""
    ppl = al.eval.perplexity(lab, CORPUS, seq_len=SEQ_LEN, max_tokens=MAX_TOKENS, edits=voids, progress=False)
    corpus = voids.result(lab).prefill if voids is not None else None
    if voids is not None:
        voids.reset()  # the choice scorer's right padding would count as tokens
    choice = multiple_choice(lab, questions, edits=voids, progress=False)
    return {"ppl": ppl.ppl, "accuracy": choice.accuracy, "corpus": corpus, "ppl_protocol": ppl.protocol,
            "choice_protocol": choice.protocol}


def plot_rates(result: VoidsResult) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    layers = range(result.n_layers)
    ax.bar([l - 0.2 for l in layers], result.prefill.active_rate, width=0.4, label="prompt processing")
    ax.bar([l + 0.2 for l in layers], result.generation.active_rate, width=0.4, label="response generation")
    ax.set_xlabel("block")
    ax.set_ylabel("share of tokens active")
    ax.set_title(f"LAC alpha {result.alpha:g}, SmolLM2-135M: blocks used {result.prefill.fraction_used:.2f} "
                 f"(prompt) / {result.generation.fraction_used:.2f} (generation)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    IMAGE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMAGE, dpi=120)
    plt.close(fig)


def main() -> None:
    before = machine()
    started = time.perf_counter()
    lab = al.load("smollm2-135m", dtype="float32")
    questions = al.data.facts("capital").sample(N_QUESTIONS, seed=0).questions(n_options=4, seed=0)
    plain = evaluate(lab, questions, None)
    print(f"plain: ppl {plain['ppl']:.3f}, accuracy {plain['accuracy']:.3f}", flush=True)
    traced = layer_voids(lab, PROMPTS, alpha=0.8, mode="trace", max_new_tokens=NEW_TOKENS)
    plot_rates(traced)
    rows = []
    for mode, alphas in SWEEP.items():
        for alpha in alphas:
            voids = LayerVoids(alpha, mode)
            scores = evaluate(lab, questions, voids)
            corpus = scores["corpus"]
            generation = layer_voids(lab, PROMPTS, alpha=alpha, mode=mode, max_new_tokens=NEW_TOKENS)
            row = {"mode": mode, "alpha": alpha, "ppl": scores["ppl"], "ppl_ratio": scores["ppl"] / plain["ppl"],
                   "accuracy": scores["accuracy"], "layers_used_corpus": corpus.fraction_used,
                   "depth_used_corpus": corpus.depth_used,
                   "layers_used_prefill": generation.prefill.fraction_used,
                   "layers_used_generation": generation.generation.fraction_used}
            rows.append(row)
            print(f"{mode} alpha {alpha:g}: layers used {corpus.fraction_used:.3f} (depth {corpus.depth_used:.3f}), "
                  f"ppl {scores['ppl']:.3f} ({100 * (row['ppl_ratio'] - 1):+.1f} %), "
                  f"accuracy {scores['accuracy']:.3f}", flush=True)
    within = [r for r in rows if r["ppl_ratio"] <= 1.05]
    best = min(within, key=lambda r: r["layers_used_corpus" if r["mode"] == "skip" else "depth_used_corpus"]) \
        if within else None
    write_json("voids.json", {
        "model": "smollm2-135m", "dtype": "float32",
        "protocol": {"corpus": CORPUS, "seq_len": SEQ_LEN, "max_tokens": MAX_TOKENS, "questions": N_QUESTIONS,
                     "question_relation": "capital", "options": 4, "generation_prompts": PROMPTS,
                     "new_tokens": NEW_TOKENS, "rule": "LAC: active when Δ‖h‖ ≥ alpha·(max−min of earlier Δ)"},
        "plain": {k: v for k, v in plain.items() if k != "corpus"}, "trace_alpha_0.8": traced.to_dict(),
        "sweep": rows,
        "fewest_layers_within_5_percent_ppl": best,
        "image": str(IMAGE.relative_to(IMAGE.parent.parent.parent)),
        "seconds": time.perf_counter() - started, **environment(before, "torch", "transformers"),
    })
    print("fewest layers within 5 % perplexity:", best)


if __name__ == "__main__":
    main()
