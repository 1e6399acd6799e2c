"""Relation-specific neurons: Liu et al., "On Relation-Specific Neurons in Large Language Models"
(arXiv 2502.17355, EMNLP 2025).

Every MLP neuron (a channel of `blocks.{i}.mlp.act`) is read as a detector of a relation: its
activation at the last prompt token is the score, the prompts of relation r are the positives and
the prompts of the other relations the negatives. The neuron's *expertise* for r is the average
precision (AP) of that ranking, the statistic the paper takes from Suau et al., "Self-conditioning
Pre-Trained Language Models" (arXiv 2110.02802). The `top` neurons by AP are r's neurons (equal
APs, often several perfect 1.0 detectors, are ordered by the standardized mean difference);
deactivating them sets their activation to zero (`actlab.engine.edits.zero_neurons`) at every token.

```python
data = {r: al.data.facts(r).split("train") for r in ("capital", "continent", "currency", "city_country")}
found = al.read.RelationNeurons(top=200).fit(lab, data)
with lab.edit(found.deactivate("capital")):
    lab.generate("The capital of France is")
table = al.read.relation_ablation(lab, found, {r: al.data.facts(r).split("test") for r in data})
```
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from rich.table import Table

from actlab.artifacts import load_artifact, save_artifact
from actlab.data.facts import Facts
from actlab.engine.edits import zero_neurons
from actlab.engine.reading import read_activations
from actlab.errors import ActlabError, did_you_mean
from actlab.eval.choice import answer_accuracy, multiple_choice
from actlab.eval.common import fingerprint, model_dtype, progress_bar
from actlab.eval.results import Result

KIND = "relation_neurons"
METRICS = ("answer", "choice")


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AP of each column of `scores` `[n, k]` at ranking the positives of `labels` `[n]` first.

    scikit-learn's `average_precision_score`: Σ_k (R_k − R_{k−1}) P_k over the distinct scores
    in descending order, tied scores forming one threshold.
    """
    labels = labels.bool()
    if scores.dim() != 2 or labels.shape != scores.shape[:1]:
        raise ActlabError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} do not fit: need [n, k] and [n]")
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.numel():
        raise ActlabError("average precision needs both positive and negative examples")
    ordered, order = scores.float().sort(dim=0, descending=True)
    hits = labels[order].double()
    tp = hits.cumsum(0)
    rank = torch.arange(1, scores.shape[0] + 1, dtype=torch.float64)[:, None]
    last_of_tie = torch.ones_like(ordered, dtype=torch.bool)
    last_of_tie[:-1] = ordered[:-1] != ordered[1:]
    tp_at = torch.where(last_of_tie, tp, torch.zeros_like(tp))
    previous = torch.cat([torch.zeros_like(tp[:1]), tp_at.cummax(0).values[:-1]])
    gain = torch.where(last_of_tie, (tp - previous) * tp / rank, torch.zeros_like(tp))
    return (gain.sum(0) / n_pos).float()


@dataclass
class NeuronAblation:
    """Neurons to zero, `{layer: [indices]}`; `lab.edit(ablation)` applies it (checked against the lab)."""

    neurons: dict[int, list[int]]
    label: str
    fingerprint: dict | None = None

    def __len__(self) -> int:
        return sum(len(v) for v in self.neurons.values())

    def edits(self, lab: Any) -> dict[str, Any]:
        if self.fingerprint is not None and not lab.fingerprint.matches(self.fingerprint):
            raise ActlabError(f"these neurons were found in {self.fingerprint['name']}, not in {lab.name}")
        out = {}
        for layer, indices in self.neurons.items():
            site = f"blocks.{layer}.mlp.act"
            width = lab.site(site).shape[0]
            if indices and max(indices) >= width:
                raise ActlabError(f"neuron {max(indices)} does not exist in {site} (width {width})")
            out[site] = zero_neurons(indices)
        return out

    def describe(self) -> dict[str, Any]:
        return {"edit": "zero_neurons", "label": self.label, "neurons": len(self)}


