"""Faults of an RTSP camera under the running service (real gst-rtsp-server, real mosquitto, loopback).

Cases (2):

1. ``test_camera_killed_then_back_at_another_resolution`` - the RTSP server is killed while the
   stream is scored, then restarted on the same port serving a 426x240 clip instead of 640x360:
   the stream goes ``reconnecting``, comes back ``streaming``, its status reports the new
   width/height and scores continue.
2. ``test_stalled_camera_trips_the_watchdog_and_recovers`` - the RTSP server is frozen (SIGSTOP:
   TCP open, no packets) and a raw socket accepts and never answers: both go ``reconnecting``
   with the watchdog / open-timeout reason, a file stream in the same service keeps scoring
   throughout, and the frozen camera streams and scores again after SIGCONT.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stream.app import App
from tests.fixtures.media import astronaut_video
from tests.fixtures.mqtt import MosquittoBroker, collect_messages
from tests.test_service import fast_stream, service_config, states
from tests.test_sources import silent_server  # noqa: F401 - fixture: a TCP server that never says a word

pytestmark = pytest.mark.timeout(180)


def statuses(seen, stream: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [m.json() for m in seen.on(f"deepfake/{stream}/status")]


def scores(seen, stream: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [m.json() for m in seen.on(f"deepfake/{stream}/score")]


def face_scores(seen, stream: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [s for s in scores(seen, stream) if s["score"] is not None and s["faces"] >= 1]


@pytest.fixture(scope="module")
def clip_240p(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The astronaut at 426x240: what the 'camera' serves after its restart."""
    return astronaut_video(tmp_path_factory.mktemp("faults") / "astronaut-240p.mp4", height=240)


async def test_camera_killed_then_back_at_another_resolution(
    mqtt_broker: MosquittoBroker, rtsp_server, clip_240p: Path, fake_checkpoint: Path
) -> None:
    server = rtsp_server()  # the 640x360 astronaut clip
    cfg = service_config(mqtt_broker, fake_checkpoint, [fast_stream("cam", server.url)])
    async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["deepfake/#"]) as seen:
        app = App(cfg)
        service = await app.start()
        try:
            await seen.wait_for(lambda _: len(face_scores(seen, "cam")) >= 2, 60, "cam scored at 640x360")
            first = [s for s in statuses(seen, "cam") if s["state"] == "streaming"][-1]
            assert (first["width"], first["height"]) == (640, 360), first

            server.stop()
            print(f"injected: killed the RTSP server at {server.url} (640x360)")
            await seen.wait_for(lambda _: states(seen, "cam")[-1] == "reconnecting", 30, "cam reconnecting")
            down = statuses(seen, "cam")[-1]
            print(f"observed: {down['state']} ({down['detail']})")
            before = len(scores(seen, "cam"))

            server.clip = clip_240p
            server.start()
            print(f"injected: restarted the RTSP server on the same port, now serving {clip_240p.name} (426x240)")
            await seen.wait_for(
                lambda _: states(seen, "cam")[-1] == "streaming" and len(face_scores(seen, "cam")[before:]) >= 3,
                60, "cam streaming and scoring again",
            )
            back = statuses(seen, "cam")[-1]
            handle = service.streams["cam"]
            print(f"observed: status {back}; source stats {handle.source.stats}")  # type: ignore[attr-defined]
            assert back["state"] == "streaming"
            assert (back["width"], back["height"]) == (426, 240), back  # the status tells the new resolution
            assert back["reconnects"] >= 1
            payload = service.status_payload(handle)
            assert (payload["width"], payload["height"]) == (426, 240)
            after = face_scores(seen, "cam")[-1]
            assert after["score"] > 0.99 and after["faces"] == 1  # the face is found at the new size
            assert service.engine.stats.failed_batches == 0
        finally:
            await app.stop()
    assert states(seen, "cam")[-1] == "stopped"


async def test_stalled_camera_trips_the_watchdog_and_recovers(
    mqtt_broker: MosquittoBroker, rtsp_server, silent_server: int, astronaut_clip: Path, real_checkpoint: Path  # noqa: F811
) -> None:
    server = rtsp_server()
    cfg = service_config(
        mqtt_broker,
        real_checkpoint,
        [
            fast_stream("cam", server.url, watchdog_s=2, read_timeout_s=2, open_timeout_s=2),
            fast_stream("silent", f"rtsp://127.0.0.1:{silent_server}/x", open_timeout_s=1, read_timeout_s=1),
            fast_stream("file", str(astronaut_clip), loop=True, realtime=True),
        ],
    )
    async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["deepfake/#"]) as seen:
        app = App(cfg)
        service = await app.start()
        try:
            await seen.wait_for(lambda _: len(face_scores(seen, "cam")) >= 2, 60, "cam scoring")
            server.pause()
            paused_at = time.monotonic()
            print("injected: SIGSTOP to the RTSP server (TCP stays open, no more packets)")
            file_before = len(face_scores(seen, "file"))
            await seen.wait_for(lambda _: states(seen, "cam")[-1] == "reconnecting", 20, "the watchdog to fire")
            took = time.monotonic() - paused_at
            stalled = statuses(seen, "cam")[-1]
            print(f"observed after {took:.1f} s: {stalled['state']} ({stalled['detail']})")
            assert "no frame for 2 s (watchdog)" in stalled["detail"]
            assert took < 10
            await seen.wait_for(lambda _: len(face_scores(seen, "file")) >= file_before + 3, 30, "the file stream to keep scoring")

            server.resume()
            resumed = len(face_scores(seen, "cam"))
            print("injected: SIGCONT to the RTSP server")
            await seen.wait_for(
                lambda _: states(seen, "cam")[-1] == "streaming" and len(face_scores(seen, "cam")) >= resumed + 2,
                60, "cam streaming and scoring after the stall",
            )
            print(f"observed: cam back, {service.status_payload(service.streams['cam'])}")

            silent = [s for s in statuses(seen, "silent") if s["state"] == "reconnecting"]
            print(f"observed: silent peer {silent[-1] if silent else statuses(seen, 'silent')}")
            assert silent and "no answer within 1 s (open timeout)" in silent[-1]["detail"]
            assert "failed" not in states(seen, "silent")  # a network peer is retried, never given up on
            assert "reconnecting" not in states(seen, "file") and "failed" not in states(seen, "file")
        finally:
            await app.stop()
