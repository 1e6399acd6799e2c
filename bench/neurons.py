"""Relation-specific neurons of smollm2-135m (arXiv 2502.17355): deactivate each relation's neurons and
measure factual recall on every relation, beside a random-neuron control of the same count per layer.

Protocol: bfloat16 weights on the CPU (for speed). Relations capital, continent, currency and
city_country of `al.data.facts`, each split 3:1 (seed 0) into identification prompts (train) and
evaluation facts (test). Neurons: channels of `blocks.*.mlp.act` (30 × 1536 = 46,080), read at the
last prompt token, ranked per relation by average precision (relation vs the other three). For
N = 200 and 1000 neurons per relation: accuracy on the test facts as greedy next token == first answer
token, and as 4-way multiple choice by log-likelihood (distractors: other answers of the relation).

Run with the project's venv: `.venv/bin/python bench/neurons.py` (single-threaded, ~15 min on a quiet machine).
"""

from __future__ import annotations

import time

import torch

import actlab as al
from actlab.read.neurons import RelationNeurons, relation_ablation
from common import environment, machine, write_json

MODEL, DTYPE = "smollm2-135m", "bfloat16"
RELATIONS = ("capital", "continent", "currency", "city_country")
TOPS, LAYOUT_TOP = (200, 1000), 200


def main() -> None:
    torch.set_num_threads(1)
    before = machine()
    lab = al.load(MODEL, dtype=DTYPE)
    train = {r: al.data.facts(r, templates="all").split("train") for r in RELATIONS}  # every phrasing
    test = {r: al.data.facts(r).split("test") for r in RELATIONS}
    started = time.perf_counter()
    found = RelationNeurons(top=max(TOPS), progress=False).fit(lab, train)
    fit_seconds = time.perf_counter() - started
    layers = {r: torch.bincount(found.neurons[r][:LAYOUT_TOP, 0], minlength=lab.n_layers).tolist() for r in RELATIONS}
    overlap = {f"{a}/{b}": found.head(LAYOUT_TOP).overlap(a, b) for i, a in enumerate(RELATIONS) for b in RELATIONS[i + 1:]}
    runs = {}
    for metric in ("answer", "choice"):
        for top in TOPS:
            result = relation_ablation(lab, found.head(top), test, metric=metric, progress=False)
            print(result, flush=True)
            runs[f"{metric}_top{top}"] = {**result.to_dict(), "summary": result.summary()}
    write_json("neurons.json", {
        "model": MODEL, "dtype": DTYPE,
        "protocol": {"relations": list(RELATIONS), "identification": {r: len(f) for r, f in train.items()},
                     "evaluation": {r: len(f) for r, f in test.items()}, "tops": list(TOPS),
                     "read": "last prompt token", "identification_templates": "all (3 per relation)", "evaluation_templates": "first", "statistic": "average precision, ties by effect size",
                     "control": "random neurons, same count per layer, disjoint", "threads": torch.get_num_threads()},
        "fit_seconds": fit_seconds,
        "min_ap": {r: {str(t): float(found.scores[r][t - 1]) for t in TOPS} for r in RELATIONS},
        "layers_of_top200": layers, "overlap_top200": overlap, "runs": runs,
        **environment(before, "torch", "transformers")})


if __name__ == "__main__":
    main()
