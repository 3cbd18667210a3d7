"""Errors callers catch without loading the model stack (importing torch and timm takes seconds)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded into the configured classifier."""
