"""Operations end to end: /health, /metrics, Home Assistant discovery, logging config, the demo command.

Real parts only: the service on a real encoded clip, real mosquitto, real HTTP
requests, the ``deepfake-stream`` console script in a subprocess with its
embedded broker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jinja2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream import cli
from stream.app import App
from stream.config import AppConfig, ConfigError, load_config, parse_config
from stream.demo import BROKER_PREFIX, SUMMARY_PREFIX, choose_broker, demo_config
from stream.logs import JsonFormatter
from stream.service import StreamService
from stream.sources.base import StreamState
from tests.fixtures.media import TEST_ENCODER
from tests.fixtures.mqtt import MosquittoBroker, MqttCollector, collect_messages, free_port, retained_message
from tests.test_service import service_config

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ helpers


def ops_config(broker: MosquittoBroker, weights: Path, streams: list[dict[str, Any]], **extra: Any) -> AppConfig:
    """The service-test pattern (small B0 at 128 px on CPU, fast reconnects, HTTP on a free port) under this module's client id."""
    return service_config(broker, weights, streams, client_id=f"ops-{broker.port}", **extra)


def file_stream(name: str, clip: Path) -> dict[str, Any]:
    return {"name": name, "url": str(clip), "loop": True, "realtime": True, "sample_fps": 2, "watchdog_s": 3, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}


async def until(predicate: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.2)


async def get_health(http: aiohttp.ClientSession, port: int) -> tuple[int, dict[str, Any]]:
    async with http.get(f"http://127.0.0.1:{port}/health") as response:
        return response.status, await response.json()


