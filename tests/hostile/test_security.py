"""Security checks as tests: loopback by default, bearer tokens, secrets kept out of logs and outputs.

Cases (3; MQTT TLS verification is covered by tests/test_mqtt.py::test_tls_verifies_the_broker_certificate_and_hostname):

1. ``test_http_server_listens_on_loopback_only_by_default`` - with the default ``http.host`` the
   listening socket is bound to 127.0.0.1 (read back from the socket and from /proc/net/tcp) and a
   connection to the machine's non-loopback address is refused.
2. ``test_whip_tokens_wrong_or_near_miss_get_401_and_are_never_logged`` - missing, wrong, same-length,
   prefix, suffixed, other-case, other-scheme and another stream's tokens: 401 before anything is
   created; DELETE with a wrong token 401; the right token passes (400 for an audio-only offer);
   neither token appears in logs, /health, /metrics or /events.
3. ``test_passwords_never_appear_in_the_logs_of_a_real_run`` - ``deepfake-stream run --log-level DEBUG``
   in a subprocess with an MQTT password (password-protected mosquitto), an RTSP URL with a password
   (real gst-rtsp-server, streaming), an unreachable RTSP URL with a password (reconnect logs), and an
   HLS URL with ``?token=``: none of the secrets appear on stderr/stdout, in MQTT messages, in /health,
   /metrics or /dashboard.json, while the stream is scored and published.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from stream.config import HttpConfig
from tests.fixtures.media import TEST_ENCODER
from tests.fixtures.mqtt import collect_messages
from tests.test_webrtc import audio_only_offer, post, request, running, running_app, whip_config

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(180)


def non_loopback_address() -> str | None:
    """This machine's outward IPv4 address (a UDP 'connect' sends nothing), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def proc_net_tcp_listeners(port: int) -> list[str]:
    """Local addresses (dotted) of the sockets listening on ``port`` according to /proc/net/tcp."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
            found.append(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


async def test_http_server_listens_on_loopback_only_by_default(real_checkpoint: Path) -> None:
    assert HttpConfig().host == "127.0.0.1"
    cfg = whip_config(real_checkpoint)  # http: {port: 0}, host left at its default
    assert cfg.http.host == "127.0.0.1"
    async with running_app(cfg) as app:
        assert app.http is not None and app.http.runner is not None
        sockets = [s for site in app.http.runner.sites for s in site._server.sockets]  # type: ignore[attr-defined]  # noqa: SLF001
        bound = [s.getsockname()[:2] for s in sockets]
        port = bound[0][1]
        base = f"http://127.0.0.1:{port}"
        listeners = proc_net_tcp_listeners(port)
        print(f"observed: HTTP sockets bound to {bound}; /proc/net/tcp listeners on {port}: {listeners}")
        assert bound and all(host == "127.0.0.1" for host, _ in bound)
        assert listeners == ["127.0.0.1"]
        async with aiohttp.ClientSession() as http, http.get(f"{base}/health/live") as response:
            assert response.status == 200
        outward = non_loopback_address()
        if outward is not None:
            with pytest.raises(OSError):
                socket.create_connection((outward, port), timeout=2).close()
            print(f"observed: connecting to {outward}:{port} is refused")


TOKENS = {"cam": "S3cr3t-Token-Value-0042", "other": "0ther-Stream-Token-77"}


async def test_whip_tokens_wrong_or_near_miss_get_401_and_are_never_logged(
    real_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = TOKENS["cam"]
    cfg = whip_config(real_checkpoint, whip={"tokens": TOKENS})
    offer = await audio_only_offer()
    async with running(cfg) as (service, base, whip), aiohttp.ClientSession() as http:
        url = f"{base}/whip/cam"
        near_misses = {
            "missing": None,
            "wrong": "wrong",
            "same length": "X" * len(secret),
            "prefix": secret[:-1],
            "suffixed": secret + "x",
            "other case": secret.swapcase(),
            "other stream's": TOKENS["other"],
            "with spaces": f" {secret[:5]} {secret[5:]}",
        }
        for name, token in near_misses.items():
            status, headers, _ = await post(http, url, offer, token)
            print(f"injected: {name} token; observed: {status} {headers.get('WWW-Authenticate')}")
            assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer"), name
        async with http.post(url, data=offer, headers={"Content-Type": "application/sdp", "Authorization": f"Basic {secret}"}) as response:
            assert response.status == 401  # the right secret under another scheme
        status, _, _ = await post(http, f"{base}/whip/untokened", offer, secret)
        assert status == 401  # a stream without a token of its own is refused like a wrong token
        assert not whip.sessions and not service.streams
        status, _, text = await post(http, url, offer, secret)
        print(f"injected: the right token; observed: {status} {text.strip()}")
        assert status == 400 and "no m=video" in text  # past authentication, refused for its content
        assert (await request(http, "DELETE", f"{url}/AAAAAAAAAAAAAAAAAAAAAAAA", "wrong"))[0] == 401
        outputs = []
        for path in ("/health", "/metrics"):
            async with http.get(base + path) as response:
                outputs.append(await response.text())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.5), http.get(f"{base}/events/cam") as response:
                async for line in response.content:
                    outputs.append(line.decode())
    everything = caplog.text + "".join(outputs)
    assert "POST refused 401" in caplog.text
    for token in TOKENS.values():
        assert token not in everything
        assert token[:12] not in everything


@pytest.fixture
def secret_broker(make_mqtt_broker):  # type: ignore[no-untyped-def]
    return make_mqtt_broker(users={"svc": "Mq77-Broker-Pass"})


async def test_passwords_never_appear_in_the_logs_of_a_real_run(
    secret_broker, rtsp_server, fake_checkpoint: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    server = rtsp_server()
    rtsp_url = server.url.replace("rtsp://", "rtsp://viewer:Rt5p-Cam-Pass@")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    secrets_ = ["Mq77-Broker-Pass", "Rt5p-Cam-Pass", "Dead-Cam-Pass", "Qu3ry-Token-99"]
    config = {
        "detector": {"weights_dir": str(fake_checkpoint.parent), "weights": [fake_checkpoint.name], "encoder": TEST_ENCODER, "device": "cpu", "input_size": 128},
        "streams": [
            {"name": "cam", "url": rtsp_url, "sample_fps": 2},
            {"name": "dead", "url": f"rtsp://admin:Dead-Cam-Pass@127.0.0.1:{closed}/x", "reconnect_min_s": 0.2, "reconnect_max_s": 0.5},
            {"name": "hls", "url": f"http://127.0.0.1:{closed}/live.m3u8?user=a&token=Qu3ry-Token-99", "reconnect_min_s": 0.2, "reconnect_max_s": 0.5},
        ],
        "mqtt": {"host": secret_broker.host, "port": secret_broker.port, "username": "svc", "password": "Mq77-Broker-Pass", "client_id": "secret-run"},
        "http": {"port": 0},
        "alerts": {"min_samples": 2},
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    async with collect_messages(secret_broker.host, secret_broker.port, ["deepfake/#"], username="svc", password="Mq77-Broker-Pass") as seen:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "stream.cli", "--log-level", "DEBUG", "run", "--config", str(path), "--duration", "25",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        lines: list[str] = []
        outputs: list[str] = []
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(90):
                while not any("HTTP listening" in line for line in lines):
                    line = (await proc.stdout.readline()).decode(errors="replace")
                    assert line, "".join(lines)[-3000:]
                    lines.append(line)
            port = int(re.search(r"HTTP listening on http://127\.0\.0\.1:(\d+)", "".join(lines)).group(1))  # type: ignore[union-attr]
            reader = asyncio.create_task(_drain(proc.stdout, lines))
            await seen.wait_for(lambda _: len(seen.on("deepfake/cam/alert")) >= 1, 60, "the cam stream scored into an alert")
            await seen.wait_for(lambda _: any(m.json()["state"] == "reconnecting" for m in seen.on("deepfake/dead/status")), 30, "dead reconnecting")
            async with aiohttp.ClientSession() as http:
                for endpoint in ("/health", "/metrics", "/dashboard.json"):
                    async with http.get(f"http://127.0.0.1:{port}{endpoint}") as response:
                        outputs.append(await response.text())
            proc.terminate()  # SIGTERM: a clean stop, with its own log lines
            await asyncio.wait_for(proc.wait(), 30)
            await reader
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    log_text = "".join(lines)
    published = "\n".join(m.text for m in seen.messages)
    print(f"observed: {len(lines)} log lines, {len(seen.messages)} MQTT messages, exit {proc.returncode}")
    assert proc.returncode == 0
    assert "streaming" in log_text and "MQTT connected" in log_text and "viewer:***@" in log_text
    assert "admin:***@" in published and "token=***" in log_text
    for secret in secrets_:
        for where, text in (("logs", log_text), ("MQTT", published), ("/health", outputs[0]), ("/metrics", outputs[1])):
            assert secret not in text, f"{secret} leaked into {where}"


async def _drain(stream: asyncio.StreamReader, lines: list[str]) -> None:
    while line := await stream.readline():
        lines.append(line.decode(errors="replace"))
