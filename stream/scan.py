"""``deepfake-stream scan``: score video files offline into a DFDC submission CSV."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from detector.build import build_predictor
from detector.config import DetectorConfig
from detector.model_choice import ModelChoice, choose_model
from detector.pipeline import VideoPrediction, VideoPredictor
from detector.video import collect_videos  # noqa: F401 - moved to detector; the CLI imports it from here
from stream.evaluate import ModelRecord, write_model_record

log = logging.getLogger(__name__)

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


def model_record(choice: ModelChoice) -> ModelRecord:
    """The sidecar record of what ``choose_model`` picked (configured checkpoints, the embedded model, random weights)."""
    return ModelRecord(model=choice.label, random_weights=choice.random, checkpoints=[p.name for p in choice.paths], encoder=choice.encoder)


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
    if predictor is None:
        choice = choose_model(cfg)
        predictor, model = build_predictor(cfg, choice), model or model_record(choice)
    assert model is not None
    log.info("classifier: %s on %s", model.model, predictor.ensemble.device)
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
