"""Typed errors of the engine: the Celery glue maps each to a job status and a message.

``EngineError`` is the root so a task can catch every engine failure in one clause; the
subclasses tell it whether retrying could help (it never can for these).
"""

from __future__ import annotations


class EngineError(Exception):
    """Any failure the engine reports on purpose."""


class InvalidInput(EngineError):
    """Arguments or data that violate a documented precondition (bad setting, empty response...)."""


class ProvenanceMismatch(EngineError):
    """Two artifacts that must come from the same model, adapter, projection or settings do not."""


class Cancelled(EngineError):
    """A ``should_stop`` callback asked a long computation to stop; nothing partial is returned."""
