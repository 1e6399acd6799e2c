"""Issue-5 comparison table: quantization recipes on one protocol (`actlab.compress.compare`).

    .venv/bin/python bench/quant_recipes.py smollm2-135m   # about 40 minutes on 2 threads
    .venv/bin/python bench/quant_recipes.py gemma3-270m    # about 25 minutes

Protocol: austen:test, seq_len 512, 16,384 tokens, float32; every recipe calibrated on the same
64 windows of 512 tokens of austen:train; KL(fp ‖ quantized) and top-1 agreement on the first
2,048 tokens. Writes bench/results/quant_recipes_<model>.json.
"""

from __future__ import annotations

import sys

import torch
from rich.console import Console

import actlab as al
from common import environment, machine, write_json

RECIPES = {
    "smollm2-135m": [
        "fp",
        "w8a8", "smoothquant | w8a8", "rotate | w8a8", "crossquant | w8a8", "smoothquant | rotate | w8a8",
        "smoothquant | rotate | w8:clip=mse a8",
        "w8 a8:static", "smoothquant(sites=attn.in+mlp.in) | w8 a8:static", "smoothquant | w8 a8:static",
        "outliertune | w8 a8:static", "rotate | w8 a8:static", "smoothquant | rotate | w8 a8:static",
        "w4a4", "rotate | w4a4", "smoothquant | rotate | w4:clip=mse a4:clip=0.9", "llmfp4",
        "rotate | w4:per_group:64:clip=mse a4:clip=0.9",
        "w8a8 kernel=int8",
    ],
    "gemma3-270m": [
        "fp",
        "w8a8", "smoothquant | w8a8", "smoothquant | rotate | w8a8",
        "w8 a8:static", "smoothquant | w8 a8:static", "smoothquant | rotate | w8 a8:static",
        "rotate | w4a4", "smoothquant | rotate | w4:clip=mse a4:clip=0.9",
    ],
}


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
    torch.set_num_threads(2)
    before = machine()
    lab = al.load(name, dtype="float32")
    result = al.compress.compare(lab, RECIPES[name], "austen:test", 512, 16384, calibration="austen:train",
                                 samples=64, kl_tokens=2048, progress=False)
    Console().print(result.table())
    write_json(f"quant_recipes_{name.split('-')[0]}.json",
               {**result.to_dict(), "calibration": "64 windows x 512 tokens of austen:train",
                "environment": environment(before)})


if __name__ == "__main__":
    main()
