"""actlab: record, steer and compress the activations of transformer language models."""

from actlab import arch, compress, data, eval, read, steer  # noqa: A004  (al.eval mirrors the design's naming)
from actlab.engine import edits
from actlab.engine.recording import Recording
from actlab.errors import ActlabError
from actlab.lab import Lab, load
from actlab.store import harvest, open_store

__version__ = "0.1.0"
__all__ = ["ActlabError", "Lab", "Recording", "arch", "compress", "data", "edits", "eval", "harvest", "load", "open_store", "read", "steer",
           "__version__"]
