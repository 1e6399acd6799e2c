"""Conditional activation steering: steer only the sequences whose prompt matches a condition.

After Lee et al., "Programming Refusal with Conditional Activation Steering" (CAST, arXiv
2409.05907; IBM's activation-steering library). A condition direction c is fitted at one site
on prompts where the condition holds (positive) or not (negative); a prompt's score is the
projection of its mean prompt activation, centred on the midpoint of the two class means, on
unit(c). The threshold (and the side) is chosen by F1 on a held-out split. At run time the
decision is made per sequence of the batch during the prefill and kept for its decoding steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from actlab.artifacts import load_artifact, save_artifact
from actlab.data.prompts import ContrastivePairs
from actlab.engine.context import Positions
from actlab.errors import ActlabError
from actlab.steer.extract import contrastive_texts
from actlab.steer.gating import GatedAdd, SequenceGate
from actlab.engine.reading import read_activations
from actlab.steer.vector import SteeringVector

KIND = "conditional_steering"


def best_f1_threshold(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of `score > threshold` over all midpoints between sorted scores."""
    s = scores.double().sort().values
    candidates = torch.cat([s[:1] - 1, (s[1:] + s[:-1]) / 2, s[-1:] + 1])
    best = (float(candidates[0]), -1.0)
    y = labels.bool()
    for t in candidates:
        pred = scores.double() > t
        tp = float((pred & y).sum())
        f1 = 2 * tp / max(float(pred.sum()) + float(y.sum()), 1e-12)
        if f1 > best[1]:
            best = (float(t), f1)
    return best


@dataclass
class ConditionalSteering:
    """Estimator: `fit(lab, condition_pairs, behaviour=vec, alpha=...)` → `ConditionalVector`."""

    condition_site: str = "blocks.6.resid_post"
    test_fraction: float = 0.3
    seed: int = 0
    batch_size: int = 16
    progress: bool = True

    def fit(self, lab, positive: ContrastivePairs | Sequence[str], negative: Sequence[str] | None = None, *,
            behaviour: SteeringVector, alpha: float = 1.0) -> "ConditionalVector":
        behaviour.check(lab)
        pos_texts, neg_texts, data = contrastive_texts(lab, positive, negative)
        site = lab.sites(self.condition_site)
        if len(site) != 1:
            raise ActlabError(f"the condition lives at one site; {self.condition_site!r} names {len(site)}")
        site = site[0]
        acts, _ = read_activations(lab, pos_texts + neg_texts, site, "mean", self.batch_size, self.progress)
        x = acts[site]
        y = torch.cat([torch.ones(len(pos_texts)), torch.zeros(len(neg_texts))])
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed))
        n_test = max(2, round(len(y) * self.test_fraction))
        test, train = order[:n_test], order[n_test:]
        if y[train].sum() == 0 or y[train].sum() == len(train):
            raise ActlabError("the training split has only one class: give more prompts of each kind")
        pos_mean, neg_mean = x[train][y[train] == 1].mean(0), x[train][y[train] == 0].mean(0)
        direction = pos_mean - neg_mean
        center = (pos_mean + neg_mean) / 2
        scores = (x - center) @ (direction / direction.norm())
        threshold, f1 = best_f1_threshold(scores[test], y[test])
        return ConditionalVector(direction, center, threshold, site, behaviour, alpha, lab.fingerprint.to_dict(),
                                 {"held_out_f1": f1, "held_out": int(n_test), "seed": self.seed}, data)


class ConditionalVector:
    """Artifact: condition direction, centre and threshold at one site, plus the behaviour vector."""

    def __init__(self, direction: torch.Tensor, center: torch.Tensor, threshold: float, site: str,
                 behaviour: SteeringVector, alpha: float, fingerprint: dict | None, stats: dict[str, Any],
                 data: dict[str, Any]):
        self.direction, self.center, self.threshold, self.site = direction.float(), center.float(), threshold, site
        self.behaviour, self.alpha, self.fingerprint, self.stats, self.data = behaviour, alpha, fingerprint, stats, data

    def scores(self, activations: torch.Tensor) -> torch.Tensor:
        """Condition scores of `[n, d]` mean prompt activations (score > threshold ⇒ steer)."""
        u = self.direction / self.direction.norm()
        return (activations.float() - self.center.to(activations.device)) @ u.to(activations.device)

    def decide(self, activations: torch.Tensor) -> torch.Tensor:
        """[n, 1] float: 1 where the condition holds."""
        return (self.scores(activations) > self.threshold).float()[:, None]

    def steering(self, alpha: float | None = None, tokens: Positions = "all") -> "ConditionalEdits":
        return ConditionalEdits(self, self.alpha if alpha is None else alpha, tokens)

    def edits(self, lab) -> list[tuple[str, Any]]:
        return self.steering().edits(lab)

    def save(self, path: str | Path) -> Path:
        tensors = {"condition.direction": self.direction, "condition.center": self.center}
        tensors.update({f"behaviour.{s}": d for s, d in self.behaviour.directions.items()})
        meta = {"fingerprint": self.fingerprint, "site": self.site, "threshold": self.threshold, "alpha": self.alpha,
                "behaviour_sites": self.behaviour.sites, "behaviour_method": self.behaviour.method,
                "stats": self.stats, "data": self.data}
        return save_artifact(path, KIND, tensors, meta)

    @classmethod
    def load(cls, path: str | Path) -> "ConditionalVector":
        t, meta = load_artifact(path, KIND)
        behaviour = SteeringVector({s: t[f"behaviour.{s}"] for s in meta["behaviour_sites"]}, meta["fingerprint"],
                                   meta["behaviour_method"])
        return cls(t["condition.direction"], t["condition.center"], meta["threshold"], meta["site"], behaviour,
                   meta["alpha"], meta["fingerprint"], meta["stats"], meta["data"])


class ConditionalEdits:
    """A gate reader at the condition site and gated additions of the behaviour vector."""

    def __init__(self, vector: ConditionalVector, alpha: float, tokens: Positions):
        self.vector, self.alpha, self.tokens = vector, alpha, tokens

    def edits(self, lab) -> list[tuple[str, Any]]:
        cv = self.vector
        cv.behaviour.check(lab)
        order = lab.site(cv.site).order
        if any(lab.site(s).order < order for s in cv.behaviour.sites):
            raise ActlabError(f"the condition site {cv.site} must come before every steered site")
        gate = SequenceGate(cv.decide, [cv.site], reduce="mean")
        pairs: list[tuple[str, Any]] = gate.readers()
        pairs += [(s, GatedAdd(direction=self.alpha * d, gate=gate, column=0, positions=self.tokens))
                  for s, d in cv.behaviour.directions.items()]
        return pairs

    def describe(self) -> dict:
        return {"method": "ConditionalSteering", "alpha": self.alpha, "tokens": repr(self.tokens),
                "condition_site": self.vector.site, "threshold": self.vector.threshold,
                "behaviour_sites": self.vector.behaviour.sites}
