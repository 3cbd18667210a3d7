"""Building the face detector and classifier ensemble from the detector config."""

from __future__ import annotations

from pathlib import Path

from detector.classifier import Ensemble
from detector.faces import FaceDetector, resolve_device
from stream.config import DetectorConfig


def build_detector(cfg: DetectorConfig) -> FaceDetector:
    return FaceDetector(
        device=cfg.device,
        thresholds=cfg.thresholds,
        min_face_size=cfg.min_face_size,
        rescale=cfg.rescale,
        gpu_resize=cfg.gpu_resize,
        fast_mtcnn=cfg.fast_mtcnn,
    )


def build_ensemble(cfg: DetectorConfig, base: Path | None = None) -> Ensemble:
    """Load every configured checkpoint strictly (CheckpointError names the bad one)."""
    ensemble = Ensemble.from_checkpoints(cfg.weight_paths(base), cfg.encoder, resolve_device(cfg.device))
    if cfg.cuda_graphs:
        ensemble.enable_cuda_graphs(cfg.input_size)
    return ensemble
