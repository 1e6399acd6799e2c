"""What steering costs in actlab, on smollm2-135m on the CPU: steered generation and vector extraction.

Generation: greedy `lab.generate` of exactly 40 new tokens (`min_new_tokens=40`), batch 1 and a
left-padded batch of 8, bare against steered with one vector at one site (DiffMean on the 200
sentiment pairs at `blocks.10.resid_post`, alpha 4): `lab.edit(vec.add(alpha=4.0))` (every
token) and `lab.edit(vec.add(alpha=4.0, tokens="generated"))`. Extraction: `DiffMean(read="last")`
and `PCADiff(center=True)` fitted over all 30 `blocks.*.resid_post` sites on the 200 pairs
(400 prompts, batches of 16), against the plain HF forwards over the same batches. Variants are
interleaved in every round (see `common.interleaved`); float32 and bfloat16; medians and paired
ratios go to `bench/results/steering.json`.

Run with the project's venv: `.venv/bin/python bench/steering.py`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

import actlab as al
from common import (QUIET_CORES, SEED, THREADS, describe, environment, interleaved, machine, ratio, summary,
                    write_json)
from record_overhead import actlab_seconds

STEER_SITE, ALPHA, NEW_TOKENS = "blocks.10.resid_post", 4.0, 40
EXTRACT_SITES, EXTRACT_BATCH = "blocks.*.resid_post", 16
PROMPTS = {
    1: ["My day was"],
    8: ["My day was", "The weather today is", "I think the new restaurant", "Here is a short review of the film:",
        "When I opened the letter,", "Our team meeting this morning", "The train to London",
        "She looked at the garden and"],
}
TARGETS = {"steered_tokens_per_s_over_bare_min": 0.97}


def generation_variants(lab: al.Lab, vec: al.steer.SteeringVector,
                        prompts: list[str]) -> dict[str, Callable[[], list[str]]]:
    """Greedy generation of exactly NEW_TOKENS tokens through `lab.generate`, bare and steered."""
    kwargs = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS}

    def bare() -> list[str]:
        return lab.generate(prompts, **kwargs)

    def steered() -> list[str]:
        with lab.edit(vec.add(alpha=ALPHA)):
            return lab.generate(prompts, **kwargs)

    def steered_generated() -> list[str]:
        with lab.edit(vec.add(alpha=ALPHA, tokens="generated")):
            return lab.generate(prompts, **kwargs)

    return {"bare": bare, "steered": steered, "steered_generated": steered_generated}


def extraction_variants(lab: al.Lab, pairs) -> dict[str, Callable[[], object]]:
    """Both estimators over all 30 resid_post sites, and the plain HF forwards they cannot avoid."""
    texts = pairs.positive + pairs.negative
    batches = [texts[i:i + EXTRACT_BATCH] for i in range(0, len(texts), EXTRACT_BATCH)]

    def hf_forwards() -> None:  # what a hook-free reader pays: full forwards, logits included
        for batch in batches:
            lab.model(**lab.tokenize(batch), use_cache=False)

    def diffmean() -> al.steer.SteeringVector:
        return al.steer.DiffMean(read="last", batch_size=EXTRACT_BATCH, progress=False).fit(
            lab, pairs, sites=EXTRACT_SITES)

    def pcadiff() -> al.steer.SteeringVector:
        return al.steer.PCADiff(center=True, batch_size=EXTRACT_BATCH, progress=False).fit(
            lab, pairs, sites=EXTRACT_SITES)

    return {"hf_forwards": hf_forwards, "diffmean": diffmean, "pcadiff_center": pcadiff}


def generated_ids(lab: al.Lab, prompts: list[str], steering=None) -> torch.Tensor:
    """The new token ids `lab.generate` produces (same call, ids instead of text)."""
    inputs = lab.tokenize(prompts)
    inputs.pop("position_ids")
    kwargs = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False,
              "pad_token_id": lab.pad_token_id}
    if steering is None:
        out = lab.model.generate(**inputs, **kwargs)
    else:
        with lab.edit(steering):
            out = lab.model.generate(**inputs, **kwargs)
    return out[:, inputs["input_ids"].shape[1]:]


def generation_checks(lab: al.Lab, vec: al.steer.SteeringVector, prompts: list[str]) -> dict[str, object]:
    """Every variant makes exactly NEW_TOKENS tokens per prompt, and the steering changes them."""
    bare = generated_ids(lab, prompts)
    steered = generated_ids(lab, prompts, vec.add(alpha=ALPHA))
    generated = generated_ids(lab, prompts, vec.add(alpha=ALPHA, tokens="generated"))
    texts = generation_variants(lab, vec, prompts)
    return {"new_tokens_per_prompt": [int(bare.shape[1]), int(steered.shape[1]), int(generated.shape[1])],
            "steered_tokens_changed_fraction": (bare != steered).float().mean().item(),
            "steered_generated_tokens_changed_fraction": (bare != generated).float().mean().item(),
            "example": {name: fn()[0] for name, fn in texts.items()}}


def run_dtype(dtype: str, repeats: int, extract_repeats: int) -> dict[str, object]:
    """All measurements for one dtype."""
    lab = al.load("smollm2-135m", dtype=dtype)
    pairs = al.data.prompts("sentiment")
    vec = al.steer.DiffMean(read="last", progress=False).fit(lab, pairs, sites=STEER_SITE)
    out: dict[str, object] = {"vector_norm": vec.norms()[STEER_SITE]}
    for batch, prompts in PROMPTS.items():
        gen = generation_variants(lab, vec, prompts)
        runs = interleaved(gen, repeats)
        timings = summary(runs)
        bare_s = timings["bare"]["median_s"]
        code_s = actlab_seconds(lambda: generated_ids(lab, prompts, vec.add(alpha=ALPHA)))
        out[f"generation_batch{batch}"] = {
            "timings": timings,
            "steered_over_bare_time": ratio(runs, "steered", "bare"),
            "steered_generated_over_bare_time": ratio(runs, "steered_generated", "bare"),
            "tokens_per_s": {k: batch * NEW_TOKENS / v["median_s"] for k, v in timings.items()},
            "tokens_per_s_steered_over_bare_paired": 1 / ratio(runs, "steered", "bare")["median_paired_ratio"],
            "tokens_per_s_steered_generated_over_bare_paired":
                1 / ratio(runs, "steered_generated", "bare")["median_paired_ratio"],
            "actlab_code_s": code_s, "actlab_code_over_bare": code_s / bare_s,
            "checks": generation_checks(lab, vec, prompts),
        }
    runs = interleaved(extraction_variants(lab, pairs), extract_repeats)
    timings = summary(runs)
    n_prompts = 2 * len(pairs)
    n_tokens = sum(len(lab.tokenizer(t)["input_ids"]) for t in pairs.positive + pairs.negative)
    out["extraction"] = {
        "timings": timings, "prompts": n_prompts, "tokens": n_tokens,
        "prompts_per_s": {k: n_prompts / v["median_s"] for k, v in timings.items()},
        "diffmean_over_hf_forwards": ratio(runs, "diffmean", "hf_forwards"),
        "pcadiff_center_over_hf_forwards": ratio(runs, "pcadiff_center", "hf_forwards"),
        "pcadiff_center_over_diffmean": ratio(runs, "pcadiff_center", "diffmean"),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed generation rounds")
    parser.add_argument("--extract-repeats", type=int, default=3, help="timed extraction rounds")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=THREADS,
                        help=f"torch threads (default {THREADS}; 1 keeps timings usable while other jobs hold "
                             "the cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    before = machine()
    with torch.inference_mode():
        results = {dtype: run_dtype(dtype, args.repeats, args.extract_repeats) for dtype in args.dtypes}
    path = write_json("steering.json", {
        "model": "smollm2-135m",
        "protocol": {
            "vector": f"DiffMean(read='last') on al.data.prompts('sentiment') (200 pairs) at {STEER_SITE}, "
                      "fitted in the dtype of the run",
            "generation": f"greedy lab.generate, exactly {NEW_TOKENS} new tokens (min_new_tokens={NEW_TOKENS}), "
                          "KV cache on, batch 1 and a left-padded batch of 8; bare, steered = inside "
                          f"lab.edit(vec.add(alpha={ALPHA})) (every token), steered_generated = inside "
                          f"lab.edit(vec.add(alpha={ALPHA}, tokens='generated')); context entry and exit, "
                          "tokenization and decoding are inside every timed call",
            "extraction": f"fit over {EXTRACT_SITES} (30 sites), 400 prompts in batches of {EXTRACT_BATCH}; "
                          "hf_forwards = lab.model(**lab.tokenize(batch), use_cache=False) over the same batches "
                          "(full logits); actlab's reader stops after the deepest site",
            "timing": f"torch.set_num_threads({args.threads}), torch.inference_mode, 1 warm-up round, {args.repeats} "
                      f"timed generation rounds and {args.extract_repeats} extraction rounds; each round runs "
                      "every variant once, order rotated per round; wall clock",
            "quiet": f"a call is quiet when other processes plus hypervisor steal used < {QUIET_CORES} core on "
                     "average during it (/proc/stat); quiet paired ratios use rounds where both calls were quiet",
            "actlab_code": "3 extra steered calls (lab.tokenize, then lab.model.generate inside lab.edit) under "
                           "cProfile, median: cumulative time of actlab functions entered from outside actlab "
                           "(edit hooks, context entry/exit, tokenization), attention pass-through excluded; an "
                           "upper bound on actlab's direct cost",
            "prompts": {str(k): v for k, v in PROMPTS.items()},
        },
        "targets": TARGETS,
        **environment(before, "torch", "transformers", "actlab"),
        "results": results,
    })
    for dtype, r in results.items():
        for batch in PROMPTS:
            g = r[f"generation_batch{batch}"]
            print(f"{dtype} batch {batch}: bare {g['tokens_per_s']['bare']:.1f} tokens/s")
            print(f"  steered / bare time:           {describe(g['steered_over_bare_time'])}")
            print(f"  steered generated / bare time: {describe(g['steered_generated_over_bare_time'])}")
        e = r["extraction"]["timings"]
        print(f"{dtype} extraction: " + ", ".join(f"{k} {v['median_s']:.2f} s" for k, v in e.items()))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
