"""Per-sequence steering decisions: read at one site during the prefill, used by later edits.

A `SequenceGate` is filled by its reader edit during each prefill (one row per sequence of the
batch, from that sequence's own prompt tokens) and reused on every decoding step of the same
generation. Edits at deeper sites scale their change by the gate's row, so every sequence of a
batch is steered by its own amount (IBM's activation-steering library decides from row 0 only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from actlab.engine.context import EditContext
from actlab.engine.edits import Edit, _like
from actlab.errors import ActlabError


class SequenceGate:
    """Holds `[batch, k]` values computed at the prefill from the prompt at one or more sites.

    `compute` receives the pooled activations of `sites`, concatenated in the given order, as
    `[batch, sum of widths]`; it runs once the last of them has been read.
    """

    def __init__(self, compute: Callable[[torch.Tensor], torch.Tensor], sites: list[str], reduce: str = "last"):
        if reduce not in ("last", "mean"):
            raise ActlabError(f"a gate reads the prompt's 'last' token or its 'mean', not {reduce!r}")
        self.compute, self.sites, self.reduce = compute, list(sites), reduce
        self.values: torch.Tensor | None = None
        self._pooled: dict[str, torch.Tensor] = {}

    def readers(self) -> list[tuple[str, "GateReader"]]:
        """`(site, edit)` pairs to install: they fill the gate during each prefill."""
        return [(s, GateReader(gate=self)) for s in self.sites]

    def read(self, x: torch.Tensor, ctx: EditContext) -> None:
        """Reduce each sequence's prompt tokens to one vector; compute the gate once all sites are in."""
        real = ctx.select("last" if self.reduce == "last" else "all").to(torch.float32)
        self._pooled[ctx.site] = (x.float() * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp_min(1)
        if len(self._pooled) == len(self.sites):
            with torch.no_grad():
                self.values = self.compute(torch.cat([self._pooled[s] for s in self.sites], dim=1)).float()
            self._pooled = {}

    def column(self, k: int, batch_size: int) -> torch.Tensor:
        if self.values is None or self.values.shape[0] != batch_size:
            raise ActlabError("a gated edit ran before its gate was read: the gate's sites must come "
                              "before every site it controls")
        return self.values[:, k]


@dataclass
class GateReader(Edit):
    """Leaves the activation unchanged; at a prefill it fills its gate."""

    gate: SequenceGate = None

    def __call__(self, x, ctx):
        if ctx.is_prefill:
            self.gate.read(x, ctx)
        return x


@dataclass
class GatedAdd(Edit):
    """x + gate[:, column] · direction for each sequence (only at the selected tokens)."""

    direction: torch.Tensor = None
    gate: SequenceGate = None
    column: int = 0

    def apply(self, x, ctx):
        g = self.gate.column(self.column, x.shape[0]).to(device=x.device, dtype=x.dtype)
        return x + g.view(-1, *([1] * (x.dim() - 1))) * _like(self.direction, x)
