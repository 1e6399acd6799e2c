"""Activation sparsity as PPL-p% sparsity: Luo et al., "Sparsing Law: Towards Large Language Models
with Greater Activation Sparsity" (arXiv 2411.02335), with CETT from Zhang et al., "ReLU² Wins:
Discovering Efficient Activation Functions for Sparse LLMs" (arXiv 2402.03804).

A neuron `i` of an MLP is the channel `i` of `mlp.act` (the input of the down projection,
act(gate)·up for GLUs); its output is `a_i · W_down[:, i]` and its magnitude `|a_i| · ‖W_down[:, i]‖`.
For a threshold `t`, the neurons of a token whose magnitude is at most `t` are truncated (set to
zero). CETT, the cumulative error of tail truncation, is the mean over tokens of
`‖Σ_truncated a_i W_down[:, i]‖ / ‖Σ_all a_i W_down[:, i]‖` (the bias, if any, left out).

As in the paper's code, every layer gets one threshold, the largest whose CETT on calibration tokens
stays within a CETT target shared by all layers (binary search over the quantiles of the magnitudes),
and PPL-p% sparsity is the sparsity at the largest CETT target whose truncation raises perplexity by
at most p % over the dense model (binary search over the target in [0, 1]). The activation ratio
(1 − sparsity) is counted while the truncated model runs over the whole evaluation slice.

```python
result = al.read.ppl_sparsity(lab, "austen:test", p=1.0, max_tokens=8192)
print(result); print(result.table())          # summary, then threshold and activation ratio per layer
with lab.edit(result):                        # the truncation found, as edits on blocks.*.mlp.act
    lab.generate("It is a truth")
```
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from rich.table import Table

from actlab.data import Corpus, token_windows
from actlab.engine.context import EditContext
from actlab.engine.edits import Edit
from actlab.errors import ActlabError
from actlab.eval.common import fingerprint, model_dtype, progress_bar
from actlab.eval.perplexity import perplexity
from actlab.eval.results import Result

N_CANDIDATES = 4096  # threshold candidates per layer: quantiles of the neuron magnitudes


def act_site(layer: int) -> str:
    return f"blocks.{layer}.mlp.act"


def down_projection(lab: Any, layer: int) -> torch.Tensor:
    """`W_down` of block `layer` as `[d_model, d_mlp]` float32 (GPT-2's Conv1D weight transposed)."""
    module = lab.model.get_submodule(lab.site(act_site(layer)).module)
    weight = module.weight.detach().float()
    return weight if isinstance(module, torch.nn.Linear) else weight.T


class LayerCalibration:
    """One layer's calibration activations, with CETT for any threshold and the search for one."""

    def __init__(self, acts: torch.Tensor, weight: torch.Tensor) -> None:
        if acts.dim() != 2 or weight.dim() != 2 or acts.shape[1] != weight.shape[1]:
            raise ActlabError(f"activations {tuple(acts.shape)} and down projection {tuple(weight.shape)} "
                              "do not fit: need [tokens, d_mlp] and [d_model, d_mlp]")
        self.acts = acts.float()
        self.weight = weight.float()
        self.column_norms = self.weight.norm(dim=0)
        self.full_norm = (self.acts @ self.weight.T).norm(dim=-1).clamp_min(1e-12)
        magnitudes = (self.acts.abs() * self.column_norms).flatten().sort().values
        picks = torch.linspace(0, magnitudes.numel() - 1, N_CANDIDATES).round().long()
        self.candidates = torch.cat([torch.zeros(1), magnitudes[picks]]).unique()
        self._memo: dict[int, float] = {}

    def cett(self, threshold: float) -> float:
        """Mean over tokens of the truncated output's norm over the full output's norm."""
        truncated = self.acts.masked_fill(self.acts.abs() * self.column_norms > threshold, 0.0)
        return float(((truncated @ self.weight.T).norm(dim=-1) / self.full_norm).mean())

    def _cett_at(self, index: int) -> float:
        if index not in self._memo:
            self._memo[index] = self.cett(float(self.candidates[index]))
        return self._memo[index]

    def threshold(self, target: float) -> tuple[float, float]:
        """(threshold, realized CETT): the largest candidate whose CETT is at most `target`."""
        lo, hi = 0, len(self.candidates) - 1  # candidates[0] = 0 truncates only zero outputs: CETT 0
        if self._cett_at(hi) <= target:
            lo = hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._cett_at(mid) <= target:
                lo = mid
            else:
                hi = mid
        return float(self.candidates[lo]), self._cett_at(lo)


@dataclass
class CettTruncation(Edit):
    """Zeroes the neurons of `mlp.act` whose output magnitude `|a_i| · column_norms[i]` is at most
    `threshold`; counts truncated and total neuron activations of the tokens it edits."""

    threshold: float
    column_norms: torch.Tensor
    truncated: int = field(default=0, init=False)
    total: int = field(default=0, init=False)

    def apply(self, x: torch.Tensor, ctx: EditContext) -> torch.Tensor:
        mask = x.float().abs() * self.column_norms.to(x.device) <= self.threshold
        selected = ctx.select(self.positions)
        self.truncated += int(mask[selected].sum())
        self.total += int(selected.sum()) * x.shape[-1]
        return x.masked_fill(mask, 0)

    def describe(self) -> dict[str, Any]:
        return {"edit": "cett_truncation", "threshold": self.threshold}


def truncation_edits(lab: Any, thresholds: list[float]) -> dict[str, CettTruncation]:
    """One `CettTruncation` per block, on `blocks.{i}.mlp.act`, with that block's threshold."""
    if len(thresholds) != lab.n_layers:
        raise ActlabError(f"need one threshold per block: {lab.n_layers}, got {len(thresholds)}")
    return {act_site(i): CettTruncation(threshold=float(t), column_norms=down_projection(lab, i).norm(dim=0))
            for i, t in enumerate(thresholds)}


@dataclass
class SparsityStep:
    """One evaluated CETT target of the search."""

    cett: float
    ppl: float
    ppl_ratio: float
    activation_ratio: float
    accepted: bool
    thresholds: list[float]
    layer_activation_ratio: list[float]
    layer_cett: list[float]  # realized CETT per layer on the calibration tokens


@dataclass
class SparsityResult(Result):
    """PPL-p% sparsity: the activation ratio at the largest CETT within a p % perplexity rise."""

    kind: ClassVar[str] = "ppl_sparsity"
    p: float
    cett: float
    cett_rejected: float | None  # the smallest CETT target tried that raised perplexity too much
    activation_ratio: float
    layer_activation_ratio: list[float]
    thresholds: list[float]
    ppl_dense: float
    ppl: float
    steps: list[SparsityStep] = field(default_factory=list)
    calibration_tokens: int = 0
    tolerance: float = 0.0
    protocol: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    dtype: str = ""
    seconds: float = 0.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.activation_ratio

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SparsityResult:
        data = {k: v for k, v in data.items() if k != "kind"}
        data["steps"] = [SparsityStep(**s) for s in data.get("steps", [])]
        return cls(**data)

    def edits(self, lab: Any) -> dict[str, CettTruncation]:
        """The truncation found, as edits (so `lab.edit(result)` runs the sparsified model)."""
        return truncation_edits(lab, self.thresholds)

    def rows(self) -> list[tuple[str, str]]:
        rejected = "none up to 1" if self.cett_rejected is None else f"{self.cett_rejected:.4f}"
        return [(f"PPL-{self.p:g}% activation ratio", f"{self.activation_ratio:.4f}"),
                ("sparsity", f"{self.sparsity:.4f}"), ("CETT", f"{self.cett:.4f}"),
                ("smallest CETT rejected", rejected),
                ("perplexity dense → sparse", f"{self.ppl_dense:.4f} → {self.ppl:.4f} "
                                              f"(+{100 * (self.ppl / self.ppl_dense - 1):.2f} %)"),
                ("search steps", f"{len(self.steps)} (tolerance {self.tolerance:g})"),
                ("calibration tokens", f"{self.calibration_tokens:,}"), *super().rows(),
                ("dtype", self.dtype), ("seconds", f"{self.seconds:.1f}")]

    def table(self) -> Table:
        """Threshold and activation ratio per layer."""
        table = Table(title=f"PPL-{self.p:g}% per layer", title_justify="left")
        for column in ("layer", "threshold", "activation ratio"):
            table.add_column(column, justify="right")
        for i, (t, r) in enumerate(zip(self.thresholds, self.layer_activation_ratio)):
            table.add_row(str(i), f"{t:.3e}", f"{r:.4f}")
        return table


def calibrate(lab: Any, input_ids: torch.Tensor, batch_size: int = 4) -> list[LayerCalibration]:
    """Record `mlp.act` of every block on `input_ids` windows (dense model), one calibration per layer."""
    sites = [act_site(i) for i in range(lab.n_layers)]
    parts: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    for start in range(0, input_ids.shape[0], batch_size):
        with lab.record(sites, positions="all", dtype=torch.float32) as rec:
            lab.forward(input_ids[start:start + batch_size], return_logits=False)
        for s in sites:
            parts[s].append(rec[s])
    return [LayerCalibration(torch.cat(parts[s]), down_projection(lab, i)) for i, s in enumerate(sites)]


def ppl_sparsity(
    lab: Any,
    corpus: Corpus | str = "austen:test",
    p: float = 1.0,
    *,
    seq_len: int = 512,
    max_tokens: int | None = 8192,
    calibration_tokens: int = 2048,
    tolerance: float = 0.002,
    batch_size: int = 4,
    progress: bool = True,
) -> SparsityResult:
    """PPL-p% sparsity of `lab`'s MLPs on the windows of `corpus` (see the module docstring).

    Thresholds are calibrated on the first windows of the slice (`calibration_tokens` tokens, at
    least one window); perplexity and activation ratios are measured on the whole slice. The search
    over the CETT target stops when its bracket is narrower than `tolerance`.
    """
    if not p > 0:
        raise ActlabError(f"p (the allowed perplexity rise, in %) must be positive, got {p}")
    if not 0 < tolerance < 0.5:
        raise ActlabError(f"tolerance must be in (0, 0.5), got {tolerance}")
    if calibration_tokens < 1:
        raise ActlabError(f"calibration_tokens must be positive, got {calibration_tokens}")
    started = time.perf_counter()
    windows = token_windows(lab.tokenizer, corpus, seq_len, max_tokens=max_tokens)
    n_calibration = min(len(windows), -(-calibration_tokens // seq_len))
    with torch.inference_mode():
        layers = calibrate(lab, windows.input_ids[:n_calibration], batch_size)

    def evaluate(edits: Any) -> float:
        return perplexity(lab, corpus, seq_len, max_tokens=max_tokens, batch_size=batch_size,
                          edits=edits, progress=False).ppl

    dense = evaluate(None)
    limit = 1.0 + p / 100.0

    def step(cett: float) -> SparsityStep:
        found = [layer.threshold(cett) for layer in layers]
        edits = truncation_edits(lab, [t for t, _ in found])
        ppl = evaluate(edits)
        ratios = [1.0 - e.truncated / e.total for e in edits.values()]
        return SparsityStep(cett, ppl, ppl / dense, sum(ratios) / len(ratios), ppl / dense <= limit,
                            [t for t, _ in found], ratios, [c for _, c in found])

    steps: list[SparsityStep] = []
    lo, hi = 0.0, 1.0
    total = math.ceil(math.log2(1.0 / tolerance))
    with progress_bar(total, f"PPL-{p:g}% search", progress) as advance:
        while hi - lo > tolerance:
            steps.append(step((lo + hi) / 2))
            lo, hi = (steps[-1].cett, hi) if steps[-1].accepted else (lo, steps[-1].cett)
            advance(1)
    accepted = [s for s in steps if s.accepted]
    chosen = max(accepted, key=lambda s: s.cett) if accepted else step(0.0)
    rejected = [s.cett for s in steps if not s.accepted]
    return SparsityResult(
        p=p, cett=chosen.cett, cett_rejected=min(rejected) if rejected else None,
        activation_ratio=chosen.activation_ratio, layer_activation_ratio=chosen.layer_activation_ratio,
        thresholds=chosen.thresholds, ppl_dense=dense, ppl=chosen.ppl, steps=steps,
        calibration_tokens=n_calibration * windows.input_ids.shape[1], tolerance=tolerance,
        protocol=windows.protocol, fingerprint=fingerprint(lab), dtype=model_dtype(lab),
        seconds=time.perf_counter() - started)
