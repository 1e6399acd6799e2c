"""Harvest throughput: actlab's on-disk store against recording in memory and the HF baseline.

On smollm2-135m (float32 model), the 30 `blocks.*.resid_post` sites over 16,384 tokens of
austen:test (32 windows of 512, batch 4), interleaved rounds:
- memory: the same windows and batches recorded with `lab.record` and kept in RAM;
- harvest: `al.harvest(..., dtype="float16")` to a fresh Zarr store (statistics included);
- hf_save: what a user writes by hand, `output_hidden_states=True` + `torch.save` per batch.
Writes `bench/results/harvest.json` with ratios, tokens/s and MB/s.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

import actlab as al
from common import THREADS, describe, interleaved, machine, ratio, summary, versions, write_json

TOKENS, SEQ, BATCH = 16_384, 512, 4
SITES = "blocks.*.resid_post"


def main() -> None:
    torch.set_num_threads(THREADS)
    lab = al.load("smollm2-135m", dtype="float32")
    corpus = al.data.corpus("austen", split="test")
    windows = al.data.token_windows(lab.tokenizer, corpus, SEQ, max_tokens=TOKENS)
    work = Path(tempfile.mkdtemp(prefix="actlab-bench-"))
    sites = lab.sites(SITES)

    def memory():
        kept = []
        for ids in windows.input_ids.split(BATCH):
            with lab.record(sites) as rec:
                lab.forward(ids, return_logits=False)
            kept.append({s: rec[s] for s in sites})
        return kept

    def harvest():
        return al.harvest(lab, corpus, SITES, work / "store.zarr", tokens=TOKENS, seq_len=SEQ, batch_size=BATCH,
                          chunk_windows=BATCH, dtype="float16", overwrite=True, progress=False)

    def hf_save():
        folder = work / "hf"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        with torch.inference_mode():
            for i, ids in enumerate(windows.input_ids.split(BATCH)):
                hidden = lab.model(input_ids=ids, output_hidden_states=True).hidden_states[1:]
                torch.save([h.half() for h in hidden], folder / f"batch{i}.pt")

    runs = interleaved({"memory": memory, "harvest": harvest, "hf_save": hf_save}, repeats=2, warmup=0)
    times = summary(runs)
    store_bytes = sum(f.stat().st_size for f in (work / "store.zarr").rglob("*") if f.is_file())
    harvest_s = times["harvest"]["median_s"]
    result = {
        "model": "smollm2-135m, float32",
        "protocol": {"tokens": TOKENS, "seq_len": SEQ, "batch_size": BATCH, "sites": f"{SITES} (30)",
                     "store": "float16, chunks of 4 windows (2,048 tokens), statistics on, no compression",
                     "timing": "torch threads 2; 2 interleaved rounds, order rotated; wall clock"},
        "timings": times,
        "ratios": {"harvest_over_memory": ratio(runs, "harvest", "memory"),
                   "hf_save_over_memory": ratio(runs, "hf_save", "memory"),
                   "harvest_over_hf_save": ratio(runs, "harvest", "hf_save")},
        "harvest_tokens_per_s": TOKENS / harvest_s,
        "harvest_mb_per_s": store_bytes / harvest_s / 1e6,
        "store_mb": store_bytes / 1e6,
        "machine": machine(),
        "versions": versions("torch", "transformers", "zarr"),
    }
    for name, r in result["ratios"].items():
        print(f"{name}: {describe(r)}")
    print(f"harvest: {result['harvest_tokens_per_s']:.0f} tokens/s, {result['harvest_mb_per_s']:.1f} MB/s")
    write_json("harvest.json", result)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
