"""``GET /health``, ``GET /health/live`` and ``GET /metrics``.

``/health`` is the readiness check (Docker HEALTHCHECK, load balancers): 200 only
when the service does its job, i.e. at least one stream is ``streaming`` and
results reach the broker (connected, or MQTT disabled); 503 otherwise, with the
reasons in the JSON body.  ``/health/live`` only says the event loop answers
(for a liveness probe that must not restart the container because a camera is down).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from stream.metrics import ServiceMetrics

if TYPE_CHECKING:
    from stream.service import Service, StreamHandle

STREAMING = "streaming"


def add_routes(app: web.Application, service: Service) -> None:
    """Register this module's routes."""
    metrics = getattr(service, "metrics", None) or ServiceMetrics(service)

    async def health(_: web.Request) -> web.Response:
        body = health_report(service)
        return web.json_response(body, status=200 if body["ok"] else 503)

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"live": True, "uptime_s": round(time.time() - service.started_at, 1)})

    async def prometheus(request: web.Request) -> web.Response:
        data, content_type = metrics.render(request.headers.get("Accept", ""))
        response = web.Response(body=data)
        response.headers["Content-Type"] = content_type  # carries version=/charset= parameters aiohttp's content_type= refuses
        return response

    app.router.add_get("/health", health)
    app.router.add_get("/health/live", live)
    app.router.add_get("/metrics", prometheus)


def health_report(service: Service) -> dict[str, Any]:
    """The /health body; ``ok`` decides 200 vs 503 and ``problems`` says why not."""
    mqtt = _mqtt_report(service)
    streams = {handle.name: _stream_report(handle) for handle in list(service.streams.values())}
    problems: list[str] = []
    if not any(s["state"] == STREAMING for s in streams.values()):
        problems.append("no stream is streaming" if streams else "no stream configured")
    if mqtt["enabled"] and not mqtt["connected"]:
        problems.append(f"MQTT broker {mqtt['broker']} is not connected")
    return {
        "ok": not problems,
        "status": "ok" if not problems else "unavailable",
        "live": True,
        "problems": problems,
        "uptime_s": round(time.time() - service.started_at, 1),
        "mqtt": mqtt,
        "streams": streams,
    }


def _mqtt_report(service: Service) -> dict[str, Any]:
    """MQTT counts as enabled when the publisher has a connection to report (MqttPublisher, not NullPublisher)."""
    cfg = service.cfg.mqtt
    try:
        publisher: Any = service.publisher
    except AssertionError:  # not started
        publisher = None
    connected = getattr(publisher, "connected", None)
    report: dict[str, Any] = {"enabled": connected is not None, "connected": bool(connected), "broker": f"{cfg.host}:{cfg.port}"}
    for counter in ("pending_alerts", "alerts_dropped"):
        if hasattr(publisher, counter):
            report[counter] = getattr(publisher, counter)
    return report


def _stream_report(handle: StreamHandle) -> dict[str, Any]:
    stats = handle.pipeline.stats
    source_stats = getattr(handle.source, "stats", None)
    fps = getattr(source_stats, "fps_in", None)
    return {
        "state": handle.state,
        "detail": handle.detail,
        "kind": handle.kind,
        "score": None if stats.last_score is None else round(stats.last_score, 4),
        "fps_in": None if fps is None else round(float(fps), 2),
        "samples_scored": stats.samples_scored,
        "alert_active": handle.pipeline.alerts.active,
        "alerts": stats.alerts,
        "inference_error": handle.pipeline.inference_error,
        "latency_ms": None if stats.last_latency_s is None else round(stats.last_latency_s * 1000, 1),
    }
