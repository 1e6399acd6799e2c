"""Does lossless compression pay on activations? zstd against none, per codec, on smollm2-135m.

Harvests the same 4,096 tokens of austen:train (all 30 `resid_post`) once per (codec,
compression) and reports store size and harvest time. Writes `bench/results/compression.json`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch

import actlab as al
from common import THREADS, machine, versions, write_json

TOKENS = 4096


def main() -> None:
    torch.set_num_threads(THREADS)
    lab = al.load("smollm2-135m", dtype="float32")
    corpus = al.data.corpus("austen", split="train")
    work = Path(tempfile.mkdtemp(prefix="actlab-compression-"))
    rows = {}
    for codec in ("float16", "bfloat16", "int8"):
        for compression in (None, "zstd"):
            out = work / f"{codec}-{compression}.zarr"
            start = time.perf_counter()
            al.harvest(lab, corpus, "blocks.*.resid_post", out, tokens=TOKENS, seq_len=512, batch_size=4,
                       dtype=codec, compression=compression, progress=False)
            seconds = time.perf_counter() - start
            size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
            rows[f"{codec}/{compression or 'none'}"] = {"mb": size / 1e6, "seconds": seconds}
            print(codec, compression, f"{size / 1e6:.1f} MB", f"{seconds:.1f} s")
    for codec in ("float16", "bfloat16", "int8"):
        rows[f"{codec}/zstd"]["size_ratio_vs_none"] = rows[f"{codec}/zstd"]["mb"] / rows[f"{codec}/none"]["mb"]
    write_json("compression.json", {"tokens": TOKENS, "sites": "blocks.*.resid_post (30)", "results": rows,
                                    "machine": machine(), "versions": versions("zarr", "numcodecs")})
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
