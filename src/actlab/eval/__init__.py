"""One evaluation protocol for everything: perplexity, KL divergence / top-1 agreement, entropy."""

from actlab.eval.divergence import kl_divergence
from actlab.eval.entropy import entropy
from actlab.eval.perplexity import perplexity
from actlab.eval.results import (
    DivergenceResult,
    EntropyResult,
    PerplexityResult,
    result_from_dict,
    result_from_json,
    same_protocol,
)

__all__ = [
    "DivergenceResult",
    "EntropyResult",
    "PerplexityResult",
    "entropy",
    "kl_divergence",
    "perplexity",
    "result_from_dict",
    "result_from_json",
    "same_protocol",
]
