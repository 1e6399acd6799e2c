"""KL divergence and top-1 agreement of an edited (or second) model against a reference."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from actlab.data import Corpus, token_windows
from actlab.errors import ActlabError
from actlab.eval.common import (
    describe_edits, edit_context, fingerprint, logits, model_dtype, progress_bar, row_chunks,
)
from actlab.eval.results import DivergenceResult

QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "max": 1.0}


def token_kl(reference: torch.Tensor, edited: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row KL(softmax(reference) ‖ softmax(edited)) in float32, and whether the argmaxes agree."""
    kl = torch.empty(reference.shape[0], dtype=torch.float32, device=reference.device)
    agree = torch.empty(reference.shape[0], dtype=torch.bool, device=reference.device)
    for rows in row_chunks(reference.shape[0], reference.shape[-1]):
        log_p = torch.log_softmax(reference[rows].float(), dim=-1)
        log_q = torch.log_softmax(edited[rows].float(), dim=-1)
        kl[rows] = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)
        agree[rows] = log_p.argmax(-1) == log_q.argmax(-1)
    return kl, agree


def _check_same_tokenizer(lab: Any, reference: Any) -> None:
    a, b = lab.tokenizer, reference.tokenizer
    if a is not b and (len(a) != len(b) or a.get_vocab() != b.get_vocab()):
        raise ActlabError("the reference lab uses a different tokenizer: KL needs the same vocabulary")


def kl_divergence(
    lab: Any,
    edits: Any,
    corpus: Corpus | str,
    seq_len: int = 512,
    *,
    max_tokens: int | None = 4096,
    add_bos: bool | None = None,
    batch_size: int = 4,
    reference: Any = None,
    progress: bool = True,
) -> DivergenceResult:
    """Mean per-token KL(P_ref ‖ P_edited) and top-1 agreement over every position of the windows.

    P_ref is `lab` without edits, or `reference` (another lab with the same tokenizer, e.g.
    the unquantized model); P_edited is `lab` inside `lab.edit(edits)` (plain `lab` when
    `edits` is None). Windows are non-overlapping, as in `token_windows`.
    """
    started = time.perf_counter()
    reference_lab = lab if reference is None else reference
    if reference is not None:
        _check_same_tokenizer(lab, reference)
    windows = token_windows(lab.tokenizer, corpus, seq_len, max_tokens=max_tokens, add_bos=add_bos)
    kls, agreements = [], []
    with torch.inference_mode(), progress_bar(len(windows), "KL divergence", progress) as advance:
        for input_ids, _ in windows.batches(batch_size):
            reference_logits = logits(reference_lab, input_ids)
            with edit_context(lab, edits):
                edited_logits = logits(lab, input_ids)
            if reference_logits.shape != edited_logits.shape:
                shapes = f"reference {tuple(reference_logits.shape)}, edited {tuple(edited_logits.shape)}"
                raise ActlabError(f"logit shapes differ: {shapes}")
            for i in range(input_ids.shape[0]):
                kl, agree = token_kl(reference_logits[i], edited_logits[i].to(reference_logits.device))
                kls.append(kl.cpu())
                agreements.append(agree.cpu())
            advance(input_ids.shape[0])
    kl_all = torch.cat(kls).double()
    quantiles = np.quantile(kl_all.numpy(), list(QUANTILES.values()))
    return DivergenceResult(
        kl_mean=kl_all.mean().item(),
        kl_std=kl_all.std(unbiased=False).item(),
        kl_quantiles=dict(zip(QUANTILES, quantiles.tolist())),
        top1_agreement=torch.cat(agreements).double().mean().item(),
        tokens=kl_all.numel(),
        protocol={**windows.protocol, "positions": "all"},
        fingerprint=fingerprint(lab),
        reference_fingerprint=fingerprint(reference_lab),
        edits=describe_edits(edits),
        dtype=model_dtype(lab),
        seconds=time.perf_counter() - started,
    )