@dataclass
class RelationNeuronSet:
    """The artifact: per relation, its neurons as `[top, 2]` (layer, index) rows and their AP."""

    neurons: dict[str, torch.Tensor]
    scores: dict[str, torch.Tensor]
    d_mlp: int
    fingerprint: dict | None = None
    params: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def relations(self) -> list[str]:
        return list(self.neurons)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{r}: {len(n)}" for r, n in self.neurons.items())
        return f"RelationNeuronSet({sizes})"

    def _rows(self, relation: str) -> torch.Tensor:
        if relation not in self.neurons:
            raise ActlabError(f"no neurons for relation {relation!r}{did_you_mean(relation, self.neurons)}; "
                              f"have {', '.join(self.neurons)}")
        return self.neurons[relation]

    def head(self, n: int) -> RelationNeuronSet:
        """The first `n` neurons of every relation (they are sorted by AP, best first)."""
        if not 1 <= n <= min(len(v) for v in self.neurons.values()):
            raise ActlabError(f"head needs 1 <= n <= {min(len(v) for v in self.neurons.values())}, got {n}")
        return RelationNeuronSet({r: v[:n] for r, v in self.neurons.items()}, {r: v[:n] for r, v in self.scores.items()},
                                 self.d_mlp, self.fingerprint, {**self.params, "top": n}, self.data)

    def deactivate(self, relation: str) -> NeuronAblation:
        """Zero the neurons of `relation` (as edits on `blocks.{i}.mlp.act`)."""
        return NeuronAblation(_by_layer(self._rows(relation)), relation, self.fingerprint)

    def random_control(self, relation: str, seed: int = 0) -> NeuronAblation:
        """As many random neurons per layer as `relation` has there, none of them `relation`'s own."""
        rng = random.Random(seed)
        control = {}
        for layer, own in _by_layer(self._rows(relation)).items():
            pool = sorted(set(range(self.d_mlp)) - set(own))
            control[layer] = sorted(rng.sample(pool, len(own)))
        return NeuronAblation(control, f"random control for {relation} (seed {seed})", self.fingerprint)

    def overlap(self, a: str, b: str) -> int:
        """How many neurons relations `a` and `b` share."""
        rows_a = {tuple(r) for r in self._rows(a).tolist()}
        return len(rows_a & {tuple(r) for r in self._rows(b).tolist()})

    def save(self, path: str | Path) -> Path:
        tensors = {f"neurons.{r}": n for r, n in self.neurons.items()}
        tensors |= {f"scores.{r}": s for r, s in self.scores.items()}
        meta = {"fingerprint": self.fingerprint, "relations": self.relations, "d_mlp": self.d_mlp,
                "method": "RelationNeurons", "params": self.params, "data": self.data}
        return save_artifact(path, KIND, tensors, meta)

    @classmethod
    def load(cls, path: str | Path) -> RelationNeuronSet:
        tensors, meta = load_artifact(path, KIND)
        missing = [r for r in meta["relations"] if f"neurons.{r}" not in tensors or f"scores.{r}" not in tensors]
        if missing:
            raise ActlabError(f"'{path}' lacks the tensors of {missing}")
        return cls({r: tensors[f"neurons.{r}"] for r in meta["relations"]},
                   {r: tensors[f"scores.{r}"] for r in meta["relations"]}, meta["d_mlp"],
                   meta.get("fingerprint"), meta.get("params", {}), meta.get("data", {}))


