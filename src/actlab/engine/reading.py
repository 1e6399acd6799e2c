"""Read one activation vector per prompt at each site: last token, mean over tokens or a given index.

Shared by every method family (steering vectors, probes, cluster quality, neuron selection)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from actlab.errors import ActlabError
from actlab.progress import progress_bar

Read = str | int  # "last", "mean" or a token index (negative counts from the end)


def check_read(read: Read) -> Read:
    if isinstance(read, bool) or not (read in ("last", "mean") or isinstance(read, int)):
        raise ActlabError(f"read must be 'last', 'mean' or a token index, not {read!r}")
    return read


def read_activations(lab, prompts: Sequence[str], sites: str | Sequence[str], read: Read = "last",
                     batch_size: int = 16, progress: bool = False,
                     logits_at_last: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """`{site: [n_prompts, *shape] float32}` read at `read`, plus the last-token logits if asked.

    Batches are left-padded; padding never reaches the result (the engine selects real tokens).
    Without `logits_at_last` the forward stops after the deepest site.
    """
    check_read(read)
    prompts = list(prompts)
    if not prompts:
        raise ActlabError("no prompts to read activations from")
    if batch_size < 1:
        raise ActlabError(f"batch_size must be at least 1, not {batch_size}")
    names = lab.sites(sites)
    positions = "all" if read == "mean" else "last" if read == "last" else [read]
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    last_logits = []
    with progress_bar(len(prompts), "reading activations", progress) as advance:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            with lab.record(names, positions=positions, dtype=torch.float32) as rec:
                out = lab.forward(batch, return_logits=logits_at_last)
            for n in names:
                parts[n].append(_one_per_prompt(rec, n, len(batch), read))
            if logits_at_last:
                last_logits.append(out[:, -1].float().cpu())  # left padding: the last column is every prompt's last token
            advance(len(batch))
    acts = {n: torch.cat(v) for n, v in parts.items()}
    return acts, torch.cat(last_logits) if logits_at_last else None


def _one_per_prompt(rec, name: str, n_prompts: int, read: Read) -> torch.Tensor:
    values, prompt = rec[name], rec.index["prompt"]  # a fresh recording numbers the batch's prompts from 0
    if read == "mean":
        sums = torch.zeros((n_prompts, *values.shape[1:]), dtype=torch.float64)
        sums.index_add_(0, prompt, values.double())
        counts = torch.bincount(prompt, minlength=n_prompts).clamp(min=1)
        return (sums / counts.view(-1, *([1] * (values.dim() - 1)))).float()
    if values.shape[0] != n_prompts:
        raise ActlabError(f"token index {read} does not exist in every prompt "
                          f"({values.shape[0]} of {n_prompts} prompts have it)")
    return values

