"""Calibration samples for KV-cache methods: activations at attention sites and, for
sensitivity-weighted datatypes, their Fisher information (squared gradients of the LM loss)."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from actlab.data.windows import token_windows
from actlab.eval.common import progress_bar


@dataclass
class Samples:
    """Per site, activations [tokens, channels] (float32) and squared gradients (or None)."""

    acts: dict[str, torch.Tensor]
    fisher: dict[str, torch.Tensor | None]


def windows_of(lab, corpus, samples: int, seq_len: int) -> torch.Tensor:
    """The first `samples` calibration windows of `seq_len` tokens of `corpus`."""
    windows = token_windows(lab.tokenizer, corpus, seq_len, max_tokens=samples * seq_len)
    return windows.input_ids[:samples]


_LAST: dict = {}  # inside `reusing()`: collections by (model, windows, sites, Fisher sites), for methods calibrated alike


@contextmanager
def reusing() -> Iterator[None]:
    """Within the block, `collect` returns an earlier result again for the same model, windows,
    sites and Fisher sites (`kv_compare` calibrates many methods on the same windows)."""
    _LAST.clear()
    _LAST["on"] = True
    try:
        yield
    finally:
        _LAST.clear()


def collect(lab, ids: torch.Tensor, sites: list[str], fisher: Collection[str] = (), progress: bool = True,
            desc: str = "kv calibration") -> Samples:
    """Run the calibration windows one at a time and keep the activations of `sites`
    (`[batch, q, *shape]` flattened to channels). Each site in `fisher` is made a leaf of the
    graph and the squared gradient of the next-token loss is kept beside it (see `reusing`).
    Attention-internal sites (`attn.k_rot`) are edited in place and cannot be leaves."""
    fisher = frozenset(fisher)
    if not _LAST.get("on"):
        return _collect(lab, ids, sites, fisher, progress, desc)
    key = (id(lab.model), ids.shape, int(ids.sum()), tuple(sites), fisher)
    if key not in _LAST:
        _LAST[key] = _collect(lab, ids, sites, fisher, progress, desc)
    return _LAST[key]


def _collect(lab, ids: torch.Tensor, sites: list[str], fisher: frozenset, progress: bool, desc: str) -> Samples:
    acts: dict[str, list] = {s: [] for s in sites}
    grads: dict[str, list] = {s: [] for s in sites}
    leaves: dict[str, torch.Tensor] = {}

    def capture(site):
        def edit(x, ctx):
            if site in fisher:
                x = x.detach().requires_grad_(True)
                leaves[site] = x
            acts[site].append(x.detach().reshape(-1, x[0, 0].numel()).float())
            return x
        return edit

    params = [p for p in lab.model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with lab.edit({s: capture(s) for s in sites}), progress_bar(len(ids), desc, progress) as advance:
            for row in ids:
                with torch.set_grad_enabled(bool(fisher)):
                    out = lab.model(input_ids=row[None].to(lab.device), use_cache=False).logits
                    if fisher:
                        loss = F.cross_entropy(out[0, :-1].float(), row[1:].to(out.device), reduction="sum")
                        loss.backward()
                        for s in fisher:
                            g = leaves[s].grad
                            grads[s].append(g.reshape(-1, g[0, 0].numel()).float().pow(2))
                advance(1)
    finally:
        for p in params:
            p.requires_grad_(True)
    return Samples({s: torch.cat(v) for s, v in acts.items()},
                   {s: torch.cat(v) if v else None for s, v in grads.items()})
