"""actlab against TransformerLens and nnsight: recording every residual stream of smollm2-135m.

One process, the same weights (the converted folder in the actlab cache) loaded once per tool,
the same 4 × 512 random token ids, float32 on the CPU. Per round, interleaved:

- `hf_sdpa`, `hf_eager`: plain HF forward, SDPA and eager attention (the baselines);
- `actlab_sdpa`, `actlab_eager`: the forward inside `lab.record("blocks.*.resid_post")`, with
  actlab's attention function (SDPA underneath) and with the model switched to eager attention;
- `tl_bare`, `tl_cache`: TransformerLens' `TransformerBridge` forward, and `run_with_cache`
  keeping the 30 `blocks.{i}.hook_resid_post` (the bridge forces eager attention);
- `nnsight_trace`: `model.trace(ids)` saving the output of the 30 decoder layers (SDPA).

Then one run of each is compared with actlab's recording (max abs difference over all 30 sites).
Results go to `bench/results/competitors.json`.

Run in the benchmark venv: `.venv-bench/bin/python bench/competitors.py` (see setup_bench_env.sh).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

import nnsight
import torch
from nnsight.modeling.transformers import TransformersModel
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM, AutoTokenizer

import actlab as al
from common import (BATCH, MODEL_DIR, QUIET_CORES, SEED, SEQ, THREADS, describe, environment, interleaved,
                    machine, random_ids, ratio, summary, write_json)

SITES = "blocks.*.resid_post"
# (variant, baseline): each tool against plain HF with the same attention, then the parts of TL's cost
RATIOS = [("actlab_sdpa", "hf_sdpa"), ("actlab_eager", "hf_eager"), ("tl_bare", "hf_eager"), ("tl_cache", "hf_eager"),
          ("nnsight_trace", "hf_sdpa"), ("hf_eager", "hf_sdpa"), ("tl_bare", "hf_sdpa"), ("tl_cache", "hf_sdpa"),
          ("tl_cache", "tl_bare")]


class Tools:
    """The four tools, each holding its own copy of the same weights."""

    def __init__(self) -> None:
        self.hf = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
        self.lab = al.load("smollm2-135m", dtype="float32")  # actlab attention: SDPA underneath
        eager = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
        self.lab_eager = al.Lab.from_model(eager, self.lab.tokenizer)
        self.lab_eager.model.set_attn_implementation("eager")  # outside a context it is plain HF eager
        self.bridge = TransformerBridge.boot_transformers(str(MODEL_DIR), device="cpu", dtype=torch.float32)
        self.nn_hf = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
        self.nn = TransformersModel(self.nn_hf, tokenizer=AutoTokenizer.from_pretrained(MODEL_DIR),
                                    task="text-generation")
        self.n_layers = self.lab.n_layers
        self.tl_names = [f"blocks.{i}.hook_resid_post" for i in range(self.n_layers)]

    def attention(self) -> dict[str, str]:
        """The attention implementation each tool's model runs with."""
        return {"hf_sdpa": self.hf.config._attn_implementation,
                "hf_eager": self.lab_eager.model.config._attn_implementation,
                "actlab_sdpa": self.lab.model.config._attn_implementation + " (calls HF sdpa_attention_forward)",
                "actlab_eager": self.lab_eager.model.config._attn_implementation,
                "transformer_lens": self.bridge.original_model.config._attn_implementation,
                "nnsight": self.nn_hf.config._attn_implementation}

    # -- one recording call per tool: what the user holds afterwards, nothing read or stacked yet ----
    def actlab(self, lab: al.Lab, ids: torch.Tensor) -> al.Recording:
        with lab.record(SITES, positions="all") as rec:
            lab.model(input_ids=ids)
        return rec

    def transformer_lens(self, ids: torch.Tensor) -> object:
        return self.bridge.run_with_cache(ids, names_filter=self.tl_names)[1]

    def nnsight(self, ids: torch.Tensor) -> list[torch.Tensor]:
        with self.nn.trace(ids):
            outs = nnsight.save([self.nn.model.layers[i].output for i in range(self.n_layers)])
        return outs

    def variants(self, ids: torch.Tensor) -> dict[str, Callable[[], object]]:
        return {
            "hf_sdpa": lambda: self.hf(input_ids=ids),
            "hf_eager": lambda: self.lab_eager.model(input_ids=ids),
            "actlab_sdpa": lambda: self.actlab(self.lab, ids),
            "actlab_eager": lambda: self.actlab(self.lab_eager, ids),
            "tl_bare": lambda: self.bridge(ids),
            "tl_cache": lambda: self.transformer_lens(ids),
            "nnsight_trace": lambda: self.nnsight(ids),
        }

    # -- the same recordings as [n_layers, batch, seq, d_model], for the equality check ------------
    def stacked(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        rec, rec_eager = self.actlab(self.lab, ids), self.actlab(self.lab_eager, ids)
        cache = self.transformer_lens(ids)
        return {
            "actlab_sdpa": torch.stack([rec[f"blocks.{i}.resid_post"].view(*ids.shape, -1)
                                        for i in range(self.n_layers)]),
            "actlab_eager": torch.stack([rec_eager[f"blocks.{i}.resid_post"].view(*ids.shape, -1)
                                         for i in range(self.n_layers)]),
            "transformer_lens": torch.stack([cache[name] for name in self.tl_names]),
            "nnsight": torch.stack(self.nnsight(ids)),
        }


def max_diff(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Max abs difference over all sites, absolute and relative to the largest |activation|."""
    diff = (a - b).abs().max().item()
    return {"max_abs": diff, "relative_to_max_abs_activation": diff / b.abs().max().item()}


def equality(tools: Tools, ids: torch.Tensor) -> dict[str, dict[str, float]]:
    """Each tool's 30 recorded residual streams against actlab's (same attention mode first)."""
    x = tools.stacked(ids)
    return {"nnsight_vs_actlab_sdpa": max_diff(x["nnsight"], x["actlab_sdpa"]),
            "transformer_lens_vs_actlab_eager": max_diff(x["transformer_lens"], x["actlab_eager"]),
            "transformer_lens_vs_actlab_sdpa": max_diff(x["transformer_lens"], x["actlab_sdpa"]),
            "actlab_eager_vs_actlab_sdpa": max_diff(x["actlab_eager"], x["actlab_sdpa"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    before = machine()
    with torch.inference_mode():
        tools = Tools()
        ids = random_ids(tools.lab.model.config.vocab_size)
        times = interleaved(tools.variants(ids), args.repeats)
        same = equality(tools, ids)
    ratios = {f"{name}/{base}": ratio(times, name, base) for name, base in RATIOS}
    path = write_json("competitors.json", {
        "model": "smollm2-135m, float32",
        "protocol": {
            "input": f"{BATCH} x {SEQ} uniform random token ids, torch seed {SEED}, no padding",
            "recorded": "the output of each of the 30 decoder layers (actlab blocks.*.resid_post, "
                        "TransformerLens blocks.*.hook_resid_post, nnsight model.layers[i].output)",
            "timing": f"torch.set_num_threads({THREADS}), torch.inference_mode, 1 warm-up round, {args.repeats} timed "
                      "rounds; each round runs every variant once, order rotated per round; wall clock of one "
                      "recording call as a user makes it (context entry and exit, forward, the tool's own capture); "
                      "reading or stacking the results afterwards is not timed",
            "quiet": f"a call is quiet when other processes plus hypervisor steal used < {QUIET_CORES} core on "
                     "average during it (/proc/stat); quiet paired ratios use rounds where both calls were quiet",
            "ratios": "time of the variant over time of the baseline (plain HF with the same attention first)",
        },
        "attention": tools.attention(),
        **environment(before, "torch", "transformers", "transformer-lens", "nnsight", "actlab"),
        "timings": summary(times),
        "ratios": ratios,
        "equality": same,
    })
    for name, r in ratios.items():
        print(f"{name:24s} {describe(r)}")
    for name, d in same.items():
        print(f"{name:34s} max abs diff {d['max_abs']:.3g}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
