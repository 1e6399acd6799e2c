"""EoRA vs plain SVD compensation of RTN weight quantization (`actlab.compress.lowrank`).

    OMP_NUM_THREADS=1 .venv/bin/python bench/eora.py            # W4 then W3, 28 minutes each on 1 busy thread
    OMP_NUM_THREADS=1 .venv/bin/python bench/eora.py w4         # W4 only

Protocol: smollm2-135m float32; per-channel RTN weights only (`w4`, `w3`), no activation
quantization; compensation ranks 16/32/64, none vs `svd(rank=r)` vs `eora(rank=r)`; every row
calibrated on the same 32 windows of 512 tokens of austen:train (EoRA's input second moments;
RTN and SVD use no data) and evaluated on austen:test, seq_len 512, the first 8,192 tokens, KL and
top-1 on the first 2,048. One `compare` call per weight width (same windows for all rows); the
table of a width is printed when its rows are done. Writes bench/results/eora.json.
"""

from __future__ import annotations

import sys
import time

import torch
from rich.console import Console

import actlab as al
from common import environment, machine, write_json

RANKS = (16, 32, 64)
PROTOCOL = dict(corpus="austen:test", seq_len=512, max_tokens=8192, calibration="austen:train", samples=32,
                kl_tokens=2048)


def recipes(weights: str) -> list[str]:
    return [weights, *(f"{weights} | {m}(rank={r})" for r in RANKS for m in ("svd", "eora"))]


def main() -> None:
    widths = sys.argv[1:] or ["w4", "w3"]
    torch.set_num_threads(1)
    before = machine()
    lab = al.load("smollm2-135m", dtype="float32")
    console = Console()
    out = {"protocol": PROTOCOL, "calibration": "32 windows x 512 tokens of austen:train", "tables": {}}
    for weights in widths:
        started = time.perf_counter()
        result = al.compress.compare(lab, ["fp", *recipes(weights)], **PROTOCOL, progress=False)
        console.print(result.table())
        console.print(f"{weights}: {time.perf_counter() - started:.0f} s")
        out["tables"][weights] = result.to_dict()
        write_json("eora.json", {**out, "environment": environment(before)})


if __name__ == "__main__":
    main()
