"""Loading: embedded models, local HF folders, .gguf files and hub ids."""

from actlab.models.embedded import EMBEDDED, EmbeddedModel, fetch_model
from actlab.models.fingerprint import Fingerprint
from actlab.models.loading import load_model

__all__ = ["EMBEDDED", "EmbeddedModel", "Fingerprint", "fetch_model", "load_model"]
