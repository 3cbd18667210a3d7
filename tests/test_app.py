"""The composition root: config options reach the parts that use them; per-stream logs carry the stream."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from pydantic import BaseModel

from detector.aggregation import mean_strategy
from stream.app import App
from stream.config import AppConfig, parse_config
from stream.logs import JsonFormatter
from stream.sources.base import StreamState
from tests.fixtures.media import TEST_ENCODER

pytestmark = pytest.mark.timeout(120)


def offline_config(checkpoint: Path, streams: list[dict], **detector: object) -> AppConfig:
    """No broker, no HTTP: only the engine and the streams."""
    return parse_config(
        {
            "detector": {"weights_dir": str(checkpoint.parent), "weights": [checkpoint.name], "encoder": TEST_ENCODER, "device": "cpu", "input_size": 96, **detector},
            "streams": streams,
            "mqtt": {"enabled": False},
            "http": {"enabled": False},
            "engine": {"max_batch": 3, "max_wait_ms": 7, "max_pending_per_stream": 5},
        },
        "test",
    )


async def test_detector_and_engine_options_reach_the_live_service(checkpoint: Path, astronaut_clip: Path) -> None:
    cfg = offline_config(
        checkpoint,
        [{"name": "cam", "url": str(astronaut_clip), "loop": True, "realtime": True}],
        strategy="mean",
        batch_size=5,
        thresholds=[0.6, 0.7, 0.75],
        min_face_size=30,
        rescale="half",
    )
    app = App(cfg)
    service = await app.start()
    try:
        engine = app.engine
        assert engine is not None
        assert engine.classify_batch == 5 and engine.input_size == 96
        assert (engine.max_batch, engine.max_wait_s, engine.max_pending_per_stream) == (3, 0.007, 5)
        assert engine.detector.rescale == "half" and engine.detector.mtcnn.min_face_size == 30
        assert list(engine.detector.mtcnn.thresholds) == [0.6, 0.7, 0.75]
        pipeline = service.streams["cam"].pipeline
        assert pipeline.running.strategy is mean_strategy
        for _ in range(200):
            if pipeline.stats.samples_scored:
                break
            await asyncio.sleep(0.1)
        assert pipeline.stats.samples_scored >= 1
    finally:
        await app.stop()
    assert service.streams["cam"].state == StreamState.STOPPED


async def test_per_stream_log_records_carry_the_stream_name(checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every record that speaks of one stream has ``stream`` set, and the JSON line shows it."""
    cfg = offline_config(checkpoint, [{"name": "gone", "url": str(tmp_path / "missing.mp4")}, {"name": "off", "url": "x.mp4", "enabled": False}])
    caplog.set_level(logging.DEBUG)
    app = App(cfg)
    service = await app.start()
    try:
        for _ in range(100):
            if service.streams["gone"].state == StreamState.FAILED:
                break
            await asyncio.sleep(0.1)
    finally:
        await app.stop()
    about = {name: [r for r in caplog.records if r.getMessage().startswith(f"stream {name}:")] for name in ("gone", "off")}
    assert len(about["gone"]) >= 3 and about["off"]  # starting, failed, the service's state changes
    for name, records in about.items():
        assert all(getattr(r, "stream", None) == name for r in records), [(r.name, r.getMessage()) for r in records]
        line = json.loads(JsonFormatter().format(records[-1]))
        assert line["stream"] == name
    assert {r.name for r in about["gone"]} >= {"stream.service", "stream.sources.url"}  # loggers named after their modules


def _undescribed(model: type[BaseModel], path: str = "") -> list[str]:
    missing = []
    for name, field in model.model_fields.items():
        if not field.description:
            missing.append(f"{path}{name}")
        annotation = field.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                missing += _undescribed(candidate, f"{path}{name}.")
    return missing


def test_every_config_field_says_what_it_does() -> None:
    assert _undescribed(AppConfig) == []
