"""actlab's steering against repeng and steering-vectors: the same vectors, their time, their cost.

One process, smollm2-135m in float32 loaded once (`al.load`), the competitors given `lab.model`
and `lab.tokenizer`, the 200 sentiment pairs (`al.data.prompts("sentiment")`), every tool reading
16 prompts per forward. Extraction, interleaved per round, all 30 blocks:

- `actlab_diffmean`: `DiffMean(read="last")` ↔ `steering_vectors`: `train_steering_vector(...,
  read_token_index=-1)` (mean of the pair differences at the last token);
- `actlab_pcadiff_center`: `PCADiff(center=True)` ↔ `repeng_pca_diff`: `ControlVector.train(...,
  method="pca_diff")`;
- `actlab_pcadiff`: `PCADiff()` ↔ `repeng_pca_center`: `method="pca_center"`.

Then per layer the cosine of each pair of vectors (signed and |cos|), plus the layer-convention
checks (repeng's index i against our blocks.{i-1}; repeng's last layer against our `final_norm`).

Steered generation (greedy, exactly 40 new tokens, batch 1 and 8, interleaved): plain HF
`generate`, actlab `lab.edit(vec.add(4.0))`, steering-vectors `apply(model, multiplier=4.0)`, all
on `lab.model`, and repeng `ControlModel.set_control(..., 4.0)` on a deep copy (it wraps the
layers), with the same direction at block 10 in every tool, so their tokens can be compared.
Results go to `bench/results/steering_competitors.json`.

Run in the steering venv: `.venv-steer/bin/python bench/steering_competitors.py` (see
setup_steer_bench_env.sh).
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # repeng's progress bars cannot be switched off otherwise

import argparse  # noqa: E402
import copy  # noqa: E402
import logging  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from repeng import ControlModel, ControlVector, DatasetEntry  # noqa: E402
from steering_vectors import SteeringVector as SVSteeringVector  # noqa: E402
from steering_vectors import train_steering_vector  # noqa: E402

import actlab as al  # noqa: E402
from common import (QUIET_CORES, SEED, THREADS, describe, environment, interleaved, machine, ratio, summary,  # noqa: E402
                    write_json)

LAYERS = list(range(30))
SITES = "blocks.*.resid_post"
READ_BATCH = 16  # prompts per forward in every tool (repeng: 8 pairs; steering-vectors: 16 pairs, pos and neg apart)
STEER_LAYER, ALPHA, NEW_TOKENS = 10, 4.0, 40
PROMPTS = {
    1: ["My day was"],
    8: ["My day was", "The weather today is", "I think the new restaurant", "Here is a short review of the film:",
        "When I opened the letter,", "Our team meeting this morning", "The train to London",
        "She looked at the garden and"],
}
# (ours, theirs): the method pairs that compute the same thing
MATCHES = {"diffmean": ("actlab_diffmean", "steering_vectors_mean"),
           "pca_diff": ("actlab_pcadiff_center", "repeng_pca_diff"),
           "pca_center": ("actlab_pcadiff", "repeng_pca_center")}


def extraction_variants(lab: al.Lab, pairs, found: dict[str, dict[int, torch.Tensor]]) -> dict[str, Callable]:
    """Six extractions over all 30 blocks; each call leaves its `{layer: direction}` in `found`."""
    dataset = [DatasetEntry(p, n) for p, n in zip(pairs.positive, pairs.negative, strict=True)]
    samples = list(zip(pairs.positive, pairs.negative, strict=True))

    def actlab(name: str, estimator) -> Callable[[], None]:
        def run() -> None:
            vec = estimator.fit(lab, pairs, sites=SITES)
            found[name] = {i: vec.directions[f"blocks.{i}.resid_post"] for i in LAYERS}
        return run

    def repeng(method: str) -> Callable[[], None]:
        def run() -> None:
            cv = ControlVector.train(lab.model, lab.tokenizer, dataset, method=method, batch_size=READ_BATCH,
                                     hidden_layers=LAYERS)
            found[f"repeng_{method}"] = {i: torch.from_numpy(np.asarray(d)).float() for i, d in cv.directions.items()}
        return run

    def steering_vectors() -> None:
        sv = train_steering_vector(lab.model, lab.tokenizer, samples, layers=LAYERS, read_token_index=-1,
                                   batch_size=READ_BATCH)
        found["steering_vectors_mean"] = {i: d.float().cpu() for i, d in sv.layer_activations.items()}

    return {
        "actlab_diffmean": actlab("actlab_diffmean", al.steer.DiffMean(read="last", batch_size=READ_BATCH,
                                                                       progress=False)),
        "steering_vectors_mean": steering_vectors,
        "actlab_pcadiff_center": actlab("actlab_pcadiff_center", al.steer.PCADiff(center=True, batch_size=READ_BATCH,
                                                                                  progress=False)),
        "repeng_pca_diff": repeng("pca_diff"),
        "actlab_pcadiff": actlab("actlab_pcadiff", al.steer.PCADiff(batch_size=READ_BATCH, progress=False)),
        "repeng_pca_center": repeng("pca_center"),
    }


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def compare(ours: dict[int, torch.Tensor], theirs: dict[int, torch.Tensor]) -> dict[str, object]:
    """Per layer: signed cosine, |cos|, norm ratio theirs/ours and max abs difference."""
    rows = [{"layer": i, "cos": cos(theirs[i], ours[i]), "abs_cos": abs(cos(theirs[i], ours[i])),
             "norm_ratio": float(theirs[i].norm() / ours[i].norm()),
             "max_abs_diff": float((theirs[i] - ours[i]).abs().max())} for i in LAYERS]
    inner = [r for r in rows if r["layer"] < LAYERS[-1]]
    return {"per_layer": rows,
            "min_abs_cos_layers_0_28": min(r["abs_cos"] for r in inner),
            "min_cos_layers_0_28": min(r["cos"] for r in inner),
            "layer_29": rows[-1]}


def agreement(lab: al.Lab, pairs, found: dict[str, dict[int, torch.Tensor]]) -> dict[str, object]:
    """The matched pairs of methods, the layer-convention checks and how the methods differ."""
    out: dict[str, object] = {name: compare(found[a], found[b]) for name, (a, b) in MATCHES.items()}
    # repeng's index i reads hidden_states[i + 1] = output of model.model.layers[i] = our blocks.{i}: against
    # blocks.{i-1} the agreement must drop (if it does not, the convention check would be meaningless)
    shifted = [abs(cos(found["repeng_pca_diff"][i], found["actlab_pcadiff_center"][i - 1])) for i in LAYERS[1:]]
    out["repeng_layer_i_vs_our_blocks_i_minus_1"] = {"abs_cos": shifted, "max_abs_cos": max(shifted)}
    # repeng's last index reads hidden_states[30], which HF returns after the final norm
    final = al.steer.PCADiff(center=True, batch_size=READ_BATCH, progress=False).fit(lab, pairs, sites="final_norm")
    last = found["repeng_pca_diff"][LAYERS[-1]]
    out["repeng_layer_29_vs_our_final_norm"] = {
        "cos": cos(last, final.directions["final_norm"]),
        "vs_our_blocks_29_resid_post": cos(last, found["actlab_pcadiff_center"][LAYERS[-1]])}
    out["between_methods_actlab"] = {
        "pcadiff_center_vs_diffmean_abs_cos": [abs(cos(found["actlab_pcadiff_center"][i], found["actlab_diffmean"][i]))
                                               for i in LAYERS],
        "pcadiff_vs_diffmean_abs_cos": [abs(cos(found["actlab_pcadiff"][i], found["actlab_diffmean"][i]))
                                        for i in LAYERS]}
    out["norms"] = {name: [float(v[i].norm()) for i in LAYERS] for name, v in found.items()}
    return out


class Steerers:
    """The same direction at block 10, applied by each tool."""

    def __init__(self, lab: al.Lab, pairs, sv_direction: torch.Tensor):
        self.lab = lab
        self.vec = al.steer.DiffMean(read="last", progress=False).fit(lab, pairs,
                                                                      sites=f"blocks.{STEER_LAYER}.resid_post")
        self.sv = SVSteeringVector({STEER_LAYER: sv_direction}, "decoder_block")  # trained by steering-vectors
        self.direction = self.vec.directions[f"blocks.{STEER_LAYER}.resid_post"]
        self.cv = ControlVector(model_type=lab.model.config.model_type,
                                directions={STEER_LAYER: self.direction.numpy().copy()})
        self.control = ControlModel(copy.deepcopy(lab.model), [STEER_LAYER])  # mutates the copy, not lab.model

    def variants(self, prompts: list[str]) -> dict[str, Callable[[], torch.Tensor]]:
        inputs = self.lab.tokenize(prompts)
        inputs.pop("position_ids")
        kwargs = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False,
                  "pad_token_id": self.lab.pad_token_id}
        model, cut = self.lab.model, inputs["input_ids"].shape[1]

        def hf_bare() -> torch.Tensor:
            return model.generate(**inputs, **kwargs)[:, cut:]

        def actlab() -> torch.Tensor:
            with self.lab.edit(self.vec.add(alpha=ALPHA)):
                return model.generate(**inputs, **kwargs)[:, cut:]

        def steering_vectors() -> torch.Tensor:
            with self.sv.apply(model, multiplier=ALPHA):
                return model.generate(**inputs, **kwargs)[:, cut:]

        def repeng() -> torch.Tensor:
            self.control.set_control(self.cv, ALPHA)
            try:
                return self.control.generate(**inputs, **kwargs)[:, cut:]
            finally:
                self.control.reset()

        def repeng_unset() -> torch.Tensor:  # the wrapped copy with no control set: repeng's baseline
            return self.control.generate(**inputs, **kwargs)[:, cut:]

        return {"hf_bare": hf_bare, "actlab": actlab, "steering_vectors": steering_vectors, "repeng": repeng,
                "repeng_unset": repeng_unset}


def token_checks(variants: dict[str, Callable[[], torch.Tensor]]) -> dict[str, object]:
    """Token counts, and whether the three tools' steered tokens agree (same direction, same alpha)."""
    ids = {name: fn() for name, fn in variants.items()}
    same = lambda a, b: float((ids[a] == ids[b]).float().mean())  # noqa: E731
    return {"new_tokens_per_prompt": {k: int(v.shape[1]) for k, v in ids.items()},
            "steered_tokens_changed_fraction_vs_bare": 1 - same("actlab", "hf_bare"),
            "equal_tokens_fraction": {"steering_vectors_vs_actlab": same("steering_vectors", "actlab"),
                                      "repeng_vs_actlab": same("repeng", "actlab"),
                                      "repeng_unset_vs_hf_bare": same("repeng_unset", "hf_bare")}}


