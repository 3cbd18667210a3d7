"""`deepfake-stream run` as a process: RTSP + file streams against a real mosquitto, SIGTERM ends it cleanly."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.media import TEST_ENCODER
from tests.fixtures.mqtt import MosquittoBroker, collect_messages

pytestmark = pytest.mark.timeout(240)


async def test_run_command_two_streams(mqtt_broker: MosquittoBroker, rtsp_server, astronaut_clip: Path, fake_checkpoint: Path, tmp_path: Path) -> None:
    server = rtsp_server()
    stream = {"sample_fps": 2, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}
    config = {
        "detector": {"weights_dir": str(fake_checkpoint.parent), "weights": [fake_checkpoint.name], "encoder": TEST_ENCODER, "device": "cpu", "input_size": 128},
        "streams": [{"name": "cam", "url": server.url, **stream}, {"name": "clip", "url": str(astronaut_clip), "loop": True, "realtime": True, **stream}],
        "mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port, "client_id": "cli-run"},
        "alerts": {"min_samples": 2},
        "http": {"port": 0},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["deepfake/#"]) as seen:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "stream.cli", "run", "--config", str(path), stderr=asyncio.subprocess.PIPE)
        try:
            await seen.wait_for(
                lambda _: all(any(m.json()["event"] == "start" for m in seen.on(f"deepfake/{s}/alert")) for s in ("cam", "clip")), 120, "an alert on each stream"
            )
            assert seen.on("deepfake/available")[-1].payload == b"online"
            await seen.wait_for(lambda _: len(seen.on("deepfake/cam/score")) >= 2 and len(seen.on("deepfake/clip/score")) >= 2, 30, "scores")
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(proc.communicate(), 60)
        await seen.wait_for(lambda _: seen.on("deepfake/available")[-1].payload == b"offline", 10, "offline")
    assert proc.returncode == 0, stderr.decode()[-2000:]
    for name in ("cam", "clip"):
        events = [m.json()["event"] for m in seen.on(f"deepfake/{name}/alert")]
        assert events.count("start") == 1 and events[-1] == "end", events
        assert seen.on(f"deepfake/{name}/status")[-1].json()["state"] == "stopped"
    assert "Traceback" not in stderr.decode()
