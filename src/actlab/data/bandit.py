"""In-context two-armed bandit prompts for entropy steering.

EAST ("Controlling Large Language Model Agents with Entropic Activation Steering", Rahn,
D'Oro, Bellemare, arXiv 2406.00244) steers how much an LLM agent explores in a bandit game
by reading the entropy of its next action. Each prompt here describes a game with buttons
A and B, lists a random history of presses and rewards, and stops right before the next
action: the next token is " A" or " B".
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from actlab.errors import ActlabError

ARMS = ("A", "B")
PROBABILITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # two distinct ones per game
INTRO = (
    "You are playing a game with two buttons, A and B. Each time you press a button you win "
    "1 point or 0 points. Each button pays out with its own fixed chance, which you are not told. "
    "Your goal is to win as many points as possible.\n\n"
)


@dataclass
class BanditPrompts:
    """Bandit prompts whose next token is an action; `histories[i]` lists (arm, reward) per past round."""

    texts: list[str]
    actions: list[str]
    histories: list[list[tuple[str, int]]]
    probabilities: list[dict[str, float]]
    provenance: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def __iter__(self) -> Iterator[str]:
        return iter(self.texts)

    def action_token_ids(self, tokenizer: Any) -> list[int]:
        """The token id of each action; an error unless each is one token, also after a prompt."""
        return action_token_ids(tokenizer, self.actions, after=self.texts[0])


def action_token_ids(tokenizer: Any, actions: Sequence[str], after: str | None = None) -> list[int]:
    """The single token id of each action string; an error unless each is one token on its own
    and (given `after`, a prompt) also when appended to that prompt."""
    ids = []
    for action in actions:
        alone = tokenizer.encode(action, add_special_tokens=False)
        ok = len(alone) == 1
        if ok and after is not None:
            prompt = tokenizer.encode(after, add_special_tokens=False)
            ok = tokenizer.encode(after + action, add_special_tokens=False) == prompt + alone
        if not ok:
            raise ActlabError(f"action {action!r} is not a single token after a prompt for this tokenizer "
                              f"(it encodes as {alone}); actions must be one token each")
        ids.append(alone[0])
    return ids


def _render(history: list[tuple[str, int]]) -> str:
    lines = [f"Round {r}: you pressed button {arm} and won {reward} point{'' if reward == 1 else 's'}."
             for r, (arm, reward) in enumerate(history, 1)]
    return INTRO + "\n".join(lines) + f"\nRound {len(history) + 1}: you press button"


def bandit_prompts(n: int = 64, seed: int = 0, history: tuple[int, int] = (4, 12)) -> BanditPrompts:
    """`n` games, each with two distinct payout chances and a history of `history[0]..history[1]`
    uniformly random presses (rewards drawn from those chances); seeded, so reproducible."""
    low, high = history
    if n < 1 or not 1 <= low <= high:
        raise ActlabError(f"need n >= 1 and 1 <= history[0] <= history[1], got n={n}, history={history}")
    rng = random.Random(seed)
    texts, histories, probabilities = [], [], []
    for _ in range(n):
        chance = dict(zip(ARMS, rng.sample(PROBABILITIES, 2)))
        past = []
        for _ in range(rng.randint(low, high)):
            arm = rng.choice(ARMS)
            past.append((arm, int(rng.random() < chance[arm])))
        texts.append(_render(past))
        histories.append(past)
        probabilities.append(chance)
    provenance = {"source": "actlab", "generator": "bandit_prompts", "paper": "arXiv:2406.00244",
                  "prompts": n, "seed": seed, "history": [low, high]}
    return BanditPrompts(texts, [" " + arm for arm in ARMS], histories, probabilities, provenance)
