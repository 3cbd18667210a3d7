"""The streaming service end to end: real RTSP server, real encoded file, real mosquitto."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from stream.app import App
from stream.config import AppConfig, parse_config
from tests.fixtures.media import TEST_ENCODER
from tests.fixtures.mqtt import MosquittoBroker, collect_messages

pytestmark = pytest.mark.timeout(240)


def service_config(broker: MosquittoBroker, weights: Path, streams: list[dict], client_id: str | None = None, **extra: dict) -> AppConfig:
    data = {
        # a small classifier input keeps two streams at 2 samples/s within a 2-core CI machine
        "detector": {"weights_dir": str(weights.parent), "weights": [weights.name], "encoder": TEST_ENCODER, "device": "cpu", "input_size": 128},
        "streams": streams,
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": client_id or f"svc-{broker.port}", "reconnect_max_s": 1.0},
        "alerts": {"min_samples": 2},
        "window": {"seconds": 4, "max_scores": 8},
        "engine": {"max_batch": 8, "max_wait_ms": 10},
        "http": {"port": 0},
        **extra,
    }
    return parse_config(data, "test")


def fast_stream(name: str, url: str, **kw: object) -> dict:
    return {"name": name, "url": url, "sample_fps": 2, "watchdog_s": 3, "read_timeout_s": 3, "open_timeout_s": 3, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0, **kw}


def alerts(seen, stream: str, kind: str | None = None) -> list[dict]:
    events = [m.json() for m in seen.on(f"deepfake/{stream}/alert")]
    return [e for e in events if kind is None or e["event"] == kind]


def states(seen, stream: str) -> list[str]:
    return [m.json()["state"] for m in seen.on(f"deepfake/{stream}/status")]


async def test_rtsp_and_file_streams_end_to_end(mqtt_broker: MosquittoBroker, rtsp_server, astronaut_clip: Path, fake_checkpoint: Path) -> None:
    server = rtsp_server()
    cfg = service_config(
        mqtt_broker,
        fake_checkpoint,
        [fast_stream("cam", server.url), fast_stream("file", str(astronaut_clip), loop=True, realtime=True)],
    )
    async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["deepfake/#"], persistent=True, client_id="watcher") as seen:
        app = App(cfg)
        await app.start()
        try:
            await seen.wait_for(lambda _: len(alerts(seen, "cam", "start")) == 1 and len(alerts(seen, "file", "start")) == 1, 90, "one alert per stream")
            online = [m for m in seen.on("deepfake/available") if m.payload == b"online"]
            assert online and online[-1].qos == 1
            assert "streaming" in states(seen, "cam") and "streaming" in states(seen, "file")
            async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["deepfake/+/status", "deepfake/available"]) as late:
                await late.wait_for(lambda _: len(late.messages) >= 3, 5, "retained status and availability")
                assert all(m.retain for m in late.messages)
                assert {m.topic for m in late.messages} == {"deepfake/available", "deepfake/cam/status", "deepfake/file/status"}
            print([ (m.topic, m.payload[:120]) for m in seen.messages if 'status' in m.topic or 'alert' in m.topic])
            # scores about once a second per stream
            before = len(seen.on("deepfake/cam/score")), len(seen.on("deepfake/file/score"))
            await asyncio.sleep(5)
            after = len(seen.on("deepfake/cam/score")), len(seen.on("deepfake/file/score"))
            assert 3 <= after[0] - before[0] <= 7 and 3 <= after[1] - before[1] <= 7, (before, after)
            score = seen.on("deepfake/cam/score")[-1].json()
            assert score["score"] > 0.99 and score["faces"] == 1 and score["window_size"] >= 1 and "1" in score["tracks"] or score["tracks"]
            assert score["latency_ms"] > 0
            assert seen.on("deepfake/cam/snapshot")[0].payload[:2] == b"\xff\xd8"  # a JPEG of the face
            # still exactly one episode per stream: no flood
            assert len(alerts(seen, "cam", "start")) == 1 and len(alerts(seen, "file", "start")) == 1

            # the RTSP server dies: the stream reconnects, its episode ends, the file stream goes on
            server.stop()
            await seen.wait_for(lambda _: "reconnecting" in states(seen, "cam"), 30, "cam reconnecting")
            await seen.wait_for(lambda _: len(alerts(seen, "cam", "end")) == 1, 10, "cam alert end")
            file_scores = len(seen.on("deepfake/file/score"))
            server.start()
            await seen.wait_for(lambda _: states(seen, "cam")[-1] == "streaming", 60, "cam streaming again")
            n = len(seen.on("deepfake/cam/score"))
            await seen.wait_for(lambda _: len(seen.on("deepfake/cam/score")) > n + 2, 30, "cam scoring again")
            await seen.wait_for(lambda _: len(seen.on("deepfake/file/score")) > file_scores + 3, 30, "the file stream scoring throughout")
            await seen.wait_for(lambda _: len(alerts(seen, "cam", "start")) == 2, 30, "a new episode after the reconnect")
        finally:
            await app.stop()
        await seen.wait_for(lambda _: any(m.payload == b"offline" for m in seen.on("deepfake/available")), 10, "offline")
    ends = alerts(seen, "file", "end")
    assert len(ends) == 1 and ends[0]["id"] == alerts(seen, "file", "start")[0]["id"]
    assert len(alerts(seen, "cam", "end")) == 2
    assert states(seen, "file")[-1] == "stopped"


async def test_alert_raised_while_broker_down_arrives_after_restart(mqtt_broker: MosquittoBroker, astronaut_clip: Path, fake_checkpoint: Path, real_checkpoint: Path) -> None:
    cfg = service_config(mqtt_broker, fake_checkpoint, [fast_stream("file", str(astronaut_clip), loop=True, realtime=True)])
    async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["deepfake/#"], persistent=True, client_id="watcher2") as seen:
        app = App(cfg)
        # hold the stream back until the broker is down
        mqtt_broker.stop()
        service = await app.start()
        try:
            handle = service.streams["file"]
            await asyncio.wait_for(_until(lambda: handle.pipeline.alerts.active), 60)
            assert service.publisher.pending_alerts >= 1
            mqtt_broker.start()
            await seen.wait_for(lambda _: len(alerts(seen, "file", "start")) == 1, 60, "the alert after the broker came back")
        finally:
            await app.stop()
        await seen.wait_for(lambda _: len(alerts(seen, "file", "end")) == 1, 15, "end")
    assert len(alerts(seen, "file", "start")) == 1


async def test_bad_streams_do_not_stop_a_good_one(mqtt_broker: MosquittoBroker, astronaut_clip: Path, real_checkpoint: Path, caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    cfg = service_config(
        mqtt_broker,
        real_checkpoint,
        [
            fast_stream("good", str(astronaut_clip), loop=True, realtime=True),
            fast_stream("malformed", "bogus://::not a url"),
            fast_stream("unreachable", f"rtsp://user:secret@127.0.0.1:{closed_port}/cam"),
        ],
    )
    async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["deepfake/#"]) as seen:
        app = App(cfg)
        await app.start()
        try:
            await seen.wait_for(lambda _: "failed" in states(seen, "malformed") and "reconnecting" in states(seen, "unreachable"), 30, "bad statuses")
            n = len(seen.on("deepfake/good/score"))
            await seen.wait_for(lambda _: len(seen.on("deepfake/good/score")) >= n + 3, 30, "good stream keeps scoring")
        finally:
            await app.stop()
    failed = [m.json() for m in seen.on("deepfake/malformed/status") if m.json()["state"] == "failed"][0]
    assert "bogus" in failed["detail"]
    unreachable = [m.json() for m in seen.on("deepfake/unreachable/status") if m.json()["state"] == "reconnecting"][0]
    assert "secret" not in json.dumps(unreachable) and "127.0.0.1" in unreachable["detail"]
    assert "secret" not in caplog.text
    assert not alerts(seen, "good")  # forced-real checkpoint: no alert


async def _until(predicate, interval: float = 0.1) -> None:
    while not predicate():
        await asyncio.sleep(interval)
