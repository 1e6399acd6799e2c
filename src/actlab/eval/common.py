"""Pieces every evaluation shares: running a lab's model over windows, fingerprints, progress."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from actlab.progress import progress_bar  # noqa: F401  (re-exported: evaluations import it from here)

# rows of [*, vocab] upcast to float32 at a time: 2**25 floats = 128 MiB, 128 rows at vocab 262k
FLOAT32_BUDGET = 2**25


def fingerprint(lab: Any) -> dict[str, Any]:
    """The lab's fingerprint as a JSON-able dict (falls back to its name)."""
    to_dict = getattr(getattr(lab, "fingerprint", None), "to_dict", None)
    return to_dict() if callable(to_dict) else {"name": getattr(lab, "name", "?")}


def model_dtype(lab: Any) -> str:
    """The dtype of the model's first floating parameter, e.g. 'float32'."""
    for parameter in lab.model.parameters():
        if parameter.is_floating_point():
            return str(parameter.dtype).removeprefix("torch.")
    return "unknown"


def describe_edits(edits: Any) -> Any:
    """A JSON-able description of what `lab.edit` received (None when nothing)."""
    if edits is None:
        return None

    def one(edit: Any) -> Any:
        for method in ("to_dict", "describe"):
            fn = getattr(edit, method, None)
            if callable(fn):
                with contextlib.suppress(Exception):
                    return fn()
        return repr(edit)[:200]

    if isinstance(edits, dict):
        return {str(site): one(edit) for site, edit in edits.items()}
    return one(edits)


def edit_context(lab: Any, edits: Any) -> contextlib.AbstractContextManager[Any]:
    """`lab.edit(edits)`, or a no-op when there are no edits (None or an empty dict)."""
    return contextlib.nullcontext() if edits is None or (isinstance(edits, Mapping) and not edits) else lab.edit(edits)


def device_of(lab: Any) -> torch.device:
    device = getattr(lab, "device", None)
    if device is None:
        device = next(lab.model.parameters()).device
    return torch.device(device)


def logits(lab: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """`lab.model(input_ids=...).logits` for a batch of full windows (no padding, no cache)."""
    return lab.model(input_ids=input_ids.to(device_of(lab)), use_cache=False).logits


def row_chunks(n_rows: int, vocab: int) -> Iterator[slice]:
    """Slices of rows small enough that a float32 copy of `[rows, vocab]` stays within budget."""
    step = max(1, FLOAT32_BUDGET // max(vocab, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))
