"""The record/edit engine: hooks, forward state, recordings and built-in edits."""

from actlab.engine.context import EditContext, ForwardState
from actlab.engine.engine import Engine, StopForward
from actlab.engine.recording import Recording

__all__ = ["EditContext", "Engine", "ForwardState", "Recording", "StopForward"]
