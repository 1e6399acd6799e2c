"""Representation similarity on smollm2-135m: a layer × layer CKA / SVCCA / relative matrix from
activation stores, streaming against in-memory, and our CKA against a plain numpy CKA.

Stores: 20,480 tokens of austen (`seq_len` 512, float16 store) at `blocks.{0,7,14,21,29}.resid_post`,
harvested from the float32 model; and the first 8,192 of the same tokens from the bfloat16 model
(float32 vs bfloat16 activations, compared site by site). Timings (torch threads 1, interleaved
rounds, see `common.interleaved`):

- one pair (layer 14 vs 21, 20,480 × 576 each, in memory): `al.read.cka` (torch float64)
  against numpy float64 (its BLAS limited to one thread with threadpoolctl) `‖YcᵀXc‖² / (‖XcᵀXc‖ ‖YcᵀYc‖)`;
- the 5 × 5 matrix: `compare_stores` streaming from disk (8,192-token batches; CKA and SVCCA share
  the running moments) against pair-by-pair in-memory calls on arrays already loaded; relative
  representations (256 anchor tokens) likewise.

Diagnostics: CKA again without each window's first token (the high-norm attention-sink token), the
median residual norms of first vs other tokens, and how many directions SVCCA keeps per site.

Run with the project's venv: `.venv/bin/python bench/similarity.py` → `bench/results/similarity.json`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits

import actlab as al
from actlab.read.similarity import anchor_rows, cka, compare_stores, relative_similarity, svcca
from common import describe, environment, interleaved, machine, ratio, summary, write_json

LAYERS = [0, 7, 14, 21, 29]
SITES = [f"blocks.{i}.resid_post" for i in LAYERS]
TOKENS, BF16_TOKENS, SEQ_LEN, ANCHORS = 20480, 8192, 512, 256
PAIR = ("blocks.14.resid_post", "blocks.21.resid_post")


def numpy_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Reference linear CKA (Kornblith et al. 2019, feature-space form) in float64 numpy.

    It takes the same float32 rows as actlab's `cka` and upcasts them itself, so both time the same work."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def svcca_directions(x: torch.Tensor, keep: float = 0.99) -> int:
    """How many principal directions SVCCA keeps for `x` (share of variance `keep`)."""
    values = np.linalg.eigvalsh(np.cov(x.double().numpy(), rowvar=False))[::-1]
    return int(np.searchsorted(np.cumsum(values) / values.sum(), keep - 1e-12) + 1)


def in_memory_matrix(acts: dict[str, torch.Tensor], metric: str) -> list[list[float]]:
    index = anchor_rows(TOKENS, ANCHORS, 0)
    fn = {"cka": cka, "svcca": svcca, "relative": lambda x, y: relative_similarity(x, y, index)}[metric]
    return [[fn(acts[a], acts[b]) for b in SITES] for a in SITES]


def main() -> None:
    torch.set_num_threads(1)
    threadpool_limits(1)  # numpy's BLAS single-threaded too, like torch
    before = machine()
    work = Path(tempfile.mkdtemp(prefix="actlab-similarity-"))
    lab = al.load("smollm2-135m", dtype="float32")
    start = time.perf_counter()
    store = al.harvest(lab, "austen", SITES, work / "f32.zarr", tokens=TOKENS, seq_len=SEQ_LEN, progress=False)
    harvest_s = time.perf_counter() - start
    lab16 = al.load("smollm2-135m", dtype="bfloat16")
    store16 = al.harvest(lab16, "austen", SITES, work / "bf16.zarr", tokens=BF16_TOKENS, seq_len=SEQ_LEN,
                         progress=False)
    print(f"harvested {store.n_tokens} + {store16.n_tokens} tokens ({harvest_s:.0f} s for the float32 store)")

    acts = {s: store[s][:].float() for s in SITES}
    x, y = acts[PAIR[0]], acts[PAIR[1]]
    xn, yn = x.numpy(), y.numpy()  # float32, as actlab's cka receives them
    pair_runs = interleaved({"actlab_cka": lambda: cka(x, y), "numpy_cka": lambda: numpy_cka(xn, yn)}, repeats=5)
    pair_gap = abs(cka(x, y) - numpy_cka(xn, yn))
    print("one pair, actlab / numpy:", describe(ratio(pair_runs, "actlab_cka", "numpy_cka")), f"|Δ| {pair_gap:.2e}")

    timings, matrices, gaps = {}, {}, {}
    for metrics in (("cka", "svcca"), ("relative",)):
        start = time.perf_counter()
        streamed = compare_stores(store, store, sites=SITES, metrics=metrics, anchors=ANCHORS, progress=False)
        timings["streaming_" + "+".join(metrics)] = time.perf_counter() - start
        for m in metrics:
            start = time.perf_counter()
            memory = in_memory_matrix(acts, m)
            timings[f"in_memory_{m}"] = time.perf_counter() - start
            matrices[m] = streamed.metrics[m]
            gaps[m] = float(np.abs(np.array(memory) - np.array(streamed.metrics[m])).max())
    print("timings (s):", {k: round(v, 2) for k, v in timings.items()}, "max |streaming − in-memory|:", gaps)
    print(streamed.__class__(matrices, SITES, SITES, store.n_tokens))

    # linear CKA is dominated by high-norm rows: drop each window's first token (the attention sink,
    # whose residual norm in the middle layers dwarfs every other token's) and compare
    later = torch.from_numpy(store.index("positions") > 0)
    without_first = {s: a[later] for s, a in acts.items()}
    matrices["cka_without_first_token"] = [[cka(without_first[a], without_first[b]) for b in SITES] for a in SITES]
    norms = {s: {"first_token_median_norm": float(a[~later].norm(dim=1).median()),
                 "other_tokens_median_norm": float(a[later].norm(dim=1).median())} for s, a in acts.items()}
    kept = {s: svcca_directions(a) for s, a in acts.items()}
    print("CKA without the first token of each window:", matrices["cka_without_first_token"])
    print("residual norms:", norms, "SVCCA directions kept at 0.99:", kept)

    precision = compare_stores(store, store16, sites=SITES, metrics=("cka", "svcca"), max_tokens=BF16_TOKENS,
                               progress=False)
    diagonal = {m: [precision.metrics[m][i][i] for i in range(len(SITES))] for m in precision.metrics}
    print("float32 vs bfloat16 model, same site:", diagonal)

    write_json("similarity.json", {
        "model": "smollm2-135m", "corpus": "austen", "tokens": store.n_tokens, "seq_len": SEQ_LEN,
        "sites": SITES, "store_dtype": "float16", "anchors": ANCHORS, "svcca_keep": 0.99,
        "matrices": matrices,
        "pair": {"sites": list(PAIR), "cka": cka(x, y), "timings": summary(pair_runs),
                 "actlab_over_numpy": ratio(pair_runs, "actlab_cka", "numpy_cka"), "abs_difference": pair_gap},
        "matrix_seconds": timings, "max_abs_streaming_minus_in_memory": gaps,
        "float32_vs_bfloat16_model": {"tokens": BF16_TOKENS, "same_site": diagonal},
        "residual_norms": norms, "svcca_directions_kept": kept,
        "harvest_seconds_float32": harvest_s,
        "numpy_blas": [{k: i[k] for k in ("internal_api", "num_threads")} for i in threadpool_info()],
        **environment(before, "torch", "numpy", "transformers"),
    })


if __name__ == "__main__":
    main()
