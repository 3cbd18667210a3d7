"""``deepfake-stream scan``: score video files offline into a DFDC submission CSV."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from tqdm import tqdm

from detector.aggregation import get_strategy
from detector.pipeline import VideoPrediction, VideoPredictor
from stream.config import DetectorConfig
from stream.models import build_detector, build_ensemble

log = logging.getLogger("deepfake_stream.scan")

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


def build_predictor(cfg: DetectorConfig) -> VideoPredictor:
    """The whole-video predictor of the config: one place, so every scan (plain or on Ray) scores alike."""
    return VideoPredictor(
        build_detector(cfg),
        build_ensemble(cfg),
        frames_per_video=cfg.frames_per_video,
        input_size=cfg.input_size,
        strategy=get_strategy(cfg.strategy),
        batch_size=cfg.batch_size,
    )


def scan(videos: Sequence[Path], cfg: DetectorConfig, out: Path, progress: bool = True) -> list[VideoPrediction]:
    """Score every video; undecodable or face-less ones get 0.5 and a warning naming file and reason."""
    predictor = build_predictor(cfg)
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
