"""Low-rank compensation of quantized weights: EoRA and plain SVD, as recipe stages after the
quantization stage (`rotate | w4 | eora(rank=64)`, `w4 | svd(rank=32)`).

For each quantized linear, `ΔW = W - Ŵ` (the float weight after the transforms minus the
quantized one). A compensation stage sets `QuantLinear.lowrank = (A [r, in], B [out, r])`, a
residual path `y += (x Aᵀ) Bᵀ` on the linear's input after its online ops and before input
quantization, so the layer computes `Ŵ x + B A x ≈ W x`.

- `svd(rank=r)`: the truncated SVD of ΔW itself, `B = U_r Σ_r`, `A = V_rᵀ`: the best rank-r
  approximation of the weights, whatever the inputs.
- `eora(rank=r)`: EoRA, "EoRA: Training-free Compensation for Compressed LLM with Eigenspace
  Low-Rank Approximation" (Liu et al., 2024, arXiv 2410.21271). With the input second moment
  `C = E[x xᵀ] = Q Λ Qᵀ`, the truncated SVD of `ΔW' = ΔW Q Λ^{1/2}` gives `B = U_r Σ_r` and
  `A = V_rᵀ Λ^{-1/2} Qᵀ`: the rank-r `BA` that minimises the layer's output error
  `‖(ΔW - BA) X‖_F` on the calibration inputs, which SVD does not (the paper's claim: EoRA beats
  SVD compensation at the same rank). Eigenvalues below `EIG_EPS` × the largest are raised to it
  (dead or rank-deficient input directions), and the same clamped Λ is used on both sides, so at
  full rank `BA = ΔW` exactly.

`C` comes from the recipe's calibration windows, observed on the quantized model (so each layer
sees the inputs it gets at inference): each batch's `Xᵀ X` in the input dtype (float32 at least),
summed in float64. `eora(store=PATH)` takes it from an activation store harvested with
`covariance=True` instead (`C = cov + mean meanᵀ` of the linear's input site); the store holds the
float model's activations, so this is refused for a linear whose input a transform changed (an
online op, or an edit folded into the producer). `rank` is clamped to `min(in, out)` per linear
(at that rank the layer is exact). Low-rank factors are counted as fp16 in the recipe's bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from actlab.compress.calibration import observing, run_windows
from actlab.compress.qlinear import QuantLinear
from actlab.errors import ActlabError

EIG_EPS = 1e-8  # eigenvalues of C below EIG_EPS × its largest one are raised to that floor


# --------------------------------------------------------------------------- factors
def svd_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(A [r, in], B [out, r])` in float64 with `BA` the best rank-r approximation of `delta`
    in Frobenius norm (truncated SVD, `B = U_r Σ_r`, `A = V_rᵀ`)."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    return vh[:rank], u[:, :rank] * s[:rank]


def eora_factors(delta: torch.Tensor, cov: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """EoRA (Liu et al., 2024, arXiv 2410.21271): `(A, B)` minimising `‖(delta - BA) C^{1/2}‖_F`
    at rank r, from the eigendecomposition `C = Q Λ Qᵀ` of the input second moment."""
    lam, q = torch.linalg.eigh(cov.double())
    lam = lam.clamp_min(EIG_EPS * float(lam.max().clamp_min(torch.finfo(torch.float64).tiny)))
    root = lam.sqrt()
    a, b = svd_factors(delta.double() @ (q * root), rank)
    return (a / root) @ q.T, b


# --------------------------------------------------------------------------- second moments
def input_covariances(state, linears: list[QuantLinear]) -> dict[str, torch.Tensor]:
    """`E[x xᵀ]` (float64) of every linear's input after its online ops over the calibration
    windows, keyed by input site (the linears of a group share it; one is observed)."""
    first = {}
    for q in linears:
        first.setdefault(q.site, q)
    sums = {site: torch.zeros(q.in_features, q.in_features, dtype=torch.float64) for site, q in first.items()}
    rows = dict.fromkeys(first, 0)

    def observe(q, x2):
        if first.get(q.site) is q:
            x = x2.detach() if x2.dtype in (torch.float32, torch.float64) else x2.detach().float()
            sums[q.site] += (x.T @ x).double()
            rows[q.site] += x.shape[0]
    with observing(list(first.values()), observe):
        run_windows(state.model, state.windows, state.batch_size, state.progress, "eora covariance",
                    lm_head=any(q.name == "lm_head" for q in first.values()))
    return {site: s / max(rows[site], 1) for site, s in sums.items()}


def store_covariances(path: str, state, linears: list[QuantLinear]) -> dict[str, torch.Tensor]:
    """`E[x xᵀ] = cov + mean meanᵀ` of every linear's input site from an activation store
    harvested with covariance; refused where a transform changed the linear's input."""
    from actlab.store import open_store

    store = open_store(path)
    folded = {g.name: g.folded for g in state.groups}
    out = {}
    for q in linears:
        if q.ops or folded.get(q.site):
            edits = ",".join(k for k, _ in q.ops) or " ".join(folded[q.site])
            raise ActlabError(f"eora(store=...): the input of {q.name} was transformed ({edits}) but the store holds "
                              "the float model's activations; drop store= to use the calibration windows")
        stats = store.stats.get(q.site)
        if stats is None or not stats.covariance:
            why = "no site" if stats is None else "no covariance for"
            raise ActlabError(f"eora(store=...): store {path} has {why} {q.site!r} (the input of {q.name}); "
                              "harvest it with covariance=True")
        out[q.site] = torch.from_numpy(stats.cov + np.outer(stats.mean, stats.mean))
    return out


