"""Hostile stream URLs: the config refuses what it can, the source fails clearly otherwise, and the
other streams of the same service keep being scored.

Cases (2):

1. ``test_overlong_and_invalid_urls_are_refused_by_the_config`` - a 5000-char URL, a 5000-char name,
   an empty URL, a name that is not a topic level: ConfigError naming ``streams.N.<field>``.
2. ``test_hostile_urls_fail_clearly_while_a_good_stream_keeps_scoring`` - in one service beside a
   good file stream: schemes FFmpeg has no protocol for (``javascript:``, ``smb://``, ``ldap://``),
   a malformed IPv6 host, a local non-video (``file:///etc/passwd``, ``/dev/zero``), a closed
   loopback port with a password in the URL, a 4000-char host name, a 60x60-char label host, an
   unresolvable ``.invalid`` host and a 4000-char path -> unrecoverable ones ``failed`` at once
   (no retry), network ones ``reconnecting`` with the reason, no password anywhere, and the good
   stream scored all along.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path

import pytest

from stream.app import App
from stream.config import ConfigError, parse_config
from tests.fixtures.mqtt import MosquittoBroker, collect_messages
from tests.test_service import fast_stream, service_config

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    ("stream", "field", "message"),
    [
        ({"name": "cam", "url": "rtsp://127.0.0.1/" + "a" * 5000}, "streams.0.url", "at most 4096 characters"),
        ({"name": "c" * 5000, "url": "rtsp://127.0.0.1/x"}, "streams.0.name", "should match pattern"),
        ({"name": "cam", "url": ""}, "streams.0.url", "at least 1 character"),
        ({"name": "cam/+/#", "url": "rtsp://127.0.0.1/x"}, "streams.0.name", "should match pattern"),
    ],
)
def test_overlong_and_invalid_urls_are_refused_by_the_config(stream: dict, field: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"streams": [stream]}, "hostile.yaml")
    text = str(info.value)
    print(f"injected: {field} of {len(stream['name']) + len(stream['url'])} chars; observed: {text[:200]}")
    assert text.startswith(f"hostile.yaml: {field}: ") and message in text and len(text) < 400


async def test_hostile_urls_fail_clearly_while_a_good_stream_keeps_scoring(
    mqtt_broker: MosquittoBroker, astronaut_clip: Path, real_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="stream")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    long_host = "h" * 4000
    label_host = ".".join(["b" * 60] * 60)
    # name -> (url, final state, what the detail must say)
    hostile = {
        "js": ("javascript:alert(1)", "failed", "unsupported URL scheme 'javascript'"),
        "smb": ("smb://127.0.0.1/share/x.mp4", "failed", "unsupported URL scheme 'smb'"),
        "ldap": ("ldap://127.0.0.1/o=x", "failed", "unsupported URL scheme 'ldap'"),
        "ipv6": ("rtsp://[::1/x", "failed", "malformed URL"),
        "passwd": ("file:///etc/passwd", "failed", "Invalid data found when processing input (not a readable video file?)"),
        "zero": ("/dev/zero", "failed", "Invalid data found when processing input (not a readable video file?)"),
        "closed": (f"rtsp://admin:Zz9-secret@127.0.0.1:{closed}/cam", "reconnecting", "Connection refused"),
        "longhost": (f"rtsp://{long_host}:554/x", "reconnecting", long_host),
        "labels": (f"rtsp://{label_host}/x", "reconnecting", label_host),
        "nxdomain": ("rtsp://camera.invalid/x", "reconnecting", "camera.invalid"),
        "longpath": (f"rtsp://127.0.0.1:{closed}/{'p' * 4000}", "reconnecting", "Connection refused"),
    }
    streams = [fast_stream("good", str(astronaut_clip), loop=True, realtime=True)]
    streams += [fast_stream(name, url) for name, (url, _, _) in hostile.items()]
    cfg = service_config(mqtt_broker, real_checkpoint, streams)
    async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["deepfake/#"]) as seen:
        app = App(cfg)
        service = await app.start()
        try:
            print(f"injected: {len(hostile)} hostile URLs beside a good file stream")
            await seen.wait_for(lambda _: len(seen.on("deepfake/good/score")) >= 3, 60, "the good stream scoring")
            await asyncio.sleep(3)  # several reconnect rounds of the network ones
            before = len(seen.on("deepfake/good/score"))
            await seen.wait_for(lambda _: len(seen.on("deepfake/good/score")) >= before + 3, 30, "the good stream still scoring")
            observed = {name: (service.streams[name].state, service.streams[name].detail or "") for name in hostile}
            reconnects = {name: service.streams[name].source.stats.reconnects for name in hostile}  # type: ignore[attr-defined]
        finally:
            await app.stop()
    for name, (_url, state, reason) in hostile.items():
        got_state, detail = observed[name]
        print(f"observed: {name}: {got_state} after {reconnects[name]} reconnect(s): {detail[:160]}")
        assert got_state == state, (name, got_state, detail[:300])
        assert reason in detail, (name, detail[:300])
        if state == "failed":
            assert reconnects[name] == 0  # never retried
        published = [m.json() for m in seen.on(f"deepfake/{name}/status")]
        assert any(p["state"] == state and reason in (p["detail"] or "") for p in published), name
    assert service.streams["good"].pipeline.stats.samples_scored >= 6
    everything = caplog.text + json.dumps([m.text for m in seen.messages])
    assert "Zz9-secret" not in everything and "admin:***@" in everything
