"""Representation similarity of paired activations: linear CKA, SVCCA, relative representations.

All functions take `[n, d]` tensors whose rows are paired (the same tokens or prompts seen by two
layers or two models); widths may differ. Everything is computed in float64.

- `cka`: linear centred kernel alignment, ‖YcᵀXc‖²_F / (‖XcᵀXc‖_F ‖YcᵀYc‖_F). Kornblith et al.,
  "Similarity of Neural Network Representations Revisited", arXiv 1905.00414. Invariant to
  orthogonal maps and isotropic scaling, not to arbitrary invertible maps.
- `svcca`: keep the top singular directions of each side explaining `keep` of the variance,
  then the mean canonical correlation between the two reduced sets. Raghu et al., "SVCCA:
  Singular Vector Canonical Correlation Analysis for Deep Learning Dynamics and
  Interpretability", arXiv 1706.05806. Invariant to invertible linear maps (within the kept subspace).
- `relative_similarity`: each row becomes its cosine similarities to anchor rows; the score is the
  mean cosine between the paired relative rows. Moschella et al., "Relative representations
  enable zero-shot latent space communication", arXiv 2209.15430. Invariant to rotations and
  rescaling of either space.

`Moments` accumulates the (shifted) first and second moments of two streams batch by batch, so
CKA and SVCCA of activations larger than memory are exact: the streaming values equal the
in-memory ones. `compare_stores` uses it to compare sites of two activation stores holding the
same tokens (every site of A against every site of B: a matrix per metric).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from rich.table import Table

from actlab.errors import ActlabError
from actlab.eval.common import progress_bar
from actlab.eval.results import plain_text
from actlab.store.store import Store

METRICS = ("cka", "svcca", "relative")
EIGEN_TOLERANCE = 1e-10  # eigenvalues below this fraction of the largest count as zero variance


def _pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.dim() < 2 or y.dim() < 2:
        raise ActlabError(f"activations must be [n, d], got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ActlabError(f"rows must be paired: {x.shape[0]} rows against {y.shape[0]}")
    if x.shape[0] < 2:
        raise ActlabError("similarity needs at least two rows")
    # float64 copies (never the caller's tensors), so the callers may centre them in place
    return (x.reshape(x.shape[0], -1).to(torch.float64, copy=True),
            y.reshape(y.shape[0], -1).to(torch.float64, copy=True))


def cka(x: torch.Tensor | Store, y: torch.Tensor | Store, **store_options: Any) -> float | SimilarityResult:
    """Linear CKA of paired rows (0…1; 1 for identical up to rotation and scale).

    Given two stores, every site pair streamed from disk: `compare_stores(x, y, metrics=["cka"], ...)`.
    """
    if isinstance(x, Store) or isinstance(y, Store):
        return compare_stores(x, y, metrics=["cka"], **store_options)
    x, y = _pair(x, y)
    x, y = x.sub_(x.mean(0)), y.sub_(y.mean(0))
    if x.shape[0] < min(x.shape[1], y.shape[1]):  # fewer rows than features: the Gram form is cheaper
        k, m = x @ x.T, y @ y.T
        return _cka_ratio((k * m).sum(), k.norm(), m.norm())
    return _cka_ratio((y.T @ x).pow(2).sum(), (x.T @ x).norm(), (y.T @ y).norm())


def _cka_ratio(cross: torch.Tensor, norm_x: torch.Tensor, norm_y: torch.Tensor) -> float:
    denominator = float(norm_x * norm_y)
    return float(cross) / denominator if denominator > 0 else 0.0


def svcca(x: torch.Tensor | Store, y: torch.Tensor | Store, keep: float = 0.99,
          **store_options: Any) -> float | SimilarityResult:
    """Mean canonical correlation after keeping `keep` of each side's variance (SVCCA).

    Given two stores, every site pair streamed from disk: `compare_stores(x, y, metrics=["svcca"], ...)`.
    """
    if isinstance(x, Store) or isinstance(y, Store):
        return compare_stores(x, y, metrics=["svcca"], keep=keep, **store_options)
    return Moments().update(x, y).svcca(keep)


def relative_similarity(x: torch.Tensor, y: torch.Tensor, anchors: int | Sequence[int] | torch.Tensor = 100,
                        seed: int = 0) -> float:
    """Mean cosine between paired relative representations (cosines to the anchor rows).

    `anchors`: row indices (the same rows in both spaces), or a count drawn without replacement
    (seeded) from the rows.
    """
    x, y = _pair(x, y)
    index = anchor_rows(x.shape[0], anchors, seed)
    return float(relative_cosines(x, y, x[index], y[index]).mean())


def anchor_rows(n: int, anchors: int | Sequence[int] | torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Anchor row indices: given ones (checked), or `anchors` rows drawn from n (seeded, sorted)."""
    if isinstance(anchors, int) and not isinstance(anchors, bool):
        if not 1 <= anchors <= n:
            raise ActlabError(f"anchors must be between 1 and the number of rows ({n}), not {anchors}")
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:anchors].sort().values
    index = torch.as_tensor(anchors, dtype=torch.long).flatten()
    if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= n:
        raise ActlabError(f"anchor indices must be non-empty and lie in [0, {n})")
    return index


