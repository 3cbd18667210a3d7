"""WHIP ingest end to end: a real aiortc publisher, real mosquitto, and headless Debian Chromium.

Nothing is mocked: the publisher encodes the astronaut clip and sends it over loopback UDP,
the service decodes, samples and scores it with the forced checkpoints, and scores/statuses
are read back from a real broker.  The browser test needs Debian's ``chromium``
(``.ci/apt-packages-webrtc.txt``); without it the test skips locally and fails under CI.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamTrack

from stream.app import App
from stream.config import AppConfig, parse_config
from stream.demo_media import astronaut_frame
from stream.service import StreamService
from stream.web.whip import WHIP_KEY, WhipEndpoint
from tests.fixtures.browser import chromium, chromium_or_skip, until
from tests.fixtures.media import TEST_ENCODER
from tests.fixtures.mqtt import MosquittoBroker, collect_messages
from tests.fixtures.sse import sse_events

pytestmark = pytest.mark.timeout(120)

SDP = "application/sdp"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
LOCATION_RE = re.compile(r"^/whip/(?P<stream>[^/]+)/(?P<id>[A-Za-z0-9_-]{20,})$")


# ---- set-up helpers ---------------------------------------------------------------------------


def whip_config(weights: Path, broker: MosquittoBroker | None = None, whip: dict[str, Any] | None = None, **extra: Any) -> AppConfig:
    """A small, fast service: b0 at 128 px on CPU, HTTP on a free loopback port, MQTT only with a broker."""
    mqtt = {"host": broker.host, "port": broker.port, "client_id": f"svc-{broker.port}", "reconnect_max_s": 1.0} if broker else {"enabled": False}
    data = {
        "detector": {"weights_dir": str(weights.parent), "weights": [weights.name], "encoder": TEST_ENCODER, "device": "cpu", "input_size": 128},
        "mqtt": mqtt,
        "alerts": {"min_samples": 2},
        "window": {"seconds": 4, "max_scores": 8},
        "engine": {"max_batch": 8, "max_wait_ms": 10},
        "http": {"port": 0},
        "whip": {"sample_fps": 2, "watchdog_s": 3, **(whip or {})},
        **extra,
    }
    return parse_config(data, "test")


@contextlib.asynccontextmanager
async def running_app(cfg: AppConfig) -> AsyncIterator[App]:
    """A started analyzer; stopped afterwards unless the test stopped it."""
    app = App(cfg)
    await app.start()
    try:
        assert app.http is not None and app.http.runner is not None
        yield app
    finally:
        if app.http is not None and app.http.runner is not None:  # not stopped by the test itself
            await app.stop()


def parts(app: App) -> tuple[StreamService, str, WhipEndpoint]:
    """A started app's service, base URL and WHIP endpoint."""
    assert app.service is not None and app.http is not None and app.http.runner is not None
    return app.service, f"http://127.0.0.1:{app.http.port}", app.http.runner.app[WHIP_KEY]


@contextlib.asynccontextmanager
async def running(cfg: AppConfig) -> AsyncIterator[tuple[StreamService, str, WhipEndpoint]]:
    """A started service, its base URL and its WHIP endpoint; stopped afterwards."""
    async with running_app(cfg) as app:
        yield parts(app)


class GatedTrack(MediaStreamTrack):
    """Relays a player's video; ``silent = True`` stops sending while the connection stays up."""

    kind = "video"

    def __init__(self, inner: MediaStreamTrack) -> None:
        super().__init__()
        self.inner = inner
        self.silent = False

    async def recv(self):  # type: ignore[no-untyped-def]
        frame = await self.inner.recv()
        while self.silent:
            await asyncio.sleep(0.1)
        return frame


@contextlib.asynccontextmanager
async def publisher(clip: Path, audio: bool = False) -> AsyncIterator[tuple[RTCPeerConnection, GatedTrack]]:
    """An aiortc publisher with the clip (looped, real time) on a send-only video transceiver (and an audio one)."""
    player = MediaPlayer(str(clip), loop=True)
    assert player.video is not None
    track = GatedTrack(player.video)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(track, direction="sendonly")
    if audio:
        pc.addTransceiver("audio", direction="sendonly")
    try:
        yield pc, track
    finally:
        await pc.close()
        player.video.stop()