def _effect_size(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """(mean positive − mean negative) / pooled standard deviation, per neuron."""
    pooled = ((positive.var(0, correction=0) + negative.var(0, correction=0)) / 2).sqrt().clamp_min(1e-6)
    return (positive.mean(0) - negative.mean(0)) / pooled


def _by_layer(rows: torch.Tensor) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, index in rows.tolist():
        out.setdefault(layer, []).append(index)
    return {layer: sorted(v) for layer, v in sorted(out.items())}


def _prompts(data: Facts | Sequence[str]) -> list[str]:
    prompts = data.prompts if isinstance(data, Facts) else [data] if isinstance(data, str) else list(data)
    if not prompts:
        raise ActlabError("a relation has no prompts")
    return prompts


@dataclass
class RelationNeurons:
    """Estimator: `fit(lab, {relation: facts or prompts})` → `RelationNeuronSet` (top neurons by AP)."""

    top: int = 100
    batch_size: int = 16
    progress: bool = True

    def fit(self, lab: Any, data: Mapping[str, Facts | Sequence[str]]) -> RelationNeuronSet:
        """Record `mlp.act` at the last token of every relation's prompts, then select by AP."""
        prompts = {r: _prompts(d) for r, d in data.items()}
        sites = lab.sites("blocks.*.mlp.act")
        flat = [p for ps in prompts.values() for p in ps]
        read, _ = read_activations(lab, flat, sites, "last", self.batch_size, self.progress)
        acts = torch.stack([read[s] for s in sites], dim=1)
        by_relation, at = {}, 0
        for r, ps in prompts.items():
            by_relation[r] = acts[at:at + len(ps)]
            at += len(ps)
        found = self.select(by_relation)
        found.fingerprint = lab.fingerprint.to_dict()
        found.data = {r: {"prompts": len(ps), **(d.provenance if isinstance(d, Facts) else {})}
                      for (r, ps), d in zip(prompts.items(), data.values())}
        return found

    def select(self, acts: Mapping[str, torch.Tensor]) -> RelationNeuronSet:
        """Top neurons per relation from activations `{relation: [n_prompts, n_layers, d_mlp]}`."""
        if len(acts) < 2:
            raise ActlabError("relation-specific neurons need at least two relations (the others are the negatives)")
        shapes = {tuple(a.shape[1:]) for a in acts.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ActlabError(f"activations must all be [n_prompts, n_layers, d_mlp], got shapes {sorted(shapes)}")
        n_layers, d_mlp = next(iter(shapes))
        if not 1 <= self.top <= n_layers * d_mlp:
            raise ActlabError(f"top must be between 1 and {n_layers * d_mlp} (all neurons), got {self.top}")
        everything = torch.cat(list(acts.values())).float()
        neurons, scores = {}, {}
        for r in acts:
            labels = torch.cat([torch.full((len(a),), name == r) for name, a in acts.items()])
            ap = torch.stack([average_precision(everything[:, layer], labels) for layer in range(n_layers)]).flatten()
            # equal AP (often 1.0: perfect detectors) is broken by the standardized mean difference
            effect = _effect_size(everything[labels], everything[~labels]).flatten()
            by_effect = effect.argsort(descending=True, stable=True)
            best = by_effect[ap[by_effect].argsort(descending=True, stable=True)][:self.top]
            neurons[r] = torch.stack([best // d_mlp, best % d_mlp], dim=1)
            scores[r] = ap[best]
        return RelationNeuronSet(neurons, scores, d_mlp, params={"top": self.top, "read": "last",
                                                                 "statistic": "average precision, ties by effect size"})


@dataclass
class RelationAblationResult(Result):
    """Accuracy per relation with no neurons off, with each relation's neurons off, and with random ones off."""

    kind: ClassVar[str] = "relation_ablation"
    relations: list[str]
    metric: str
    baseline: dict[str, float]
    ablated: dict[str, dict[str, float]]
    control: dict[str, dict[str, float]]
    n_neurons: dict[str, int]
    n_facts: dict[str, int]
    protocol: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    dtype: str = ""
    seconds: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RelationAblationResult:
        return cls(**{k: v for k, v in data.items() if k != "kind"})

    def summary(self) -> dict[str, dict[str, float]]:
        """Per deactivated relation: the accuracy drop on it, the mean drop on the others, and the
        drop on it under the random control."""
        out = {}
        for r in self.ablated:
            others = [o for o in self.relations if o != r]
            out[r] = {"drop_target": self.baseline[r] - self.ablated[r][r],
                      "drop_others": sum(self.baseline[o] - self.ablated[r][o] for o in others) / max(len(others), 1),
                      "control_drop_target": self.baseline[r] - self.control[r][r] if r in self.control else float("nan")}
        return out

    def rows(self) -> list[tuple[str, str]]:
        rows = [("metric", self.metric)]
        for r, s in self.summary().items():
            rows.append((f"{r} off ({self.n_neurons[r]} neurons)",
                         f"drop on {r} {s['drop_target']:+.3f}, on others {s['drop_others']:+.3f}, "
                         f"random control {s['control_drop_target']:+.3f}"))
        return [*rows, ("model", str(self.fingerprint.get("name", "?"))), ("dtype", self.dtype),
                ("seconds", f"{self.seconds:.1f}")]

    def table(self) -> Table:
        """Accuracy on each relation's facts (columns) with each set of neurons off (rows)."""
        table = Table(title=f"accuracy ({self.metric}) with neurons deactivated", title_justify="left")
        table.add_column("deactivated")
        for r in self.relations:
            table.add_column(f"{r} ({self.n_facts[r]})", justify="right")
        table.add_row("none", *(f"{self.baseline[r]:.3f}" for r in self.relations))
        for target in self.ablated:
            table.add_row(f"{target} neurons", *(f"{self.ablated[target][r]:.3f}" for r in self.relations))
            if target in self.control:
                table.add_row(f"random ({target} count)", *(f"{self.control[target][r]:.3f}" for r in self.relations))
        return table


def relation_ablation(lab: Any, neurons: RelationNeuronSet, facts: Mapping[str, Facts], *, metric: str = "answer",
                      control: bool = True, seed: int = 0, n_options: int = 4, batch_size: int = 16,
                      progress: bool = True) -> RelationAblationResult:
    """Accuracy on every relation's facts with each relation's neurons deactivated (and a random control).

    `metric="answer"`: greedy next token == first answer token (`actlab.eval.choice.answer_accuracy`);
    `"choice"`: multiple choice among `n_options` answers of the relation by log-likelihood.
    """
    if metric not in METRICS:
        raise ActlabError(f"unknown metric {metric!r}: use {', '.join(METRICS)}")
    missing = [r for r in neurons.relations if r not in facts]
    if missing:
        raise ActlabError(f"no facts given for {missing}; the neurons are of {neurons.relations}")
    started = time.perf_counter()
    relations = list(facts)
    questions = {r: facts[r].questions(n_options=n_options, seed=seed) for r in relations} if metric == "choice" else {}

    def accuracy(edits: Any) -> dict[str, float]:
        if metric == "answer":
            return {r: answer_accuracy(lab, facts[r], edits=edits, batch_size=batch_size, progress=False).accuracy
                    for r in relations}
        return {r: multiple_choice(lab, questions[r], edits=edits, batch_size=batch_size, progress=False).accuracy
                for r in relations}

    runs = 1 + len(neurons.relations) * (2 if control else 1)
    ablated, controls = {}, {}
    with progress_bar(runs, "relation ablation", progress) as advance:
        baseline = accuracy(None)
        advance(1)
        for r in neurons.relations:
            ablated[r] = accuracy(neurons.deactivate(r))
            advance(1)
            if control:
                controls[r] = accuracy(neurons.random_control(r, seed))
                advance(1)
    return RelationAblationResult(
        relations=relations, metric=metric, baseline=baseline, ablated=ablated, control=controls,
        n_neurons={r: len(neurons.neurons[r]) for r in neurons.relations}, n_facts={r: len(facts[r]) for r in relations},
        protocol={"metric": metric, "n_options": n_options if metric == "choice" else None, "seed": seed,
                  "control": "random neurons, same count per layer, disjoint from the relation's"},
        fingerprint=fingerprint(lab), dtype=model_dtype(lab), seconds=time.perf_counter() - started)
