"""What a steering edit does, always beside the unsteered baseline (`actlab steer eval`).

Measured: the behaviour metric (if given) with and without the edits; KL(unsteered ‖ steered)
and top-1 agreement on neutral text (every position of non-overlapping windows); the
perplexity that the *unsteered* model assigns to the generations (fluency of what steering
makes the model write; continuations are re-tokenized from their text); next-token entropy on
the same neutral text.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.table import Table

from actlab.eval import entropy, kl_divergence
from actlab.eval.common import describe_edits
from actlab.steer.metrics import GenerationMetric


@dataclass
class SteeringEffect:
    """Baseline and steered numbers side by side, with the protocol and the model fingerprint."""

    metric: str | None
    baseline: dict[str, float]
    steered: dict[str, float]
    kl_mean: float
    top1_agreement: float
    protocol: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    edits: Any = None
    samples: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "steering_effect", **dataclasses.asdict(self)}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def __rich__(self) -> Table:
        table = Table(title=f"steering effect on {self.fingerprint.get('name', '?')}", title_justify="left")
        table.add_column("measure")
        table.add_column("unsteered", justify="right")
        table.add_column("steered", justify="right")
        for key in self.baseline:
            table.add_row(key, f"{self.baseline[key]:.4f}", f"{self.steered[key]:.4f}")
        table.add_row("KL(unsteered ‖ steered), neutral text", "0", f"{self.kl_mean:.5f}")
        table.add_row("top-1 agreement, neutral text", "1", f"{self.top1_agreement:.4f}")
        return table


def continuation_perplexity(lab, prompts: list[str], continuations: list[str], batch_size: int = 8) -> float:
    """exp(mean NLL) of the continuation tokens given their prompts, under `lab` as it is (no edits)."""
    total, count = 0.0, 0
    tok = lab.tokenizer
    rows = []
    for p, c in zip(prompts, continuations):
        p_ids = tok(p)["input_ids"]
        c_ids = tok(c, add_special_tokens=False)["input_ids"]
        if c_ids:
            rows.append((p_ids, c_ids))
    if not rows:
        return float("nan")
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            logits = lab.forward([p + c for p, c in batch], padding_side="right")
            logp = torch.log_softmax(logits.float(), dim=-1)
            for i, (p, c) in enumerate(batch):
                targets = torch.tensor(c, device=logp.device)
                predicted = logp[i, len(p) - 1:len(p) - 1 + len(c)]
                total -= float(predicted.gather(-1, targets[:, None]).sum())
                count += len(c)
    return math.exp(total / count)


def measure_effect(lab, edits, metric=None, corpus: str = "austen:test", seq_len: int = 256,
                   max_tokens: int = 2048, batch_size: int = 4, samples: int = 3,
                   progress: bool = True) -> SteeringEffect:
    """Run `metric` (e.g. `Sentiment(prompts)`) with and without `edits` and measure their side effects."""
    baseline: dict[str, float] = {}
    steered: dict[str, float] = {}
    shown: list[dict[str, str]] = []
    if metric is not None:
        if isinstance(metric, GenerationMetric):
            fed, base_out = metric.generate(lab)
            with lab.edit(edits):
                _, steer_out = metric.generate(lab)
            baseline[metric.name] = metric.score(base_out)
            steered[metric.name] = metric.score(steer_out)
            baseline["generation perplexity"] = continuation_perplexity(lab, fed, base_out)
            steered["generation perplexity"] = continuation_perplexity(lab, fed, steer_out)
            shown = [{"prompt": p, "unsteered": b, "steered": s}
                     for p, b, s in list(zip(metric.prompts, base_out, steer_out))[:samples]]
        else:
            baseline[metric.name] = metric(lab)
            with lab.edit(edits):
                steered[metric.name] = metric(lab)
    common = {"seq_len": seq_len, "max_tokens": max_tokens, "batch_size": batch_size, "progress": progress}
    baseline["next-token entropy"] = entropy(lab, corpus, **common).entropy_mean
    steered["next-token entropy"] = entropy(lab, corpus, edits=edits, **common).entropy_mean
    divergence = kl_divergence(lab, edits, corpus, **common)
    protocol = {**divergence.protocol}
    if metric is not None:
        protocol["metric"] = {"name": metric.name, **_metric_protocol(metric)}
    return SteeringEffect(metric.name if metric is not None else None, baseline, steered, divergence.kl_mean,
                          divergence.top1_agreement, protocol, lab.fingerprint.to_dict(), describe_edits(edits), shown)


def _metric_protocol(metric) -> dict[str, Any]:
    if isinstance(metric, GenerationMetric):
        return {"prompts": len(metric.prompts), "max_new_tokens": metric.max_new_tokens, "chat": metric.chat,
                "decoding": "greedy"}
    return {}
