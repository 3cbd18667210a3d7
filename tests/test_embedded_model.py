"""The embedded self-blended model: it loads strictly, scan and run use it when no winner checkpoint is there,
and it tells a blend forgery of a real face from the face itself."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from detector.classifier import load_classifier, read_metadata
from detector.model_choice import EMBEDDED_CHECKPOINT
from stream.app import App
from stream.cli import main
from stream.config import parse_config
from stream.demo_media import astronaut_forgery_frame, astronaut_frame, write_video

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def no_winner_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine where `weights download` never ran: the default weights directory is empty."""
    empty = tmp_path / "weights"
    monkeypatch.setenv("DEEPFAKE_STREAM_WEIGHTS", str(empty))
    return empty


def test_shipped_checkpoint_is_small_and_loads_strictly() -> None:
    assert EMBEDDED_CHECKPOINT.is_file() and EMBEDDED_CHECKPOINT.stat().st_size < 20 * 1024 * 1024
    meta = read_metadata(EMBEDDED_CHECKPOINT)
    assert meta["encoder"] == "tf_efficientnet_lite0" and meta["input_size"] == 256
    model = load_classifier(EMBEDDED_CHECKPOINT, str(meta["encoder"]))  # strict=True inside, names any mismatch
    assert sum(p.numel() for p in model.parameters()) > 4_000_000  # the whole Lite0, ImageNet head included
    assert (EMBEDDED_CHECKPOINT.parent / "MODEL_CARD.md").is_file() and (EMBEDDED_CHECKPOINT.parent / "TRAINING_DATA.csv").is_file()


def test_scan_without_weights_runs_the_embedded_model_and_separates_a_blend_forgery(no_winner_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    real = write_video(tmp_path / "real.mp4", [astronaut_frame(360, shift=s) for s in range(0, 40, 5)], fps=4)
    forged = write_video(tmp_path / "forged.mp4", [astronaut_forgery_frame(360, shift=s) for s in range(0, 40, 5)], fps=4)
    out = tmp_path / "predictions.csv"
    assert main(["scan", str(real), str(forged), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    scores = dict(line.split(",") for line in out.read_text().splitlines()[1:])
    record = json.loads(out.with_name(out.name + ".json").read_text())
    print(f"observed: {scores}; {record['model']}")
    assert record["model"].startswith("embedded self-blended tf_efficientnet_lite0") and record["random_weights"] is False
    assert float(scores["forged.mp4"]) > 0.8 > 0.5 > float(scores["real.mp4"])


async def test_run_without_weights_serves_with_the_embedded_model(no_winner_weights: Path, astronaut_clip: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    cfg = parse_config(
        {"detector": {"device": "cpu"}, "streams": [{"name": "cam", "url": str(astronaut_clip), "loop": True, "realtime": True}],
         "mqtt": {"enabled": False}, "http": {"enabled": False}},
        "test",
    )  # fmt: skip
    app = App(cfg)
    service = await app.start()
    try:
        assert app.engine is not None and app.engine.input_size == 256
        assert app.engine.ensemble.label.startswith("embedded self-blended")
        for _ in range(300):
            if service.streams["cam"].pipeline.stats.samples_scored:
                break
            await asyncio.sleep(0.1)
        assert service.streams["cam"].pipeline.stats.samples_scored >= 1
    finally:
        await app.stop()
    assert any("classifier: embedded self-blended" in r.getMessage() and "weights download" in r.getMessage() for r in caplog.records)


def test_demo_without_any_model_says_its_random_weights_loudly(no_winner_weights: Path, caplog: pytest.LogCaptureFixture) -> None:
    from stream.demo import build_engine

    cfg = parse_config({"detector": {"device": "cpu", "fallback": "none"}}, "test")
    engine, label = build_engine(cfg, download=False)
    try:
        assert "RANDOM" in label and engine.input_size == 160  # a random B0, shrunk so two cores keep up
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("RANDOMLY INITIALISED" in w and "deepfake-stream weights download" in w for w in warnings)
    finally:
        engine.close()
