"""Building the detector's parts from their config: the one place that turns settings into objects.

The live service, the demo, the offline scan and the benchmarks all build through
these functions, so an option set in ``config.yaml`` reaches every one of them.
"""

from __future__ import annotations

from pathlib import Path

from detector.aggregation import get_strategy
from detector.classifier import Ensemble
from detector.config import DetectorConfig, EngineConfig
from detector.engine import BatchHook, InferenceEngine
from detector.faces import FaceDetector, resolve_device
from detector.pipeline import VideoPredictor


def build_detector(cfg: DetectorConfig) -> FaceDetector:
    """MTCNN with the configured thresholds, rescale rule and GPU options."""
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


def build_engine(
    cfg: DetectorConfig,
    engine: EngineConfig,
    *,
    ensemble: Ensemble | None = None,
    input_size: int | None = None,
    on_batch: BatchHook | None = None,
) -> InferenceEngine:
    """The live inference worker; ``ensemble``/``input_size`` replace the configured ones (demo fallback, benchmarks)."""
    return InferenceEngine(
        build_detector(cfg),
        ensemble if ensemble is not None else build_ensemble(cfg),
        input_size=input_size or cfg.input_size,
        max_batch=engine.max_batch,
        max_wait_ms=engine.max_wait_ms,
        max_pending_per_stream=engine.max_pending_per_stream,
        classify_batch=cfg.batch_size,
        on_batch=on_batch,
    )


def build_predictor(cfg: DetectorConfig) -> VideoPredictor:
    """The offline whole-video predictor (``scan``)."""
    return VideoPredictor(
        build_detector(cfg),
        build_ensemble(cfg),
        frames_per_video=cfg.frames_per_video,
        input_size=cfg.input_size,
        strategy=get_strategy(cfg.strategy),
        batch_size=cfg.batch_size,
    )
