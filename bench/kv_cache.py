"""Issue-6 KV-cache table: methods and KVQuant's ablation, both protocols (`kv_compare`).

    .venv/bin/python bench/kv_cache.py smollm2-135m [max_tokens] [cache_tokens]   # ~30 min on 2 threads

Protocol: austen:test, float32. Fake quantization (teacher forced) over 512-token windows,
`max_tokens` tokens (default 4,096); cache in the loop: 384 prefilled + 128 decoded and scored
tokens per window over `cache_tokens` tokens (default 2,048, i.e. 4 windows, 512 scored
tokens). Calibration: 8 windows of 512 tokens of austen:train. Writes
bench/results/kv_cache_<model>.json; prints each row as it finishes.
"""

from __future__ import annotations

import sys

import torch
from rich.console import Console

import actlab as al
from actlab.compress.kv.compare import kv_compare
from common import environment, machine, write_json

METHODS = [
    "kv16",
    "pertoken4", "kivi4", "kvquant4", "xquant4",
    "pertoken3", "kivi3", "kvquant3", "kvquant3(key_group=32)", "xquant-cl3",
    "pertoken2", "kivi2", "kvquant2", "kvquant2(key_group=32)", "xquant-cl2",
    # KVQuant's ablation at 3 bits, one feature added at a time (the full preset above adds sinks=1)
    "kvquant3(pre_rope=false,nonuniform=false,outliers=0,sinks=0)",
    "kvquant3(nonuniform=false,outliers=0,sinks=0)",
    "kvquant3(outliers=0,sinks=0)",
    "kvquant3(sinks=0)",
]


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
    max_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
    cache_tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 2048
    torch.set_num_threads(2)
    before = machine()
    lab = al.load(name, dtype="float32")

    def show(row):
        print(f"{row.method:60s} ppl {row.ppl:8.3f} ({row.delta_pct:+7.2f} %)  cache {row.cache_ppl:8.3f} "
              f"({row.cache_delta_pct:+7.2f} %)  forced-same {row.cache_forced_ppl:8.3f}  "
              f"{row.bytes_per_token:7.0f} B/token  {row.compression:5.2f}x", flush=True)

    result = kv_compare(lab, METHODS, "austen:test", seq_len=512, max_tokens=max_tokens, context=384, score=128,
                        cache_tokens=cache_tokens, calibration="austen:train", samples=8, progress=False, on_row=show)
    Console(width=180).print(result.table())
    write_json(f"kv_cache_{name.split('-')[0]}.json", {**result.to_dict(), "environment": environment(before)})


if __name__ == "__main__":
    main()