# --------------------------------------------------------------------------- stages
def _check_rank(method: str, rank: int) -> None:
    if not isinstance(rank, int) or rank < 1:
        raise ActlabError(f"{method}: rank must be a positive integer, got {rank!r}")


def _errors(state, method: str) -> list[tuple[QuantLinear, torch.Tensor]]:
    """`(linear, ΔW = W - Ŵ)` in float64 for every linear whose weight was quantized."""
    out = []
    for q in state.linears:
        if q.kernel is not None:
            raise ActlabError(f"{method}: {q.name} runs kernel=int8; low-rank compensation needs fake-quantized "
                              "weights")
        if q.weight_quantizer is not None:
            out.append((q, state.float_weights[q.name].double() - q.weight.detach().double()))
    return out


def _attach(q: QuantLinear, factors: tuple[torch.Tensor, torch.Tensor]) -> None:
    q.lowrank = tuple(f.to(q.weight.dtype).contiguous() for f in factors)


@dataclass
class SVDCompensation:
    """Plain SVD compensation: the truncated SVD of `ΔW = W - Ŵ` as a rank-`rank` residual path
    (the baseline of EoRA, Liu et al., 2024, arXiv 2410.21271). Recipe stage `svd(rank=32)`."""

    rank: int = 32
    is_compensation = True  # comes after the quantization stage

    def __post_init__(self) -> None:
        _check_rank("svd", self.rank)

    def apply(self, state) -> None:
        for q, delta in _errors(state, "svd"):
            _attach(q, svd_factors(delta, min(self.rank, *delta.shape)))


@dataclass
class EoRA:
    """EoRA (Liu et al., 2024, arXiv 2410.21271): eigenspace low-rank compensation of `ΔW = W - Ŵ`
    weighted by the input second moment; see the module docstring. Recipe stage `eora(rank=32)`,
    or `eora(rank=32,store=PATH)` for the second moments of an activation store."""

    rank: int = 32
    store: str | None = None
    is_compensation = True  # comes after the quantization stage

    def __post_init__(self) -> None:
        _check_rank("eora", self.rank)

    def apply(self, state) -> None:
        errors = _errors(state, "eora")
        linears = [q for q, _ in errors]
        covs = store_covariances(self.store, state, linears) if self.store else input_covariances(state, linears)
        for q, delta in errors:
            _attach(q, eora_factors(delta, covs[q.site], min(self.rank, *delta.shape)))


COMPENSATIONS = {"svd": SVDCompensation, "eora": EoRA}
