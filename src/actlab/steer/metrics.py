"""Behaviour metrics: callables `metric(lab) -> float`, evaluated under whatever edits are active.

- `Sentiment`: mean vaderSentiment compound score of greedy continuations (−1 … 1).
- `RefusalRate`: share of greedy answers that the keyword classifier
  (`actlab.eval.behaviour.refusal_flags`) calls a refusal; prompts go through the chat template.
- `ProbeScore`: mean projection of a site's activation on a direction (e.g. a probe's weight).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from actlab.data.bandit import action_token_ids
from actlab.data.prompts import apply_chat
from actlab.errors import ActlabError
from actlab.eval.behaviour import refusal_flags, sentiment_scores
from actlab.steer.extract import action_entropy
from actlab.engine.reading import Read, read_activations


@dataclass
class GenerationMetric:
    """Greedy continuations of `prompts` (chat-templated when `chat`), scored by `score`."""

    prompts: Sequence[str]
    max_new_tokens: int = 40
    batch_size: int = 20
    chat: bool = False

    name = "generation"

    def __post_init__(self):
        self.prompts = list(getattr(self.prompts, "texts", self.prompts))
        if not self.prompts:
            raise ActlabError(f"the {self.name} metric needs prompts")

    def generate(self, lab) -> tuple[list[str], list[str]]:
        """(the prompts as fed to the model, their continuations)."""
        fed = apply_chat(lab.tokenizer, self.prompts) if self.chat else list(self.prompts)
        out = []
        for start in range(0, len(fed), self.batch_size):
            out.extend(lab.generate(fed[start:start + self.batch_size], max_new_tokens=self.max_new_tokens))
        return fed, out

    def score(self, continuations: Sequence[str]) -> float:
        raise NotImplementedError

    def __call__(self, lab) -> float:
        return self.score(self.generate(lab)[1])


@dataclass
class Sentiment(GenerationMetric):
    """Mean vader compound score of the continuations."""

    name = "sentiment"

    def score(self, continuations):
        return float(sum(sentiment_scores(continuations)) / len(continuations))


@dataclass
class RefusalRate(GenerationMetric):
    """Share of answers the keyword classifier flags as refusals."""

    chat: bool = True
    name = "refusal_rate"

    def score(self, continuations):
        flags = refusal_flags(continuations)
        return float(sum(flags) / len(flags))


@dataclass
class ProbeScore:
    """Mean of (activation at `site`) · unit(`direction`) over `prompts`, read at `read`."""

    direction: torch.Tensor
    site: str
    prompts: Sequence[str]
    read: Read = "last"

    name = "probe_score"

    def __call__(self, lab) -> float:
        acts, _ = read_activations(lab, list(self.prompts), self.site, self.read)
        u = torch.as_tensor(self.direction).float()
        return float((acts[lab.sites(self.site)[0]] @ (u / u.norm())).mean())


@dataclass
class ActionEntropy:
    """Mean entropy (nats) of the next-token distribution restricted to the action tokens (EAST's measure)."""

    prompts: Sequence[str]
    actions: Sequence[str] | None = None
    batch_size: int = 16

    name = "action_entropy"

    def __post_init__(self):
        self.actions = list(self.actions if self.actions is not None else getattr(self.prompts, "actions", []))
        self.prompts = list(getattr(self.prompts, "texts", self.prompts))

    def __call__(self, lab) -> float:
        ids = action_token_ids(lab.tokenizer, self.actions, after=self.prompts[0])
        values = []
        for start in range(0, len(self.prompts), self.batch_size):
            logits = lab.forward(self.prompts[start:start + self.batch_size])
            values.append(action_entropy(logits[:, -1], ids))
        return float(torch.cat(values).mean())
