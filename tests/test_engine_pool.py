"""Several engines (one per GPU in production; CPU engines here), out-of-memory splitting, decoder choice."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.build import engine_devices
from detector.classifier import Ensemble
from detector.config import DetectorConfig, EngineConfig
from detector.engine import InferenceEngine
from detector.engine_pool import EnginePool
from detector.faces import FaceDetector
from stream.sources.config import StreamConfig
from stream.sources.factory import nvdec_gpu, open_source
from tests.fixtures.media import TEST_ENCODER, astronaut_frame


@pytest.fixture(scope="module")
def parts(checkpoint: Path) -> tuple[FaceDetector, Ensemble]:
    return FaceDetector(device="cpu"), Ensemble.from_checkpoints([checkpoint], TEST_ENCODER, torch.device("cpu"))


def test_streams_are_spread_over_the_engines_and_stay_put(parts: tuple[FaceDetector, Ensemble]) -> None:
    detector, ensemble = parts
    pool = EnginePool([InferenceEngine(detector, ensemble, max_wait_ms=0) for _ in range(2)])
    try:
        futures = [pool.submit(f"cam{i}", astronaut_frame(240, shift=i)) for i in range(6)]
        assert all(len(f.result(timeout=120).faces) == 1 for f in futures)
        placement = [pool.place(f"cam{i}") for i in range(6)]
        assert {id(e) for e in placement} == {id(e) for e in pool.engines}
        assert sum(e is pool.engines[0] for e in placement) == 3  # three streams each
        assert pool.place("cam0") is placement[0]  # a stream keeps its engine
        assert pool.stats.frames == 6 and sum(e.stats.frames for e in pool.engines) == 6
        pool.forget("cam0")
        assert pool.place("newcomer") is placement[0]  # the freed place is taken first
    finally:
        pool.close()


def test_out_of_memory_halves_the_batch_and_nothing_fails(parts: tuple[FaceDetector, Ensemble], monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated on the CPU (a real CUDA OOM is covered on the GPU machine by tests/test_gpu_pipeline.py)."""
    detector, ensemble = parts
    original = detector.detect

    def detect_at_most_two(frames):  # type: ignore[no-untyped-def]
        if len(frames) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return original(frames)

    monkeypatch.setattr(detector, "detect", detect_at_most_two)
    engine = InferenceEngine(detector, ensemble, max_batch=8, max_wait_ms=2_000)
    try:
        futures = [engine.submit(f"s{i}", astronaut_frame(240, shift=i)) for i in range(8)]
        results = [f.result(timeout=120) for f in futures]
    finally:
        engine.close()
    assert all(len(r.faces) == 1 for r in results)
    assert engine.stats.oom_splits >= 1 and engine.stats.failed_batches == 0


def test_engine_devices() -> None:
    assert engine_devices(DetectorConfig(device="cpu"), EngineConfig()) == ["cpu"]
    assert engine_devices(DetectorConfig(), EngineConfig(devices=["cuda:0", "cuda:1"])) == ["cuda:0", "cuda:1"]
    with pytest.raises(ValueError, match="gpu:0"):
        EngineConfig(devices=["gpu:0"])
    with pytest.raises(ValueError, match="twice"):
        EngineConfig(devices=["cuda:0", "cuda:0"])


def test_nvdec_is_only_used_on_a_gpu_engine(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    auto = StreamConfig(name="a", url="rtsp://cam/1")
    assert nvdec_gpu(auto, "cpu") is None and not caplog.records  # auto: the CPU decoder, quietly
    asked = StreamConfig(name="b", url="rtsp://cam/1", decoder="nvdec")
    assert nvdec_gpu(asked, "cpu") is None
    assert "decoder nvdec unavailable" in caplog.text and "cpu" in caplog.text
    if not torch.cuda.is_available():
        assert nvdec_gpu(asked, "cuda:0") is None


def test_nvdec_asked_without_a_gpu_still_streams(astronaut_clip: Path) -> None:
    """``decoder: nvdec`` on a machine without NVDEC decodes on the CPU instead of failing the stream."""

    async def first_frame() -> tuple[np.ndarray, str | None]:
        source = open_source(StreamConfig(name="c", url=str(astronaut_clip), decoder="nvdec"), device="cpu")
        source.start()
        frame = await source.next_frame()
        stats = source.stats
        await source.stop()
        assert frame is not None
        return frame.image, stats.decoder

    image, decoder = asyncio.run(first_frame())
    assert isinstance(image, np.ndarray) and image.shape[2] == 3
    assert decoder == "cpu"
