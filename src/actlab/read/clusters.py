"""Cluster quality of two activation sets per layer, and the Alignment Quality Index (AQI).

Borah et al., "Alignment Quality Index (AQI): Beyond Refusals: AQI as an Intrinsic Alignment
Diagnostic via Latent Geometry, Cluster Divergence, and Layer-wise Pooled Representations",
arXiv 2506.13901. AQI scores how well a model keeps two prompt sets (harmful vs harmless) apart
in its activations, with classic cluster-validity indices computed on the true labels:

- Davies–Bouldin (lower is better), Dunn (higher), Xie–Beni (lower), Calinski–Harabasz (higher),
  all in float64 torch (`davies_bouldin`, `dunn`, `xie_beni`, `calinski_harabasz`).
- `aqi` (the paper's DBS/DI form): γ·1/(1+DB) + (1−γ)·DI/(1+DI), in [0, 1], higher = better separated.
- `aqi_chi_xb` (the paper's CHI/XB form): γ·CHI_norm + (1−γ)·XB_norm where, as in the authors'
  code, CHI is min–max scaled over the rows compared and XB goes through an inverted sigmoid around
  the rows' median (scale: inter-quartile range); so it ranks rows of one table, in [0, 1].
- Layer pooling: the paper pools hidden layers with learned, sparse attention weights. We learn
  softmax weights over the RMS-normalised layers that maximise the Calinski–Harabasz ratio of the
  pooled representation, with an entropy penalty for sparsity (see `learn_layer_weights`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from rich.table import Table

from actlab.engine.reading import read_activations
from actlab.errors import ActlabError
from actlab.eval.results import plain_text
from actlab.eval.common import fingerprint

METRICS = ("davies_bouldin", "dunn", "xie_beni", "calinski_harabasz")
ROW_CHUNK = 2048  # rows per block of pairwise distances in `dunn`


def _groups(x: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x as float64 [n, d], cluster index of each row 0..k-1, centroids [k, d]); checks the input."""
    x = torch.as_tensor(x)
    if x.dim() < 2:
        raise ActlabError(f"activations must be [n, d], got shape {tuple(x.shape)}")
    x = x.reshape(x.shape[0], -1).double()
    labels = torch.as_tensor(labels)
    if labels.shape != (x.shape[0],):
        raise ActlabError(f"need one label per row: {x.shape[0]} rows, labels of shape {tuple(labels.shape)}")
    _, inverse = torch.unique(labels, return_inverse=True)
    k = int(inverse.max()) + 1 if inverse.numel() else 0
    if k < 2:
        raise ActlabError(f"cluster quality needs at least two clusters, got {k}")
    if x.shape[0] <= k:
        raise ActlabError(f"cluster quality needs more rows ({x.shape[0]}) than clusters ({k})")
    counts = torch.bincount(inverse, minlength=k).double()
    centroids = torch.zeros(k, x.shape[1], dtype=torch.float64).index_add_(0, inverse, x) / counts[:, None]
    return x, inverse, centroids


