"""Hostile WHIP requests against a serving service: refused with 400/413/415, nothing created, and the
service keeps scoring its file stream and accepting a proper offer afterwards.

Cases (1 test, 13 requests):

1. ``test_hostile_whip_bodies_are_refused_and_the_service_keeps_serving`` - bodies that are not SDP
   (plain text, JSON, binary, NUL bytes, an empty body), SDP without a video section (audio only,
   ``v=0`` alone), SDP whose video section aiortc rejects (no ICE credentials), unparseable SDP,
   oversize bodies (declared length, chunked, a single 1 MB line) and a wrong content type -> the
   documented status, no session, no stream; a file stream is scored throughout and a real offer
   still gets 201 (then DELETE 200).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from tests.test_service import fast_stream
from tests.test_webrtc import audio_only_offer, offer_of, post, request, running, whip_config

pytestmark = pytest.mark.timeout(120)

VIDEO_WITHOUT_ICE = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n"
)


async def chunked(total: int) -> AsyncIterator[bytes]:
    """A body without Content-Length: the server must stop reading at its limit."""
    sent = 0
    while sent < total:
        yield b"a=x-padding:" + b"p" * 1000 + b"\r\n"
        sent += 1014


async def test_hostile_whip_bodies_are_refused_and_the_service_keeps_serving(astronaut_clip: Path, real_checkpoint: Path) -> None:
    cfg = whip_config(real_checkpoint, streams=[fast_stream("file", str(astronaut_clip), loop=True, realtime=True)])
    limit = cfg.whip.max_sdp_bytes
    async with running(cfg) as (service, base, whip), aiohttp.ClientSession() as http:
        file = service.streams["file"].pipeline.stats
        while file.samples_scored < 2:
            await asyncio.sleep(0.1)
        before = file.samples_scored
        url = f"{base}/whip/hostile"
        cases: list[tuple[str, object, str, int, str]] = [
            ("plain text", "hello, not SDP", "application/sdp", 400, "first line must be v=0"),
            ("json", '{"type": "offer", "sdp": "v=0"}', "application/sdp", 400, "first line must be v=0"),
            ("binary", bytes(range(256)) * 8, "application/sdp", 400, "not UTF-8"),
            ("nul bytes", "v=0\r\n\x00\x00\x00m=video\x00\r\n", "application/sdp", 400, "no m=video section"),
            ("empty body", b"", "application/sdp", 400, "first line must be v=0"),
            ("audio only", await audio_only_offer(), "application/sdp", 400, "no m=video section"),
            ("v=0 alone", "v=0\r\n", "application/sdp", 400, "no m=video section"),
            ("video without ICE", VIDEO_WITHOUT_ICE, "application/sdp", 400, "SDP offer rejected"),
            ("unparseable", "v=0\r\nm=video not-a-port\r\n", "application/sdp", 400, "malformed SDP"),
            ("oversize, declared", "v=0\r\n" + "a=x\r\n" * (limit // 5 + 10), "application/sdp", 413, f"larger than {limit} bytes"),
            ("oversize, chunked", chunked(4 * limit), "application/sdp", 413, f"larger than {limit} bytes"),
            ("one 1 MB line", "v=0\r\na=" + "x" * 2**20 + "\r\n", "application/sdp", 413, f"larger than {limit} bytes"),
            ("wrong content type", await audio_only_offer(), "text/plain", 415, "Content-Type must be application/sdp"),
        ]
        for name, body, content_type, expected, reason in cases:
            status, _, text = await post(http, url, body, content_type=content_type)
            print(f"injected: {name}; observed: {status} {text.strip()[:100]}")
            assert (status, reason in text) == (expected, True), (name, status, text[:300])
            assert not whip.sessions and "hostile" not in service.streams
        await asyncio.sleep(2.5)
        during = file.samples_scored
        print(f"observed: the file stream scored {during - before} samples while the requests were refused")
        assert during >= before + 3 and service.streams["file"].state == "streaming"

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # a well-formed offer is still served
        try:
            pc.addTransceiver("video", direction="sendonly")
            status, headers, answer = await post(http, url, await offer_of(pc))
            assert status == 201 and answer.startswith("v=0"), answer[:300]
            assert (await request(http, "DELETE", base + headers["Location"]))[0] == 200
        finally:
            await pc.close()
        assert not whip.sessions and service.streams["hostile"].state == "offline"
