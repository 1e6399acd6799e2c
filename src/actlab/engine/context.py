"""What an edit or a recording knows about the forward call it runs in: mask, positions, phase.

`ForwardState` is built once per model call from its inputs (attention mask, cache length);
`EditContext` adds the site. Token positions count real tokens only (padding excluded), so the
same prompt gets the same positions whether it is padded left, right or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Union

import torch

from actlab.errors import ActlabError

# "all" | "last" | "prompt" | "generated" | [indices] | per-prompt boolean masks | callable(ctx) -> [b, q] bool
Positions = Union[str, Sequence[int], Sequence[Sequence[bool]], torch.Tensor, Callable]


@dataclass
class ForwardState:
    """One model call: `attention_mask` covers cached and new tokens; `q_len` new tokens."""

    attention_mask: torch.Tensor  # [batch, past + q_len] bool
    q_len: int
    past_len: int
    step: int  # 0 for a prefill, then 1, 2, ... for each decoding step of a generation
    scratch: dict = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.attention_mask.shape[0]

    @property
    def is_prefill(self) -> bool:
        return self.past_len == 0

    @property
    def real(self) -> torch.Tensor:
        """[batch, q_len] True where the new token is not padding."""
        return self.attention_mask[:, -self.q_len:]

    @property
    def positions(self) -> torch.Tensor:
        """[batch, q_len] index of each new token among its prompt's real tokens (-1 at padding)."""
        if "positions" not in self.scratch:
            mask = self.attention_mask.long()
            pos = (mask.cumsum(-1) - 1)[:, -self.q_len:]
            self.scratch["positions"] = pos.masked_fill(~self.real, -1)
        return self.scratch["positions"]

    def select(self, spec: Positions) -> torch.Tensor:
        """[batch, q_len] bool: the new real tokens that `spec` names."""
        real, pos = self.real, self.positions
        if callable(spec) and not isinstance(spec, torch.Tensor):
            return spec(self) & real
        if isinstance(spec, str):
            if spec == "all":
                return real
            if spec == "last":
                last = pos.max(dim=1, keepdim=True).values
                return real & (pos == last)
            if spec == "prompt":
                return real if self.is_prefill else torch.zeros_like(real)
            if spec == "generated":
                return torch.zeros_like(real) if self.is_prefill else real
            raise ActlabError(f"unknown positions {spec!r}; use all, last, prompt, generated, "
                              "a list of token indices, per-prompt boolean masks or a callable")
        if _is_mask_list(spec):
            return self._from_masks(spec)
        return self._from_indices([int(i) for i in spec])

    def _from_indices(self, indices: list[int]) -> torch.Tensor:
        real, pos = self.real, self.positions
        lengths = pos.max(dim=1, keepdim=True).values + 1 if self.is_prefill else None
        sel = torch.zeros_like(real)
        for i in indices:
            if i >= 0:
                sel |= pos == i
            elif lengths is not None:
                sel |= pos == lengths + i
        return sel & real

    def _from_masks(self, masks) -> torch.Tensor:
        """Per-prompt boolean masks over each prompt's real tokens (prefill only)."""
        sel = torch.zeros_like(self.real)
        if not self.is_prefill:
            return sel
        for b in range(self.batch_size):
            row = torch.as_tensor(masks[b], dtype=torch.bool)
            cols = self.real[b].nonzero().squeeze(1)
            if row.numel() != cols.numel():
                raise ActlabError(f"positions mask for prompt {b} has {row.numel()} entries, "
                                  f"the prompt has {cols.numel()} tokens")
            sel[b, cols] = row
        return sel


def _is_mask_list(spec) -> bool:
    """Per-prompt masks: a bool tensor or a sequence of sequences (an index list is flat ints)."""
    if isinstance(spec, torch.Tensor):
        return spec.dtype == torch.bool
    return len(spec) > 0 and not isinstance(spec[0], int) and hasattr(spec[0], "__len__")


@dataclass
class EditContext:
    """Passed to every edit: the site being edited and the state of the current model call."""

    site: str
    layer: int | None
    state: ForwardState

    def __getattr__(self, name):  # mask, positions, real, is_prefill, select, ... come from the state
        return getattr(self.state, name)
