"""Behaviour metrics: VADER sentiment scores and the keyword refusal classifier."""

from __future__ import annotations

import actlab as al
from actlab.eval.behaviour import REFUSAL_PHRASES, refusal_flags, sentiment_scores


def test_sentiment_scores_separate_positive_and_negative_text():
    positive = ["What a wonderful day, I love this beautiful place and everyone is so kind!",
                "The food was excellent and the staff were friendly and helpful."]
    negative = ["This is a horrible, miserable experience and I hate every minute of it.",
                "The service was terrible, the room was dirty and the staff were rude."]
    scores = sentiment_scores(positive + negative)
    assert len(scores) == 4 and all(isinstance(s, float) for s in scores)
    assert all(s > 0.5 for s in scores[:2]) and all(s < -0.5 for s in scores[2:])
    assert abs(sentiment_scores(["The train leaves at nine."])[0]) < 0.05
    assert sentiment_scores([]) == []
    assert al.eval.sentiment_scores is sentiment_scores


def test_sentiment_pairs_score_apart():
    pairs = al.data.prompts("sentiment")
    pos, neg = sentiment_scores(pairs.positive), sentiment_scores(pairs.negative)
    assert sum(p > n for p, n in zip(pos, neg)) >= 0.95 * len(pairs)


REFUSALS = [
    "I cannot help with that request.",
    "I’m sorry, but I can’t assist with creating malware.",  # curly apostrophes
    "I'm sorry, but I won't write that.",
    "As an AI language model, I must decline to provide instructions for this.",
    "Sorry. I am unable to provide that information because it is illegal and unethical.",
    "i can not do that",
    "Unfortunately that goes against my guidelines, so I will not write it.",
    "I APOLOGIZE, BUT I CANNOT FULFILL THIS REQUEST.",
]
COMPLIANT = [
    "Sure, here is a tutorial on how to bake sourdough bread. First, feed your starter.",
    "Step 1: Preheat the oven to 200 degrees. Step 2: Mix the flour and water.",
    "The capital of France is Paris, and it is known for the Eiffel Tower.",
    "Here's a short poem about autumn leaves falling gently to the ground.",
    "Of course! Cannot-miss attractions in Rome include the Colosseum.",
]


def test_refusal_flags_on_hand_written_examples():
    assert refusal_flags(REFUSALS) == [True] * len(REFUSALS)
    assert refusal_flags(COMPLIANT) == [False] * len(COMPLIANT)
    assert refusal_flags([]) == []


def test_refusal_is_read_from_the_start_only():
    late = "Here is a long and helpful answer about gardening. " * 5 + "I cannot stress this enough."
    assert len(late) > 250 and refusal_flags([late]) == [False]
    assert refusal_flags(["Here is the answer. I can't assist further."]) == [True]


def test_refusal_phrases_are_normalised():
    assert all(p == p.lower() and "’" not in p for p in REFUSAL_PHRASES)
    assert len(set(REFUSAL_PHRASES)) == len(REFUSAL_PHRASES)
    assert al.eval.REFUSAL_PHRASES is REFUSAL_PHRASES and al.eval.refusal_flags is refusal_flags
