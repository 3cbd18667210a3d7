"""WebRTC ingest: a WHIP endpoint (RFC 9725) built on aiortc, plus the camera publishing page and its event stream.

It sees the service only as a ``StreamRegistry``: it attaches a ``WebRtcSource`` per session
and removes it when the session ends.

Routes (all under the service's HTTP server):

``POST   /whip/{stream}``               SDP offer in, ``201`` + SDP answer + ``Location`` out
``DELETE /whip/{stream}/{session}``     ends the session (``200``); unknown session ``404``
``PATCH  /whip/{stream}/{session}``     ``405``: no trickle ICE, the answer carries every candidate
``OPTIONS`` on both                     CORS pre-flight for browsers (``204``)
``GET    /events/{stream}``             server-sent events: the stream's status and score, ~1/s
``GET    /publish`` and ``/static/...`` the publishing page (camera -> WHIP, live status/score)

Decisions:

* Auth: with ``whip.tokens`` empty the endpoint is open (it binds to loopback by default).
  As soon as one token is configured, *every* stream needs its own ``Authorization: Bearer``
  token; a stream without a configured token is refused like a wrong token (``401``), so a
  client cannot probe which names exist.  Checked before anything else is done: a refused
  request never creates a peer connection.  ``DELETE`` needs the same token.
* Capacity: ``whip.max_sessions`` concurrent sessions, the next offer gets ``503`` with
  ``Retry-After`` (the server is busy, not the client misbehaving, so not ``429``).
* Status codes: invalid stream name ``400`` (also the reserved ``instance``); malformed offer
  ``400`` with a plain-text reason; content type other than ``application/sdp`` ``415``; body
  over ``whip.max_sdp_bytes`` ``413``; name of a configured URL stream or of a stream already
  being published ``409``.
* Sharded fleets: a publisher is taken by whichever replica it reaches, but the name of a
  configured stream is refused on every replica, also one whose shard does not watch it:
  another replica publishes that stream's topics, and two sources under one name would mix.
* ICE: host candidates only (no STUN/TURN: nothing outside may be reachable), gathered in full
  before answering.
* Media: the first video track is analysed; other media sections are answered ``inactive`` so
  their packets are never decoded.
* ``/events/{stream}`` is not token-protected (``EventSource`` cannot send headers); it shows
  what MQTT publishes anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import SessionDescription
from pydantic import SecretStr

from stream.registry import StreamHandle, StreamRegistry
from stream.sources.base import StreamState
from stream.sources.config import RESERVED_STREAM_NAMES, STREAM_NAME_PATTERN
from stream.sources.webrtc import WebRtcSource
from stream.web.config import WhipConfig
from stream.web.sse import EventListeners, sse

log = logging.getLogger(__name__)

STREAM_NAME_RE = re.compile(STREAM_NAME_PATTERN.removeprefix("^").removesuffix("$"))
SDP_TYPE = "application/sdp"
STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_PATH = "/publish"
RETRY_AFTER_S = 10
EVENT_INTERVAL_S = 1.0
MAX_EVENT_CLIENTS = 64
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, DELETE, PATCH, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Expose-Headers": "Location",
    "Access-Control-Max-Age": "600",
}


# ---- request checks ---------------------------------------------------------------------------


class Refused(Exception):
    """A request refused with ``status`` and a plain-text ``reason`` (and optional extra headers)."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}


