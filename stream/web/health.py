"""``GET /health`` and ``GET /health/live``.

``/health`` is the readiness check (Docker HEALTHCHECK, load balancers): 200 only
when the service does its job; 503 otherwise, with one line per reason in ``problems``:

* no stream is ``streaming`` (or none is configured);
* MQTT is enabled and not connected;
* a **configured** stream (from the config file, or attached by anything but WHIP) is
  ``failed`` (at once), or ``connecting``/``reconnecting`` for longer than
  ``health.stream_grace_s``, or ``streaming`` but silent: no frame for longer than that
  grace.  Each is named with the state's detail: ``stream cam2 reconnecting for 42 s
  (grace 30 s): rtsp://...: Connection refused``.

A replica of a sharded fleet whose shard owns no stream (more replicas than cameras) has
nothing to watch: it is ready (200) with a ``note`` saying so, else a StatefulSet with more
pods than cameras would never finish rolling out.  ``shard`` says which part of the stream
list this replica watches (index, count, instance, streams kept and left to other shards).

Not problems: a stream disabled in the config (it is never started), a stream ``stopped``
on purpose (the end of a file without ``loop``, the service stopping), and WHIP streams,
which come and go with their publishers (``offline`` is their normal idle state; they still
count as the streaming stream when they stream).  ``/health/live`` only says the event
loop answers (for a liveness probe that must not restart the container because a camera is down).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from stream.outputs.publisher import Publisher
from stream.registry import StreamHandle, StreamRegistry
from stream.sharding import ShardPlan
from stream.sources.base import StreamState

DEFAULT_STREAM_GRACE_S = 30.0
WAITING_STATES = frozenset({StreamState.CONNECTING, StreamState.RECONNECTING})


def add_routes(
    app: web.Application,
    registry: StreamRegistry,
    publisher: Publisher,
    broker: str,
    stream_grace_s: float = DEFAULT_STREAM_GRACE_S,
    shard: ShardPlan | None = None,
) -> None:
    """Register this module's routes; ``broker`` (``host:port``) names the configured broker in problems, ``shard`` this replica's share."""

    async def health(_: web.Request) -> web.Response:
        body = health_report(registry, publisher, broker, stream_grace_s, shard=shard)
        return web.json_response(body, status=200 if body["ok"] else 503)

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"live": True, "uptime_s": round(time.time() - registry.started_at, 1)})

    app.router.add_get("/health", health)
    app.router.add_get("/health/live", live)


def health_report(
    registry: StreamRegistry,
    publisher: Publisher,
    broker: str,
    stream_grace_s: float = DEFAULT_STREAM_GRACE_S,
    now: float | None = None,
    shard: ShardPlan | None = None,
) -> dict[str, Any]:
    """The /health body; ``ok`` decides 200 vs 503 and ``problems`` says why not (``now``: time.monotonic())."""
    now = time.monotonic() if now is None else now
    mqtt = _mqtt_report(publisher, broker)
    streams: dict[str, dict[str, Any]] = {}
    stream_problems: list[str] = []
    for handle in registry.handles():
        report = streams[handle.name] = _stream_report(handle, now)
        problem = stream_problem(handle, stream_grace_s, now) if registry.is_configured(handle.name) else None
        report["problem"] = problem
        if problem is not None:
            stream_problems.append(problem)
    problems: list[str] = []
    note = None
    if shard is not None and shard.empty:
        note = f"shard {shard.spec.index} of {shard.spec.count} owns none of the {len(shard.skipped)} configured stream(s): nothing to watch, ready by design"
    elif not any(s["state"] == StreamState.STREAMING for s in streams.values()):
        problems.append("no stream is streaming" if streams else "no stream configured")
    if mqtt["enabled"] and not mqtt["connected"]:
        problems.append(f"MQTT broker {mqtt['broker']} is not connected")
    problems += stream_problems
    return {
        "ok": not problems,
        "status": "ok" if not problems else "unavailable",
        "live": True,
        "problems": problems,
        "note": note,
        "uptime_s": round(time.time() - registry.started_at, 1),
        "stream_grace_s": stream_grace_s,
        "mqtt": mqtt,
        "shard": None if shard is None else shard_report(shard),
        "streams": streams,
    }


def shard_report(shard: ShardPlan) -> dict[str, Any]:
    """Which part of the stream list this replica watches, and under which name it publishes."""
    spec = shard.spec
    return {
        "index": spec.index,
        "count": spec.count,
        "instance": spec.instance,
        "named": shard.named,  # its own MQTT client id and availability topic
        "source": spec.source,  # where the index came from: config, environment, pod-ordinal, default
        "streams_kept": len(shard.kept),
        "streams_skipped": len(shard.skipped),
        "empty": shard.empty,
    }


def _mqtt_report(publisher: Publisher, broker: str) -> dict[str, Any]:
    report: dict[str, Any] = {"enabled": publisher.enabled, "connected": publisher.connected, "broker": broker}
    if publisher.enabled:
        report.update({"pending_alerts": publisher.pending_alerts, "alerts_dropped": publisher.alerts_dropped})
    return report


def stream_problem(handle: StreamHandle, grace_s: float, now: float) -> str | None:
    """Why a configured stream makes the service unready, or None (see the module's docstring)."""
    detail = f": {handle.detail}" if handle.detail else ""
    if handle.state == StreamState.FAILED:
        return f"stream {handle.name} failed{detail}"
    in_state_s = now - handle.state_since
    if handle.state in WAITING_STATES and in_state_s > grace_s:
        return f"stream {handle.name} {handle.state} for {in_state_s:.0f} s (grace {grace_s:g} s){detail}"
    if handle.state == StreamState.STREAMING:
        last_frame = handle.pipeline.stats.last_frame_monotonic
        silent_s = now - max(handle.state_since, last_frame if last_frame is not None else handle.state_since)
        if silent_s > grace_s:
            return f"stream {handle.name} silent: no frame for {silent_s:.0f} s (grace {grace_s:g} s)"
    return None


def _stream_report(handle: StreamHandle, now: float) -> dict[str, Any]:
    stats = handle.pipeline.stats
    last_frame = stats.last_frame_monotonic
    return {
        "state": handle.state,
        "detail": handle.detail,
        "state_for_s": round(now - handle.state_since, 1),
        "last_frame_age_s": None if last_frame is None else round(now - last_frame, 1),
        "kind": handle.kind,
        "score": None if stats.last_score is None else round(stats.last_score, 4),
        "fps_in": round(float(handle.source.stats.fps_in), 2),
        "samples_scored": stats.samples_scored,
        "alert_active": handle.pipeline.alerts.active,
        "alerts": stats.alerts,
        "inference_error": handle.pipeline.inference_error,
        "latency_ms": None if stats.last_latency_s is None else round(stats.last_latency_s * 1000, 1),
    }
