"""``deepfake-stream eval``: score a predictions CSV against DFDC labels.

Only numpy on this path: ROC AUC is computed here (the Mann-Whitney statistic with tied scores
sharing their average rank, which is what scikit-learn's ``roc_auc_score`` gives), so ``eval``
answers in about a second instead of spending seconds importing scikit-learn and SciPy.

Which model produced a predictions CSV is recorded beside it, in ``<csv>.json`` (written by
``scan``; see :class:`ModelRecord`), so ``eval`` can say so and warn loudly when the scores came
from a randomly initialised classifier.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detector.metrics import log_loss, roc_auc


class EvalInputError(ValueError):
    """A predictions or labels file that cannot be read; the message names it."""


@dataclass
class ModelRecord:
    """Which model produced a predictions CSV: the sidecar ``<csv>.json`` that ``scan`` writes next to it.

    ``model`` is a human label ("7 checkpoint(s) of tf_efficientnet_b7.ns_jft_in1k", "RANDOM B0",
    an embedded model's name); ``random_weights`` is true when the classifier was randomly
    initialised (its scores mean nothing); ``checkpoints`` names the weight files, if any.
    ``predictions_sha256`` ties the record to the CSV it describes, so a CSV rewritten by
    something else is not mislabelled by a stale record.
    """

    model: str
    random_weights: bool
    checkpoints: list[str] = field(default_factory=list)
    encoder: str | None = None
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    predictions_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sidecar_path(predictions: Path) -> Path:
    """``predictions.csv`` -> ``predictions.csv.json``."""
    return predictions.with_name(predictions.name + ".json")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_model_record(predictions: Path, record: ModelRecord) -> Path:
    """Write ``record`` beside the (already written) predictions CSV, bound to its content."""
    record.predictions_sha256 = file_sha256(predictions)
    path = sidecar_path(predictions)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record.to_dict(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_model_record(predictions: Path) -> tuple[ModelRecord | None, str | None]:
    """The sidecar of ``predictions`` and, when there is none or it cannot be used, why not."""
    path = sidecar_path(predictions)
    if not path.is_file():
        return None, f"no model record ({path.name} not found): which model produced these predictions is unknown"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        record = ModelRecord(
            model=str(data["model"]),
            random_weights=bool(data["random_weights"]),
            checkpoints=[str(c) for c in data.get("checkpoints") or []],
            encoder=data.get("encoder"),
            created=str(data.get("created", "")),
            predictions_sha256=data.get("predictions_sha256"),
        )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        return None, f"{path.name} is not a readable model record ({type(exc).__name__}: {exc}); ignored"
    if record.predictions_sha256 is not None and record.predictions_sha256 != file_sha256(predictions):
        return None, f"{path.name} describes another version of {predictions.name} (the CSV changed since it was written); ignored"
    return record, None


@dataclass
class EvalResult:
    log_loss: float
    roc_auc: float | None
    accuracy: float
    scored: int
    missing: int  # labelled videos without a prediction
    unlabelled: int  # predictions for videos with no label
    model: dict[str, Any] | None = None  # the predictions' ModelRecord, when one was found

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def _label_value(raw: str, source: Path, key: str) -> int:
    text = str(raw).strip().upper()
    if text in {"FAKE", "1", "1.0", "TRUE"}:
        return 1
    if text in {"REAL", "0", "0.0", "FALSE"}:
        return 0
    raise EvalInputError(f"{source}: label {raw!r} for {key!r} is neither REAL/FAKE nor 0/1")


def read_labels(path: Path) -> dict[str, int]:
    """``metadata.json`` (DFDC) or a CSV with ``file``/``filename`` and ``label`` columns."""
    if not path.is_file():
        raise EvalInputError(f"{path}: labels file not found")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EvalInputError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise EvalInputError(f"{path}: expected a mapping of file name to metadata")
        labels = {}
        for name, meta in data.items():
            if not isinstance(meta, dict) or "label" not in meta:
                raise EvalInputError(f"{path}: entry {name!r} has no 'label'")
            labels[name] = _label_value(meta["label"], path, name)
        return labels
    rows = _read_csv(path)
    header = rows[0] if rows else {}
    name_key = "filename" if "filename" in header else "file" if "file" in header else None
    if name_key is None or "label" not in header:
        raise EvalInputError(f"{path}: needs a 'file' or 'filename' column and a 'label' column")
    return {row[name_key]: _label_value(row["label"], path, row[name_key]) for row in rows}


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise EvalInputError(f"{path}: cannot read CSV ({exc})") from None


def read_predictions(path: Path) -> dict[str, float]:
    if not path.is_file():
        raise EvalInputError(f"{path}: predictions file not found")
    rows = _read_csv(path)
    if not rows or "filename" not in rows[0] or "label" not in rows[0]:
        raise EvalInputError(f"{path}: expected a CSV with columns filename,label")
    preds = {}
    for line, row in enumerate(rows, start=2):
        try:
            value = float(row["label"])
        except (TypeError, ValueError):
            raise EvalInputError(f"{path}:{line}: label {row['label']!r} is not a number") from None
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise EvalInputError(f"{path}:{line}: probability {value} is outside [0, 1]")
        preds[row["filename"]] = value
    return preds


def evaluate(predictions: dict[str, float], labels: dict[str, int]) -> EvalResult:
    common = sorted(set(predictions) & set(labels))
    if not common:
        raise EvalInputError("no prediction matches a labelled file name")
    y = np.array([labels[name] for name in common])
    p = np.array([predictions[name] for name in common])
    auc = roc_auc(y, p) if len(set(y.tolist())) == 2 else None
    return EvalResult(
        log_loss=log_loss(y, p),
        roc_auc=auc,
        accuracy=float(np.mean((p > 0.5) == (y == 1))),
        scored=len(common),
        missing=len(set(labels) - set(predictions)),
        unlabelled=len(set(predictions) - set(labels)),
    )
