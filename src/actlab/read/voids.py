"""Layer voids: which blocks change each token's residual stream, by L2 Adaptive Computation (LAC).

Shemiranifar, "Void in Language Models", arXiv 2505.14467, adapting LAC from Shemiranifar &
Dehghani, "L2 Norm Guided Adaptive Computation" (ICLR 2023 Tiny Papers). The rule, as in the
author's code (`lac.py` of manishemirani/void_in_language_models), per token t and block l:

    Δ_l = ‖h_l‖₂ − ‖h_{l−1}‖₂            (h_{−1}: the residual entering block 0)
    τ_l = α · (max_{j<l} Δ_j − min_{j<l} Δ_j)   (τ_0 = 0: no history yet)
    block l is *active* for t when Δ_l ≥ τ_l, a *void* otherwise.

The history is the token's own, within one forward call: the prompt's tokens are judged in the
prefill ("prompt processing"), each generated token in its decoding step ("response generation").
The paper's α is 0.8 by default; α = −inf marks every block active.

Skipping voids (`mode`), decided online from the run being edited:

- `"skip"`: a void block leaves the token's residual unchanged (resid_post := resid_pre for that
  token); later blocks see the skipped stream and judge it. What the paper describes.
- `"exit"`: what the author's code does with `skip_layers=True`: every block runs unchanged and
  only the final residual is replaced by the output of the token's deepest active block (a
  per-token early exit; nothing changes when the last block is active).
- `"trace"`: nothing is changed; only counted.

Two reading choices differ from the reference code: its threshold for block 0 is the range of Δ_0
over the *batch* (0 at its batch size of 1), ours is 0 for every batch, so batched equals
unbatched; and padding tokens are neither skipped nor counted.

```python
voids = al.read.LayerVoids(alpha=0.8, mode="skip")
with lab.edit(voids):
    lab.generate(["The capital of France is"], max_new_tokens=20)
print(voids.result(lab))      # activation rate per layer, prefill and generation; fraction of layers used
```
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from rich.table import Table

from actlab.engine.context import EditContext, Positions
from actlab.errors import ActlabError
from actlab.eval.results import plain_text
from actlab.eval.common import fingerprint

MODES = ("trace", "skip", "exit")
PHASES = ("prefill", "generation")


def lac_threshold(history: Sequence[torch.Tensor], alpha: float) -> torch.Tensor | float:
    """τ_l = α · (max − min) of the earlier blocks' Δ (elementwise over tokens); 0 without history."""
    if alpha == -math.inf:
        return -math.inf
    if len(history) == 0:
        return 0.0
    stacked = torch.stack(list(history))
    return alpha * (stacked.amax(0) - stacked.amin(0))


def lac_active(norms: torch.Tensor, alpha: float) -> torch.Tensor:
    """Active blocks `[n_layers, *tokens]` (bool) from residual norms `[n_layers + 1, *tokens]`
    (the stream entering block 0, then after each block), by the LAC rule."""
    deltas = norms[1:] - norms[:-1]
    return torch.stack([~(deltas[l] < lac_threshold(deltas[:l], alpha)) for l in range(deltas.shape[0])])


class _Stash:
    """An edit at `blocks.{l}.resid_pre` that keeps the block's input for the edit at its output."""

    def __init__(self, key: tuple) -> None:
        self.key = key

    def __call__(self, x: torch.Tensor, ctx: EditContext) -> torch.Tensor:
        ctx.scratch[(self.key, ctx.layer)] = x
        return x


def _keep_input(out: torch.Tensor, block_input: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """The block's output, except the tokens in `skip` ([batch, q] bool), which keep its input."""
    return torch.where(skip[..., None], block_input, out)


@dataclass
class SkipLayers:
    """Run without some blocks: for the selected tokens, `blocks.{l}` leaves the residual unchanged."""

    layers: Sequence[int]
    positions: Positions = "all"

    def edits(self, lab: Any) -> list[tuple[str, Callable]]:
        bad = [l for l in self.layers if not 0 <= l < lab.n_layers]
        if bad or not self.layers:
            raise ActlabError(f"layers to skip must be among 0-{lab.n_layers - 1}, got {list(self.layers)}")
        key = ("skip_layers", id(self))

        def leave(out: torch.Tensor, ctx: EditContext) -> torch.Tensor:
            return _keep_input(out, ctx.scratch[(key, ctx.layer)], ctx.select(self.positions))

        return [pair for l in self.layers
                for pair in ((f"blocks.{l}.resid_pre", _Stash(key)), (f"blocks.{l}.resid_post", leave))]


@dataclass
class PhaseStats:
    """Over the real tokens of one phase: the per-layer activation rate, the mean share of active
    blocks (`fraction_used`) and the mean depth of the deepest active block over the number of
    blocks (`depth_used`: what a per-token early exit, mode "exit", would need to run)."""

    tokens: int
    active_rate: list[float]
    fraction_used: float
    depth_used: float


@dataclass
class VoidsResult:
    """What `LayerVoids` counted: per phase (prefill, generation) and layer, the share of tokens for
    which the block was active; `fraction_used` is the mean share of blocks a token went through."""

    alpha: float
    mode: str
    n_layers: int
    prefill: PhaseStats
    generation: PhaseStats
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "layer_voids", **asdict(self)}

    def table(self) -> Table:
        table = Table(title=f"layer voids (LAC, alpha {self.alpha:g}, mode {self.mode}, "
                            f"{self.fingerprint.get('name', '?')})", title_justify="left")
        table.add_column("layer", justify="right")
        for phase in PHASES:
            stats: PhaseStats = getattr(self, phase)
            table.add_column(f"{phase} active\n({stats.tokens:,} tokens)", justify="right")
        for l in range(self.n_layers):
            table.add_row(str(l), *(_rate(getattr(self, p).active_rate, l) for p in PHASES))
        for label, name in (("layers used", "fraction_used"), ("depth used", "depth_used")):
            table.add_row(label, *(f"{getattr(getattr(self, p), name):.3f}" if getattr(self, p).tokens else "—"
                                   for p in PHASES), style="bold")
        return table

    def __rich__(self) -> Table:
        return self.table()

    def __str__(self) -> str:
        return plain_text(self.table(), width=100)


