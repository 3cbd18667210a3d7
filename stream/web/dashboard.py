"""The control-room dashboard: one card per stream, the alert timeline, pushed live over server-sent events.

It sees the service as a ``StreamRegistry`` (the streams, their state and status) and the
pipelines' memory as a ``RecorderView`` (score history, alert snapshots, the timeline).

Routes:

``GET /``                       the dashboard page (``/dashboard.js``, ``/dashboard.css``: hand-written, no build step)
``GET /dashboard.json``         the whole state (what ``snapshot`` below carries)
``GET /events``                 server-sent events: ``snapshot`` on connect, then the changes
``GET /snapshot/{stream}.jpg``  the latest alert snapshot: the region around the face, the box drawn (404: none yet)

Events (``event: <kind>``, ``data: <json>``):

``snapshot``  ``{"time", "history_s", "thresholds": {"alert", "clear"}, "publish", "streams": [stream...], "timeline": [episode...]}``;
              a stream is its status (below) plus ``score``, ``faces``, ``score_time``, ``alert`` (the open episode or
              null), ``alerts``, ``last_alert_time``, ``snapshot`` (``{"id", "time", "score", "box", "width", "height",
              "url"}`` or null) and ``history`` (``[[second, score or null, faces], ...]``, the last ``history_s``)
``status``    ``{"stream", "kind", "state", "detail", "fps_in", "width", "height", "reconnects", "error"}`` when it changed
              (looked at every ``STATUS_INTERVAL_S``)
``score``     ``{"stream", "time", "score", "faces", "point": [second, highest score of that second, faces]}`` per sample
``alert``     the MQTT alert payload plus ``"episode"`` (its timeline entry: ``id``, ``stream``, ``started_at``,
              ``ended_at``, ``peak``, ``score``, ``reason``)
``image``     a new alert snapshot: ``{"stream", "id", "time", "score", "box", "width", "height", "url"}``

A client that falls too far behind gets a new ``snapshot``; at most ``MAX_EVENT_CLIENTS`` listen at
once (``503`` beyond); nothing a connection keeps grows while it lasts; the app's shutdown ends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from stream.alerts import AlertConfig
from stream.recorder import HISTORY_S, RecorderView
from stream.registry import StreamHandle, StreamRegistry
from stream.web.sse import EventListeners, sse

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_EVENT_CLIENTS = 32
RETRY_AFTER_S = 10
STATUS_INTERVAL_S = 1.0  # how often stream statuses (state, fps) are compared and sent when changed
PUSH_INTERVAL_S = 0.25  # changes are sent at most this often (a stream's samples of one second go as one point)
PING_INTERVAL_S = 15.0  # a comment line when nothing else was sent: finds clients that went away
RETRY_MS = 2000  # EventSource reconnect delay

EVENT_KIND = {"score": "score", "alert": "alert", "snapshot": "image"}  # recorder change -> SSE event


class Dashboard:
    """The page, its JSON and its event stream for one service."""

    def __init__(self, streams: StreamRegistry, recorder: RecorderView, alerts: AlertConfig, publish_page: str | None) -> None:
        self.streams = streams
        self.recorder = recorder
        self.thresholds = {"alert": alerts.alert_threshold, "clear": alerts.clear_threshold}
        self.publish_page = publish_page
        self.listeners = EventListeners(MAX_EVENT_CLIENTS)
        self._closing = asyncio.Event()

    @property
    def clients(self) -> int:
        """Event streams open now."""
        return self.listeners.count

    # ---- state ----------------------------------------------------------------------------------
    def status(self, handle: StreamHandle) -> dict[str, Any]:
        payload = self.streams.status_payload(handle)
        payload.pop("time", None)
        fps = payload.get("fps_in")
        return {
            "stream": handle.name,
            **payload,
            "fps_in": round(float(fps), 1) if isinstance(fps, int | float) else fps,
            "error": handle.pipeline.inference_error,
        }

    def state(self) -> dict[str, Any]:
        """The whole dashboard: every stream (status + recorded history) and the alert timeline."""
        recorded = self.recorder.state()
        streams = []
        for handle in self.streams.handles():
            record = recorded["streams"].get(handle.name) or {}
            snapshot = record.get("snapshot")
            streams.append(
                {
                    **self.status(handle),
                    "score": record.get("score"),
                    "faces": record.get("faces"),
                    "score_time": record.get("score_time"),
                    "alert": record.get("alert"),
                    "alerts": record.get("alerts", 0),
                    "last_alert_time": record.get("last_alert_time"),
                    "snapshot": None if snapshot is None else {**snapshot, "url": snapshot_url(handle.name, snapshot["id"])},
                    "history": record.get("history", []),
                }
            )
        return {
            "seq": recorded["seq"],
            "time": time.time(),
            "history_s": HISTORY_S,
            "thresholds": self.thresholds,
            "publish": self.publish_page,
            "streams": streams,
            "timeline": recorded["timeline"],
        }

    # ---- routes ---------------------------------------------------------------------------------
    async def json_state(self, _: web.Request) -> web.Response:
        return web.json_response(self.state(), headers={"Cache-Control": "no-cache"})

    async def snapshot_jpeg(self, request: web.Request) -> web.Response:
        snapshot = self.recorder.snapshot(request.match_info["stream"])
        if snapshot is None:
            return web.Response(status=404, text="no alert snapshot for this stream\n")
        return web.Response(
            body=snapshot.jpeg, content_type="image/jpeg",
            headers={"Cache-Control": "no-cache", "ETag": f'"{snapshot.alert_id}"', "X-Alert-Id": snapshot.alert_id,
                     "X-Face-Box": ",".join(str(v) for v in snapshot.box)},
        )  # fmt: skip

    async def events(self, request: web.Request) -> web.StreamResponse:
        if self._closing.is_set() or self.listeners.full:
            reason = "service is stopping" if self._closing.is_set() else f"at most {MAX_EVENT_CLIENTS} dashboard listeners"
            return web.Response(status=503, text=reason + "\n", headers={"Retry-After": str(RETRY_AFTER_S)})
        return await self.listeners.serve(request, lambda response: self._push(request, response))

    async def _push(self, request: web.Request, response: web.StreamResponse) -> None:
        """A snapshot, then the recorder's changes and changed statuses, until the client or the service goes."""
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        seq, sent_status = await self._send_snapshot(response)
        loop = asyncio.get_running_loop()
        next_status = loop.time() + STATUS_INTERVAL_S
        last_write = loop.time()
        while not self._closing.is_set():
            await self.recorder.wait(seq, max(0.0, min(next_status, last_write + PING_INTERVAL_S) - loop.time()))
            if self._closing.is_set() or gone(request):
                break
            chunks: list[bytes] = []
            changes = self.recorder.changes_since(seq)
            if changes is None:  # fell behind the change log: start over
                seq, sent_status = await self._send_snapshot(response)
                last_write = loop.time()
                continue
            if changes:
                seq = changes[-1][0]
                chunks += [sse(EVENT_KIND[kind], self._event_payload(kind, payload)) for kind, payload in coalesce(changes)]
            if loop.time() >= next_status:
                next_status = loop.time() + STATUS_INTERVAL_S
                for handle in self.streams.handles():
                    status = self.status(handle)
                    encoded = json.dumps(status, default=str, sort_keys=True)
                    if sent_status.get(handle.name) != encoded:
                        sent_status[handle.name] = encoded
                        chunks.append(sse("status", status))
            if not chunks and loop.time() - last_write >= PING_INTERVAL_S:
                chunks.append(b": ping\n\n")
            if chunks:
                await response.write(b"".join(chunks))
                last_write = loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), PUSH_INTERVAL_S)

    async def _send_snapshot(self, response: web.StreamResponse) -> tuple[int, dict[str, str]]:
        """The whole state; its sequence number and the statuses it carried (what later ``status`` events compare with)."""
        state = self.state()
        sent = {h.name: json.dumps(self.status(h), default=str, sort_keys=True) for h in self.streams.handles()}
        await response.write(sse("snapshot", state))
        return state["seq"], sent

    def _event_payload(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        if kind == "snapshot":
            return {**payload, "url": snapshot_url(payload["stream"], payload["id"])}
        return payload

    async def shutdown(self, _: web.Application) -> None:
        """The service is stopping: end every event stream now."""
        self._closing.set()
        self.recorder.wake()


def gone(request: web.Request) -> bool:
    """The client closed the connection (noticed within a second, even while there is nothing to send)."""
    transport = request.transport
    return transport is None or transport.is_closing()


def coalesce(changes: list[tuple[int, str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Changes in order, a stream's score events of one chart second reduced to the latest (it carries that second's point)."""
    out: list[tuple[str, dict[str, Any]]] = []
    latest_score: dict[tuple[str, float], int] = {}
    for _, kind, payload in changes:
        if kind == "score":
            key = (payload["stream"], payload["point"][0])
            if key in latest_score:
                out[latest_score[key]] = (kind, payload)
                continue
            latest_score[key] = len(out)
        out.append((kind, payload))
    return out


def snapshot_url(stream: str, alert_id: str) -> str:
    return f"/snapshot/{stream}.jpg?id={alert_id}"


def static_file(name: str) -> Callable[[web.Request], Awaitable[web.FileResponse]]:
    async def handler(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / name, headers={"Cache-Control": "no-cache"})

    return handler


DASHBOARD_KEY: web.AppKey[Dashboard] = web.AppKey("dashboard", Dashboard)


def add_routes(app: web.Application, streams: StreamRegistry, recorder: RecorderView, alerts: AlertConfig, publish_page: str | None = None) -> None:
    """Register the dashboard; ``publish_page`` (the WHIP page's path, when WHIP is on) is linked from it."""
    dashboard = Dashboard(streams, recorder, alerts, publish_page)
    app[DASHBOARD_KEY] = dashboard
    app.router.add_get("/", static_file("dashboard.html"))
    app.router.add_get("/dashboard.js", static_file("dashboard.js"))
    app.router.add_get("/dashboard.css", static_file("dashboard.css"))
    app.router.add_get("/dashboard.json", dashboard.json_state)
    app.router.add_get("/events", dashboard.events)
    app.router.add_get("/snapshot/{stream}.jpg", dashboard.snapshot_jpeg)
    app.on_shutdown.append(dashboard.shutdown)
