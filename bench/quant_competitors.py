"""Third-party W8A8 quantization on SmolLM2 against the issue-5 protocol: llmcompressor, optimum-quanto, torchao.

    .venv-quant/bin/python bench/quant_competitors.py            # perplexity only (about 9 minutes, 1 thread)
    .venv-quant/bin/python bench/quant_competitors.py --speed    # plus prefill timing (interleaved rounds)

Run in the quantization venv (see setup_quant_bench_env.sh); writes bench/results/quant_competitors.json.

Protocol, as in quant_recipes.py: `al.load("smollm2-135m")` in float32, austen:test, windows of 512
tokens, 16,384 tokens (32 windows), `al.eval.perplexity`. Each library gets a deep copy of
`lab.model`, modifies it in place, and the result is evaluated through `al.Lab.from_model`. The
decoder linears are quantized; `lm_head` (tied to the embeddings) is left in float32 everywhere,
as in our own baselines. Calibration, where a library needs it: 64 windows of 512 tokens of
austen:train, as token ids (no re-tokenization).

- `llmcompressor`: `oneshot` with `SmoothQuantModifier(smoothing_strength=0.5)` then
  `QuantizationModifier(scheme="W8A8")` (int8 symmetric per-channel weights, int8 symmetric
  dynamic per-token input activations; round-to-nearest, no GPTQ). On CPU the model stays in
  compressed-tensors' "frozen" fake-quant form (weights and inputs are quantized and de-quantized
  in float32 inside each forward); the int8 kernels for that format live in vLLM, not here.
  Also without SmoothQuant, to separate its effect.
- `optimum-quanto`: `quantize(weights=qint8, activations=qint8)`, `Calibration()` over the
  calibration windows, `freeze`. Its activation scales are static per tensor (absmax with momentum),
  on the inputs and, where streamlining allows, the outputs of each linear.
- `torchao`: `quantize_(Int8DynamicActivationInt8WeightConfig())` (int8 symmetric dynamic per-token
  activations, int8 symmetric per-channel weights, `Int8Tensor` weights).
- baselines: fp32 and bf16 (`al.load(..., dtype="bfloat16")`).
- actlab: `w8a8 kernel=int8` (`Int8Linear`: int8 per-channel weights, int8 per-token activations,
  int32 matmul) in the float32 model and in the bfloat16 model (the rest of the model in bf16).

Per setting: PPL, ΔPPL % against fp32, seconds to quantize/calibrate, seconds of the evaluation, and
which matmul kernels one small forward dispatches (torch profiler), to show whether int8 kernels run.

`--speed`: one forward (no grad) of 4 × 512 random token ids (`common.random_ids`) for every model,
interleaved rounds (`common.interleaved`), medians and ratios against bf16.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "WARNING")  # llmcompressor logs every smoothed layer at INFO
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402

import actlab as al  # noqa: E402
from actlab.models.fingerprint import Fingerprint  # noqa: E402
from common import describe, environment, interleaved, machine, random_ids, ratio, summary, write_json  # noqa: E402

TOKENS, SEQ, CALIBRATION_WINDOWS, CALIBRATION_BATCH = 16384, 512, 64, 4
SMOOTHQUANT_ALPHA = 0.5
PACKAGES = ("torch", "transformers", "accelerate", "numpy", "llmcompressor", "compressed-tensors", "optimum-quanto",
            "torchao", "actlab")
# matmul-like aten / library ops worth reporting from the profiler
KERNEL_HINTS = ("mm", "matmul", "linear", "int8", "quant", "bmm")


def decoder_linear(module: torch.nn.Module, fqn: str) -> bool:
    return isinstance(module, torch.nn.Linear) and "lm_head" not in fqn


def wrap(model: torch.nn.Module, lab: al.Lab, name: str) -> al.Lab:
    """`al.Lab.from_model`, with a placeholder fingerprint if the quantized state dict cannot be hashed."""
    wrapped = al.Lab.from_model(model, lab.tokenizer, name=name)
    try:
        _ = wrapped.fingerprint
    except Exception as exc:  # noqa: BLE001  (tensor subclasses that do not convert to float32 numpy)
        wrapped._fingerprint = Fingerprint(name, model.config.model_type, f"unhashable: {type(exc).__name__}")
    return wrapped


def kernels(model: torch.nn.Module) -> dict[str, int]:
    """The matmul-like ops (with call counts) that one forward of 1 × 16 tokens dispatches."""
    ids = random_ids(model.config.vocab_size, batch=1, seq=16)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(input_ids=ids, use_cache=False)
    counts = Counter({e.key: e.count for e in prof.key_averages()})
    return {k: v for k, v in sorted(counts.items()) if any(h in k.lower() for h in KERNEL_HINTS)}


# -- the libraries ------------------------------------------------------------------------------------------
def llmcompressor_w8a8(model: torch.nn.Module, calibration: list[list[int]], smoothquant: bool) -> dict:
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

    dataset = Dataset.from_dict({"input_ids": calibration, "attention_mask": [[1] * len(c) for c in calibration]})
    recipe = [SmoothQuantModifier(smoothing_strength=SMOOTHQUANT_ALPHA)] if smoothquant else []
    recipe.append(QuantizationModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"]))
    oneshot(model=model, dataset=dataset, recipe=recipe, max_seq_length=SEQ, num_calibration_samples=len(calibration))
    q = next(m for n, m in model.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
    scheme = getattr(q, "quantization_scheme", None)
    return {"recipe": [type(r).__name__ for r in recipe],
            "smoothing_strength": SMOOTHQUANT_ALPHA if smoothquant else None,
            "scheme": scheme.model_dump(mode="json") if scheme is not None else None,
            "quantization_status": str(getattr(q, "quantization_status", None)),
            "weight_dtype_in_memory": str(q.weight.dtype)}


def quanto_w8a8(model: torch.nn.Module, calibration: list[list[int]]) -> dict:
    from optimum.quanto import Calibration, freeze, qint8, quantize

    quantize(model, weights=qint8, activations=qint8, exclude=["lm_head"])
    with torch.no_grad(), Calibration(momentum=0.9):
        for start in range(0, len(calibration), CALIBRATION_BATCH):
            model(input_ids=torch.tensor(calibration[start:start + CALIBRATION_BATCH]), use_cache=False)
    freeze(model)
    q = next(m for n, m in model.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
    return {"module": type(q).__name__, "weight": type(q.weight).__name__ if not hasattr(q, "qweight")
            else type(q.qweight).__name__, "input_scale": float(q.input_scale), "output_scale": float(q.output_scale)}


def torchao_w8a8(model: torch.nn.Module) -> dict:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    config = Int8DynamicActivationInt8WeightConfig()
    quantize_(model, config, filter_fn=decoder_linear)
    q = next(m for n, m in model.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
    return {"config": repr(config), "weight": type(q.weight).__name__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--speed", action="store_true", help="also time the prefill of 4 x 512 tokens")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds for --speed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--max-tokens", type=int, default=TOKENS, help="perplexity tokens (protocol: 16384)")
    parser.add_argument("--calibration-windows", type=int, default=CALIBRATION_WINDOWS)
    parser.add_argument("--output", default="quant_competitors.json", help="file name under bench/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    before = machine()

    lab = al.load("smollm2-135m")
    test = al.data.corpus("austen", split="test")
    train = al.data.token_windows(lab.tokenizer, "austen:train", SEQ, max_tokens=args.calibration_windows * SEQ)
    calibration = [ids[0].tolist() for ids, _ in train.batches(1)]  # token ids: no re-tokenization

    labs: dict[str, al.Lab] = {}
    rows: dict[str, dict] = {}
    protocol: dict[str, dict] = {}

    def evaluate(name: str, target: al.Lab, extra: dict | None = None, quantize_s: float | None = None) -> None:
        res = al.eval.perplexity(target, test, SEQ, max_tokens=args.max_tokens, progress=False)
        base = rows["fp32"]["ppl"] if "fp32" in rows else res.ppl
        rows[name] = {"ppl": res.ppl, "delta_pct": 100 * (res.ppl / base - 1), "quantize_s": quantize_s,
                      "eval_s": res.seconds, "fingerprint": target.fingerprint.to_dict(), **(extra or {})}
        try:
            rows[name]["kernels"] = kernels(target.model)
        except Exception as exc:  # noqa: BLE001
            rows[name]["kernels"] = f"profiling failed: {type(exc).__name__}: {exc}"
        labs[name] = target
        protocol.setdefault("protocol", res.protocol)
        print(f"{name:28s} ppl {res.ppl:8.3f} ({rows[name]['delta_pct']:+6.2f} %)  quantize "
              f"{quantize_s if quantize_s is None else round(quantize_s, 1)} s, eval {res.seconds:.0f} s", flush=True)

    evaluate("fp32", lab)
    evaluate("bf16", al.load("smollm2-135m", dtype="bfloat16"))

    settings: dict[str, Callable[[torch.nn.Module], dict]] = {
        "llmcompressor_smoothquant_w8a8": lambda m: llmcompressor_w8a8(m, calibration, smoothquant=True),
        "llmcompressor_w8a8": lambda m: llmcompressor_w8a8(m, calibration, smoothquant=False),
        "quanto_w8a8": lambda m: quanto_w8a8(m, calibration),
        "torchao_w8a8_dynamic": torchao_w8a8,
    }
    for name, apply in settings.items():
        model = copy.deepcopy(lab.model)  # the libraries modify the model in place
        started = time.perf_counter()
        try:
            extra = apply(model)
            seconds = time.perf_counter() - started
            evaluate(name, wrap(model, lab, name), extra, seconds)
        except Exception as exc:  # noqa: BLE001  (a failing library is a result, not the end of the run)
            rows[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
            print(f"{name}: FAILED {type(exc).__name__}: {exc}", flush=True)

    # actlab's real int8 path, in a float32 model and inside a bfloat16 model (norms, attention in bf16)
    for name, source in (("actlab_w8a8_int8_kernel", lab), ("actlab_w8a8_int8_kernel_in_bf16", labs["bf16"])):
        started = time.perf_counter()
        qlab = al.compress.Recipe.parse("w8a8 kernel=int8").calibrate(source, "austen:train", samples=1, progress=False)
        evaluate(name, qlab, {"recipe": "w8a8 kernel=int8"}, time.perf_counter() - started)

    data = {"model": lab.fingerprint.to_dict(), "protocol": protocol["protocol"],
            "calibration": f"{len(calibration)} windows x {SEQ} tokens of austen:train (llmcompressor, quanto)",
            "threads": args.threads, "results": rows}

    if args.speed:
        ids = random_ids(lab.model.config.vocab_size)

        def forward(target: al.Lab) -> Callable[[], object]:
            def run() -> object:
                with torch.no_grad():
                    return target.model(input_ids=ids, use_cache=False).logits
            return run

        variants = {name: forward(target) for name, target in labs.items()}
        runs = interleaved(variants, repeats=args.rounds)
        data["speed"] = {"input": list(ids.shape), "rounds": args.rounds, "timings": summary(runs),
                         "vs_bf16": {name: ratio(runs, name, "bf16") for name in variants if name != "bf16"}}
        for name in variants:
            if name != "bf16":
                print(f"{name:28s} vs bf16: {describe(data['speed']['vs_bf16'][name])}", flush=True)

    data.update(environment(before, *PACKAGES))
    print(write_json(args.output, data))

if __name__ == "__main__":
    main()
