"""Building the detector's parts from their config: the one place that turns settings into objects.

The live service, the demo, the offline scan and the benchmarks all build through
these functions, so an option set in ``config.yaml`` reaches every one of them.
"""

from __future__ import annotations

import torch

from detector.aggregation import get_strategy
from detector.classifier import DeepFakeClassifier, Ensemble
from detector.config import DetectorConfig, EngineConfig
from detector.engine import BatchHook, InferenceEngine
from detector.engine_pool import EnginePool
from detector.faces import FaceDetector, resolve_device
from detector.model_choice import ModelChoice, choose_model
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
        pnet_graphs=cfg.cuda_graphs,
    )


def build_ensemble(cfg: DetectorConfig, choice: ModelChoice | None = None) -> Ensemble:
    """Load the chosen checkpoints strictly (CheckpointError names the bad one); random weights only if chosen."""
    choice = choice or choose_model(cfg)
    device = resolve_device(cfg.device)
    if choice.random:
        torch.manual_seed(0)
        ensemble = Ensemble([DeepFakeClassifier(choice.encoder)], device, label=choice.label)
    else:
        ensemble = Ensemble.from_checkpoints(choice.paths, choice.encoder, device, label=choice.label)
    if cfg.compile_classifier:
        ensemble.enable_compile(choice.input_size, cfg.compile_cache_dir)
    if cfg.cuda_graphs:
        ensemble.enable_cuda_graphs(choice.input_size)
    return ensemble


def engine_devices(cfg: DetectorConfig, engine: EngineConfig) -> list[str]:
    """The devices to run an engine on: ``engine.devices``, where ``all`` means every visible GPU
    when the detector may use CUDA (``device`` auto or cuda), else ``detector.device`` alone."""
    if engine.devices != "all":
        return list(engine.devices)
    if cfg.device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [cfg.device]


def build_engine(
    cfg: DetectorConfig,
    engine: EngineConfig,
    *,
    choice: ModelChoice | None = None,
    ensemble: Ensemble | None = None,
    input_size: int | None = None,
    on_batch: BatchHook | None = None,
) -> InferenceEngine | EnginePool:
    """The live inference engine for ``choice`` (default: ``choose_model(cfg)``), one per device of
    ``engine_devices`` (several form a pool); ``ensemble``/``input_size`` replace the model outright
    (benchmarks with random weights; one device)."""
    if ensemble is not None:
        return _engine(cfg, engine, ensemble, input_size or cfg.input_size, on_batch)
    choice = choice or choose_model(cfg)
    device_cfgs = [cfg.model_copy(update={"device": device}) for device in engine_devices(cfg, engine)]
    # every model (and its CUDA graphs) first, then the engines' threads: no capture runs beside them
    ensembles = [build_ensemble(device_cfg, choice) for device_cfg in device_cfgs]
    engines = [_engine(c, engine, e, input_size or choice.input_size, on_batch) for c, e in zip(device_cfgs, ensembles, strict=True)]
    return engines[0] if len(engines) == 1 else EnginePool(engines)


def _engine(cfg: DetectorConfig, engine: EngineConfig, ensemble: Ensemble, input_size: int, on_batch: BatchHook | None) -> InferenceEngine:
    return InferenceEngine(
        build_detector(cfg),
        ensemble,
        input_size=input_size,
        max_batch=engine.max_batch,
        max_wait_ms=engine.max_wait_ms,
        max_pending_per_stream=engine.max_pending_per_stream,
        classify_batch=cfg.batch_size,
        on_batch=on_batch,
        detect_workers=engine.detect_workers if ensemble.device.type == "cuda" else 1,
        pipeline_depth=engine.pipeline_depth,
    )


def build_predictor(cfg: DetectorConfig, choice: ModelChoice | None = None) -> VideoPredictor:
    """The offline whole-video predictor (``scan``)."""
    choice = choice or choose_model(cfg)
    return VideoPredictor(
        build_detector(cfg),
        build_ensemble(cfg, choice),
        frames_per_video=cfg.frames_per_video,
        input_size=choice.input_size,
        strategy=get_strategy(cfg.strategy),
        batch_size=cfg.batch_size,
    )
