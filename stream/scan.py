"""``deepfake-stream scan``: score video files offline into a DFDC submission CSV."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from tqdm import tqdm

from detector.build import build_predictor
from detector.config import DetectorConfig
from detector.pipeline import VideoPrediction, VideoPredictor
from stream.evaluate import ModelRecord, write_model_record

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".ts", ".flv", ".m4v", ".mpg", ".mpeg", ".wmv", ".3gp"}


def collect_videos(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, directories expanded (recursively) to their video files, sorted, de-duplicated."""
    found: dict[Path, None] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and child.suffix.lower() in VIDEO_EXTENSIONS:
                    found[child] = None
        elif path.exists():
            found[path] = None
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return list(found)


def write_predictions(predictions: Sequence[VideoPrediction], out: Path) -> None:
    """DFDC submission layout: ``filename,label`` with the fake probability as label."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "label"])
        for pred in predictions:
            writer.writerow([pred.path.name, f"{pred.score:.6f}"])
    tmp.replace(out)


def checkpoint_record(cfg: DetectorConfig) -> ModelRecord:
    """The model record of the configured checkpoints (what ``build_predictor(cfg)`` loads)."""
    names = [p.name for p in cfg.weight_paths()]
    return ModelRecord(model=f"{len(names)} checkpoint(s) of {cfg.encoder}", random_weights=False, checkpoints=names, encoder=cfg.encoder)


def scan(
    videos: Sequence[Path],
    cfg: DetectorConfig,
    out: Path,
    progress: bool = True,
    *,
    predictor: VideoPredictor | None = None,
    model: ModelRecord | None = None,
) -> list[VideoPrediction]:
    """Score every video; undecodable or face-less ones get 0.5 and a warning naming file and reason.

    Writes ``out`` and, beside it, ``<out>.json``: the record of the model that scored
    (``model``; by default the configured checkpoints).  A caller that brings its own
    ``predictor`` (random weights, an embedded model) must say what it is with ``model``.
    """
    if predictor is not None and model is None:
        raise ValueError("a predictor given to scan() needs its ModelRecord (model=...)")
    model = model or checkpoint_record(cfg)
    predictor = predictor or build_predictor(cfg)
    names = [v.name for v in videos]
    if len(set(names)) != len(names):
        log.warning("several inputs share a file name; the CSV's filename column will repeat")
    predictions = []
    for video in tqdm(videos, desc="scan", unit="video", disable=not progress):
        pred = predictor.predict(video)
        if pred.error:
            log.warning("%s scored %.1f: %s", video, pred.score, pred.error)
        predictions.append(pred)
    write_predictions(predictions, out)
    write_model_record(out, model)
    if model.random_weights:
        log.warning("%s: scored by a RANDOMLY INITIALISED classifier (%s); recorded in %s", out, model.model, out.name + ".json")
    return predictions
