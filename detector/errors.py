"""Errors callers catch without loading the model stack (importing torch and timm takes seconds)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded into the configured classifier."""


class DeviceError(RuntimeError):
    """A configured device this machine does not have (``cuda`` without CUDA, ``cuda:3`` on a two-GPU box)."""
