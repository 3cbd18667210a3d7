"""``deepfake-stream watch``: the console script in a subprocess against a real mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import cv2
import numpy as np
import pytest

from tests.fixtures.mqtt import MosquittoBroker, free_port

pytestmark = pytest.mark.timeout(60)

SCRIPT = Path(sys.executable).with_name("deepfake-stream")
LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3}  (?P<topic>\S+)  (?P<payload>.*?)(?P<retained>  \[retained\])?$")


@contextlib.asynccontextmanager
async def watching(*args: str, cwd: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """``deepfake-stream watch ARGS`` started and subscribed (its 'watching' line read from stderr); killed if still running."""
    proc = await asyncio.create_subprocess_exec(str(SCRIPT), "watch", *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        first = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        assert first.startswith("watching "), first
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def read_lines(proc: asyncio.subprocess.Process, count: int, timeout_s: float = 10) -> list[str]:
    assert proc.stdout is not None
    return [(await asyncio.wait_for(proc.stdout.readline(), timeout_s)).decode().rstrip("\n") for _ in range(count)]


def jpeg() -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    assert ok
    return buf.tobytes()


async def test_watch_prints_one_line_per_message_and_ctrl_c_exits_130(mqtt_broker: MosquittoBroker, tmp_path: Path) -> None:
    snapshot = jpeg()
    async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as client:
        await client.publish("deepfake/cam/status", json.dumps({"state": "streaming", "fps_in": 25.0}), qos=1, retain=True)
        async with watching("--host", mqtt_broker.host, "--port", str(mqtt_broker.port), cwd=tmp_path) as proc:
            await client.publish("other/topic", b"not under the prefix", qos=1)
            await client.publish("deepfake/cam/alert", json.dumps({"event": "start", "id": "e1", "score": 0.93}, indent=2), qos=1)
            await client.publish("deepfake/cam/snapshot", snapshot, qos=0)
            await client.publish("deepfake/available", b"online", qos=1)
            await client.publish("deepfake/cam/note", b"two\nlines", qos=1)
            lines = await read_lines(proc, 5)
            proc.send_signal(signal.SIGINT)
            rc = await asyncio.wait_for(proc.wait(), 10)
            assert proc.stderr is not None
            stderr = (await proc.stderr.read()).decode()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [(m["topic"], m["payload"], bool(m["retained"])) for m in parsed if m] == [
        ("deepfake/cam/status", '{"state":"streaming","fps_in":25.0}', True),
        ("deepfake/cam/alert", '{"event":"start","id":"e1","score":0.93}', False),  # compact, on one line
        ("deepfake/cam/snapshot", f"<jpeg {len(snapshot)} bytes>", False),
        ("deepfake/available", "online", False),
        ("deepfake/cam/note", '"two\\nlines"', False),  # a newline in a text payload stays on its line, escaped
    ]
    assert rc == 130 and "Traceback" not in stderr, stderr


async def test_watch_json_with_the_broker_and_prefix_from_a_config(mqtt_broker: MosquittoBroker, tmp_path: Path) -> None:
    config = tmp_path / "watch.yaml"
    config.write_text(f"mqtt:\n  host: {mqtt_broker.host}\n  port: {mqtt_broker.port}\n  topic_prefix: lab\n")
    snapshot = jpeg()
    async with watching("--config", str(config), "--json", cwd=tmp_path) as proc, aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as client:
        await client.publish("deepfake/cam/score", b"{}", qos=1)  # the default prefix is not watched
        await client.publish("lab/cam/score", json.dumps({"score": 0.25, "faces": 1}), qos=1)
        await client.publish("lab/cam/snapshot", snapshot, qos=1)
        lines = [json.loads(line) for line in await read_lines(proc, 2)]
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 130
    score, snap = lines
    assert {k: score[k] for k in ("topic", "retained", "qos", "kind", "payload")} == {
        "topic": "lab/cam/score", "retained": False, "qos": 1, "kind": "json", "payload": {"score": 0.25, "faces": 1},
    }  # fmt: skip
    assert score["time"] > 1e9
    assert (snap["topic"], snap["kind"], snap["bytes"], snap["payload"]) == ("lab/cam/snapshot", "jpeg", len(snapshot), None)


def test_watch_an_unreachable_broker_is_one_line_and_exit_2(tmp_path: Path) -> None:
    import subprocess

    port = free_port()
    proc = subprocess.run([str(SCRIPT), "watch", "--port", str(port)], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot connect to the MQTT broker mqtt://127.0.0.1:{port}" in lines[0] and "refused" in lines[0], proc.stderr
    bad = subprocess.run([str(SCRIPT), "watch", "--prefix", "deepfake/#"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "wildcards" in bad.stderr


async def test_the_readmes_mosquitto_sub_alternative_works(mqtt_broker: MosquittoBroker) -> None:
    """The README's other way to watch: ``mosquitto_sub`` from ``mosquitto-clients`` (.ci/apt-packages-mqtt.txt)."""
    import os
    import shutil

    tool = shutil.which("mosquitto_sub")
    if tool is None:
        message = "mosquitto_sub not installed: apt-get install mosquitto-clients (listed in .ci/apt-packages-mqtt.txt)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "mosquitto_sub -h 127.0.0.1 -p PORT -t 'deepfake/#' -v" in readme
    async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as client:
        await client.publish("deepfake/cam/status", b'{"state":"streaming"}', qos=1, retain=True)
    proc = await asyncio.create_subprocess_exec(
        tool, "-h", "127.0.0.1", "-p", str(mqtt_broker.port), "-t", "deepfake/#", "-v", "-C", "1", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0 and out.decode().strip() == 'deepfake/cam/status {"state":"streaming"}'
