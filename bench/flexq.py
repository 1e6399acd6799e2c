"""FlexQ-style mixed precision (`actlab.compress.sensitivity`): W6A6 with 8-bit inputs on the most
sensitive decoder layers.

    OMP_NUM_THREADS=1 .venv/bin/python bench/flexq.py      # 41 minutes on 1 thread of a busy 2-core machine

Protocol: smollm2-135m float32. (1) Per-layer sensitivity of `w6a6` (int6 per-channel weights,
int6 per-token inputs): each of the 30 decoder layers quantized alone, KL(fp ‖ quantized) on the
first 4,096 tokens of austen:train (seq_len 512), so that the layers are chosen on data the
evaluation does not use. (2) One `compare` call on austen:test, seq_len 512, the first 8,192
tokens, KL and top-1 on the first 2,048, every recipe calibrated on 32 windows of 512 tokens of
austen:train: fp, w8a8, w6a6, the plans with 8-bit inputs on the top 10 % (3) and 25 % (8)
layers, and `smoothquant |` in front of w6a6 and of the 25 % plan. Writes bench/results/flexq.json.
"""

from __future__ import annotations

import time

import torch
from rich.console import Console

import actlab as al
from common import environment, machine, write_json

SENSITIVITY = dict(recipe="w6a6", unit="layer", metric="kl", corpus="austen:train", seq_len=512, max_tokens=4096,
                   calibration="austen:train", samples=32)
COMPARE = dict(corpus="austen:test", seq_len=512, max_tokens=8192, calibration="austen:train", samples=32,
               kl_tokens=2048)


def main() -> None:
    torch.set_num_threads(1)
    before = machine()
    console = Console()
    lab = al.load("smollm2-135m", dtype="float32")
    started = time.perf_counter()
    sens = al.compress.sensitivity(lab, **SENSITIVITY, progress=False)
    console.print(sens.table())
    console.print(f"sensitivity: {time.perf_counter() - started:.0f} s")
    n = len(sens.rows)
    plans = {pct: sens.plan(a8=round(n * pct / 100)) for pct in (10, 25)}
    for pct, plan in plans.items():
        console.print(f"top {pct} %: {plan}", markup=False, highlight=False, soft_wrap=True)
    out = {"sensitivity": sens.to_dict(), "plans": plans, "protocol": {"sensitivity": SENSITIVITY, "compare": COMPARE}}
    write_json("flexq.json", {**out, "environment": environment(before)})
    recipes = ["fp", "w8a8", "w6a6", plans[10], plans[25], "smoothquant | w6a6", f"smoothquant | {plans[25]}"]
    started = time.perf_counter()
    result = al.compress.compare(lab, recipes, **COMPARE, progress=False)
    console.print(result.table())
    console.print(f"compare: {time.perf_counter() - started:.0f} s")
    write_json("flexq.json", {**out, "compare": result.to_dict(), "environment": environment(before)})


if __name__ == "__main__":
    main()
