"""Where actlab keeps converted models and corpora: `$ACTLAB_HOME`, default `~/.cache/actlab`."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The actlab cache root, created on first use."""
    root = Path(os.environ.get("ACTLAB_HOME", Path.home() / ".cache" / "actlab")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root
