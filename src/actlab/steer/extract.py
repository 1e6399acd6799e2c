"""Steering-vector estimators: configure, `fit(lab, pairs, sites=...)`, get a `SteeringVector`.

Every estimator reads one activation per prompt (`read="last"`, `"mean"` or a token index) at
each site, in float32, and computes one direction per site from the positive and negative sets.
Contrastive pairs with `chat=True` (instructions) are wrapped in the model's chat template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from actlab.data.bandit import action_token_ids
from actlab.data.prompts import ContrastivePairs
from actlab.engine.reading import Read, check_read, read_activations
from actlab.errors import ActlabError
from actlab.linear import logistic_fit
from actlab.steer.vector import SteeringVector

DEFAULT_SITES = "blocks.*.resid_post"


@dataclass
class Estimator:
    """Base: reads activations of both sets, then `direction(pos, neg)` per site."""

    read: Read = "last"
    batch_size: int = 16
    normalize: bool = False  # unit-norm directions instead of each method's natural scale
    progress: bool = True

    paired = False  # whether the method needs pos[i] and neg[i] to be a pair

    def fit(self, lab, positive: ContrastivePairs | Sequence[str], negative: Sequence[str] | None = None,
            sites: str | Sequence[str] = DEFAULT_SITES) -> SteeringVector:
        check_read(self.read)
        pos_texts, neg_texts, data = contrastive_texts(lab, positive, negative)
        if self.paired and len(pos_texts) != len(neg_texts):
            raise ActlabError(f"{type(self).__name__} needs pairs: got {len(pos_texts)} positive and "
                              f"{len(neg_texts)} negative prompts")
        names = lab.sites(sites)
        acts, _ = read_activations(lab, pos_texts + neg_texts, names, self.read, self.batch_size, self.progress)
        n = len(pos_texts)
        directions = {}
        for site in names:
            d = self.direction(acts[site][:n], acts[site][n:])
            directions[site] = d / d.norm().clamp_min(1e-12) if self.normalize else d
        params = {k: v for k, v in asdict(self).items() if k != "progress"}
        return SteeringVector(directions, lab.fingerprint.to_dict(), type(self).__name__, params, data)

    def direction(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def contrastive_texts(lab, positive, negative) -> tuple[list[str], list[str], dict]:
    """The two prompt lists (chat template applied for instruction pairs) and their provenance."""
    if isinstance(positive, ContrastivePairs):
        if negative is not None:
            raise ActlabError("pass either a ContrastivePairs set or two prompt lists, not both")
        pos, neg = positive.formatted(lab.tokenizer)
        return pos, neg, {"name": positive.name, "pairs": len(positive), "chat": positive.chat,
                          **positive.provenance}
    if negative is None:
        raise ActlabError("negative prompts are missing: pass ContrastivePairs or (positive, negative)")
    pos, neg = [positive] if isinstance(positive, str) else list(positive), \
        [negative] if isinstance(negative, str) else list(negative)
    if not pos or not neg:
        raise ActlabError("both prompt sets need at least one prompt")
    return pos, neg, {"name": "prompts", "positive": len(pos), "negative": len(neg)}


def _signed_unit_scaled(u: torch.Tensor, diffs_mean: torch.Tensor) -> torch.Tensor:
    """Orient `u` along the mean class difference and scale it to that difference's projection."""
    projection = float(diffs_mean @ u)
    if projection < 0:
        u, projection = -u, -projection
    return u * projection


def _top_component(x: torch.Tensor) -> torch.Tensor:
    """First right singular vector of `x` (computed in float64)."""
    _, _, vh = torch.linalg.svd(x.double(), full_matrices=False)
    return vh[0].float()


@dataclass
class DiffMean(Estimator):
    """mean(positive) − mean(negative): contrastive activation addition.

    Rimsky et al., "Steering Llama 2 via Contrastive Activation Addition", arXiv 2312.06681.
    """

    def direction(self, pos, neg):
        return (pos.double().mean(0) - neg.double().mean(0)).float()


