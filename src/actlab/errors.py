"""User-facing errors. The CLI turns an `ActlabError` into one line and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ActlabError(ValueError):
    """Bad input from a user: an unknown model, site, corpus or option. Carries a one-line message."""


def did_you_mean(name: str, options: Iterable[str], n: int = 3) -> str:
    """A ' (did you mean: a, b?)' suffix naming the closest valid options, or '' if none are close."""
    options = list(options)
    close = difflib.get_close_matches(name, options, n=n, cutoff=0.4)
    if not close:
        return ""
    return " (did you mean: " + ", ".join(close) + "?)"
