"""``GET /health`` and ``GET /health/live``.

``/health`` is the readiness check (Docker HEALTHCHECK, load balancers): 200 only
when the service does its job, i.e. at least one stream is ``streaming`` and
results reach the broker (connected, or MQTT disabled); 503 otherwise, with the
reasons in the JSON body.  ``/health/live`` only says the event loop answers
(for a liveness probe that must not restart the container because a camera is down).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from stream.outputs.publisher import Publisher
from stream.registry import StreamHandle, StreamRegistry
from stream.sources.base import StreamState


def add_routes(app: web.Application, registry: StreamRegistry, publisher: Publisher, broker: str) -> None:
    """Register this module's routes; ``broker`` (``host:port``) names the configured broker in problems."""

    async def health(_: web.Request) -> web.Response:
        body = health_report(registry, publisher, broker)
        return web.json_response(body, status=200 if body["ok"] else 503)

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"live": True, "uptime_s": round(time.time() - registry.started_at, 1)})

    app.router.add_get("/health", health)
    app.router.add_get("/health/live", live)


def health_report(registry: StreamRegistry, publisher: Publisher, broker: str) -> dict[str, Any]:
    """The /health body; ``ok`` decides 200 vs 503 and ``problems`` says why not."""
    mqtt = _mqtt_report(publisher, broker)
    streams = {handle.name: _stream_report(handle) for handle in registry.handles()}
    problems: list[str] = []
    if not any(s["state"] == StreamState.STREAMING for s in streams.values()):
        problems.append("no stream is streaming" if streams else "no stream configured")
    if mqtt["enabled"] and not mqtt["connected"]:
        problems.append(f"MQTT broker {mqtt['broker']} is not connected")
    return {
        "ok": not problems,
        "status": "ok" if not problems else "unavailable",
        "live": True,
        "problems": problems,
        "uptime_s": round(time.time() - registry.started_at, 1),
        "mqtt": mqtt,
        "streams": streams,
    }


def _mqtt_report(publisher: Publisher, broker: str) -> dict[str, Any]:
    report: dict[str, Any] = {"enabled": publisher.enabled, "connected": publisher.connected, "broker": broker}
    if publisher.enabled:
        report.update({"pending_alerts": publisher.pending_alerts, "alerts_dropped": publisher.alerts_dropped})
    return report


def _stream_report(handle: StreamHandle) -> dict[str, Any]:
    stats = handle.pipeline.stats
    return {
        "state": handle.state,
        "detail": handle.detail,
        "kind": handle.kind,
        "score": None if stats.last_score is None else round(stats.last_score, 4),
        "fps_in": round(float(handle.source.stats.fps_in), 2),
        "samples_scored": stats.samples_scored,
        "alert_active": handle.pipeline.alerts.active,
        "alerts": stats.alerts,
        "inference_error": handle.pipeline.inference_error,
        "latency_ms": None if stats.last_latency_s is None else round(stats.last_latency_s * 1000, 1),
    }
