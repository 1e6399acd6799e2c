"""What actlab's recording and steering cost on top of plain HF, on smollm2-135m on the CPU.

Forward: 4 × 512 random token ids, bare `lab.model(input_ids=ids)` against the same call inside
`lab.record("blocks.*.resid_post", positions="all")`, and the copies alone (30 tensors of
`[4, 512, 576]`). Generation: greedy `lab.model.generate` of 64 new tokens for 4 prompts, bare
against inside `lab.edit({"blocks.10.resid_post": add(v, alpha=4)})`. Variants are interleaved
in every round (see `common.interleaved`); medians and paired ratios go to
`bench/results/record_overhead.json`.

Run with the project's venv: `.venv/bin/python bench/record_overhead.py`.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

import actlab as al
from common import (BATCH, QUIET_CORES, SEED, SEQ, THREADS, describe, environment, interleaved, machine,
                    random_ids, ratio, summary, write_json)

SITES = "blocks.*.resid_post"
STEER_SITE, ALPHA, NEW_TOKENS = "blocks.10.resid_post", 4.0, 64
PROMPTS = ["Once upon a time", "The capital of France is", "In the beginning of the novel, Elizabeth",
           "Here is a short recipe for bread:"]
TARGETS = {"record_over_bare": 1.03, "steered_over_bare_time": 1.02}
ACTLAB_DIR = str(Path(al.__file__).parent)
PASS_THROUGH = "actlab_attention"  # the model's attention function: it runs in bare forwards too


def forward_variants(lab: al.Lab, ids: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Bare HF forward and the same forward while recording every resid_post."""

    def bare() -> None:
        lab.model(input_ids=ids)

    def record() -> None:
        with lab.record(SITES, positions="all"):
            lab.model(input_ids=ids)

    return {"bare": bare, "record": record}


def copy_variants(lab: al.Lab) -> dict[str, Callable[[], object]]:
    """The copies alone: 30 `[4, 512, d_model]` tensors cloned, or gathered by an all-true token mask
    (`x[mask]`, the operation `Recording.capture` performs). Copies stay alive until all 30 exist."""
    xs = [torch.randn(BATCH, SEQ, lab.d_model).to(lab.dtype) for _ in range(lab.n_layers)]
    mask = torch.ones(BATCH, SEQ, dtype=torch.bool)
    return {"clone": lambda: [x.clone() for x in xs], "mask_index": lambda: [x[mask] for x in xs]}


def generation_variants(lab: al.Lab, direction: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """Greedy generation of exactly NEW_TOKENS tokens for the 4 prompts, bare and steered."""
    inputs = lab.tokenize(PROMPTS)
    inputs.pop("position_ids")  # generate derives them from the mask
    kwargs = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False,
              "pad_token_id": lab.pad_token_id}

    def bare() -> torch.Tensor:
        return lab.model.generate(**inputs, **kwargs)

    def steered() -> torch.Tensor:
        with lab.edit({STEER_SITE: al.edits.add(direction, alpha=ALPHA)}):
            return lab.model.generate(**inputs, **kwargs)

    return {"bare": bare, "steered": steered}


def actlab_seconds(fn: Callable[[], object], calls: int = 3) -> float:
    """Seconds spent in actlab's own code during `fn()` (hooks, context entry and exit), from cProfile:
    the cumulative time of actlab functions where called from outside actlab, except the attention
    pass-through; median over `calls` calls. Profiling inflates it slightly: an upper bound on the
    direct cost."""
    per_call = []
    for _ in range(calls):
        profile = cProfile.Profile()
        profile.runcall(fn)
        per_call.append(sum(ct for (file, _, name), (*_, callers) in pstats.Stats(profile).stats.items()
                            if file.startswith(ACTLAB_DIR) and name != PASS_THROUGH
                            for (caller, _, _), (*_, ct) in callers.items() if not caller.startswith(ACTLAB_DIR)))
    return statistics.median(per_call)


def checks(lab: al.Lab, ids: torch.Tensor, gen: dict[str, Callable[[], torch.Tensor]]) -> dict[str, float]:
    """That the benchmark measures real work: the recording matches HF's hidden states (blocks
    0..n-2; HF's last hidden state is after the final norm) and the steering edit changes tokens."""
    with lab.record(SITES, positions="all") as rec:
        hidden = lab.model(input_ids=ids, output_hidden_states=True).hidden_states
    diff = max((rec[f"blocks.{i}.resid_post"] - hidden[i + 1].flatten(0, 1)).abs().max().item()
               for i in range(lab.n_layers - 1))
    bare, steered = gen["bare"](), gen["steered"]()
    new = slice(bare.shape[1] - NEW_TOKENS, None)
    return {"recorded_rows_per_site": rec["blocks.0.resid_post"].shape[0],
            "max_abs_diff_vs_hf_hidden_states": diff,
            "steered_tokens_changed_fraction": (bare[:, new] != steered[:, new]).float().mean().item()}


