"""The cross-stream batching engine with the real detector and a b0 classifier."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.classifier import Ensemble
from detector.engine import EngineClosed, EngineError, FrameResult, InferenceEngine, SampleDropped
from detector.faces import FaceDetector
from tests.fixtures.media import TEST_ENCODER, astronaut_frame


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(device="cpu")


@pytest.fixture(scope="module")
def ensemble(fake_checkpoint: Path) -> Ensemble:
    return Ensemble.from_checkpoints([fake_checkpoint], TEST_ENCODER, torch.device("cpu"))


def test_batches_across_streams(detector: FaceDetector, ensemble: Ensemble) -> None:
    """Frames that wait while the engine is busy go together in the next batch, whatever their stream."""
    sizes: list[int] = []
    gate = threading.Event()
    original = detector.detect

    def held_detect(frames):  # hold the worker on its first batch while the others arrive
        gate.wait(30)
        return original(frames)

    detector.detect = held_detect  # type: ignore[method-assign]
    engine = InferenceEngine(detector, ensemble, max_batch=8, max_wait_ms=300, on_batch=lambda f, n, s: sizes.append(f))
    try:
        first = engine.submit("warmup", astronaut_frame(240))
        time.sleep(0.2)  # the worker has taken it
        frames = [astronaut_frame(360, shift=10 * i) for i in range(6)]
        futures = [engine.submit(f"cam{i % 3}", frame) for i, frame in enumerate(frames)]
        gate.set()
        first.result(timeout=60)
        results: list[FrameResult] = [f.result(timeout=60) for f in futures]
    finally:
        detector.detect = original  # type: ignore[method-assign]
        engine.close()
    assert sizes == [1, 6]  # one batch for three streams
    assert all(len(r.faces) == 1 for r in results)
    assert all(r.faces[0].score == pytest.approx(1 / (1 + math.exp(-6)), abs=1e-4) for r in results)
    assert results[0].faces[0].box != results[5].faces[0].box
    assert engine.stats.frames == 7 and engine.stats.faces == 7


def test_a_lone_stream_does_not_wait_for_company(detector: FaceDetector, ensemble: Ensemble) -> None:
    """Once every known stream has a frame waiting, the batch goes without sitting out max_wait_ms."""
    engine = InferenceEngine(detector, ensemble, max_batch=8, max_wait_ms=5_000)
    try:
        engine.submit("only", astronaut_frame(240)).result(timeout=60)  # warm-up
        started = time.monotonic()
        result = engine.submit("only", astronaut_frame(240, shift=5)).result(timeout=60)
    finally:
        engine.close()
    assert len(result.faces) == 1
    assert time.monotonic() - started < 4.0  # far below the 5 s it would wait for company


def test_frames_without_faces_resolve_empty(detector: FaceDetector, ensemble: Ensemble) -> None:
    engine = InferenceEngine(detector, ensemble, max_wait_ms=0)
    try:
        result = engine.submit("dark", np.zeros((240, 320, 3), dtype=np.uint8)).result(timeout=60)
    finally:
        engine.close()
    assert result.faces == [] and result.latency_s >= 0


def test_falling_behind_drops_the_oldest(detector: FaceDetector, ensemble: Ensemble) -> None:
    gate = threading.Event()
    original = detector.detect

    def slow_detect(frames):  # hold the worker on its first batch
        gate.wait(30)
        return original(frames)

    detector.detect = slow_detect  # type: ignore[method-assign]
    engine = InferenceEngine(detector, ensemble, max_batch=1, max_wait_ms=0, max_pending_per_stream=2)
    try:
        first = engine.submit("cam", astronaut_frame(240))
        time.sleep(0.2)  # the worker has taken `first`
        queued = [engine.submit("cam", astronaut_frame(240, shift=i)) for i in range(4)]
        other = engine.submit("other", astronaut_frame(240))
        assert engine.queue_depth() == 3
        gate.set()
        assert len(first.result(timeout=60).faces) == 1
        with pytest.raises(SampleDropped):
            queued[0].result(timeout=60)
        with pytest.raises(SampleDropped):
            queued[1].result(timeout=60)
        assert len(queued[3].result(timeout=60).faces) == 1
        assert len(other.result(timeout=60).faces) == 1  # the other stream lost nothing
    finally:
        detector.detect = original  # type: ignore[method-assign]
        engine.close()
    assert engine.stats.dropped == {"cam": 2}


def test_a_failing_batch_does_not_stop_the_engine(detector: FaceDetector, ensemble: Ensemble) -> None:
    engine = InferenceEngine(detector, ensemble, max_batch=4, max_wait_ms=0)
    try:
        bad = engine.submit("broken", np.zeros((10, 10), dtype=np.uint8))  # not an RGB frame
        with pytest.raises(EngineError, match="expected uint8"):
            bad.result(timeout=60)
        good = engine.submit("fine", astronaut_frame(240)).result(timeout=60)
    finally:
        engine.close()
    assert len(good.faces) == 1
    assert engine.stats.failed_batches == 1
    with pytest.raises(EngineClosed):
        engine.submit("late", astronaut_frame(240))