def check_stream_name(name: str) -> None:
    if not STREAM_NAME_RE.fullmatch(name):
        raise Refused(400, "invalid stream name: use 1-64 of A-Z a-z 0-9 _ . - starting with a letter or digit")
    if name in RESERVED_STREAM_NAMES:
        raise Refused(400, f"invalid stream name: {name!r} is reserved for the replicas' availability topics")


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def check_token(tokens: Mapping[str, SecretStr], stream: str, header: str | None) -> None:
    """Raise 401 unless the endpoint is open or the header carries ``stream``'s token.

    A stream without a configured token is compared against a random one, so the answer
    (and its timing) does not reveal which names have tokens.
    """
    if not tokens:
        return
    given = bearer_token(header)
    secret = tokens.get(stream)
    expected = secret.get_secret_value() if secret is not None else secrets.token_urlsafe(32)
    if given is not None and hmac.compare_digest(given.encode(), expected.encode()) and secret is not None:
        return
    error = 'Bearer realm="whip"' if given is None else 'Bearer realm="whip", error="invalid_token"'
    raise Refused(401, "missing bearer token" if given is None else "invalid bearer token", {"WWW-Authenticate": error})


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The body, or 413 as soon as it is known to exceed ``limit`` bytes (declared or streamed)."""
    if request.content_length is not None and request.content_length > limit:
        raise Refused(413, f"SDP offer larger than {limit} bytes")
    body = bytearray()
    while chunk := await request.content.read(limit + 1 - len(body)):
        body += chunk
        if len(body) > limit:
            raise Refused(413, f"SDP offer larger than {limit} bytes")
    return bytes(body)


def check_offer(body: bytes) -> str:
    """The offer as text if it is a parseable SDP with a video section, else 400 with the reason."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, "malformed SDP: not UTF-8 text") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or lines[0].strip() != "v=0":
        raise Refused(400, "malformed SDP: the first line must be v=0")
    try:
        parsed = SessionDescription.parse(text)
    except Exception as exc:  # noqa: BLE001 - aiortc's parser raises anything from ValueError to AssertionError
        raise Refused(400, f"malformed SDP: cannot parse ({type(exc).__name__})") from None
    if not any(media.kind == "video" for media in parsed.media):
        raise Refused(400, "SDP offer has no m=video section: nothing to analyse")
    return text


def refusal(exc: Refused) -> web.Response:
    return web.Response(status=exc.status, text=exc.reason + "\n", headers={**CORS_HEADERS, **exc.headers})


# ---- sessions ---------------------------------------------------------------------------------


@dataclass
class WhipSession:
    id: str
    stream: str
    pc: RTCPeerConnection | None = None
    source: WebRtcSource | None = None
    handle: StreamHandle | None = None
    ending: asyncio.Task[None] | None = None

    @property
    def location(self) -> str:
        return f"/whip/{self.stream}/{self.id}"