def relative_rows(rows: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Each row's cosines to the anchors [n, n_anchors], scaled to unit length (float64)."""
    unit = torch.nn.functional.normalize
    return unit(unit(rows.double(), dim=1) @ unit(anchors.double(), dim=1).T, dim=1)


def relative_cosines(x: torch.Tensor, y: torch.Tensor, anchors_x: torch.Tensor, anchors_y: torch.Tensor) -> torch.Tensor:
    """Per row: cosine between (cos(x_i, anchors_x)) and (cos(y_i, anchors_y))."""
    return (relative_rows(x, anchors_x) * relative_rows(y, anchors_y)).sum(1)


class Side:
    """Running Σx and Σxxᵀ of one stream, shifted by its first batch's mean (for accuracy)."""

    def __init__(self) -> None:
        self.n = 0
        self.shift: torch.Tensor | None = None
        self.total: torch.Tensor | None = None
        self.second: torch.Tensor | None = None

    def shifted(self, x: torch.Tensor) -> torch.Tensor:
        """`x` as float64 [n, d] minus this stream's shift (fixed by the first batch seen)."""
        x = torch.as_tensor(x)
        x = x.reshape(x.shape[0], -1).double()
        if self.shift is None:
            self.shift = x.mean(0)
        elif x.shape[1] != self.shift.shape[0]:
            raise ActlabError(f"batch width {x.shape[1]} differs from the first batch's {self.shift.shape[0]}")
        return x - self.shift

    def add(self, shifted: torch.Tensor) -> None:
        if self.total is None:
            self.total = torch.zeros(shifted.shape[1], dtype=torch.float64)
            self.second = torch.zeros(shifted.shape[1], shifted.shape[1], dtype=torch.float64)
        self.n += shifted.shape[0]
        self.total += shifted.sum(0)
        self.second += shifted.T @ shifted

    def mean(self) -> torch.Tensor:
        return self.total / self.n

    def scatter(self) -> torch.Tensor:
        """Centred scatter XcᵀXc."""
        m = self.mean()
        return self.second - self.n * torch.outer(m, m)


class Moments:
    """Running moments of two paired streams (each `Side`, plus Σxyᵀ): exact linear CKA and SVCCA
    of any number of rows, batch by batch. Sides may be shared between several `Moments` (as
    `compare_stores` does), in which case only the owner of a side feeds it."""

    def __init__(self, x: Side | None = None, y: Side | None = None) -> None:
        self.x, self.y = x or Side(), y or Side()
        self.owns = x is None and y is None
        self.n = 0
        self.cross: torch.Tensor | None = None

    def update(self, x: torch.Tensor, y: torch.Tensor) -> "Moments":
        x, y = self.x.shifted(x), self.y.shifted(y)
        if x.shape[0] != y.shape[0]:
            raise ActlabError(f"rows must be paired: {x.shape[0]} rows against {y.shape[0]}")
        if self.owns:
            self.x.add(x)
            self.y.add(y)
        return self.add_cross(x, y)

    def add_cross(self, x: torch.Tensor, y: torch.Tensor) -> "Moments":
        """Add shifted, paired rows to Σxyᵀ only."""
        if self.cross is None:
            self.cross = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64)
        self.n += x.shape[0]
        self.cross += x.T @ y
        return self

    def covariances(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Centred scatter matrices (XcᵀXc, YcᵀYc, XcᵀYc)."""
        if self.n < 2:
            raise ActlabError("similarity needs at least two rows")
        if not self.x.n == self.y.n == self.n:
            raise ActlabError(f"the streams saw {self.x.n} and {self.y.n} rows but {self.n} pairs")
        return self.x.scatter(), self.y.scatter(), self.cross - self.n * torch.outer(self.x.mean(), self.y.mean())

    def cka(self) -> float:
        cxx, cyy, cxy = self.covariances()
        return _cka_ratio(cxy.pow(2).sum(), cxx.norm(), cyy.norm())

    def svcca(self, keep: float = 0.99) -> float:
        if not 0.0 < keep <= 1.0:
            raise ActlabError(f"keep must lie in (0, 1], not {keep}")
        cxx, cyy, cxy = self.covariances()
        (vx, sx), (vy, sy) = _top_directions(cxx, keep), _top_directions(cyy, keep)
        if vx.shape[1] == 0 or vy.shape[1] == 0:
            return 0.0
        whitened = (vx.T @ cxy @ vy) / torch.outer(sx.sqrt(), sy.sqrt())
        correlations = torch.linalg.svdvals(whitened).clamp(0.0, 1.0)
        return float(correlations.mean())


def _top_directions(scatter: torch.Tensor, keep: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvectors and eigenvalues of a scatter matrix that explain `keep` of its trace (largest first)."""
    values, vectors = torch.linalg.eigh(scatter)
    values, vectors = values.flip(0), vectors.flip(1)
    positive = values > EIGEN_TOLERANCE * values[0].clamp_min(0)
    values, vectors = values[positive], vectors[:, positive]
    if values.numel() == 0:
        return vectors, values
    share = values.cumsum(0) / values.sum()
    count = int(torch.searchsorted(share, torch.tensor([keep], dtype=share.dtype) - 1e-12)) + 1
    return vectors[:, :count], values[:count]


@dataclass
class SimilarityResult:
    """Similarity matrices (rows: sites of A, columns: sites of B) per metric, over `n_tokens` paired tokens."""

    metrics: dict[str, list[list[float]]]
    sites_a: list[str]
    sites_b: list[str]
    n_tokens: int
    stores: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    kind = "similarity"

    def matrix(self, metric: str = "cka") -> torch.Tensor:
        if metric not in self.metrics:
            raise ActlabError(f"this result has {', '.join(self.metrics)}, not {metric!r}")
        return torch.tensor(self.metrics[metric], dtype=torch.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def tables(self) -> list[Table]:
        out = []
        for metric, rows in self.metrics.items():
            table = Table(title=f"{metric} over {self.n_tokens} tokens (rows: A, columns: B)", title_justify="left")
            table.add_column("A \\ B")
            for s in self.sites_b:
                table.add_column(s, justify="right")
            for s, row in zip(self.sites_a, rows):
                table.add_row(s, *(f"{v:.3f}" for v in row))
            out.append(table)
        return out

    def __str__(self) -> str:
        return plain_text(*self.tables(), width=200)


def _site_list(store, sites: str | Sequence[str] | None) -> list[str]:
    """Sites of a store: all (None), or those matching names / shell globs (`blocks.*.resid_post`)."""
    if sites is None:
        return store.sites
    patterns = [sites] if isinstance(sites, str) else list(sites)
    chosen = []
    for p in patterns:
        found = [s for s in store.sites if fnmatch.fnmatchcase(s, p)]
        if not found:
            store[p]  # no such site: raises the store's error, which names the closest sites
        chosen.extend(s for s in found if s not in chosen)
    return chosen


def paired_tokens(store_a, store_b, max_tokens: int | None) -> int:
    """How many leading tokens two stores share; an error unless they hold the same token ids."""
    n = min(store_a.n_tokens, store_b.n_tokens) if max_tokens is None else max_tokens
    if max_tokens is not None and (max_tokens < 2 or max_tokens > min(store_a.n_tokens, store_b.n_tokens)):
        raise ActlabError(f"max_tokens must lie in [2, {min(store_a.n_tokens, store_b.n_tokens)}] "
                          f"(tokens in both stores), not {max_tokens}")
    if store_a.n_tokens != store_b.n_tokens and max_tokens is None:
        raise ActlabError(f"the stores hold {store_a.n_tokens} and {store_b.n_tokens} tokens: pass max_tokens "
                          "to compare a common prefix")
    tokens_a, tokens_b = store_a.index("tokens")[:n], store_b.index("tokens")[:n]
    mismatch = np.flatnonzero(tokens_a != tokens_b)
    if mismatch.size:
        raise ActlabError(f"the stores do not hold the same tokens (first difference at token {int(mismatch[0])} "
                          f"of {n}): harvest both from the same corpus, seq_len and tokenizer")
    return n


def _feed(sides: dict[str, Side], rows: dict[str, torch.Tensor], fed: set[int]) -> dict[str, torch.Tensor]:
    """Shift each site's batch by its side's shift; add it to sides not in `fed` yet (sides may be shared)."""
    shifted = {}
    for site, side in sides.items():
        shifted[site] = side.shifted(rows[site])
        if id(side) not in fed:
            side.add(shifted[site])
            fed.add(id(side))
    return shifted


def compare_stores(store_a, store_b, sites: str | Sequence[str] | None = None,
                   sites_b: str | Sequence[str] | None = None, metrics: Sequence[str] = ("cka",),
                   max_tokens: int | None = None, batch_tokens: int = 8192, keep: float = 0.99,
                   anchors: int = 256, seed: int = 0, skip_positions: int = 0,
                   progress: bool = True) -> SimilarityResult:
    """Every site of `store_a` (`sites`) against every site of `store_b` (`sites_b`, default the
    same names) over their shared tokens, streamed in batches of `batch_tokens` rows.

    CKA and SVCCA keep d_a·d_b running sums per pair (exact at any length); `relative` draws
    `anchors` token rows (seeded) and averages the per-token cosine of relative representations.
    `skip_positions=k` leaves out the first k tokens of every window: in language models the first
    token (an attention sink) can have a residual norm 100× the others and dominate linear CKA.
    """
    if batch_tokens < 1:
        raise ActlabError(f"batch_tokens must be at least 1, not {batch_tokens}")
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ActlabError(f"unknown metric {unknown[0] if unknown else None!r}: use {', '.join(METRICS)}")
    names_a = _site_list(store_a, sites)
    names_b = _site_list(store_b, sites_b if sites_b is not None else (names_a if sites is not None else None))
    total = paired_tokens(store_a, store_b, max_tokens)
    kept = store_a.index("positions")[:total] >= skip_positions
    n = int(kept.sum())
    if n < 2:
        raise ActlabError(f"only {n} tokens are left after skip_positions={skip_positions}: need at least two")
    if "relative" in metrics and not 1 <= anchors <= n:
        raise ActlabError(f"anchors must be between 1 and the number of tokens ({n}), not {anchors}")
    pairs = [(i, j) for i in range(len(names_a)) for j in range(len(names_b))]
    moments: dict[tuple[int, int], Moments] = {}
    same = store_a.root.resolve() == store_b.root.resolve()
    if {"cka", "svcca"} & set(metrics):
        sides_a = {s: Side() for s in names_a}
        sides_b = {s: sides_a[s] if same and s in sides_a else Side() for s in names_b}
        moments = {(i, j): Moments(sides_a[names_a[i]], sides_b[names_b[j]]) for i, j in pairs}
    cosine_sums = {p: 0.0 for p in pairs}
    if "relative" in metrics:
        index = np.flatnonzero(kept)[anchor_rows(n, anchors, seed).numpy()]
        anchors_a = {s: store_a[s][index].reshape(len(index), -1) for s in names_a}
        anchors_b = {s: store_b[s][index].reshape(len(index), -1) for s in names_b}
    def read(store, site: str, lo: int, hi: int) -> torch.Tensor:
        rows = store[site][lo:hi].reshape(hi - lo, -1)
        return rows if skip_positions <= 0 else rows[torch.from_numpy(kept[lo:hi])]

    with progress_bar(total, "comparing stores", progress) as advance:
        for lo in range(0, total, batch_tokens):
            hi = min(lo + batch_tokens, total)
            rows_a = {s: read(store_a, s, lo, hi) for s in names_a}
            rows_b = {s: rows_a[s] if same and s in rows_a else read(store_b, s, lo, hi) for s in names_b}
            if moments:
                fed: set[int] = set()
                shifted_a, shifted_b = _feed(sides_a, rows_a, fed), _feed(sides_b, rows_b, fed)
            if "relative" in metrics:
                relative_a = {s: relative_rows(rows_a[s], anchors_a[s]) for s in names_a}
                relative_b = {s: relative_rows(rows_b[s], anchors_b[s]) for s in names_b}
            for i, j in pairs:
                if moments:
                    moments[i, j].add_cross(shifted_a[names_a[i]], shifted_b[names_b[j]])
                if "relative" in metrics:
                    cosine_sums[i, j] += float((relative_a[names_a[i]] * relative_b[names_b[j]]).sum())
            advance(hi - lo)
    values = {"cka": lambda p: moments[p].cka(), "svcca": lambda p: moments[p].svcca(keep),
              "relative": lambda p: cosine_sums[p] / n}
    matrices = {m: [[values[m]((i, j)) for j in range(len(names_b))] for i in range(len(names_a))] for m in metrics}
    return SimilarityResult(matrices, names_a, names_b, n, [str(store_a.root), str(store_b.root)],
                            [store_a.manifest.model, store_b.manifest.model],
                            {"keep": keep, "anchors": anchors, "seed": seed, "batch_tokens": batch_tokens,
                             "skip_positions": skip_positions})