async def get_metrics(http: aiohttp.ClientSession, port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` parsed with prometheus-client's own parser."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} not exposed; have {sorted({n for n, _ in samples})}"
    return samples[key]


def render_template(template: str, payload: bytes) -> str:
    """Home Assistant renders value_template with Jinja2 and ``value_json`` bound to the parsed payload."""
    return jinja2.Environment(autoescape=False).from_string(template).render(value_json=json.loads(payload), value=payload.decode()).strip()


# ------------------------------------------------------------ health + metrics


async def test_health_and_metrics_while_streaming_and_after_broker_stops(mqtt_broker: MosquittoBroker, astronaut_clip: Path, fake_checkpoint: Path) -> None:
    cfg = ops_config(mqtt_broker, fake_checkpoint, [file_stream("cam", astronaut_clip)])
    app = App(cfg)
    async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["homeassistant/#"]) as discovery_seen, aiohttp.ClientSession() as http:
        service = await app.start()
        try:
            assert app.http is not None and app.http.port
            port = app.http.port

            async def alerting() -> bool:
                status, body = await get_health(http, port)
                cam = body["streams"].get("cam", {})
                return status == 200 and cam.get("alert_active") is True and cam.get("samples_scored", 0) >= 3

            await until(alerting, 60, "/health 200 with the forced-fake stream alerting")
            status, body = await get_health(http, port)
            assert status == 200 and body["ok"] is True and body["live"] is True and body["problems"] == []
            assert body["mqtt"]["enabled"] is True and body["mqtt"]["connected"] is True
            cam = body["streams"]["cam"]
            assert cam["state"] == "streaming" and cam["kind"] == "url"
            assert cam["score"] > 0.99 and cam["fps_in"] > 5  # a 25 fps clip decoded in real time

            samples = await get_metrics(http, port)
            assert metric(samples, "deepfake_stream_state", stream="cam", state="streaming") == 1
            assert metric(samples, "deepfake_stream_state", stream="cam", state="reconnecting") == 0
            assert metric(samples, "deepfake_stream_fps_in", stream="cam") > 5
            assert metric(samples, "deepfake_stream_frames_sampled_total", stream="cam") >= 3
            assert metric(samples, "deepfake_stream_frames_decoded_total", stream="cam") > metric(samples, "deepfake_stream_frames_sampled_total", stream="cam")
            assert metric(samples, "deepfake_stream_frames_dropped_total", stream="cam", stage="source") >= 0
            assert metric(samples, "deepfake_stream_frames_dropped_total", stream="cam", stage="engine") >= 0
            scored = metric(samples, "deepfake_stream_samples_scored_total", stream="cam")
            assert scored >= 3 and metric(samples, "deepfake_stream_faces_total", stream="cam") >= scored  # one face per frame
            assert metric(samples, "deepfake_stream_score", stream="cam") > 0.99
            assert metric(samples, "deepfake_stream_alerts_total", stream="cam") == 1
            assert metric(samples, "deepfake_stream_alert_active", stream="cam") == 1
            assert metric(samples, "deepfake_stream_reconnects_total", stream="cam") == 0
            # latency histogram: every scored sample observed once, all well under 30 s
            count = metric(samples, "deepfake_stream_latency_seconds_count", stream="cam")
            assert count >= scored and metric(samples, "deepfake_stream_latency_seconds_sum", stream="cam") > 0
            assert metric(samples, "deepfake_stream_latency_seconds_bucket", stream="cam", le="30.0") == count
            # engine: batch-size histogram from the on_batch hook
            batches = metric(samples, "deepfake_engine_batches_total")
            assert batches >= 1 and metric(samples, "deepfake_engine_batch_frames_count") == batches
            assert metric(samples, "deepfake_engine_batch_frames_sum") == metric(samples, "deepfake_engine_frames_total")
            assert metric(samples, "deepfake_engine_queue_depth") >= 0
            assert metric(samples, "deepfake_gpu_memory_allocated_bytes") == 0  # CPU
            assert metric(samples, "deepfake_gpu_mps") == 0  # a CPU engine starts no MPS daemon
            assert metric(samples, "deepfake_mqtt_connected") == 1 and metric(samples, "deepfake_mqtt_enabled") == 1
            assert metric(samples, "deepfake_mqtt_pending_alerts") == 0 and metric(samples, "deepfake_mqtt_alerts_dropped_total") == 0
            assert metric(samples, "deepfake_mqtt_alerts_delivered_total") >= 1

            # a second scrape only adds the latencies scored since the first
            await until(lambda: _scored_more(service, int(scored) + 2), 30, "two more samples")
            again = await get_metrics(http, port)
            new_scored = metric(again, "deepfake_stream_samples_scored_total", stream="cam")
            assert metric(again, "deepfake_stream_latency_seconds_count", stream="cam") == new_scored

            # the broker goes away: /health says so with 503, /metrics too
            mqtt_broker.stop()

            async def unhealthy() -> bool:
                return (await get_health(http, port))[0] == 503

            await until(unhealthy, 15, "/health 503 after the broker stopped")
            status, body = await get_health(http, port)
            assert body["ok"] is False and body["mqtt"]["connected"] is False
            assert any("MQTT" in p and "not connected" in p for p in body["problems"]), body["problems"]
            assert body["streams"]["cam"]["state"] == "streaming"  # the stream itself is fine
            down = await get_metrics(http, port)
            assert metric(down, "deepfake_mqtt_connected") == 0
            live = await http.get(f"http://127.0.0.1:{port}/health/live")
            assert live.status == 200 and (await live.json())["live"] is True
        finally:
            await app.stop()
    assert not discovery_seen.messages  # discovery is off by default


async def _scored_more(service: StreamService, count: int) -> bool:
    return service.streams["cam"].pipeline.stats.samples_scored >= count


async def test_health_503_without_a_streaming_stream_and_mqtt_disabled(tmp_path: Path, checkpoint: Path) -> None:
    cfg = parse_config(
        {
            "detector": {"weights_dir": str(checkpoint.parent), "weights": [checkpoint.name], "encoder": TEST_ENCODER, "device": "cpu", "input_size": 128},
            "streams": [{"name": "gone", "url": str(tmp_path / "missing.mp4")}],
            "mqtt": {"enabled": False},
            "http": {"port": 0},
        },
        "test",
    )
    app = App(cfg)
    await app.start()
    try:
        assert app.http is not None
        async with aiohttp.ClientSession() as http:

            async def failed() -> bool:
                return (await get_health(http, app.http.port))[1]["streams"]["gone"]["state"] == "failed"  # type: ignore[union-attr]

            await until(failed, 20, "the missing file to fail")
            status, body = await get_health(http, app.http.port)
            detail = body["streams"]["gone"]["detail"]
            assert status == 503 and body["problems"] == ["no stream is streaming", f"stream gone failed: {detail}"]
            assert body["mqtt"] == {"enabled": False, "connected": False, "broker": "127.0.0.1:1883"}
            assert "missing.mp4" in detail
            samples = await get_metrics(http, app.http.port)
            assert metric(samples, "deepfake_mqtt_enabled") == 0
            assert not any(name == "deepfake_mqtt_connected" for name, _ in samples)
            assert metric(samples, "deepfake_stream_state", stream="gone", state="failed") == 1
            assert not any(name == "deepfake_stream_score" for name, _ in samples)  # no score yet: absent, not 0
    finally:
        await app.stop()


async def test_health_names_failed_and_long_reconnecting_configured_streams(tmp_path: Path, checkpoint: Path, astronaut_clip: Path) -> None:
    """A missing file fails at once; an RTSP camera on a closed port counts only after the grace; a disabled one never."""
    grace = 6.0
    closed = f"rtsp://127.0.0.1:{free_port()}/stream"
    fast = {"open_timeout_s": 1, "read_timeout_s": 1, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}
    cfg = parse_config(
        {
            "detector": {"weights_dir": str(checkpoint.parent), "weights": [checkpoint.name], "encoder": TEST_ENCODER, "device": "cpu", "input_size": 128},
            "streams": [
                file_stream("good", astronaut_clip),
                {"name": "gone", "url": str(tmp_path / "missing.mp4")},
                {"name": "cam", "url": closed, **fast},
                {"name": "off", "url": str(tmp_path / "also-missing.mp4"), "enabled": False},
            ],
            "mqtt": {"enabled": False},
            "http": {"port": 0},
            "health": {"stream_grace_s": grace},
        },
        "test",
    )
    app = App(cfg)
    await app.start()
    try:
        assert app.http is not None
        port = app.http.port
        async with aiohttp.ClientSession() as http:

            async def settled() -> bool:
                streams = (await get_health(http, port))[1]["streams"]
                return [streams[n]["state"] for n in ("good", "gone", "cam")] == ["streaming", "failed", "reconnecting"]

            await until(settled, 30, "good streaming, gone failed, cam reconnecting")
            status, body = await get_health(http, port)
            streams = body["streams"]
            assert streams["cam"]["state_for_s"] < grace, "the machine was too slow to look inside the grace period"
            assert "off" not in streams  # disabled: never started, never a problem
            gone = f"stream gone failed: {streams['gone']['detail']}"
            assert "missing.mp4" in gone
            assert status == 503 and body["ok"] is False and body["problems"] == [gone]  # cam is still within its grace
            assert body["stream_grace_s"] == grace and streams["gone"]["problem"] == gone and streams["cam"]["problem"] is None
            assert streams["good"]["problem"] is None

            async def cam_named() -> bool:
                return any(p.startswith("stream cam ") for p in (await get_health(http, port))[1]["problems"])

            await until(cam_named, grace + 15, "the reconnecting camera to be named after the grace")
            status, body = await get_health(http, port)
            streams = body["streams"]
            assert status == 503 and streams["cam"]["state"] == "reconnecting" and streams["cam"]["state_for_s"] > grace
            assert streams["good"]["state"] == "streaming"  # the good stream alone does not make it ready
            cam = next(p for p in body["problems"] if p.startswith("stream cam "))
            assert re.fullmatch(rf"stream cam reconnecting for \d+ s \(grace 6 s\): {re.escape(closed)}: .+", cam), cam
            assert cam.endswith(streams["cam"]["detail"]) and streams["cam"]["problem"] == cam
            assert body["problems"] == [gone, cam]
            assert "no stream is streaming" not in body["problems"]
            live = await http.get(f"http://127.0.0.1:{port}/health/live")
            assert live.status == 200  # liveness never looks at cameras
    finally:
        await app.stop()


def test_health_stream_rules_silence_whip_and_stopped_streams() -> None:
    """The rules on hand-made handles: silence after the grace, WHIP and stopped streams never count."""
    from types import SimpleNamespace

    from stream.outputs.publisher import NullPublisher
    from stream.web.health import health_report

    now = 1000.0

    def handle(name: str, state: StreamState, since: float, last_frame: float | None = None, kind: str = "url", detail: str | None = None) -> Any:
        stats = SimpleNamespace(last_score=None, samples_scored=0, alerts=0, last_latency_s=None, last_frame_monotonic=last_frame)
        pipeline = SimpleNamespace(stats=stats, alerts=SimpleNamespace(active=False), inference_error=None)
        return SimpleNamespace(name=name, kind=kind, state=state, state_since=since, detail=detail, pipeline=pipeline, source=SimpleNamespace(stats=SimpleNamespace(fps_in=0.0)))

    handles = [
        handle("live", StreamState.STREAMING, now - 100, last_frame=now - 1),
        handle("quiet", StreamState.STREAMING, now - 100, last_frame=now - 31),  # frames stopped 31 s ago
        handle("mute", StreamState.STREAMING, now - 40),  # streaming for 40 s, never a frame
        handle("fresh", StreamState.STREAMING, now - 5, last_frame=now - 50),  # reconnected 5 s ago: silence counts from then
        handle("opening", StreamState.CONNECTING, now - 45, detail="opening rtsp://cam/x"),
        handle("eof", StreamState.STOPPED, now - 500, detail="end of file"),
        handle("phone", StreamState.OFFLINE, now - 500, kind="webrtc"),
        handle("phone2", StreamState.FAILED, now - 500, kind="webrtc", detail="peer gone"),
        handle("broken", StreamState.FAILED, now - 1),
    ]
    registry = SimpleNamespace(handles=lambda: handles, is_configured=lambda name: name not in ("phone", "phone2"), started_at=time.time())
    body = health_report(registry, NullPublisher(), "127.0.0.1:1883", stream_grace_s=30, now=now)  # type: ignore[arg-type]
    assert body["problems"] == [
        "stream quiet silent: no frame for 31 s (grace 30 s)",
        "stream mute silent: no frame for 40 s (grace 30 s)",
        "stream opening connecting for 45 s (grace 30 s): opening rtsp://cam/x",
        "stream broken failed",
    ]
    assert body["streams"]["quiet"]["last_frame_age_s"] == 31 and body["streams"]["mute"]["last_frame_age_s"] is None
    assert body["streams"]["phone"]["problem"] is None and body["streams"]["eof"]["problem"] is None
    assert health_report(registry, NullPublisher(), "x", stream_grace_s=60, now=now)["problems"] == ["stream broken failed"]  # type: ignore[arg-type]


def test_health_grace_must_cover_the_sample_interval() -> None:
    base = {"streams": [{"name": "slow", "url": "x.mp4", "sample_fps": 0.05}]}  # one sample every 20 s
    parse_config({**base, "health": {"stream_grace_s": 21}})
    with pytest.raises(ConfigError, match=r"streams\.0\.sample_fps: one sample every 20 s .* health\.stream_grace_s \(20 s\)"):
        parse_config({**base, "health": {"stream_grace_s": 20}})
    parse_config({"streams": [{**base["streams"][0], "enabled": False}], "health": {"stream_grace_s": 5}})  # disabled: not watched
    with pytest.raises(ConfigError, match="health.stream_grace_s"):
        parse_config({"health": {"stream_grace_s": 0}})


# ---------------------------------------------------------------- discovery


async def test_home_assistant_discovery_configs(make_mqtt_broker: Callable[..., MosquittoBroker], astronaut_clip: Path, fake_checkpoint: Path) -> None:
    broker = make_mqtt_broker(persistence=False)  # a restart loses retained messages: the service must replay them
    cfg = ops_config(
        broker, fake_checkpoint, [file_stream("cam", astronaut_clip), file_stream("door.2", astronaut_clip)], discovery={"enabled": True, "prefix": "ha/disc"}
    )
    node = f"ops-{broker.port}"
    expected = {
        f"ha/disc/sensor/{node}/cam_score/config",
        f"ha/disc/binary_sensor/{node}/cam_alert/config",
        f"ha/disc/sensor/{node}/door_2_score/config",
        f"ha/disc/binary_sensor/{node}/door_2_alert/config",
    }
    async with collect_messages(broker.host, broker.port, ["deepfake/#"]) as seen:
        app = App(cfg)
        await app.start()
        try:
            await seen.wait_for(lambda _: bool(seen.on("deepfake/cam/alert")) and bool(seen.on("deepfake/cam/score")), 60, "a score and an alert")
            configs = await retained_configs(broker, "ha/#", len(expected))
            assert set(configs) == expected
            assert all(retain for retain, _ in configs.values())
            payloads = {topic: json.loads(data) for topic, (_, data) in configs.items()}
            unique_ids = {p["unique_id"] for p in payloads.values()}
            assert len(unique_ids) == 4

            score = payloads[f"ha/disc/sensor/{node}/cam_score/config"]
            assert score["state_topic"] == "deepfake/cam/score" and score["value_template"] == "{{ value_json.score }}"
            assert "unit_of_measurement" not in score and "device_class" not in score
            alert = payloads[f"ha/disc/binary_sensor/{node}/cam_alert/config"]
            assert alert["state_topic"] == alert["json_attributes_topic"] == "deepfake/cam/alert/state" and alert["device_class"] == "problem"
            assert (alert["payload_on"], alert["payload_off"]) == ("ON", "OFF")
            for p in (score, alert):
                assert p["availability_topic"] == "deepfake/available"
                assert (p["payload_available"], p["payload_not_available"]) == ("online", "offline")
                assert p["device"]["identifiers"] and p["device"]["name"]
            assert score["device"] == alert["device"]  # one HA device per stream
            assert payloads[f"ha/disc/sensor/{node}/door_2_score/config"]["state_topic"] == "deepfake/door.2/score"

            # the templates, rendered as HA would, on the service's real messages
            real_score = seen.on("deepfake/cam/score")[-1]
            assert float(render_template(score["value_template"], real_score.payload)) == pytest.approx(real_score.json()["score"])
            start = seen.on("deepfake/cam/alert")[0]
            assert start.json()["event"] == "start"
            await seen.wait_for(lambda _: any(m.json()["state"] == "on" for m in seen.on("deepfake/cam/alert/state")), 10, "the retained alert state on")
            states = seen.on("deepfake/cam/alert/state")
            assert states[0].json()["state"] == "off" and render_template(alert["value_template"], states[0].payload) == "OFF"  # at stream start
            on = next(m for m in states if m.json()["state"] == "on")
            assert on.json()["id"] == start.json()["id"] and render_template(alert["value_template"], on.payload) == "ON"

            # the broker restarts without persistence: the publisher re-sends the configs on reconnect
            scores = len(seen.on("deepfake/cam/score"))
            broker.restart()
            # scores go after retained messages in the publisher's send order: a new one means the replay is done
            await seen.wait_for(lambda _: len(seen.on("deepfake/cam/score")) > scores, 20, "a score after the reconnect")
            again = await retained_configs(broker, "ha/#", len(expected))
            assert set(again) == expected and again == configs
        finally:
            await app.stop()


async def retained_json(broker: MosquittoBroker, topic: str, timeout_s: float = 20) -> tuple[dict[str, Any], int]:
    """(payload, qos) of the retained message a subscriber arriving now gets on ``topic``; polls while the broker has none."""
    message = await retained_message(broker.host, broker.port, topic, timeout_s)
    return message.json(), message.qos


async def test_retained_alert_state_for_late_subscribers_and_after_a_broker_restart(
    make_mqtt_broker: Callable[..., MosquittoBroker], astronaut_clip: Path, fake_checkpoint: Path
) -> None:
    """A subscriber that joins mid-episode learns it is open (and which); a broker that lost everything gets it back."""
    broker = make_mqtt_broker(persistence=False)
    cfg = ops_config(broker, fake_checkpoint, [file_stream("cam", astronaut_clip)])
    topic = "deepfake/cam/alert/state"
    async with collect_messages(broker.host, broker.port, ["deepfake/#"]) as seen:
        app = App(cfg)
        service = await app.start()
        try:
            await seen.wait_for(lambda _: bool(seen.on("deepfake/cam/alert")), 60, "an alert start")
            start = seen.on("deepfake/cam/alert")[0].json()
            assert start["event"] == "start"
            state, qos = await retained_json(broker, topic)
            assert qos == 1 and state["state"] == "on" and state["id"] == start["id"] and state["since"] == start["started_at"]
            assert state["score"] >= 0.8 and state["peak"] >= state["score"]

            broker.restart()  # no persistence: the retained state is gone until the service reconnects and replays it
            state, _ = await retained_json(broker, topic)
            assert state["state"] == "on" and state["id"] == start["id"]
            assert [a.json()["event"] for a in seen.on("deepfake/cam/alert")].count("start") == 1  # no second start for one episode

            await service.remove_stream("cam", StreamState.STOPPED, "removed by the test")  # the feed ends: so does the episode
            await seen.wait_for(lambda _: any(m.json()["event"] == "end" for m in seen.on("deepfake/cam/alert")), 20, "the alert end")
            state, qos = await retained_json(broker, topic)
            end = next(m.json() for m in seen.on("deepfake/cam/alert") if m.json()["event"] == "end")
            assert qos == 1 and state["state"] == "off" and state["id"] is None and state["since"] == end["time"]
        finally:
            await app.stop()
    # every state message was retained QoS 1, and it went off -> on -> off for this one episode
    states = [m.json()["state"] for m in seen.on(topic)]
    assert states[0] == "off" and "on" in states and states[-1] == "off"


async def retained_configs(broker: MosquittoBroker, topic: str, count: int, timeout_s: float = 10) -> dict[str, tuple[bool, bytes]]:
    """What a subscriber that arrives now gets: only retained messages are delivered at once."""
    collector = MqttCollector(broker.host, broker.port, [topic])
    await collector.start()
    try:
        await collector.wait_for(lambda m: len({x.topic for x in m}) >= count, timeout_s, f"{count} retained configs")
        return {m.topic: (m.retain, m.payload) for m in collector.messages}
    finally:
        await collector.stop()


# ------------------------------------------------------------------ logging


def test_logging_section_applies_unless_cli_flags_say_otherwise(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("logging:\n  level: WARNING\n  json_format: true\n")
    root = logging.getLogger()
    level_before = root.level
    try:
        args = cli.build_parser().parse_args(["run", "--config", str(path)])
        cli.configure_logging(args, cli.load_app_config(args.config))
        handler = next(h for h in root.handlers if h.get_name() == "deepfake-stream")
        assert isinstance(handler.formatter, JsonFormatter) and root.level == logging.WARNING

        args = cli.build_parser().parse_args(["--log-level", "DEBUG", "demo", "--config", str(path)])
        cli.configure_logging(args, cli.load_app_config(args.config))
        handler = next(h for h in root.handlers if h.get_name() == "deepfake-stream")
        assert isinstance(handler.formatter, JsonFormatter) and root.level == logging.DEBUG  # the flag wins, JSON stays

        path.write_text("logging:\n  level: ERROR\n")
        args = cli.build_parser().parse_args(["--log-json", "run", "--config", str(path)])
        cli.configure_logging(args, cli.load_app_config(args.config))
        handler = next(h for h in root.handlers if h.get_name() == "deepfake-stream")
        assert isinstance(handler.formatter, JsonFormatter) and root.level == logging.ERROR
    finally:
        root.handlers[:] = [h for h in root.handlers if h.get_name() != "deepfake-stream"]
        root.setLevel(level_before)


# --------------------------------------------------------------------- demo


def test_demo_uses_a_configured_broker_only_when_it_answers(mqtt_broker: MosquittoBroker, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"mqtt:\n  host: {mqtt_broker.host}\n  port: {mqtt_broker.port}\n")
    cfg = demo_config(load_config(path), config_given=True)
    assert [s.url for s in cfg.streams] == ["demo:"]  # no streams in the config: the demo clip
    assert choose_broker(cfg, True, None)[0] == "config"
    assert choose_broker(cfg, True, "embedded")[0] == "embedded"
    assert choose_broker(cfg, False, None)[0] == "embedded"  # ./config.yaml picked up implicitly never decides
    path.write_text(f"mqtt:\n  port: {mqtt_broker.port}\n")
    assert choose_broker(load_config(path), True, None)[0] == "embedded"  # host left at its default
    path.write_text(f"mqtt:\n  host: 127.0.0.1\n  port: {free_port()}\n")
    assert choose_broker(load_config(path), True, None) == ("embedded", "configured broker unreachable")
    path.write_text("streams:\n  - {name: cam, url: rtsp://example.invalid/x}\n")
    assert [s.name for s in demo_config(load_config(path), config_given=True).streams] == ["cam"]


@pytest.mark.timeout(200)
async def test_demo_command_runs_with_embedded_broker(tmp_path: Path) -> None:
    """``deepfake-stream --log-json demo --duration 50`` on a fresh machine: no config, no weights, no broker.

    The whole path shows within the first minute: the embedded model scores the fake segment, an
    alert starts with its snapshot, and it ends once the real segment has filled the window.
    """
    script = Path(sys.executable).with_name("deepfake-stream")
    assert script.is_file(), "the console script from pyproject's [project.scripts] is installed in the venv"
    err_path = tmp_path / "demo.err"
    with socket.socket() as closed:  # the release URL points at a port nobody listens on: the download fails at once
        closed.bind(("127.0.0.1", 0))
        env = {**os.environ, "DEEPFAKE_STREAM_WEIGHTS": str(tmp_path / "weights"), "DEEPFAKE_STREAM_WEIGHTS_URL": f"http://127.0.0.1:{closed.getsockname()[1]}"}
    with err_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            str(script), "--log-json", "demo", "--duration", "50", cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=err, env=env
        )
        try:
            assert proc.stdout is not None
            broker_line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            match = re.search(r"mqtt://127\.0\.0\.1:(\d+)", broker_line)
            assert broker_line.startswith(BROKER_PREFIX + "embedded") and match, broker_line
            async with collect_messages("127.0.0.1", int(match.group(1)), ["deepfake/#"]) as seen:
                await seen.wait_for(lambda _: len(seen.on("deepfake/demo/score")) >= 3, 45, "3 scores from the demo stream")
                stdout_rest = (await asyncio.wait_for(proc.stdout.read(), 90)).decode()
                rc = await asyncio.wait_for(proc.wait(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    stderr = err_path.read_text()
    assert rc == 0, stderr[-3000:]
    score = seen.on("deepfake/demo/score")[-1].json()
    assert score["stream"] == "demo" and score["faces"] >= 1 and 0 <= score["score"] <= 1
    assert "streaming" in [m.json()["state"] for m in seen.on("deepfake/demo/status")]
    summary_line = next(line for line in stdout_rest.splitlines() if line.startswith(SUMMARY_PREFIX))
    summary = json.loads(summary_line[len(SUMMARY_PREFIX) :])
    print(f"observed: demo summary {summary}")
    assert summary["streams"] == 1 and summary["samples_scored"] >= 40  # 2 samples/s for most of 50 s on 2 cores
    assert summary["scores_published"] >= len(seen.on("deepfake/demo/score")) >= 3
    assert summary["broker"] == f"embedded mqtt://127.0.0.1:{match.group(1)}" and summary["weights"].startswith("embedded self-blended")
    assert "demo" in stdout_rest and "streaming" in stdout_rest  # the final frame of the live table
    # the path: an alert starts (with its snapshot) on the fake segment and ends on the real one
    events = [m.json()["event"] for m in seen.on("deepfake/demo/alert")]
    assert "start" in events and "end" in events[events.index("start") :], events
    assert seen.on("deepfake/demo/snapshot") and seen.on("deepfake/demo/snapshot")[0].payload[:2] == b"\xff\xd8"
    assert summary["alerts"] >= 1 and summary["snapshots_published"] >= 1
    assert summary["first_score_s"] is not None and summary["first_alert_s"] is not None and summary["first_alert_end_s"] is not None
    assert summary["first_score_s"] <= summary["first_alert_s"] < summary["first_alert_end_s"] < 60
    # --log-json: every log line is one JSON object; which model runs, and how to get the winner's, is said
    records = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    warning = [r for r in records if r["level"] == "WARNING" and "running the embedded self-blended" in r["message"]]
    assert len(warning) == 1 and "deepfake-stream weights download" in warning[0]["message"]
    assert not [r for r in records if r["level"] == "ERROR"]
