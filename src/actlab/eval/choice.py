"""Multiple-choice accuracy from log-likelihoods, and greedy answer accuracy on cloze facts.

Each option is scored by the summed log-probability of its tokens after the prompt (prompt
tokenized as the model expects, with BOS when the tokenizer adds one; the option tokenized
without special tokens and appended). Sequences are right-padded: under causal attention
padding after a token cannot change it, so no attention mask is needed and batched scores
equal one-at-a-time scores.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from actlab.data.facts import Facts, Question
from actlab.errors import ActlabError
from actlab.eval.common import edit_context, fingerprint, logits, model_dtype, progress_bar
from actlab.eval.results import MultipleChoiceResult


def _ids(lab: Any, prompt: str, continuation: str) -> tuple[list[int], int]:
    head = lab.tokenizer(prompt)["input_ids"]
    tail = lab.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not tail:
        raise ActlabError(f"the option {continuation!r} tokenizes to nothing")
    return head + tail, len(head)


def continuation_logprobs(lab: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 16,
                          progress: bool = True) -> list[float]:
    """Summed log-probability of each continuation given its prompt, for `(prompt, continuation)` pairs."""
    encoded = [_ids(lab, p, c) for p, c in pairs]
    pad = lab.pad_token_id
    scores: list[float] = []
    with torch.inference_mode(), progress_bar(len(encoded), "scoring options", progress) as advance:
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            batch = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in chunk])
            logprobs = logits(lab, batch).float().log_softmax(-1)
            for row, (ids, n_prompt) in enumerate(chunk):
                targets = torch.tensor(ids[n_prompt:])
                picked = logprobs[row, n_prompt - 1:len(ids) - 1].gather(-1, targets[:, None])
                scores.append(float(picked.sum()))
            advance(len(chunk))
    return scores


def multiple_choice(lab: Any, questions: Sequence[Question], edits: Any = None, batch_size: int = 16,
                    progress: bool = True) -> MultipleChoiceResult:
    """Accuracy of picking the highest-likelihood option of each question (ties go to the first)."""
    if not questions:
        raise ActlabError("multiple_choice needs at least one question")
    started = time.perf_counter()
    pairs = [(q.prompt, option) for q in questions for option in q.options]
    with edit_context(lab, edits):
        flat = continuation_logprobs(lab, pairs, batch_size, progress)
    correct, at = [], 0
    for q in questions:
        scores = flat[at:at + len(q.options)]
        at += len(q.options)
        correct.append(max(range(len(scores)), key=scores.__getitem__) == q.answer)
    return MultipleChoiceResult(
        accuracy=sum(correct) / len(correct), n=len(correct), correct=correct,
        protocol={"questions": len(questions), "options": sorted({len(q.options) for q in questions}),
                  "scoring": "sum of option-token log-probabilities", "chance": _chance(questions)},
        fingerprint=fingerprint(lab), dtype=model_dtype(lab), seconds=time.perf_counter() - started,
        edits=None if edits is None else repr(edits)[:200])


def _chance(questions: Sequence[Question]) -> float:
    return sum(1 / len(q.options) for q in questions) / len(questions)


def answer_accuracy(lab: Any, facts: Facts, edits: Any = None, batch_size: int = 16,
                    progress: bool = True) -> MultipleChoiceResult:
    """Fraction of facts whose greedy next token is the first token of the answer."""
    started = time.perf_counter()
    first = [lab.tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in facts.answers]
    correct: list[bool] = []
    with torch.inference_mode(), edit_context(lab, edits), \
            progress_bar(len(facts), "answering", progress) as advance:
        for start in range(0, len(facts), batch_size):
            prompts = facts.prompts[start:start + batch_size]
            out = lab.forward(prompts)  # left padding: the last position is each prompt's last token
            predicted = out[:, -1].argmax(-1).tolist()
            correct += [p == t for p, t in zip(predicted, first[start:start + batch_size])]
            advance(len(prompts))
    return MultipleChoiceResult(
        accuracy=sum(correct) / len(correct), n=len(correct), correct=correct,
        protocol={"facts": len(facts), "relation": facts.relation,
                  "scoring": "greedy next token == first answer token", "chance": 0.0},
        fingerprint=fingerprint(lab), dtype=model_dtype(lab), seconds=time.perf_counter() - started,
        edits=None if edits is None else repr(edits)[:200])
