"""Corpora, prompt sets and the one windowing protocol used by every evaluation and harvest."""

from actlab.data.austen import fetch_austen
from actlab.data.bandit import BanditPrompts, bandit_prompts
from actlab.data.corpus import Corpus, corpus
from actlab.data.facts import Facts, Question, facts
from actlab.data.prompts import ContrastivePairs, PromptList, apply_chat, prompts
from actlab.data.statements import Statements, statements
from actlab.data.windows import Windows, token_windows

__all__ = [
    "BanditPrompts",
    "ContrastivePairs",
    "Corpus",
    "Facts",
    "PromptList",
    "Question",
    "Statements",
    "Windows",
    "apply_chat",
    "bandit_prompts",
    "corpus",
    "facts",
    "fetch_austen",
    "prompts",
    "statements",
    "token_windows",
]
