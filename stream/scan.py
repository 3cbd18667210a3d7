"""``deepfake-stream scan``: score video files offline into a DFDC submission CSV."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from detector.build import build_predictor
from detector.config import DetectorConfig
from detector.pipeline import VideoPrediction
from detector.video import collect_videos  # noqa: F401 - moved to detector; the CLI imports it from here

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


def scan(videos: Sequence[Path], cfg: DetectorConfig, out: Path, progress: bool = True) -> list[VideoPrediction]:
    """Score every video; undecodable or face-less ones get 0.5 and a warning naming file and reason."""
    predictor = build_predictor(cfg)
    log.info("classifier: %s on %s", predictor.ensemble.label, predictor.ensemble.device)
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
    return predictions