def davies_bouldin(x: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> float:
    """Mean over clusters of max_j (s_i + s_j) / ‖c_i − c_j‖, s = mean distance to the centroid
    (Davies & Bouldin 1979; equals `sklearn.metrics.davies_bouldin_score`). Lower is better."""
    x, inverse, centroids = _groups(x, labels)
    k = centroids.shape[0]
    to_centroid = (x - centroids[inverse]).norm(dim=1)
    spread = torch.zeros(k, dtype=torch.float64).index_add_(0, inverse, to_centroid) / torch.bincount(inverse)
    separation = torch.cdist(centroids, centroids)
    if torch.all(spread == 0) or torch.all(separation == 0):
        return 0.0
    ratio = (spread[:, None] + spread[None, :]) / separation
    ratio.fill_diagonal_(-torch.inf)
    return float(ratio.max(dim=1).values.mean())


def calinski_harabasz(x: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> float:
    """(between-cluster dispersion / (k−1)) / (within-cluster dispersion / (n−k)) (Caliński &
    Harabasz 1974; equals `sklearn.metrics.calinski_harabasz_score`). Higher is better."""
    x, inverse, centroids = _groups(x, labels)
    between, within = _dispersions(x, inverse, centroids)
    n, k = x.shape[0], centroids.shape[0]
    return float(between * (n - k) / (within * (k - 1))) if within > 0 else float("inf")


def _dispersions(x: torch.Tensor, inverse: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_k n_k ‖c_k − c‖², Σ_i ‖x_i − c_{k(i)}‖²), differentiable in x."""
    counts = torch.bincount(inverse, minlength=centroids.shape[0]).to(x.dtype)
    between = (counts * (centroids - x.mean(0)).pow(2).sum(1)).sum()
    within = (x - centroids[inverse]).pow(2).sum()
    return between, within


def xie_beni(x: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> float:
    """Σ_i ‖x_i − c_{k(i)}‖² / (n · min_{k≠l} ‖c_k − c_l‖²): Xie & Beni 1991 with hard (0/1)
    memberships, as the AQI code computes it. Lower is better."""
    x, inverse, centroids = _groups(x, labels)
    separation = torch.cdist(centroids, centroids).pow(2)
    separation.fill_diagonal_(torch.inf)
    within = (x - centroids[inverse]).pow(2).sum()
    closest = separation.min()
    return float(within / (x.shape[0] * closest)) if closest > 0 else float("inf")


def dunn(x: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> float:
    """min distance between points of different clusters / max distance between points of one
    cluster (Dunn 1974: nearest-neighbour separation over the largest diameter). Higher is better."""
    x, inverse, _ = _groups(x, labels)
    nearest, diameter = torch.inf, torch.tensor(0.0, dtype=torch.float64)
    for start in range(0, x.shape[0], ROW_CHUNK):
        block = torch.cdist(x[start:start + ROW_CHUNK], x)
        same = inverse[start:start + ROW_CHUNK, None] == inverse[None, :]
        nearest = min(nearest, float(block[~same].min()))
        diameter = torch.maximum(diameter, block[same].max())
    return nearest / float(diameter) if diameter > 0 else float("inf")


def aqi_score(davies_bouldin_index: float, dunn_index: float, gamma: float = 0.5) -> float:
    """The paper's DBS/DI form: γ / (1 + DB) + (1 − γ) · DI / (1 + DI), in [0, 1]."""
    return gamma / (1.0 + davies_bouldin_index) + (1.0 - gamma) * dunn_index / (1.0 + dunn_index)


def aqi_chi_xb(chi: Sequence[float], xb: Sequence[float], gamma: float = 0.5) -> list[float]:
    """The paper's CHI/XB form over several rows: γ · minmax(CHI) + (1 − γ) · (1 − σ((XB − median) / IQR)).

    Scaling follows the authors' code (which multiplies by 100 and floors XB_norm at 10; we keep
    [0, 1] and no floor). Values rank the rows given together; they are not absolute.
    """
    chi_t, xb_t = torch.tensor(chi, dtype=torch.float64), torch.tensor(xb, dtype=torch.float64)
    span = chi_t.max() - chi_t.min()
    chi_norm = (chi_t - chi_t.min()) / span if span > 0 else torch.full_like(chi_t, 0.5)
    q25, q50, q75 = torch.quantile(xb_t, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    scale = float(q75 - q25) or 1.0
    xb_norm = 1.0 - torch.sigmoid((xb_t - q50) / scale)
    return (gamma * chi_norm + (1.0 - gamma) * xb_norm).tolist()


def cluster_scores(x: torch.Tensor, labels: torch.Tensor | Sequence[int], gamma: float = 0.5) -> dict[str, float]:
    """The four indices of `x` under `labels` and their AQI (DBS/DI form)."""
    scores = {"davies_bouldin": davies_bouldin(x, labels), "dunn": dunn(x, labels),
              "xie_beni": xie_beni(x, labels), "calinski_harabasz": calinski_harabasz(x, labels)}
    scores["aqi"] = aqi_score(scores["davies_bouldin"], scores["dunn"], gamma)
    return scores


def learn_layer_weights(layers: torch.Tensor, labels: torch.Tensor, steps: int = 300, lr: float = 0.05,
                        sparsity: float = 0.01) -> torch.Tensor:
    """Softmax weights over layers (`layers`: [L, n, d], each RMS-normalised) maximising
    log CHI(Σ_l α_l x_l) − sparsity · entropy(α); starts from uniform weights. Returns α [L]."""
    _, inverse, _ = _groups(layers[0], labels)
    layers = layers.double()
    k = int(inverse.max()) + 1
    counts = torch.bincount(inverse, minlength=k).double()
    logits = torch.zeros(layers.shape[0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        alpha = logits.softmax(0)
        pooled = torch.einsum("l,lnd->nd", alpha, layers)
        centroids = torch.zeros(k, pooled.shape[1], dtype=torch.float64).index_add(0, inverse, pooled) / counts[:, None]
        between, within = _dispersions(pooled, inverse, centroids)
        entropy = -(alpha * alpha.clamp_min(1e-12).log()).sum()
        loss = -(between / within).log() + sparsity * entropy
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return logits.detach().softmax(0)


def rms_normalise(x: torch.Tensor) -> torch.Tensor:
    """x / sqrt(mean ‖x_i − x̄‖²): one scale per layer, so deep layers with large norms do not dominate a pool."""
    x = x.double()
    return x / (x - x.mean(0)).pow(2).sum(1).mean().sqrt().clamp_min(1e-12)


@dataclass
class AQIResult:
    """Per-layer cluster indices and AQI of two prompt sets, plus the layer-pooled representation."""

    rows: list[dict[str, Any]]  # one per site: site, the four indices, aqi, aqi_chi_xb
    pooled: dict[str, Any]  # the same for the pooled representation, plus `weights` {site: α}
    gamma: float
    n_a: int
    n_b: int
    fingerprint: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    kind = "aqi"

    @property
    def best(self) -> dict[str, Any]:
        """The layer row with the highest AQI."""
        return max(self.rows, key=lambda r: r["aqi"])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def __rich__(self) -> Table:
        table = Table(title=f"AQI ({self.n_a} vs {self.n_b} prompts, γ={self.gamma:g}; DB, XB lower is better)",
                      title_justify="left")
        for name in ("site", "DB", "Dunn", "XB", "CH", "AQI", "AQI chi-xb"):
            table.add_column(name, justify="left" if name == "site" else "right")
        for r in [*self.rows, *([{**self.pooled, "site": "pooled"}] if self.pooled else [])]:
            table.add_row(r["site"], *(f"{r[m]:.4g}" for m in METRICS), f"{r['aqi']:.4f}", f"{r['aqi_chi_xb']:.4f}")
        return table

    def __str__(self) -> str:
        return plain_text(self, width=110)


def aqi(lab, prompts_a: Any, prompts_b: Sequence[str] | None = None, sites: str | Sequence[str] = "blocks.*.resid_post",
        gamma: float = 0.5, pool: bool = True, batch_size: int = 16, progress: bool = True) -> AQIResult:
    """AQI of two prompt sets (e.g. harmful vs harmless) at every site, and layer-pooled.

    `prompts_a` is a `ContrastivePairs` (its chat-formatted sides are used) or a list of prompts
    with `prompts_b` the other list. One activation per prompt: the last token. The pooled row
    (learned layer weights, see `learn_layer_weights`) needs sites of one width; it is left out
    (`pooled == {}`) with `pool=False`, a single site, or sites of different widths.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ActlabError(f"gamma must lie in [0, 1], not {gamma}")
    if hasattr(prompts_a, "formatted"):
        if prompts_b is not None:
            raise ActlabError("pass either a ContrastivePairs set or two prompt lists, not both")
        a, b = prompts_a.formatted(lab.tokenizer)
        data = {"name": prompts_a.name, **getattr(prompts_a, "provenance", {})}
    else:
        if prompts_b is None:
            raise ActlabError("the second prompt set is missing: pass ContrastivePairs or (prompts_a, prompts_b)")
        a, b = list(prompts_a), list(prompts_b)
        data = {"name": "prompts"}
    if len(a) < 2 or len(b) < 2:
        raise ActlabError(f"each prompt set needs at least two prompts, got {len(a)} and {len(b)}")
    names = lab.sites(sites)
    acts, _ = read_activations(lab, a + b, names, "last", batch_size, progress)
    acts = {s: v.reshape(v.shape[0], -1) for s, v in acts.items()}
    labels = torch.cat([torch.zeros(len(a), dtype=torch.long), torch.ones(len(b), dtype=torch.long)])
    rows = [{"site": s, **cluster_scores(acts[s], labels, gamma)} for s in names]
    pooled: dict[str, Any] = {}
    if pool and len(names) > 1 and len({acts[s].shape[1] for s in names}) == 1:
        stacked = torch.stack([rms_normalise(acts[s]) for s in names])
        weights = learn_layer_weights(stacked, labels)
        pooled = {**cluster_scores(torch.einsum("l,lnd->nd", weights, stacked), labels, gamma),
                  "weights": dict(zip(names, weights.tolist()))}
    scored = rows + ([pooled] if pooled else [])
    for r, v in zip(scored, aqi_chi_xb([r["calinski_harabasz"] for r in scored], [r["xie_beni"] for r in scored], gamma)):
        r["aqi_chi_xb"] = v
    return AQIResult(rows, pooled, gamma, len(a), len(b), fingerprint(lab), data)
