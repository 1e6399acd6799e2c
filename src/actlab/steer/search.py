"""Which layer, and how strong: contrastive layer search, then an alpha sweep under a KL budget.

Layer search follows "Backdoor Activation Attack" (Wang & Shu, arXiv 2311.09433): fit the
vector on training pairs at every candidate layer and keep the layer where held-out positive
and negative activations separate most along it. Separation is the standardised gap of the
projections, (mean₊ − mean₋) / pooled std, reported with the held-out accuracy of the midpoint
threshold. The alpha sweep steers at the best layers with each alpha, measures the behaviour
metric and KL(unsteered ‖ steered) on neutral text, and picks the highest (or, with
`maximize=False`, lowest) metric whose KL stays within the budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.table import Table

from actlab.data.prompts import ContrastivePairs
from actlab.engine.context import Positions
from actlab.errors import ActlabError
from actlab.eval import kl_divergence
from actlab.steer.extract import DiffMean, Estimator, contrastive_texts
from actlab.engine.reading import read_activations
from actlab.steer.vector import SteeringVector


def separation(pos: torch.Tensor, neg: torch.Tensor, direction: torch.Tensor) -> tuple[float, float]:
    """(standardised gap of the projections on unit(direction), accuracy of the midpoint threshold)."""
    u = direction.double() / direction.double().norm().clamp_min(1e-12)
    a, b = pos.double() @ u, neg.double() @ u
    pooled = ((a.var(unbiased=False) + b.var(unbiased=False)) / 2).sqrt().clamp_min(1e-12)
    gap = float((a.mean() - b.mean()) / pooled)
    mid = (a.mean() + b.mean()) / 2
    accuracy = float(((a > mid).sum() + (b <= mid).sum()) / (len(a) + len(b)))
    return gap, accuracy


@dataclass
class AlphaSweep:
    """Steer with each alpha; keep the best `metric` whose KL on neutral text is within `kl_budget`."""

    metric: Callable[[Any], float]
    alphas: Sequence[float] = (1.0, 2.0, 4.0, 8.0)
    kl_budget: float = 0.1
    tokens: Positions = "all"
    corpus: str = "austen:test"
    kl_tokens: int = 1024
    seq_len: int = 256
    maximize: bool = True  # False: the lowest metric wins (e.g. steering sentiment down)
    progress: bool = True

    def rows(self, lab, vector: SteeringVector) -> list[dict[str, Any]]:
        out = []
        for alpha in self.alphas:
            steering = vector.add(alpha, tokens=self.tokens)
            with lab.edit(steering):
                value = float(self.metric(lab))
            div = kl_divergence(lab, steering, self.corpus, self.seq_len, max_tokens=self.kl_tokens,
                                progress=False)
            out.append({"site": ",".join(vector.sites), "alpha": float(alpha), "metric": value,
                        "kl": div.kl_mean, "top1": div.top1_agreement, "within_budget": div.kl_mean <= self.kl_budget})
        return out

    def fit(self, lab, vector: SteeringVector) -> "SearchResult":
        baseline = float(self.metric(lab))
        rows = self.rows(lab, vector)
        return SearchResult([], rows, baseline, choose(rows, self.maximize), {",".join(vector.sites): vector},
                            self.kl_budget)


@dataclass
class LayerSearch:
    """Rank layers by held-out class separation, then sweep alpha at the best `top_layers` of them.

    Separation and steerability need not peak at the same layer (on SmolLM2 sentiment they do
    not, see docs/steering.md): `sweep_sites` sweeps chosen sites instead.
    """

    metric: Callable[[Any], float] | None = None
    estimator: Estimator = field(default_factory=lambda: DiffMean(progress=False))
    sites: str | Sequence[str] = "blocks.*.resid_post"
    top_layers: int = 3
    sweep_sites: str | Sequence[str] | None = None  # sweep these instead of the top layers
    test_fraction: float = 0.25
    seed: int = 0
    alphas: Sequence[float] = (1.0, 2.0, 4.0, 8.0)
    kl_budget: float = 0.1
    tokens: Positions = "all"
    corpus: str = "austen:test"
    kl_tokens: int = 1024
    maximize: bool = True
    progress: bool = True

    def fit(self, lab, positive: ContrastivePairs | Sequence[str], negative: Sequence[str] | None = None) -> "SearchResult":
        pos_texts, neg_texts, data = contrastive_texts(lab, positive, negative)
        names = lab.sites(self.sites)
        if any(len(lab.site(n).shape) != 1 for n in names):
            raise ActlabError("layer search needs sites with one vector per token (resid_*, attn.in, mlp.out, ...)")
        acts, _ = read_activations(lab, pos_texts + neg_texts, names, self.estimator.read,
                                   self.estimator.batch_size, self.progress)
        n = len(pos_texts)
        pos_train, pos_test = _split(n, self.test_fraction, self.seed)
        neg_train, neg_test = _split(len(neg_texts), self.test_fraction, self.seed)
        if self.estimator.paired:
            neg_train, neg_test = pos_train, pos_test
        layers, vectors = [], {}
        for site in names:
            pos, neg = acts[site][:n], acts[site][n:]
            direction = self.estimator.direction(pos[pos_train], neg[neg_train])
            gap, accuracy = separation(pos[pos_test], neg[neg_test], direction)
            layers.append({"site": site, "separation": gap, "accuracy": accuracy, "norm": float(direction.norm())})
            full = self.estimator.direction(pos, neg)  # the vector the sweep uses: all pairs
            vectors[site] = SteeringVector({site: full}, lab.fingerprint.to_dict(), type(self.estimator).__name__,
                                           {"read": self.estimator.read}, data)
        layers.sort(key=lambda r: -r["separation"])
        if self.metric is None:
            return SearchResult(layers, [], None, {"site": layers[0]["site"], "alpha": None}, vectors, self.kl_budget)
        sweep = AlphaSweep(self.metric, self.alphas, self.kl_budget, self.tokens, self.corpus, self.kl_tokens,
                           maximize=self.maximize, progress=self.progress)
        baseline = float(self.metric(lab))
        rows = []
        chosen_sites = lab.sites(self.sweep_sites) if self.sweep_sites is not None \
            else [r["site"] for r in layers[:self.top_layers]]
        for site in chosen_sites:
            if site not in vectors:
                raise ActlabError(f"sweep site {site} is not among the searched sites")
            rows.extend(sweep.rows(lab, vectors[site]))
        return SearchResult(layers, rows, baseline, choose(rows, self.maximize), vectors, self.kl_budget)


def _split(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if n < 4:
        raise ActlabError(f"layer search needs at least 4 prompts per side for a held-out split, got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, min(n - 2, round(n * test_fraction)))
    return order[n_test:], order[:n_test]


def choose(rows: list[dict[str, Any]], maximize: bool = True) -> dict[str, Any]:
    """The sweep row with the best metric (highest, or lowest) among those within the KL budget."""
    ok = [r for r in rows if r["within_budget"]]
    if not ok:
        return {"site": None, "alpha": None, "reason": "no setting stays within the KL budget"}
    best = (max if maximize else min)(ok, key=lambda r: r["metric"])
    return {"site": best["site"], "alpha": best["alpha"], "metric": best["metric"], "kl": best["kl"]}


@dataclass
class SearchResult:
    """Layer ranking, sweep rows, the unsteered metric and the chosen (site, alpha)."""

    layers: list[dict[str, Any]]
    sweep: list[dict[str, Any]]
    baseline: float | None
    chosen: dict[str, Any]
    vectors: dict[str, SteeringVector]
    kl_budget: float

    @property
    def site(self) -> str | None:
        return self.chosen["site"]

    @property
    def alpha(self) -> float | None:
        return self.chosen["alpha"]

    @property
    def vector(self) -> SteeringVector:
        if self.site is None:
            raise ActlabError(self.chosen.get("reason", "no site was chosen"))
        return self.vectors[self.site]

    def steering(self, tokens: Positions = "all"):
        """The chosen vector added with the chosen alpha (alpha 1 when only layers were ranked)."""
        return self.vector.add(self.alpha if self.alpha is not None else 1.0, tokens=tokens)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "steering_search", "layers": self.layers, "sweep": self.sweep, "baseline": self.baseline,
                "chosen": self.chosen, "kl_budget": self.kl_budget}

    def __rich__(self):
        from rich.console import Group

        layers = Table(title="layers by held-out separation", title_justify="left")
        for col in ("site", "separation", "accuracy", "norm"):
            layers.add_column(col, justify="left" if col == "site" else "right")
        for r in self.layers:
            layers.add_row(r["site"], f"{r['separation']:.2f}", f"{r['accuracy']:.3f}", f"{r['norm']:.2f}")
        parts = [layers]
        if self.sweep:
            sweep = Table(title=f"alpha sweep (unsteered metric {self.baseline:.4f}, KL budget {self.kl_budget})",
                          title_justify="left")
            for col in ("site", "alpha", "metric", "KL", "top-1", "chosen"):
                sweep.add_column(col, justify="left" if col == "site" else "right")
            for r in self.sweep:
                mark = "←" if (r["site"], r["alpha"]) == (self.site, self.alpha) else ("" if r["within_budget"] else "over")
                sweep.add_row(r["site"], f"{r['alpha']:g}", f"{r['metric']:.4f}", f"{r['kl']:.4f}", f"{r['top1']:.3f}", mark)
            parts.append(sweep)
        return Group(*parts)
