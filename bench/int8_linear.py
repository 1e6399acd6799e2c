"""Real int8 (W8A8) on the CPU: Int8Linear against float32 and bfloat16 linears, then smollm2-135m prefill.

(a) one linear, 2048 tokens, 576 -> 1536 and 1536 -> 576: `F.linear` in float32 and bfloat16
    against `Int8Linear` on float32 input (both backends: oneDNN with fused per-channel rescale,
    and `torch._int_mm`) and on bfloat16 input (oneDNN), and `torch._int_mm` alone on an input
    quantized beforehand (the int8 kernel without any quantization or rescale: the ceiling).
(b) prefill of 4 x 512 random tokens, `lab.model(ids, use_cache=False)`: float32, bfloat16, and the
    float32 model with every decoder linear swapped to `Int8Linear` (lm_head and embeddings stay
    float32); plus the agreement of the int8 model with float32 (mean KL(fp32 || int8) per token,
    top-1 agreement), and of bfloat16 for scale.

Interleaved timing (see common.py). Writes `bench/results/int8_linear.json`.
Run: `.venv/bin/python bench/int8_linear.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import actlab as al
from actlab.compress.int8 import Int8Linear, decoder_linears, quantize_per_token, swap_linears
from common import THREADS, describe, environment, interleaved, machine, random_ids, ratio, summary, write_json

TOKENS = 2048


def linears(repeats: int) -> dict:
    out = {}
    for k, n in [(576, 1536), (1536, 576)]:
        torch.manual_seed(0)
        lin = nn.Linear(k, n, bias=False)
        lin_bf = nn.Linear(k, n, bias=False).to(torch.bfloat16)
        lin_bf.weight.data.copy_(lin.weight.data)
        x = torch.randn(TOKENS, k)
        xb = x.bfloat16()
        q = Int8Linear.from_linear(lin)
        q_mm = Int8Linear.from_linear(lin)
        q_mm.backend = "int_mm"
        xq = quantize_per_token(x)[0]  # the int8 kernel alone: the ceiling of any int8 linear here
        variants = {"fp32": lambda: F.linear(x, lin.weight), "bf16": lambda: F.linear(xb, lin_bf.weight),
                    "int8_onednn_fp32in": lambda: q(x), "int8_onednn_bf16in": lambda: q(xb),
                    "int8_int_mm_fp32in": lambda: q_mm(x), "int_mm_kernel_only": lambda: torch._int_mm(xq, q.qweight.t())}
        with torch.no_grad():
            runs = interleaved(variants, repeats, warmup=3)
        ratios = {f"{a}/{b}": ratio(runs, a, b) for a in variants for b in ("fp32", "bf16") if a != b}
        out[f"{TOKENS}x{k}->{n}"] = {"timings": summary(runs), "ratios": ratios}
        for key in ("int_mm_kernel_only/bf16", "int8_onednn_fp32in/bf16", "int8_onednn_bf16in/bf16", "int8_int_mm_fp32in/bf16",
                    "int8_onednn_fp32in/fp32", "bf16/fp32"):
            print(f"{TOKENS}x{k}->{n} {key}: {describe(ratios[key])}")
    return out


def prefill(repeats: int) -> dict:
    lab32 = al.load("smollm2-135m", dtype="float32")
    lab16 = al.load("smollm2-135m", dtype="bfloat16")
    lab8 = al.load("smollm2-135m", dtype="float32")
    swapped = swap_linears(lab8.model, decoder_linears)
    ids = random_ids(lab32.model.config.vocab_size)
    models = {"fp32": lab32.model, "bf16": lab16.model, "int8": lab8.model}
    variants = {name: (lambda m=m: m(ids, use_cache=False)) for name, m in models.items()}
    with torch.no_grad():
        logits = {name: m(ids, use_cache=False).logits.float() for name, m in models.items()}
        runs = interleaved(variants, repeats, warmup=1)
    ref = logits["fp32"].log_softmax(-1)
    agreement = {}
    for name in ("bf16", "int8"):
        lp = logits[name].log_softmax(-1)
        kl = (ref.exp() * (ref - lp)).sum(-1)  # KL(fp32 || variant) per token
        agreement[name] = {"kl_mean": kl.mean().item(), "kl_max": kl.max().item(),
                           "top1_agreement": (logits[name].argmax(-1) == logits["fp32"].argmax(-1)).float().mean().item()}
        print(f"{name} vs fp32: KL mean {agreement[name]['kl_mean']:.2e}, top-1 {agreement[name]['top1_agreement']:.4f}")
    ratios = {f"{a}/{b}": ratio(runs, a, b) for a, b in [("int8", "bf16"), ("int8", "fp32"), ("bf16", "fp32")]}
    for key, r in ratios.items():
        print(f"prefill {key}: {describe(r)}")
    return {"swapped_linears": len(swapped), "timings": summary(runs), "ratios": ratios, "agreement": agreement}


def main() -> None:
    torch.set_num_threads(THREADS)
    before = machine()
    result = {"linear": linears(repeats=20), "prefill_4x512": prefill(repeats=5),
              "backend_note": "Int8Linear default backend: oneDNN qlinear_pointwise (uint8 x, zp 128)"}
    result.update(environment(before, "torch", "transformers"))
    print(write_json("int8_linear.json", result))


if __name__ == "__main__":
    main()
