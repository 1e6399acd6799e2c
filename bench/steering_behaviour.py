"""Steering behaviour on SmolLM2-135M-Instruct, the numbers quoted in docs/steering.md.

    .venv/bin/python bench/steering_behaviour.py            # about 15 minutes on 2 cores
    .venv/bin/python bench/steering_behaviour.py --only east

Three experiments, each beside the unsteered baseline, greedy decoding, float32:
- sentiment: DiffMean (read="mean") on sentiment:train at blocks 6-10, added with ±alpha;
  vader compound of 40-token continuations of the 40 neutral stems; KL / top-1 on Austen
  (test split, 2,048 tokens), beside a random direction of the same norms; an alpha sweep
  (KL on 1,024 tokens) choosing the best alpha within a KL budget, for each sign;
- refusal: DiffMean (read="last") on refusal-replies:train at block 12, refusal rate on the 25
  held-out harmful and 25 held-out harmless instructions: unconditional, with the learned
  controller (reading block 10) and with conditional steering (condition at block 10); and,
  for contrast, the harmful-minus-harmless instruction direction (`refusal:train`) at blocks
  12/16/20/24 with alpha 1 and 2;
- EAST: action entropy on 64 held-out bandit prompts with the EAST vector of block 18 added.
Writes bench/results/steering_behaviour.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

torch.set_num_threads(1)  # a fixed thread count: the numbers do not depend on the machine

import actlab as al

RESULTS = Path(__file__).parent / "results" / "steering_behaviour.json"
SENTIMENT_SITES, SENTIMENT_ALPHA = "blocks.6-10.resid_post", 1.0
SWEEP_ALPHAS, SWEEP_KL_BUDGET = (0.5, 1.0, 1.5, 2.0), 0.3
REFUSAL_SITES, REFUSAL_ALPHA = "blocks.12.resid_post", 2.0
INSTRUCTION_SITES = "blocks.12.resid_post,blocks.16.resid_post,blocks.20.resid_post,blocks.24.resid_post"
CONTROLLER_READ, CONDITION_SITE = "blocks.10.resid_post", "blocks.10.resid_post"
EAST_SITE, EAST_ALPHAS = "blocks.18.resid_post", (-100.0, -50.0, 50.0, 100.0, 200.0)


def _sub(vec: al.steer.SteeringVector, lab, sites: str) -> al.steer.SteeringVector:
    return al.steer.SteeringVector({s: vec.directions[s] for s in lab.sites(sites)}, vec.fingerprint, vec.method,
                                   vec.params, vec.data)


def _random_like(vec: al.steer.SteeringVector, seed: int = 0) -> al.steer.SteeringVector:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for s, d in vec.directions.items():
        r = torch.randn(d.shape, generator=g)
        out[s] = r / r.norm() * d.norm()
    return al.steer.SteeringVector(out, vec.fingerprint, "random", {"seed": seed})


def sentiment(lab) -> dict:
    pairs = al.data.prompts("sentiment", split="train")
    ranking = al.steer.LayerSearch(metric=None, progress=False).fit(lab, pairs)
    vec = al.steer.DiffMean(read="mean", progress=False).fit(lab, pairs, sites=SENTIMENT_SITES)
    metric = al.steer.Sentiment(al.data.prompts("neutral"), max_new_tokens=40)
    out = {"sites": SENTIMENT_SITES, "alpha": SENTIMENT_ALPHA, "norms": vec.norms(),
           "layer_ranking": ranking.layers[:6]}
    for name, steering in [("positive", vec.add(SENTIMENT_ALPHA)), ("negative", (-vec).add(SENTIMENT_ALPHA))]:
        out[name] = al.steer.measure_effect(lab, steering, metric, corpus="austen:test", max_tokens=2048,
                                            progress=False).to_dict()
        print(name, out[name]["baseline"], out[name]["steered"], out[name]["kl_mean"], flush=True)
    control = al.eval.kl_divergence(lab, _random_like(vec).add(SENTIMENT_ALPHA), "austen:test", 256,
                                    max_tokens=2048, progress=False)
    out["random_direction_kl"] = {"kl_mean": control.kl_mean, "top1_agreement": control.top1_agreement}
    print("random", control.kl_mean, flush=True)
    for name, v, up in [("sweep_positive", vec, True), ("sweep_negative", -vec, False)]:
        sweep = al.steer.AlphaSweep(metric, alphas=SWEEP_ALPHAS, kl_budget=SWEEP_KL_BUDGET, maximize=up,
                                    progress=False).fit(lab, v)
        out[name] = {"rows": sweep.sweep, "chosen": sweep.chosen, "kl_budget": SWEEP_KL_BUDGET}
        print(name, sweep.chosen, flush=True)
    return out


def refusal(lab) -> dict:
    harmful = al.data.prompts("harmful", split="test")
    harmless = al.data.prompts("harmless", split="test")
    rates = {"harmful": al.steer.RefusalRate(harmful, max_new_tokens=32),
             "harmless": al.steer.RefusalRate(harmless, max_new_tokens=32)}

    def measure(steering=None) -> dict:
        if steering is None:
            return {k: m(lab) for k, m in rates.items()}
        with lab.edit(steering):
            return {k: m(lab) for k, m in rates.items()}

    full = al.steer.DiffMean(read="last", progress=False).fit(lab, al.data.prompts("refusal-replies", split="train"),
                                                              sites="blocks.*.resid_post")
    vec = _sub(full, lab, REFUSAL_SITES)
    train = al.data.prompts("refusal", split="train")
    controller = al.steer.SteeringController(read_sites=CONTROLLER_READ, alpha=REFUSAL_ALPHA,
                                             progress=False).fit(lab, train, direction=vec)
    conditional = al.steer.ConditionalSteering(condition_site=CONDITION_SITE, progress=False).fit(
        lab, train, behaviour=vec, alpha=REFUSAL_ALPHA)
    out = {"sites": REFUSAL_SITES, "alpha": REFUSAL_ALPHA, "held_out": {k: len(m.prompts) for k, m in rates.items()},
           "unsteered": measure(), "added": measure(vec.add(REFUSAL_ALPHA)),
           "controller": measure(controller.steering()), "conditional": measure(conditional.steering()),
           "conditional_held_out_f1": conditional.stats["held_out_f1"]}
    acts, _ = al.steer.read_activations(lab, al.data.apply_chat(lab.tokenizer, harmful.texts + harmless.texts),
                                        CONTROLLER_READ)
    gate = controller.predict(acts[CONTROLLER_READ])[:, 0]
    n = len(harmful)
    out["controller_scale"] = {"harmful_mean": float(gate[:n].mean()), "harmless_mean": float(gate[n:].mean())}
    instruction = al.steer.DiffMean(read="last", progress=False).fit(lab, train, sites=INSTRUCTION_SITES)
    out["instruction_direction"] = {f"{site} alpha {alpha:g}": measure(_sub(instruction, lab, site).add(alpha))
                                    for site in lab.sites(INSTRUCTION_SITES) for alpha in (1.0, 2.0)}
    samples = al.data.apply_chat(lab.tokenizer, [harmful.texts[0], harmless.texts[0]])
    with lab.edit(conditional.steering()):
        out["samples_conditional"] = lab.generate(samples, max_new_tokens=24)
    print(json.dumps({k: v for k, v in out.items() if k != "samples_conditional"}), flush=True)
    return out


def east(lab) -> dict:
    train, test = al.data.bandit_prompts(n=64, seed=0), al.data.bandit_prompts(n=64, seed=1)
    vec = al.steer.EAST(progress=False).fit(lab, train, sites=EAST_SITE)
    metric = al.steer.ActionEntropy(test)
    out = {"site": EAST_SITE, "norm": vec.norms()[EAST_SITE], "train_mean_entropy": vec.data["mean_action_entropy"],
           "unsteered": metric(lab), "steered": {}}
    for alpha in EAST_ALPHAS:
        with lab.edit(vec.add(alpha)):
            out["steered"][str(alpha)] = metric(lab)
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["sentiment", "refusal", "east"])
    args = parser.parse_args()
    lab = al.load("smollm2-135m")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name, run in [("sentiment", sentiment), ("refusal", refusal), ("east", east)]:
        if args.only in (None, name):
            started = time.perf_counter()
            results[name] = run(lab)
            results[name]["seconds"] = time.perf_counter() - started
    results["model"] = lab.fingerprint.to_dict()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