class WhipEndpoint:
    """Owns the WHIP sessions of one service; every session ends through :meth:`end`."""

    def __init__(self, streams: StreamRegistry, cfg: WhipConfig) -> None:
        self.streams = streams
        self.cfg = cfg
        self.sessions: dict[str, WhipSession] = {}
        self.by_stream: dict[str, WhipSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        self._listeners = EventListeners(MAX_EVENT_CLIENTS)

    # ---- WHIP ----------------------------------------------------------------------------
    async def post(self, request: web.Request) -> web.Response:
        stream = request.match_info["stream"]
        try:
            session, offer = await self._reserve(request, stream)
        except Refused as exc:
            log.info("whip %s: POST refused %d (%s)", stream if STREAM_NAME_RE.fullmatch(stream) else "?", exc.status, exc.reason)
            return refusal(exc)
        try:
            answer = await self._negotiate(session, offer)
            self._attach(session)
        except Refused as exc:
            await self._discard(session)
            log.info("whip %s: offer rejected (%s)", stream, exc.reason)
            return refusal(exc)
        except BaseException:
            await self._discard(session)
            raise
        log.info("whip %s: session %s opened from %s", stream, session.id[:8], request.remote)
        return web.Response(status=201, text=answer, content_type=SDP_TYPE, headers={**CORS_HEADERS, "Location": session.location})

    async def _reserve(self, request: web.Request, stream: str) -> tuple[WhipSession, str]:
        """Run every check, then book the name and a slot (no await between the last check and the booking)."""
        check_stream_name(stream)
        if self._closing.is_set():
            raise Refused(503, "service is stopping", {"Retry-After": str(RETRY_AFTER_S)})
        check_token(self.cfg.tokens, stream, request.headers.get("Authorization"))
        if request.content_type != SDP_TYPE:
            raise Refused(415, f"Content-Type must be {SDP_TYPE}")
        offer = check_offer(await read_limited(request, self.cfg.max_sdp_bytes))
        if self.streams.is_configured(stream):
            raise Refused(409, f"stream {stream!r} is a configured URL stream")
        if stream in self.by_stream or self._is_running(stream):
            raise Refused(409, f"stream {stream!r} is already being published")
        if len(self.sessions) >= self.cfg.max_sessions:
            raise Refused(503, f"at most {self.cfg.max_sessions} WHIP sessions", {"Retry-After": str(RETRY_AFTER_S)})
        session = WhipSession(secrets.token_urlsafe(18), stream)
        self.sessions[session.id] = session
        self.by_stream[stream] = session
        return session, offer

    def _is_running(self, stream: str) -> bool:
        handle = self.streams.get(stream)
        return handle is not None and handle.running

    async def _negotiate(self, session: WhipSession, offer: str) -> str:
        """Offer -> answer with every host candidate gathered (aiortc gathers in setLocalDescription)."""
        pc = session.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        except Exception as exc:  # noqa: BLE001 - aiortc reports a bad offer with assorted exception types
            raise Refused(400, f"SDP offer rejected: {exc or type(exc).__name__}") from None
        track = self._pick_video(pc)
        if track is None:
            raise Refused(400, "SDP offer has no video the server can receive (direction or codec)")
        await pc.setLocalDescription(await pc.createAnswer())
        session.source = WebRtcSource(
            session.stream, track, self.cfg.sample_fps, self.cfg.watchdog_s,
            on_streaming=lambda w, h: self._streaming(session, w, h),
            on_ended=lambda detail: self._end_soon(session, detail),
        )  # fmt: skip
        return pc.localDescription.sdp

    @staticmethod
    def _pick_video(pc: RTCPeerConnection) -> MediaStreamTrack | None:
        """The first received video track; every other section is answered inactive (never decoded)."""
        chosen: MediaStreamTrack | None = None
        for transceiver in pc.getTransceivers():
            track = transceiver.receiver.track
            if chosen is None and transceiver.kind == "video" and track is not None:
                chosen = track
            else:
                transceiver.direction = "inactive"
        return chosen

    def _attach(self, session: WhipSession) -> None:
        """Hand the session's source to the service and watch the peer connection."""
        assert session.pc is not None and session.source is not None
        pc = session.pc

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self.end(session, f"peer connection {pc.connectionState}")

        session.handle = self.streams.add_source(session.stream, session.source, kind="webrtc")
        self.streams.set_state(session.handle, StreamState.CONNECTING, "WHIP session negotiated")
        session.source.start()

    def _streaming(self, session: WhipSession, width: int, height: int) -> None:
        if session.handle is not None and session.ending is None:
            self.streams.set_state(session.handle, StreamState.STREAMING, f"webrtc {width}x{height}")

    def _end_soon(self, session: WhipSession, detail: str) -> None:
        self.end(session, detail)

    def end(self, session: WhipSession, detail: str) -> asyncio.Task[None] | None:
        """End ``session`` once (later calls share the first one's task): stream offline, peer closed.

        Not while the service shuts down: its streams are ``stopped`` then, not ``offline``.
        """
        if session.ending is None and not self._closing.is_set():
            session.ending = asyncio.create_task(self._end(session, detail), name=f"whip-end-{session.stream}")
            self._tasks.add(session.ending)
            session.ending.add_done_callback(self._tasks.discard)
        return session.ending

    async def _end(self, session: WhipSession, detail: str) -> None:
        log.info("whip %s: session %s ended (%s)", session.stream, session.id[:8], detail)
        try:
            if session.handle is not None and self.streams.get(session.stream) is session.handle:
                await self.streams.remove_stream(session.stream, state=StreamState.OFFLINE, detail=detail)
        finally:
            await self._discard(session)

    async def _discard(self, session: WhipSession) -> None:
        """Free the session's slot and name, and close its peer connection."""
        self.sessions.pop(session.id, None)
        if self.by_stream.get(session.stream) is session:
            del self.by_stream[session.stream]
        if session.pc is not None:
            with contextlib.suppress(Exception):
                await session.pc.close()

    async def delete(self, request: web.Request) -> web.Response:
        stream, session_id = request.match_info["stream"], request.match_info["session"]
        try:
            check_stream_name(stream)
            check_token(self.cfg.tokens, stream, request.headers.get("Authorization"))
            session = self.sessions.get(session_id)
            if session is None or session.stream != stream:
                raise Refused(404, "no such WHIP session")
        except Refused as exc:
            return refusal(exc)
        ending = self.end(session, "publisher ended the session (DELETE)")
        if ending is not None:
            await asyncio.shield(ending)
        return web.Response(status=200, text="session ended\n", headers=CORS_HEADERS)

    async def patch(self, request: web.Request) -> web.Response:
        return web.Response(
            status=405, text="trickle ICE is not supported: the answer already carries every candidate\n",
            headers={**CORS_HEADERS, "Allow": "DELETE, OPTIONS"},
        )  # fmt: skip

    async def options(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={**CORS_HEADERS, "Accept-Post": SDP_TYPE})

    async def shutdown(self, app: web.Application) -> None:
        """Service stopping: refuse new offers, end the event streams, close every peer connection."""
        self._closing.set()
        sessions = list(self.sessions.values())
        for session in sessions:
            if session.source is not None:
                await session.source.stop()
            await self._discard(session)
        for task in list(self._tasks):
            task.cancel()
        if sessions:
            log.info("whip: closed %d session(s) on shutdown", len(sessions))

    # ---- page and events -------------------------------------------------------------------
    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: ``status`` every second, ``score`` whenever a new one exists."""
        stream = request.match_info["stream"]
        try:
            check_stream_name(stream)
            if self._listeners.full:
                raise Refused(503, "too many event listeners", {"Retry-After": str(RETRY_AFTER_S)})
        except Refused as exc:
            return refusal(exc)
        return await self._listeners.serve(request, lambda response: self._push_events(response, stream), {"Access-Control-Allow-Origin": "*"})

    async def _push_events(self, response: web.StreamResponse, stream: str) -> None:
        last_score_time: object = None
        while not self._closing.is_set():
            status, score = self.stream_view(stream)
            await response.write(sse("status", status))
            if score is not None and score.get("time") != last_score_time:
                last_score_time = score.get("time")
                await response.write(sse("score", score))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), EVENT_INTERVAL_S)

    def stream_view(self, stream: str) -> tuple[dict[str, object], dict[str, object] | None]:
        """The stream's status payload and latest score payload, as MQTT would carry them."""
        handle = self.streams.get(stream)
        if handle is None:
            return {"state": "unknown", "detail": "no such stream (yet)", "time": time.time()}, None
        snapshot = handle.pipeline.last_snapshot
        return self.streams.status_payload(handle), None if snapshot is None else {"stream": stream, **snapshot.to_payload()}


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "publish.html", headers={"Cache-Control": "no-cache"})


WHIP_KEY: web.AppKey[WhipEndpoint] = web.AppKey("whip", WhipEndpoint)


def add_routes(app: web.Application, streams: StreamRegistry, cfg: WhipConfig) -> None:
    """Register WHIP, the event stream and the page; close every session when the app shuts down."""
    whip = WhipEndpoint(streams, cfg)
    app[WHIP_KEY] = whip
    handlers: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
        ("POST", "/whip/{stream}", whip.post),
        ("OPTIONS", "/whip/{stream}", whip.options),
        ("DELETE", "/whip/{stream}/{session}", whip.delete),
        ("PATCH", "/whip/{stream}/{session}", whip.patch),
        ("OPTIONS", "/whip/{stream}/{session}", whip.options),
        ("GET", "/events/{stream}", whip.events),
        ("GET", PAGE_PATH, index),
    ]
    for method, path, handler in handlers:
        app.router.add_route(method, path, handler)
    app.router.add_static("/static/", STATIC_DIR)
    app.on_shutdown.append(whip.shutdown)