@dataclass
class PCADiff(Estimator):
    """First principal component of the paired differences pos[i] − neg[i].

    RepE control vectors: Zou et al., "Representation Engineering", arXiv 2310.01405; Højer et al.,
    "Improving Reasoning Performance in Large Language Models via Representation Engineering",
    arXiv 2504.19483. `center=True` subtracts the mean difference first (what repeng's `pca_diff`
    does through sklearn's PCA); the default keeps it, so the component follows the consistent
    shift. Oriented so that most pairs project positively (repeng's rule) and scaled to the mean
    |projection| of the differences (alpha=1 ≈ one typical pair along the component).
    """

    center: bool = False
    paired = True

    def direction(self, pos, neg):
        diffs = pos.double() - neg.double()
        u = _top_component(diffs - diffs.mean(0) if self.center else diffs).double()
        projections = diffs @ u
        if (projections > 0).sum() < (projections < 0).sum():  # orient by a majority vote of the pairs
            u, projections = -u, -projections
        return (u * projections.abs().mean()).float()


@dataclass
class PCACenter(Estimator):
    """First principal component of all activations, centred on their common mean (unsupervised).

    RepE's reading vector (Zou et al., arXiv 2310.01405) for unpaired stimuli; oriented from
    negative to positive and scaled to the class-mean difference's projection. repeng's
    `pca_center` centres each pair on its own mean, which makes it equal to `PCADiff()`.
    """

    def direction(self, pos, neg):
        x = torch.cat([pos, neg]).double()
        u = _top_component(x - x.mean(0)).double()
        return _signed_unit_scaled(u, pos.double().mean(0) - neg.double().mean(0)).float()


@dataclass
class ProbeDirection(Estimator):
    """Weight vector of an L2-regularised logistic-regression probe (positive = 1, negative = 0).

    Alain & Bengio, "Understanding intermediate layers using linear classifier probes",
    arXiv 1610.01644. Fitted by L-BFGS on features scaled by their within-class std; the weight is mapped back to the
    activation space, oriented and scaled to the class-mean difference's projection.
    """

    l2: float = 1e-2
    max_iter: int = 200

    def direction(self, pos, neg):
        x = torch.cat([pos, neg]).double()
        y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).double()
        mean = x.mean(0)
        std = ((pos.double().var(0, unbiased=False) + neg.double().var(0, unbiased=False)) / 2).sqrt().clamp_min(1e-6)
        w, _ = logistic_fit((x - mean) / std, y, c=1.0 / (self.l2 * len(y)), max_iter=self.max_iter)
        u = w / std
        u = u / u.norm().clamp_min(1e-12)
        return _signed_unit_scaled(u, pos.double().mean(0) - neg.double().mean(0)).float()


@dataclass
class EAST:
    """Entropy-weighted combination of centred representations: steering towards uncertain actions.

    Rahn, D'Oro & Bellemare, "Controlling Large Language Model Agents with Entropic Activation
    Steering", arXiv 2406.00244. For each prompt the action distribution is the softmax of the
    next-token logits restricted to the action tokens; its entropy H_i weighs the prompt's
    activation h_i: u = Σ H_i (h_i − h̄) / Σ H_i. We centre on the plain mean h̄ so that the
    vector is a direction, not the mean activation (the paper's average is taken over
    representations whose common part steering leaves unchanged in effect).
    """

    read: Read = "last"
    batch_size: int = 16
    progress: bool = True

    def fit(self, lab, prompts, sites: str | Sequence[str] = DEFAULT_SITES,
            actions: Sequence[str] | None = None) -> SteeringVector:
        texts = list(getattr(prompts, "texts", prompts))
        actions = list(actions if actions is not None else getattr(prompts, "actions", []))
        if len(actions) < 2:
            raise ActlabError("EAST needs at least two action strings (e.g. [' A', ' B'])")
        ids = action_token_ids(lab.tokenizer, actions, after=texts[0])
        names = lab.sites(sites)
        acts, last_logits = read_activations(lab, texts, names, self.read, self.batch_size, self.progress,
                                             logits_at_last=True)
        h = action_entropy(last_logits, ids)
        weights = h / h.sum().clamp_min(1e-12)
        directions = {s: (weights[:, None].double() * (a.double() - a.double().mean(0))).sum(0).float()
                      for s, a in acts.items()}
        data = {"prompts": len(texts), "actions": actions, "mean_action_entropy": float(h.mean()),
                **getattr(prompts, "provenance", {})}
        params = {"read": self.read, "batch_size": self.batch_size}
        return SteeringVector(directions, lab.fingerprint.to_dict(), "EAST", params, data)


def action_entropy(last_logits: torch.Tensor, action_ids: Sequence[int]) -> torch.Tensor:
    """Entropy (nats) of the softmax over the action tokens' logits, per prompt."""
    logp = torch.log_softmax(last_logits[:, list(action_ids)].double(), dim=-1)
    return -(logp.exp() * logp).sum(-1).float()