def _rate(rates: list[float], layer: int) -> str:
    return f"{rates[layer]:.3f}" if rates else "—"


class LayerVoids:
    """LAC void detection (and skipping, by `mode`) as edits: use it in `lab.edit(voids)` or as the
    `edits=` of an evaluation; it counts every forward call it sees until `reset()`."""

    def __init__(self, alpha: float = 0.8, mode: str = "trace") -> None:
        if mode not in MODES:
            raise ActlabError(f"unknown mode {mode!r}: use {', '.join(MODES)}")
        if math.isnan(alpha) or alpha == math.inf:
            raise ActlabError(f"alpha must be a number or -inf, not {alpha}")
        self.alpha, self.mode = alpha, mode
        self.n_layers: int | None = None
        self._masks: dict[str, list[torch.Tensor]] = {p: [] for p in PHASES}

    def __repr__(self) -> str:
        return f"LayerVoids(alpha={self.alpha:g}, mode={self.mode!r})"

    def describe(self) -> dict[str, Any]:
        return {"method": "LAC layer voids (arXiv 2505.14467)", "alpha": self.alpha, "mode": self.mode}

    def reset(self) -> None:
        self._masks = {p: [] for p in PHASES}

    def masks(self, phase: str = "prefill") -> torch.Tensor:
        """Active blocks `[n_tokens, n_layers]` (bool) of every real token seen in `phase`, call by
        call, prompt by prompt, in token order (the row order of a `Recording`)."""
        if phase not in PHASES:
            raise ActlabError(f"unknown phase {phase!r}: use {', '.join(PHASES)}")
        chunks = self._masks[phase]
        return torch.cat(chunks) if chunks else torch.empty(0, self.n_layers or 0, dtype=torch.bool)

    def result(self, lab: Any) -> VoidsResult:
        stats = {}
        for phase in PHASES:
            m = self.masks(phase).float()
            if m.shape[0] == 0:
                stats[phase] = PhaseStats(0, [], float("nan"), float("nan"))
                continue
            depth = (m * torch.arange(1, m.shape[1] + 1)).amax(1) / m.shape[1]  # deepest active block, 0 if none
            stats[phase] = PhaseStats(m.shape[0], m.mean(0).tolist(), float(m.mean()), float(depth.mean()))
        return VoidsResult(self.alpha, self.mode, lab.n_layers, stats["prefill"], stats["generation"], fingerprint(lab))

    def edits(self, lab: Any) -> list[tuple[str, Callable]]:
        if self.n_layers not in (None, lab.n_layers):
            raise ActlabError(f"these voids were counted on a {self.n_layers}-block model; reset() before "
                              f"using them on one with {lab.n_layers}")
        self.n_layers = lab.n_layers
        key = ("layer_voids", id(self))
        pairs: list[tuple[str, Callable]] = []
        for l in range(lab.n_layers):
            pairs += [(f"blocks.{l}.resid_pre", _Stash(key)), (f"blocks.{l}.resid_post", self._leave(key))]
        return pairs

    def _leave(self, key: tuple) -> Callable:
        def leave(out: torch.Tensor, ctx: EditContext) -> torch.Tensor:
            l, scratch = ctx.layer, ctx.scratch
            block_input = scratch[(key, l)]
            if l == 0:
                scratch[(key, "deltas")], scratch[(key, "active")] = [], []
                scratch[(key, "deepest")] = block_input
            deltas = scratch[(key, "deltas")]
            delta = out.float().norm(dim=-1) - block_input.float().norm(dim=-1)
            active = ~(delta < lac_threshold(deltas, self.alpha))
            deltas.append(delta)
            scratch[(key, "active")].append(active)
            real = ctx.real
            if l == self.n_layers - 1:
                per_token = torch.stack(scratch[(key, "active")], dim=-1)[real]  # [n_real, n_layers]
                self._masks["prefill" if ctx.is_prefill else "generation"].append(per_token.cpu())
            if self.mode == "skip":
                return _keep_input(out, block_input, ~active & real)
            if self.mode == "exit":
                deepest = torch.where(active[..., None], out, scratch[(key, "deepest")])
                scratch[(key, "deepest")] = deepest
                return torch.where(real[..., None], deepest, out) if l == self.n_layers - 1 else out
            return out

        return leave


def layer_voids(lab: Any, prompts: str | Sequence[str], alpha: float = 0.8, mode: str = "trace",
                max_new_tokens: int = 32) -> VoidsResult:
    """LAC voids of greedy generation on `prompts`: the prompts' tokens (prefill) and each generated token."""
    if max_new_tokens < 1:
        raise ActlabError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
    voids = LayerVoids(alpha, mode)
    with lab.edit(voids):
        lab.generate([prompts] if isinstance(prompts, str) else list(prompts), max_new_tokens=max_new_tokens)
    return voids.result(lab)