def run_dtype(dtype: str, repeats: int) -> dict[str, object]:
    """All measurements for one dtype."""
    lab = al.load("smollm2-135m", dtype=dtype)
    ids = random_ids(lab.model.config.vocab_size)
    direction = torch.randn(lab.d_model, generator=torch.Generator().manual_seed(SEED))
    direction /= direction.norm()
    gen = generation_variants(lab, direction)
    fwd_t = interleaved(forward_variants(lab, ids), repeats)
    copy_t = interleaved(copy_variants(lab), 3 * repeats)
    gen_t = interleaved(gen, repeats)
    fwd, copies, generation = summary(fwd_t), summary(copy_t), summary(gen_t)
    bare_s, bare_gen_s = fwd["bare"]["median_s"], generation["bare"]["median_s"]
    record_code_s = actlab_seconds(forward_variants(lab, ids)["record"])
    steer_code_s = actlab_seconds(gen["steered"])
    return {
        "forward": {"timings": fwd, "record_over_bare": ratio(fwd_t, "record", "bare"),
                    "bare_tokens_per_s": BATCH * SEQ / bare_s,
                    "record_extra_s_of_medians": fwd["record"]["median_s"] - bare_s,
                    "actlab_code_s": record_code_s, "actlab_code_over_bare": record_code_s / bare_s},
        "copies_alone": {"timings": copies,
                         "mask_index_over_bare_forward": copies["mask_index"]["median_s"] / bare_s,
                         "clone_over_bare_forward": copies["clone"]["median_s"] / bare_s},
        "generation": {"timings": generation, "steered_over_bare_time": ratio(gen_t, "steered", "bare"),
                       "tokens_per_s": {k: BATCH * NEW_TOKENS / v["median_s"] for k, v in generation.items()},
                       "tokens_per_s_ratio_steered_over_bare": bare_gen_s / generation["steered"]["median_s"],
                       "actlab_code_s": steer_code_s, "actlab_code_over_bare": steer_code_s / bare_gen_s},
        "checks": checks(lab, ids, gen),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per measurement")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    before = machine()
    with torch.inference_mode():
        results = {dtype: run_dtype(dtype, args.repeats) for dtype in args.dtypes}
    path = write_json("record_overhead.json", {
        "model": "smollm2-135m",
        "protocol": {
            "forward_input": f"{BATCH} x {SEQ} uniform random token ids, torch seed {SEED}",
            "recorded_sites": f"{SITES} (30 sites), positions='all'",
            "copies_alone": "30 random [4, 512, 576] tensors: .clone() each, or x[all-true [4,512] mask] each; "
                            f"{3 * args.repeats} rounds",
            "generation": f"greedy lab.model.generate, {len(PROMPTS)} left-padded prompts, exactly {NEW_TOKENS} "
                          f"new tokens (min_new_tokens), KV cache on; steered: {STEER_SITE} += {ALPHA} * random "
                          "unit vector",
            "timing": f"torch.set_num_threads({THREADS}), torch.inference_mode, 1 warm-up round, {args.repeats} timed "
                      "rounds; each round runs every variant once, order rotated per round; wall clock",
            "quiet": f"a call is quiet when other processes plus hypervisor steal used < {QUIET_CORES} core on "
                     "average during it (/proc/stat); quiet paired ratios use rounds where both calls were quiet",
            "actlab_code": "3 extra calls of record / steered under cProfile, median: cumulative time of actlab "
                           "functions entered from outside actlab (hooks, context entry/exit), attention pass-through "
                           "excluded; an upper bound on actlab's direct cost, little affected by machine noise",
            "prompts": PROMPTS,
        },
        "targets": TARGETS,
        **environment(before, "torch", "transformers", "actlab"),
        "results": results,
    })
    for dtype, r in results.items():
        print(f"{dtype}: bare forward {r['forward']['bare_tokens_per_s']:.0f} tokens/s")
        print(f"  record / bare forward:    {describe(r['forward']['record_over_bare'])}")
        print(f"  steered / bare generate:  {describe(r['generation']['steered_over_bare_time'])}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
