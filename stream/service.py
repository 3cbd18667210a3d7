"""The asyncio supervisor: every configured stream, one inference engine, one MQTT publisher.

One bad stream never stops the others: each runs in its own task, and its
failure is logged and published as its status.  SIGINT/SIGTERM stop cleanly:
open alert episodes are ended, statuses say ``stopped``, pending alerts are
flushed and ``<prefix>/available`` becomes ``offline``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field

from detector.classifier import CheckpointError
from detector.engine import InferenceEngine
from stream.config import AppConfig, StreamConfig
from stream.demo_media import demo_clip
from stream.discovery import Discovery, start_discovery
from stream.http import HttpServer
from stream.metrics import ServiceMetrics
from stream.models import build_detector, build_ensemble
from stream.mqtt import MqttPublisher
from stream.pipeline import FrameSource, NullPublisher, Publisher, StreamPipeline
from stream.process_source import ProcessVideoSource
from stream.sources import SourceState, VideoSource, redact_url

log = logging.getLogger("deepfake_stream.service")

DEMO_URL = "demo:"


@dataclass
class StreamHandle:
    """A running stream as the service (and /health, /metrics) sees it."""

    name: str
    kind: str  # "url" or "webrtc"
    source: FrameSource
    pipeline: StreamPipeline
    task: asyncio.Task[None] | None = None
    state: str = SourceState.CONNECTING.value
    detail: str | None = None
    started: float = field(default_factory=time.time)


def resolve_stream_url(cfg: StreamConfig) -> StreamConfig:
    """``demo:`` -> the bundled demo clip, looped in real time."""
    if cfg.url.strip() != DEMO_URL:
        return cfg
    return cfg.model_copy(update={"url": str(demo_clip()), "loop": True, "realtime": True})


class Service:
    def __init__(self, cfg: AppConfig, engine: InferenceEngine | None = None, publisher: Publisher | None = None) -> None:
        self.cfg = cfg
        self._engine = engine
        self._publisher = publisher
        self.streams: dict[str, StreamHandle] = {}
        self._stopping = asyncio.Event()
        self._publisher_task: asyncio.Task[None] | None = None
        self.http: HttpServer | None = None
        self.started_at = time.time()
        self.metrics: ServiceMetrics | None = None  # ops: /metrics (stream/metrics.py)
        self.discovery: Discovery | None = None  # ops: Home Assistant discovery (stream/discovery.py)

    # ---- lifecycle ---------------------------------------------------------------------
    @property
    def engine(self) -> InferenceEngine:
        assert self._engine is not None, "service not started"
        return self._engine

    @property
    def publisher(self) -> Publisher:
        assert self._publisher is not None, "service not started"
        return self._publisher

    async def start(self) -> None:
        if self._engine is None:
            self._engine = await asyncio.to_thread(self._build_engine)
        self.metrics = ServiceMetrics(self)  # ops hook: batch sizes for /metrics
        self._engine.on_batch = self.metrics.chain_on_batch(self._engine.on_batch)
        if self._publisher is None:
            if self.cfg.mqtt.enabled:
                mqtt = MqttPublisher(self.cfg.mqtt)
                self._publisher = mqtt
                self._publisher_task = asyncio.create_task(mqtt.run(), name="mqtt")
            else:
                self._publisher = NullPublisher()
        self.discovery = start_discovery(self.cfg.discovery, self.cfg.mqtt, self._publisher)  # ops hook
        if self.cfg.http.enabled:
            self.http = HttpServer(self)
            await self.http.start()
        for stream_cfg in self.cfg.streams:
            if stream_cfg.enabled:
                self.add_url_stream(stream_cfg)
            else:
                log.info("stream %s: disabled in config", stream_cfg.name)

    def _build_engine(self) -> InferenceEngine:
        det = self.cfg.detector
        ensemble = build_ensemble(det)
        log.info("loaded %d checkpoint(s) of %s on %s", len(ensemble), det.encoder, ensemble.device)
        e = self.cfg.engine
        return InferenceEngine(build_detector(det), ensemble, det.input_size, e.max_batch, e.max_wait_ms, e.max_pending_per_stream)

    def add_url_stream(self, stream_cfg: StreamConfig) -> StreamHandle:
        stream_cfg = resolve_stream_url(stream_cfg)
        name = stream_cfg.name
        handle_ref: list[StreamHandle] = []

        def on_state(state: SourceState, detail: str | None) -> None:
            if handle_ref:
                self.set_state(handle_ref[0], state.value, detail)

        source_cls = ProcessVideoSource if stream_cfg.decoder == "process" else VideoSource
        source = source_cls(stream_cfg, on_state, backoff_min_s=stream_cfg.reconnect_min_s, backoff_max_s=stream_cfg.reconnect_max_s)
        handle = self._add(name, "url", source)
        handle_ref.append(handle)
        source.start()
        self.set_state(handle, source.state.value, f"opening {redact_url(stream_cfg.url)}")
        handle.task = asyncio.create_task(self._supervise(handle, source), name=f"stream-{name}")
        return handle

    def add_source(self, name: str, source: FrameSource, kind: str = "webrtc") -> StreamHandle:
        """Attach an already running source (e.g. a WebRTC track) under ``name``."""
        handle = self._add(name, kind, source)
        handle.task = asyncio.create_task(self._supervise(handle, None), name=f"stream-{name}")
        return handle

    def _add(self, name: str, kind: str, source: FrameSource) -> StreamHandle:
        if name in self.streams and self.streams[name].task is not None and not self.streams[name].task.done():
            raise ValueError(f"stream {name!r} is already running")
        pipeline = StreamPipeline(name, source, self.engine, self.publisher, self.cfg.window, self.cfg.alerts)
        handle = StreamHandle(name, kind, source, pipeline)
        self.streams[name] = handle
        if self.discovery is not None:  # ops hook: announce the stream to Home Assistant
            self.discovery.announce(name)
        return handle

    def set_state(self, handle: StreamHandle, state: str, detail: str | None) -> None:
        handle.state, handle.detail = state, detail
        if state in ("reconnecting", "failed", "stopped", "offline"):
            handle.pipeline.close_alert(f"stream {state}")  # an episode never outlives its feed
        level = logging.WARNING if state in ("failed", "reconnecting") else logging.INFO
        log.log(level, "stream %s: %s%s", handle.name, state, f" ({detail})" if detail else "", extra={"stream": handle.name, "event": state})
        self.publisher.publish_status(handle.name, self.status_payload(handle))

    def status_payload(self, handle: StreamHandle) -> dict[str, object]:
        payload: dict[str, object] = {"state": handle.state, "detail": handle.detail, "kind": handle.kind, "time": time.time()}
        stats = getattr(handle.source, "stats", None)
        if stats is not None and hasattr(stats, "fps_in"):
            payload.update({"fps_in": round(stats.fps_in, 2), "width": stats.width, "height": stats.height, "reconnects": stats.reconnects})
        return payload

    async def _supervise(self, handle: StreamHandle, source: VideoSource | ProcessVideoSource | None) -> None:
        try:
            await handle.pipeline.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one broken stream must not take the others down
            log.exception("stream %s: pipeline crashed", handle.name)
            self.set_state(handle, "failed", f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self.engine.forget(handle.name)
            if source is not None and not self._stopping.is_set():
                await source.stop()

    async def remove_stream(self, name: str, state: str = "offline", detail: str | None = None) -> None:
        handle = self.streams.get(name)
        if handle is None:
            return
        stop = getattr(handle.source, "stop", None)
        if stop is not None:
            await stop()
        if handle.task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(handle.task, 10)
        self.set_state(handle, state, detail)

    async def stop(self) -> None:
        """Stop every stream, end alerts, flush MQTT, release the engine."""
        self._stopping.set()
        for handle in list(self.streams.values()):
            stop = getattr(handle.source, "stop", None)
            if stop is not None:
                with contextlib.suppress(Exception):
                    await stop()
        tasks = [h.task for h in self.streams.values() if h.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=10)
            for task in pending:
                task.cancel()
        for handle in self.streams.values():
            handle.pipeline.close_alert("service stopping")
            self.set_state(handle, "stopped", "service stopping")
        if self.http is not None:
            await self.http.stop()
        if isinstance(self._publisher, MqttPublisher):
            await self._publisher.close()
            if self._publisher_task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._publisher_task
        if self._engine is not None:
            await asyncio.to_thread(self._engine.close)

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait(self, duration_s: float | None = None) -> None:
        """Until SIGINT/SIGTERM (or ``duration_s``)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), duration_s)


async def serve(cfg: AppConfig, duration_s: float | None = None) -> None:
    service = Service(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, service.request_stop)
    await service.start()
    log.info("service running: %d stream(s)", len(service.streams))
    try:
        await service.wait(duration_s)
    finally:
        log.info("service stopping")
        await service.stop()


def run_service(cfg: AppConfig, duration_s: float | None = None) -> int:
    """Entry point of ``deepfake-stream run``; bad weights are one clear line, exit 2."""
    try:
        asyncio.run(serve(cfg, duration_s))
    except CheckpointError as exc:
        log.error("%s", exc)
        return 2
    return 0


__all__ = ["Service", "serve", "run_service", "NullPublisher", "StreamHandle"]