async def offer_of(pc: RTCPeerConnection) -> str:
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


async def audio_only_offer() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("audio", direction="sendonly")
        return await offer_of(pc)
    finally:
        await pc.close()


async def post(http: aiohttp.ClientSession, url: str, body: Any, token: str | None = None, content_type: str = SDP) -> tuple[int, Any, str]:
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with http.post(url, data=body, headers=headers) as response:
        return response.status, response.headers, await response.text()


async def request(http: aiohttp.ClientSession, method: str, url: str, token: str | None = None) -> tuple[int, Any, str]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with http.request(method, url, headers=headers) as response:
        return response.status, response.headers, await response.text()


def states(seen, stream: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [m.json()["state"] for m in seen.on(f"deepfake/{stream}/status")]


def statuses(seen, stream: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [m.json() for m in seen.on(f"deepfake/{stream}/status")]


def face_scores(seen, stream: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [s for s in (m.json() for m in seen.on(f"deepfake/{stream}/score")) if s["score"] is not None]


async def read_events(http: aiohttp.ClientSession, url: str, wanted: set[str], timeout: float = 10) -> dict[str, dict]:
    """Read server-sent events until one of each ``wanted`` kind arrived; the latest of each."""
    latest: dict[str, dict] = {}
    async with asyncio.timeout(timeout), contextlib.aclosing(sse_events(http, url)) as events:
        async for event, payload in events:
            latest[event] = payload
            if wanted <= latest.keys():
                return latest
    raise AssertionError(f"event stream ended early: {latest}")


# ---- the aiortc publisher ---------------------------------------------------------------------


async def test_whip_publisher_is_scored_then_delete_and_silence_take_it_offline(
    mqtt_broker: MosquittoBroker, astronaut_clip: Path, fake_checkpoint: Path
) -> None:
    cfg = whip_config(fake_checkpoint, mqtt_broker)
    async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["deepfake/#"]) as seen, running_app(cfg) as app:
        service, base, whip = parts(app)
        async with aiohttp.ClientSession() as http:
            async with publisher(astronaut_clip) as (pc, _):
                status, headers, answer = await post(http, f"{base}/whip/live", await offer_of(pc))
                assert status == 201, answer
                assert headers["Content-Type"].startswith(SDP) and answer.startswith("v=0")
                assert "a=candidate:" in answer and "a=end-of-candidates" in answer  # full gathering, no trickle
                location = headers["Location"]
                assert (match := LOCATION_RE.match(location)) and match["stream"] == "live"
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

                await seen.wait_for(lambda _: "streaming" in states(seen, "live"), 20, "live streaming")
                await seen.wait_for(lambda _: len(face_scores(seen, "live")) >= 2, 30, "two face scores")
                score = face_scores(seen, "live")[-1]
                assert score["score"] > 0.99 and score["faces"] == 1 and score["stream"] == "live"
                streaming = [s for s in statuses(seen, "live") if s["state"] == "streaming"][-1]
                assert streaming["kind"] == "webrtc" and (streaming["width"], streaming["height"]) == (640, 360)
                assert service.streams["live"].kind == "webrtc" and service.streams["live"].state == "streaming"

                events = await read_events(http, f"{base}/events/live", {"status", "score"})
                assert events["status"]["state"] == "streaming" and events["score"]["score"] > 0.99

                assert (await request(http, "PATCH", base + location))[0] == 405  # no trickle ICE
                status, headers, _ = await request(http, "DELETE", base + location)
                assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
                await seen.wait_for(lambda _: states(seen, "live")[-1] == "offline", 10, "live offline")
                assert service.streams["live"].state == "offline" and not whip.sessions
                await until(lambda: pc.connectionState == "closed", 10, "server closed the peer connection")
                assert (await request(http, "DELETE", base + location))[0] == 404  # gone for good

            # the name is free again; a publisher that goes silent is taken offline by the watchdog
            async with publisher(astronaut_clip) as (pc, track):
                status, _, answer = await post(http, f"{base}/whip/live", await offer_of(pc))
                assert status == 201, answer
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
                await until(lambda: service.streams["live"].state == "streaming", 20, "streaming again")
                track.silent = True
                await until(lambda: service.streams["live"].state == "offline", 10, "watchdog offline")
                assert "watchdog" in (service.streams["live"].detail or "")
                await until(lambda: not whip.sessions and pc.connectionState == "closed", 10, "server closed the peer connection")
                await seen.wait_for(lambda _: statuses(seen, "live")[-1]["state"] == "offline", 10, "offline on MQTT")
                assert "watchdog" in statuses(seen, "live")[-1]["detail"]

            # the service stops while a publisher is live: its peer connection is closed, the stream says stopped
            async with publisher(astronaut_clip) as (pc, _):
                status, _, answer = await post(http, f"{base}/whip/late", await offer_of(pc))
                assert status == 201, answer
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
                await until(lambda: service.streams["late"].state == "streaming", 20, "late streaming")
                await app.stop()
                await until(lambda: pc.connectionState == "closed", 10, "peer closed by the stopping service")
                assert not whip.sessions and service.streams["late"].state == "stopped"
                await seen.wait_for(lambda _: states(seen, "late")[-1] == "stopped", 10, "stopped on MQTT")


# ---- refusals ---------------------------------------------------------------------------------

TOKENS = {"secure": "s3cret-secure-token", "other": "0ther-token", "cam": "cam-token"}


async def test_whip_refusals_auth_limits_and_cors(astronaut_clip: Path, real_checkpoint: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="stream")
    cfg = whip_config(
        real_checkpoint,
        whip={"max_sessions": 1, "max_sdp_bytes": 16384, "watchdog_s": 10, "tokens": TOKENS},
        streams=[{"name": "cam", "url": str(astronaut_clip), "enabled": False}],
    )
    async with running(cfg) as (service, base, whip), aiohttp.ClientSession() as http, publisher(astronaut_clip) as (pc, _):
        offer = await offer_of(pc)
        secure = f"{base}/whip/secure"

        # CORS pre-flight, as a browser sends it
        async with http.options(secure, headers={"Origin": "http://example.test", "Access-Control-Request-Method": "POST",
                                                 "Access-Control-Request-Headers": "authorization, content-type"}) as response:  # fmt: skip
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert {"POST", "DELETE", "OPTIONS"} <= {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
            assert {"authorization", "content-type"} <= {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
            assert "location" in response.headers["Access-Control-Expose-Headers"].lower()

        # 401: missing, wrong, another stream's token, a stream without a token; nothing is created
        for url, token in [(secure, None), (secure, "wrong"), (secure, TOKENS["other"]), (f"{base}/whip/untokened", "anything")]:
            status, headers, text = await post(http, url, offer, token)
            assert status == 401, (url, token, text)
            assert headers["WWW-Authenticate"].startswith("Bearer") and headers["Access-Control-Allow-Origin"] == "*"
        assert not whip.sessions and "secure" not in service.streams and "untokened" not in service.streams

        # 400 / 413 / 415: bad requests never reach aiortc
        token = TOKENS["secure"]
        assert (await post(http, f"{base}/whip/-bad", offer, token))[0] == 400  # invalid stream name
        assert (await post(http, f"{base}/whip/{'x' * 65}", offer, token))[0] == 400
        status, _, text = await post(http, secure, "hello, not SDP", token)
        assert status == 400 and "v=0" in text
        status, _, text = await post(http, secure, "v=0\r\nm=video not-a-port\r\n", token)
        assert status == 400 and "malformed SDP" in text
        status, _, text = await post(http, secure, await audio_only_offer(), token)
        assert status == 400 and "m=video" in text
        assert (await post(http, secure, offer, token, content_type="text/plain"))[0] == 415
        assert (await post(http, secure, "v=0\r\n" + "a=x\r\n" * 4000, token))[0] == 413  # declared length

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(20):
                yield b"a=padding-padding-padding-padding\r\n" * 32

        assert (await post(http, secure, chunks(), token))[0] == 413  # chunked, no length: stops reading at the limit
        assert not whip.sessions

        # 409: a configured URL stream's name (even disabled)
        assert (await post(http, f"{base}/whip/cam", offer, TOKENS["cam"]))[0] == 409

        # one session is the limit: a second publisher on the name gets 409, another name 503
        status, headers, answer = await post(http, secure, offer, token)
        assert status == 201, answer
        location = headers["Location"]
        assert service.streams["secure"].kind == "webrtc" and len(whip.sessions) == 1
        async with publisher(astronaut_clip, audio=True) as (pc2, _):
            offer2 = await offer_of(pc2)
            assert (await post(http, secure, offer2, token))[0] == 409
            status, headers, _ = await post(http, f"{base}/whip/other", offer2, TOKENS["other"])
            assert status == 503 and int(headers["Retry-After"]) > 0

            # DELETE: needs the token, unknown sessions are 404, then the slot is free again
            assert (await request(http, "DELETE", base + location))[0] == 401
            assert (await request(http, "DELETE", f"{secure}/{'A' * 24}", token))[0] == 404
            assert (await request(http, "DELETE", f"{base}/whip/other/{location.rsplit('/', 1)[1]}", TOKENS["other"]))[0] == 404
            assert len(whip.sessions) == 1
            assert (await request(http, "DELETE", base + location, token))[0] == 200
            assert service.streams["secure"].state == "offline" and not whip.sessions
            status, headers, answer = await post(http, f"{base}/whip/other", offer2, TOKENS["other"])
            assert status == 201
            audio_section = answer[answer.index("m=audio") :]
            assert "a=inactive" in audio_section.split("m=video")[0]  # audio is declined, never decoded
            assert (await request(http, "DELETE", base + headers["Location"], TOKENS["other"]))[0] == 200

    assert all(secret not in caplog.text for secret in TOKENS.values())
    assert "POST refused 401" in caplog.text


# ---- the browser page -------------------------------------------------------------------------


def write_y4m(path: Path, seconds: float = 2.0, fps: int = 25) -> Path:
    """The astronaut as a Y4M clip: Chromium's fake camera plays it instead of its test pattern."""
    frames = [astronaut_frame(360, 640, shift=int(20 * (i % 50 - 25) / 25)) for i in range(int(seconds * fps))]
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W640 H360 F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            out.write(b"FRAME\n" + cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


async def test_browser_page_publishes_its_camera(mqtt_broker: MosquittoBroker, fake_checkpoint: Path, tmp_path: Path) -> None:
    chromium_or_skip()
    fake_video = write_y4m(tmp_path / "astronaut.y4m")
    cfg = whip_config(fake_checkpoint, mqtt_broker)
    async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["deepfake/#"]) as seen, running(cfg) as (service, base, whip):
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/publish") as response:
                assert response.status == 200 and "/static/app.js" in await response.text()
            async with http.get(f"{base}/static/app.js") as response:
                assert response.status == 200 and "application/sdp" in await response.text()
        async with chromium(f"{base}/publish?stream=browser&autostart=1", tmp_path / "profile", fake_video) as page:
            await seen.wait_for(lambda _: "streaming" in states(seen, "browser"), 30, "browser streaming")
            assert service.streams["browser"].kind == "webrtc" and len(whip.sessions) == 1
            await seen.wait_for(lambda _: len(face_scores(seen, "browser")) >= 2, 30, "face scores from the browser")
            assert face_scores(seen, "browser")[-1]["score"] > 0.99

            # the page shows what the service sees (over its server-sent events)
            shown = "document.body.dataset.state + ' ' + document.getElementById('score').textContent"
            async with asyncio.timeout(10):
                while not re.fullmatch(r"streaming 0\.99\d", await page.evaluate(shown)):
                    await asyncio.sleep(0.2)
            assert await page.evaluate("document.getElementById('publisher').textContent") == "connected"
            shot = await page.call("Page.captureScreenshot", format="png")
            ARTIFACTS.mkdir(exist_ok=True)
            png = base64.b64decode(shot["data"])
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
            (ARTIFACTS / "webrtc-page.png").write_bytes(png)

            # Stop sends DELETE: offline at once, not after the watchdog
            await page.evaluate("document.getElementById('stop').click()")
            await seen.wait_for(lambda _: states(seen, "browser")[-1] == "offline", 5, "browser offline")
            assert "DELETE" in (service.streams["browser"].detail or "") and not whip.sessions
