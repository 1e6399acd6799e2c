"""Perplexity with a KV cache in the loop: prefill a context, then decode the scored tokens one
at a time, so that every scored token attends to what the cache holds (packed codes included)."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from transformers import DynamicCache

from actlab.data import Corpus, token_windows
from actlab.errors import ActlabError
from actlab.eval.common import device_of, edit_context, fingerprint, model_dtype, progress_bar
from actlab.eval.perplexity import token_nll
from actlab.eval.results import CachePerplexityResult
from actlab.models.loading import cache_kwarg


def _decode_nll(lab: Any, ids: torch.Tensor, context: int, cache) -> torch.Tensor:
    """NLL [batch, score] of tokens context.. of `ids`, the cache filled by a prefill then one step per token."""
    kw = {cache_kwarg(lab.model): cache, "use_cache": True}
    logits = [lab.model(input_ids=ids[:, :context], **kw).logits[:, -1]]
    for t in range(context, ids.shape[1] - 1):
        logits.append(lab.model(input_ids=ids[:, t:t + 1], **kw).logits[:, -1])
    stacked = torch.stack(logits, 1)
    targets = ids[:, context:]
    return token_nll(stacked.reshape(-1, stacked.shape[-1]), targets.reshape(-1)).view(targets.shape)


def cache_perplexity(
    lab: Any,
    corpus: Corpus | str,
    context: int = 384,
    score: int = 128,
    *,
    kv: Any = None,
    max_tokens: int | None = None,
    batch_size: int = 4,
    teacher_forced: bool = True,
    progress: bool = True,
) -> CachePerplexityResult:
    """exp(mean NLL) of the last `score` tokens of windows of `context + score` tokens of
    `corpus`, decoded through `kv.cache(lab)` (a plain float cache when `kv` is None).

    With `teacher_forced`, the same tokens are also scored in one teacher-forced pass under
    `kv.edits(lab)` (fake quantization), so the two protocols can be compared token for token.
    The cache's bytes after the last batch are reported in `memory`.
    """
    if context < 1 or score < 1:
        raise ActlabError(f"context and score must be >= 1, got {context} and {score}")
    started = time.perf_counter()
    windows = token_windows(lab.tokenizer, corpus, context + score, max_tokens=max_tokens)
    device = device_of(lab)
    cached = forced = 0.0
    memory: dict = {}
    with torch.inference_mode(), progress_bar(len(windows), f"cache ppl {getattr(kv, 'label', 'fp')}", progress) as advance:
        for ids, _ in windows.batches(batch_size):
            ids = ids.to(device)
            cache = kv.cache(lab) if kv is not None else DynamicCache()
            try:
                cached += _decode_nll(lab, ids, context, cache).double().sum().item()
                if hasattr(cache, "memory"):
                    memory = cache.memory().to_dict()
            finally:
                if hasattr(cache, "close"):
                    cache.close()
            if teacher_forced:
                with edit_context(lab, kv.edits(lab) if kv is not None else None):  # kv.edits may be None: no fake path
                    logits = lab.model(input_ids=ids, use_cache=False).logits[:, context - 1:-1]
                forced += token_nll(logits.reshape(-1, logits.shape[-1]), ids[:, context:].reshape(-1)).double().sum().item()
            advance(ids.shape[0])
    n = len(windows) * score
    return CachePerplexityResult(
        ppl=_exp(cached / n), nll_mean=cached / n, teacher_forced_ppl=_exp(forced / n) if teacher_forced else None,
        tokens_scored=n, method=getattr(kv, "label", "float (DynamicCache)"), memory=memory,
        protocol={**windows.protocol, "context": context, "score": score}, fingerprint=fingerprint(lab),
        dtype=model_dtype(lab), seconds=time.perf_counter() - started)


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf
