"""Architecture adapters and their registry."""

from actlab.arch import families  # noqa: F401  (registers the built-in adapters)
from actlab.arch.adapter import Adapter, adapter_for, register, supported

__all__ = ["Adapter", "adapter_for", "register", "supported"]