GEN_RATIOS = [("actlab", "hf_bare"), ("steering_vectors", "hf_bare"), ("repeng", "hf_bare"), ("repeng", "repeng_unset"),
              ("repeng_unset", "hf_bare"), ("steering_vectors", "actlab"), ("repeng", "actlab")]
EXTRACT_RATIOS = [("steering_vectors_mean", "actlab_diffmean"), ("repeng_pca_diff", "actlab_pcadiff_center"),
                  ("repeng_pca_center", "actlab_pcadiff")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed generation rounds")
    parser.add_argument("--extract-repeats", type=int, default=3, help="timed extraction rounds")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help=f"torch threads (default {THREADS}; 1 keeps timings usable while other jobs hold "
                             "the cores)")
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    before = machine()
    with torch.inference_mode():
        lab = al.load("smollm2-135m", dtype="float32")
        pairs = al.data.prompts("sentiment")
        found: dict[str, dict[int, torch.Tensor]] = {}
        ext_runs = interleaved(extraction_variants(lab, pairs, found), args.extract_repeats)
        agree = agreement(lab, pairs, found)
        steerers = Steerers(lab, pairs, found["steering_vectors_mean"][STEER_LAYER])
        generation = {}
        for batch, prompts in PROMPTS.items():
            variants = steerers.variants(prompts)
            runs = interleaved(variants, args.repeats)
            timings = summary(runs)
            generation[f"batch{batch}"] = {
                "timings": timings,
                "ratios": {f"{a}/{b}": ratio(runs, a, b) for a, b in GEN_RATIOS},
                "tokens_per_s": {k: batch * NEW_TOKENS / v["median_s"] for k, v in timings.items()},
                "checks": token_checks(variants),
            }
    ext_timings = summary(ext_runs)
    path = write_json("steering_competitors.json", {
        "model": "smollm2-135m, float32",
        "protocol": {
            "data": "al.data.prompts('sentiment'): 200 (positive, negative) pairs, plain text (no chat template)",
            "extraction": f"all 30 blocks; {READ_BATCH} prompts per forward in every tool. actlab: estimator.fit(lab, "
                          f"pairs, sites='{SITES}', batch_size={READ_BATCH}), left padding, reads the last token, "
                          "stops the forward after block 29. repeng: ControlVector.train(lab.model, lab.tokenizer, "
                          f"[DatasetEntry(pos, neg)], method=..., batch_size={READ_BATCH}, hidden_layers=range(30)) "
                          "(its default range(-1, -30, -1) omits layer 0), tokenizer padding (right), last non-pad "
                          "token of hidden_states[i + 1], full forward with logits. steering-vectors: "
                          "train_steering_vector(lab.model, lab.tokenizer, [(pos, neg)], layers=range(30), "
                          f"read_token_index=-1, batch_size={READ_BATCH}), forward hooks on model.model.layers[i], "
                          "full forward with logits",
            "layer_convention": "repeng index i reads HF hidden_states[i + 1] = output of model.model.layers[i] = "
                                "actlab blocks.{i}.resid_post, except i = 29: hidden_states[30] is after the final "
                                "norm (= actlab final_norm); repeng steers the output of layers[i] (pre-norm for "
                                "every i). steering-vectors index i = model.model.layers[i] = blocks.{i}.resid_post",
            "generation": f"greedy model.generate, exactly {NEW_TOKENS} new tokens (min_new_tokens), KV cache on, "
                          "batch 1 and a left-padded batch of 8 (lab.tokenize, same ids and mask for every variant); "
                          f"one direction at block {STEER_LAYER}, alpha/multiplier/coeff {ALPHA}: actlab's "
                          "DiffMean vector; steering-vectors its own trained mean-difference vector at layer "
                          f"{STEER_LAYER}; repeng ControlVector(directions={{{STEER_LAYER}: actlab's DiffMean}}) on a "
                          "copy.deepcopy of lab.model wrapped in ControlModel; set_control/reset and context "
                          "entry/exit are inside the timed calls",
            "timing": f"torch.set_num_threads({args.threads}), torch.inference_mode, 1 warm-up round, "
                      f"{args.extract_repeats} timed extraction rounds and {args.repeats} generation rounds; each "
                      "round runs every variant once, order rotated per round; wall clock",
            "quiet": f"a call is quiet when other processes plus hypervisor steal used < {QUIET_CORES} core on "
                     "average during it (/proc/stat); quiet paired ratios use rounds where both calls were quiet",
            "install": "bench/setup_steer_bench_env.sh: numpy<2 (repeng), steering-vectors --no-deps (declares "
                       "transformers<5; pip check reports exactly that), actlab editable --no-deps",
            "prompts": {str(k): v for k, v in PROMPTS.items()},
        },
        **environment(before, "torch", "transformers", "numpy", "scikit-learn", "repeng", "steering-vectors", "actlab"),
        "extraction": {"timings": ext_timings,
                       "ratios": {f"{a}/{b}": ratio(ext_runs, a, b) for a, b in EXTRACT_RATIOS}},
        "agreement": agree,
        "generation": generation,
    })
    for name in MATCHES:
        a = agree[name]
        print(f"{name:10s} min |cos| layers 0-28 {a['min_abs_cos_layers_0_28']:.6f}, "
              f"layer 29 cos {a['layer_29']['cos']:.4f}")
    for a, b in EXTRACT_RATIOS:
        print(f"extraction {a}/{b}: {describe(ratio(ext_runs, a, b))}")
    for batch, g in generation.items():
        for name, r in g["ratios"].items():
            print(f"{batch} {name:30s} {describe(r)}")
        print(f"{batch} checks {g['checks']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
