"""Corpora and the one windowing protocol used by every evaluation and harvest."""

from actlab.data.austen import fetch_austen
from actlab.data.corpus import Corpus, corpus
from actlab.data.windows import Windows, token_windows

__all__ = ["Corpus", "Windows", "corpus", "fetch_austen", "token_windows"]
