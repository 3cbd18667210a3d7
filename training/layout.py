"""The on-disk layout of a prepared face dataset, shared by ``prepare`` (writer) and ``data`` (reader).

Kept apart from ``prepare`` so that training imports neither PyAV nor facenet-pytorch:
a GPU machine needs only torch, timm and OpenCV to train on a carried dataset.
"""

from __future__ import annotations

from pathlib import Path

INDEX_NAME = "index.jsonl"  # one JSON object per face crop; its presence marks a complete dataset
SUMMARY_NAME = "dataset.json"  # counts, options and skipped videos of the prepare run


class DatasetError(ValueError):
    """Inputs, manifest or dataset directory that cannot be used; the message names the file."""


def is_dataset(path: str | Path) -> bool:
    """A prepared dataset directory is recognised by its index."""
    return (Path(path) / INDEX_NAME).is_file()
