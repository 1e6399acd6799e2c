"""The one windowing protocol: a corpus as fixed-length token windows plus a mask of scored targets.

The corpus text (documents joined with "\\n\\n") is tokenized once without special tokens:
the *stream*. With BOS, every window is `[BOS] + seq_len - 1 stream tokens`; without, it is
`seq_len` stream tokens. Windows start every `stride` stream tokens (default: the stream
tokens per window, i.e. non-overlapping). A stream token is scored (`loss_mask` True at its
position) when it has at least one token before it in its window and no earlier window
scored it. So non-overlapping windows without BOS score all but their first token; with
BOS they score every stream token; with a smaller stride (HF's sliding protocol) later
windows score only their last `stride` tokens. Each token is scored at most once, and
windows that would run past the end are dropped (the tail).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

from actlab.data.corpus import Corpus, corpus as load_corpus
from actlab.errors import ActlabError


@dataclass
class Windows:
    """Token windows of a corpus: `input_ids` and `loss_mask` are `[n_windows, seq_len]`."""

    input_ids: torch.Tensor
    loss_mask: torch.Tensor
    protocol: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_scored(self) -> int:
        """How many target tokens the mask scores."""
        return int(self.loss_mask.sum())

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def batches(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`(input_ids, loss_mask)` pairs of at most `batch_size` windows, in order."""
        if batch_size < 1:
            raise ActlabError(f"batch_size must be at least 1, got {batch_size}")
        return [
            (self.input_ids[i : i + batch_size], self.loss_mask[i : i + batch_size])
            for i in range(0, len(self), batch_size)
        ]


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer has a BOS token and puts it in front of text by itself."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(with_special) > 0 and with_special[0] == bos


def tokenize_stream(tokenizer: Any, text: str) -> torch.Tensor:
    """The whole text as one 1-D LongTensor of token ids, no special tokens."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def token_windows(
    tokenizer: Any,
    corpus: Corpus | str,
    seq_len: int,
    *,
    stride: int | None = None,
    max_tokens: int | None = None,
    add_bos: bool | None = None,
    stream: torch.Tensor | None = None,
) -> Windows:
    """Cut a corpus into windows of `seq_len` tokens (see the module docstring for the protocol).

    `max_tokens` caps the stream tokens used (so non-overlapping windows number
    `max_tokens // stream tokens per window`); `add_bos=None` prepends BOS when the tokenizer
    would add it itself. `stream` passes the corpus already tokenized (as `tokenize_stream` would),
    for callers that tokenize it anyway.
    """
    corpus = load_corpus(corpus)
    if seq_len <= 1:
        raise ActlabError(f"seq_len must be at least 2, got {seq_len}")
    bos = tokenizer_adds_bos(tokenizer) if add_bos is None else bool(add_bos)
    if bos and getattr(tokenizer, "bos_token_id", None) is None:
        raise ActlabError("add_bos=True but the tokenizer has no BOS token")
    span = seq_len - 1 if bos else seq_len  # stream tokens per window
    stride = span if stride is None else stride
    if not 1 <= stride <= span:
        raise ActlabError(f"stride must be between 1 and {span} (stream tokens per window), got {stride}")
    if max_tokens is not None and max_tokens < 1:
        raise ActlabError(f"max_tokens must be positive, got {max_tokens}")

    if stream is None:
        stream = tokenize_stream(tokenizer, corpus.text())
    total = len(stream)
    usable = total if max_tokens is None else min(total, max_tokens)
    if usable < span:
        raise ActlabError(
            f"corpus '{corpus.name}' gives {usable} tokens, fewer than one window of {span}; "
            "lower seq_len or raise max_tokens"
        )
    starts = torch.arange(0, usable - span + 1, stride)
    offsets = torch.arange(span)
    windows = stream[starts[:, None] + offsets[None, :]]
    # a window scores position p >= 1 when it lies past everything an earlier window scored
    scored_from = torch.zeros(len(starts), dtype=torch.long)
    scored_from[1:] = span - stride
    mask = (offsets[None, :] >= scored_from[:, None]) & (offsets[None, :] >= (0 if bos else 1))
    if bos:
        first = torch.full((len(starts), 1), tokenizer.bos_token_id, dtype=torch.long)
        windows = torch.cat([first, windows], dim=1)
        mask = torch.cat([torch.zeros(len(starts), 1, dtype=torch.bool), mask], dim=1)
    covered = int(starts[-1]) + span
    protocol = {
        **corpus.describe(),
        "seq_len": seq_len,
        "stride": stride,
        "max_tokens": max_tokens,
        "bos": bos,
        "n_windows": len(starts),
        "total_tokens": total,
        "tokens_in_windows": covered,
        "tail_dropped": usable - covered,
        "tokens_scored": int(mask.sum()),
        "tokens_sha256": hashlib.sha256(stream[:covered].numpy().astype("<i8").tobytes()).hexdigest()[:16],
    }
    return Windows(windows.contiguous(), mask, protocol)
