"""Next-token entropy of a model: over every position of corpus windows, or at the end of prompts."""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from actlab.data import Corpus, token_windows
from actlab.errors import ActlabError
from actlab.eval.common import (
    describe_edits, edit_context, fingerprint, logits, model_dtype, progress_bar, row_chunks,
)
from actlab.eval.results import EntropyResult


def token_entropy(row_logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(row_logits) per row [n, vocab] -> [n], float32, chunked."""
    out = torch.empty(row_logits.shape[0], dtype=torch.float32, device=row_logits.device)
    for rows in row_chunks(row_logits.shape[0], row_logits.shape[-1]):
        log_p = torch.log_softmax(row_logits[rows].float(), dim=-1)
        out[rows] = -(log_p.exp() * log_p).sum(-1)
    return out


def _prompt_batches(tokenizer: Any, prompts: Sequence[str], batch_size: int) -> list[torch.Tensor]:
    """Prompts tokenized as for generation, grouped by length so that no batch needs padding."""
    by_length: dict[int, list[list[int]]] = defaultdict(list)
    for prompt in prompts:
        ids = tokenizer(prompt)["input_ids"]
        if not ids:
            raise ActlabError(f"prompt {prompt!r} gives no tokens")
        by_length[len(ids)].append(ids)
    return [
        torch.tensor(group[i : i + batch_size], dtype=torch.long)
        for _, group in sorted(by_length.items())
        for i in range(0, len(group), batch_size)
    ]


def entropy(
    lab: Any,
    corpus_or_prompts: Corpus | str | Sequence[str],
    seq_len: int = 512,
    *,
    max_tokens: int | None = 4096,
    add_bos: bool | None = None,
    batch_size: int = 4,
    edits: Any = None,
    progress: bool = True,
) -> EntropyResult:
    """Mean next-token entropy (nats).

    A corpus (a `Corpus` or a spec string) is cut into non-overlapping windows and every
    position counts; a list of prompt strings counts the last position of each prompt.
    """
    started = time.perf_counter()
    if isinstance(corpus_or_prompts, (Corpus, str)):
        windows = token_windows(lab.tokenizer, corpus_or_prompts, seq_len, max_tokens=max_tokens, add_bos=add_bos)
        batches = [ids for ids, _ in windows.batches(batch_size)]
        protocol, last_only = {**windows.protocol, "positions": "all"}, False
    else:
        prompts = list(corpus_or_prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ActlabError("entropy needs a corpus or a non-empty list of prompt strings")
        batches = _prompt_batches(lab.tokenizer, prompts, batch_size)
        digest = hashlib.sha256(json.dumps(prompts).encode("utf-8")).hexdigest()[:16]
        protocol, last_only = {"prompts": len(prompts), "positions": "last", "prompts_sha256": digest}, True
    values = []
    with torch.inference_mode(), edit_context(lab, edits), \
            progress_bar(len(batches), "entropy", progress) as advance:
        for input_ids in batches:
            out = logits(lab, input_ids)
            rows = out[:, -1] if last_only else out.reshape(-1, out.shape[-1])
            values.append(token_entropy(rows).cpu())
            advance()
    all_values = torch.cat(values).double()
    return EntropyResult(
        entropy_mean=all_values.mean().item(), entropy_std=all_values.std(unbiased=False).item(),
        tokens=all_values.numel(), protocol=protocol, fingerprint=fingerprint(lab), edits=describe_edits(edits),
        dtype=model_dtype(lab), seconds=time.perf_counter() - started,
    )
