"""`Recording`: what `lab.record(...)` collects, one row per selected real token.

`rec[site]` is `[n_rows, *site_shape]`: the selected tokens of every model call, prompt by
prompt, in order. `rec.index` says for each row which prompt, token position and model call it
came from (during `generate`, call 0 is the prefill and each later call one decoding step).
"""

from __future__ import annotations

import torch

from actlab.engine.context import ForwardState, Positions
from actlab.errors import ActlabError, did_you_mean
from actlab.sites import Site


class Recording:
    def __init__(self, sites: list[Site], positions: Positions = "all", dtype: torch.dtype | None = None,
                 device: str | torch.device = "cpu"):
        self.sites = {s.name: s for s in sites}
        self.positions = positions
        self.dtype = dtype
        self.device = torch.device(device)
        self._chunks: dict[str, list[torch.Tensor]] = {s.name: [] for s in sites}
        self._index: list[torch.Tensor] = []  # per call: [n, 3] (prompt, position, call)
        self._calls = 0
        self._prompt_offset = 0
        self._last_batch = 0

    # -- filled by the engine ------------------------------------------------------------------
    def begin_call(self, state: ForwardState) -> None:
        sel = state.select(self.positions)
        state.scratch[("sel", id(self))] = sel
        state.scratch[("sel_all", id(self))] = bool(sel.all())
        if state.is_prefill:  # a new batch of prompts starts
            self._prompt_offset += self._last_batch
            self._last_batch = state.batch_size
        rows, _ = sel.nonzero(as_tuple=True)
        prompt = rows + self._prompt_offset
        position = state.positions[sel]
        call = torch.full_like(prompt, self._calls)
        self._calls += 1
        self._index.append(torch.stack([prompt, position, call], dim=1).cpu())

    def capture(self, site: Site, x: torch.Tensor, state: ForwardState) -> None:
        sel = state.scratch[("sel", id(self))]
        if state.scratch[("sel_all", id(self))]:  # no padding, every token: a plain copy, no gather
            rows = x.detach().flatten(0, 1)
            dtype = self.dtype or rows.dtype
            rows = rows.clone() if (rows.device, dtype) == (self.device, rows.dtype) else rows.to(self.device, dtype)
        else:
            rows = x.detach()[sel].to(self.device, self.dtype or x.dtype)
        self._chunks[site.name].append(rows)

    # -- read by users -------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._chunks:
            raise ActlabError(f"site {name!r} was not recorded{did_you_mean(name, self._chunks)}")
        chunks = self._chunks[name]
        if not chunks:
            shape = tuple(0 if d is None else d for d in self.sites[name].shape)
            return torch.empty((0, *shape), dtype=self.dtype or torch.float32)
        if self.sites[name].component == "attn.pattern":  # key axes grow during generation
            width = max(c.shape[-1] for c in chunks)
            chunks = [torch.nn.functional.pad(c, (0, width - c.shape[-1])) for c in chunks]
        return torch.cat(chunks)

    def __contains__(self, name: str) -> bool:
        return name in self._chunks

    def keys(self) -> list[str]:
        return list(self._chunks)

    def items(self):
        return ((k, self[k]) for k in self._chunks)

    @property
    def index(self) -> dict[str, torch.Tensor]:
        """Per row: `prompt` (global prompt number), `position` (real-token index), `call`."""
        idx = torch.cat(self._index) if self._index else torch.empty((0, 3), dtype=torch.long)
        return {"prompt": idx[:, 0], "position": idx[:, 1], "call": idx[:, 2]}

    def per_prompt(self, name: str) -> list[torch.Tensor]:
        """`rec[name]` split by prompt: one `[n_tokens_i, *shape]` tensor per prompt."""
        values, prompt = self[name], self.index["prompt"]
        if values.shape[0] != prompt.shape[0]:
            raise ActlabError(f"site {name!r} was not recorded on every call (early stop?)")
        return [values[prompt == p] for p in prompt.unique(sorted=True)]

    def __repr__(self) -> str:
        n = self.index["prompt"].shape[0]
        return f"Recording({len(self._chunks)} sites, {n} rows, positions={self.positions!r})"
