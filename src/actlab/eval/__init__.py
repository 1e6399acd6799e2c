"""One evaluation protocol for everything: perplexity, KL divergence / top-1 agreement, entropy, behaviour."""

from actlab.eval.cache_perplexity import cache_perplexity
from actlab.eval.choice import answer_accuracy, continuation_logprobs, multiple_choice
from actlab.eval.behaviour import REFUSAL_PHRASES, refusal_flags, sentiment_scores
from actlab.eval.divergence import kl_divergence
from actlab.eval.entropy import entropy
from actlab.eval.perplexity import perplexity
from actlab.eval.results import (
    CachePerplexityResult,
    DivergenceResult,
    EntropyResult,
    MultipleChoiceResult,
    PerplexityResult,
    Result,
    result_from_dict,
    result_from_json,
    same_protocol,
)

__all__ = [
    "CachePerplexityResult",
    "cache_perplexity",
    "DivergenceResult",
    "EntropyResult",
    "MultipleChoiceResult",
    "answer_accuracy",
    "continuation_logprobs",
    "PerplexityResult",
    "Result",
    "REFUSAL_PHRASES",
    "entropy",
    "kl_divergence",
    "multiple_choice",
    "perplexity",
    "refusal_flags",
    "result_from_dict",
    "result_from_json",
    "same_protocol",
    "sentiment_scores",
]
