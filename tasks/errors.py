"""Errors a stage raises on purpose: the CLI prints them without a traceback."""

from __future__ import annotations


class StageError(RuntimeError):
    """A stage cannot proceed; the message says what was wrong and what to do."""


class GateFailed(StageError):
    """A quality gate evaluated its expectations and at least one failed (or none ran)."""
