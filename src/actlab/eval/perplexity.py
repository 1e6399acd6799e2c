"""Perplexity over token windows of a corpus (the protocol of `actlab.data.windows`)."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from actlab.data import Corpus, token_windows
from actlab.eval.common import (
    describe_edits, edit_context, fingerprint, logits, model_dtype, progress_bar, row_chunks,
)
from actlab.eval.results import PerplexityResult


def token_nll(row_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of `targets` [n] under `row_logits` [n, vocab], in float32, chunked."""
    out = torch.empty(targets.shape[0], dtype=torch.float32, device=row_logits.device)
    for rows in row_chunks(targets.shape[0], row_logits.shape[-1]):
        chunk = row_logits[rows].float()
        picked = chunk.gather(-1, targets[rows, None]).squeeze(-1)
        out[rows] = torch.logsumexp(chunk, dim=-1) - picked
    return out


def window_nll_sum(batch_logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> float:
    """Sum of NLL over the scored targets of a batch, one window at a time to bound memory."""
    total = 0.0
    input_ids, loss_mask = input_ids.to(batch_logits.device), loss_mask.to(batch_logits.device)
    for i in range(batch_logits.shape[0]):
        # logits at position t predict the token at t + 1
        scored = loss_mask[i, 1:].nonzero().squeeze(-1)
        if scored.numel():
            nll = token_nll(batch_logits[i, scored], input_ids[i, scored + 1])
            total += nll.double().sum().item()
    return total


def perplexity(
    lab: Any,
    corpus: Corpus | str,
    seq_len: int = 512,
    *,
    stride: int | None = None,
    max_tokens: int | None = None,
    add_bos: bool | None = None,
    batch_size: int = 4,
    edits: Any = None,
    kv: Any = None,
    progress: bool = True,
) -> PerplexityResult:
    """exp(mean NLL) of the scored tokens of `corpus` cut into windows of `seq_len` tokens.

    `corpus` is a `Corpus` or a spec for `actlab.data.corpus`. With `edits`, the model runs
    inside `lab.edit(edits)`. With `kv` (a KV-cache method such as `actlab.compress.KVQuant`), its
    fake quantization of keys and values (`kv.edits(lab)`) is applied too.
    """
    started = time.perf_counter()
    windows = token_windows(lab.tokenizer, corpus, seq_len, stride=stride, max_tokens=max_tokens, add_bos=add_bos)
    nll_sum = 0.0
    described = describe_edits(edits)
    if kv is not None:
        described = {"edits": described, "kv": getattr(kv, "label", str(kv))} if edits is not None else {"kv": kv.label}
        edits = [kv.edits(lab)] if edits is None else [edits, kv.edits(lab)]
    with torch.inference_mode(), edit_context(lab, edits), \
            progress_bar(len(windows), "perplexity", progress) as advance:
        for input_ids, loss_mask in windows.batches(batch_size):
            nll_sum += window_nll_sum(logits(lab, input_ids), input_ids, loss_mask)
            advance(input_ids.shape[0])
    nll_mean = nll_sum / windows.tokens_scored
    try:
        ppl = math.exp(nll_mean)
    except OverflowError:
        ppl = math.inf
    return PerplexityResult(
        ppl=ppl, nll_mean=nll_mean, tokens_scored=windows.tokens_scored, protocol=windows.protocol,
        fingerprint=fingerprint(lab), dtype=model_dtype(lab), seconds=time.perf_counter() - started,
        edits=described,
    )
