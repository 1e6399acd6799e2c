"""FlatQuant against rotation alone at W4A4 (and W8A8 static) on SmolLM2-135M (`actlab.compress.compare`).

    OMP_NUM_THREADS=1 .venv/bin/python bench/flatquant.py      # about 55 minutes on 1 shared thread

Protocol: austen:test, seq_len 512, 8,192 tokens, float32; every recipe calibrated on the same
16 windows of 512 tokens of austen:train; KL(fp ‖ quantized) and top-1 agreement on the first
2,048 tokens. Each recipe is its own `compare` call with these same arguments (the float baseline
is recomputed and checked identical), so every row is printed and saved as soon as it completes.
Writes bench/results/flatquant.json.
"""

from __future__ import annotations

import torch

import actlab as al
from common import environment, machine, write_json

RECIPES = [
    "w4a4",
    "rotate | w4a4",
    "rotate | w4:clip=mse a4:clip=0.9",
    "flatquant(init=hadamard) | w4a4",
    "flatquant | w4a4",
    "flatquant(lr=0.02) | w4a4",
    "rotate | w8 a8:static",
    "flatquant(w=8,a=8,init=hadamard) | w8 a8:static",
]
PROTOCOL = dict(corpus="austen:test", seq_len=512, max_tokens=8192, calibration="austen:train", samples=16,
                kl_tokens=2048, progress=False)


def main() -> None:
    torch.set_num_threads(1)
    before = machine()
    lab = al.load("smollm2-135m", dtype="float32")
    result = None
    for recipe in RECIPES:
        one = al.compress.compare(lab, [recipe], **PROTOCOL)
        if result is None:
            result = one
        elif one.protocol != result.protocol or one.model != result.model:
            raise RuntimeError(f"{recipe}: the evaluation protocol changed between rows")
        else:
            result.rows += one.rows
        r = one.rows[0]
        print(f"{r['recipe']:<60} PPL {r['ppl']:9.2f}  ΔPPL {r['delta_pct']:+9.2f} %  KL {r['kl']:.4f}  "
              f"top-1 {r['top1']:.3f}  calib {r['calibration_seconds']:.0f} s", flush=True)
        write_json("flatquant.json", {**result.to_dict(), "calibration": "16 windows x 512 tokens of austen:train",
                                      "environment": environment(before)})


if __name__ == "__main__":
    main()
