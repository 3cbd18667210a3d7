"""Whole-video prediction: frames -> faces -> classifier -> strategy (the offline path)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.aggregation import Strategy, confident_strategy
from detector.classifier import Ensemble
from detector.faces import FaceDetector, FrameFaces
from detector.preprocessing import normalize_batch, stack_crops
from detector.video import VideoReadError, read_evenly_spaced_frames

NEUTRAL_SCORE = 0.5  # what the winner submitted when it could not decide


@dataclass
class VideoPrediction:
    path: Path
    score: float
    frames: int
    faces: int
    error: str | None = None  # why the neutral score was used


def faces_to_scores(crops: list[np.ndarray], ensemble: Ensemble, input_size: int, batch_size: int = 64) -> np.ndarray:
    """Classify crops in batches; returns (n_models, n_crops) probabilities."""
    parts = []
    for start in range(0, len(crops), batch_size):
        batch = stack_crops(crops[start : start + batch_size], input_size)
        x = normalize_batch(batch, ensemble.device, ensemble.dtype, ensemble.channels_last)
        parts.append(ensemble.predict(x))
    if not parts:
        return np.zeros((len(ensemble), 0), dtype=np.float32)
    return np.concatenate(parts, axis=1)


class VideoPredictor:
    """The winner's ``predict_on_video`` with explicit errors instead of bare excepts.

    Faces per video are capped at ``4 * frames - 1`` like the reference.
    """

    def __init__(
        self,
        detector: FaceDetector,
        ensemble: Ensemble,
        frames_per_video: int = 32,
        input_size: int = 380,
        strategy: Strategy = confident_strategy,
        batch_size: int = 64,
    ) -> None:
        self.detector = detector
        self.ensemble = ensemble
        self.frames_per_video = frames_per_video
        self.input_size = input_size
        self.strategy = strategy
        self.batch_size = batch_size
        self.max_faces = 4 * frames_per_video - 1

    def crops_for(self, faces: list[FrameFaces]) -> list[np.ndarray]:
        crops = [crop for frame in faces for crop in frame.crops]
        return crops[: self.max_faces]

    def predict(self, path: str | Path) -> VideoPrediction:
        path = Path(path)
        try:
            sampled = read_evenly_spaced_frames(path, self.frames_per_video)
        except VideoReadError as exc:
            return VideoPrediction(path, NEUTRAL_SCORE, 0, 0, str(exc))
        return self.score_frames(path, sampled.frames)

    def score_frames(self, path: Path, frames: Sequence[np.ndarray]) -> VideoPrediction:
        """Faces, classifier and strategy on frames already read (a distributed scan decodes elsewhere)."""
        faces = self.detector.detect(frames)
        crops = self.crops_for(faces)
        if not crops:
            return VideoPrediction(path, NEUTRAL_SCORE, len(frames), 0, f"{path}: no face found")
        scores = faces_to_scores(crops, self.ensemble, self.input_size, self.batch_size)
        score = Ensemble.aggregate(scores, self.strategy)
        return VideoPrediction(path, score, len(frames), len(crops))
