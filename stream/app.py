"""The composition root: the one place that builds every part of the service from the config and wires them.

Each part gets only what it needs: the stream supervisor an engine and a publisher, the
HTTP routes the supervisor as a ``StreamRegistry``, metrics the registry, engine and
publisher.  Nothing else constructs these parts, so following a config value means
reading this file and the part it is handed to.

Lifecycle: ``start()`` resolves this replica's shard (``sharding``, else the environment),
loads the model (off the event loop), connects MQTT under the replica's identity, starts the
HTTP server and the configured streams its shard owns; ``stop()`` (also on SIGINT/SIGTERM through
``serve``) ends open alert episodes, sets statuses to ``stopped``, flushes pending alerts
and publishes ``offline``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from detector.aggregation import get_strategy
from detector.build import build_engine
from detector.engine_pool import Engine, EnginePool
from detector.errors import CheckpointError, DeviceError
from stream.config import AppConfig
from stream.mps import MpsDaemon, MpsError, start_mps
from stream.outputs.discovery import Discovery, start_discovery
from stream.outputs.mqtt import MqttPublisher
from stream.outputs.publisher import NullPublisher, Publisher
from stream.recorder import Recorder
from stream.service import StreamService
from stream.sharding import ShardPlan
from stream.sources.config import NVDEC
from stream.sources.factory import prepare_demo_media
from stream.sources.workers import close_pools
from stream.web import dashboard, health, metrics, whip
from stream.web.metrics import ServiceMetrics
from stream.web.server import HttpBindError, HttpServer

log = logging.getLogger(__name__)


class App:
    """Every part of one running analyzer; ``engine``/``publisher``/``shard`` may be given ready-made (demo, tests, the CLI)."""

    def __init__(self, cfg: AppConfig, engine: Engine | None = None, publisher: Publisher | None = None, shard: ShardPlan | None = None) -> None:
        self.cfg = cfg
        self._given_engine = engine
        self._given_publisher = publisher
        self.shard = shard
        self._mqtt_task: asyncio.Task[None] | None = None
        self._stop_requested = asyncio.Event()
        self.engine: Engine | None = None
        self.publisher: Publisher | None = None
        self.service: StreamService | None = None
        self.metrics: ServiceMetrics | None = None
        self.discovery: Discovery | None = None
        self.recorder = Recorder()  # what the dashboard shows beyond the live state (bounded)
        self.http: HttpServer | None = None
        self.mps: MpsDaemon | None = None

    async def start(self) -> StreamService:
        cfg = self.cfg
        shard = self.shard = self.shard or cfg.shard_plan()  # before the model: a bad shard setting fails at once
        if self._given_engine is None:  # before anything here touches CUDA: the engine and the decoder workers are its clients
            self.mps = await asyncio.to_thread(start_mps, cfg.engine.mps, cfg.wants_cuda())
        self.engine = self._given_engine or await asyncio.to_thread(self._load_engine)
        log.info("%s", shard.describe(), extra={"event": "shard"})  # after the model: a bad checkpoint stays the only line
        log.debug("streams of this shard: %s", ", ".join(shard.kept) or "none")
        self.publisher = self._given_publisher or self._start_publisher(shard.instance)
        self.discovery = start_discovery(cfg.discovery, cfg.mqtt, self.publisher, shard.instance)
        NVDEC.sessions_per_gpu = cfg.engine.nvdec_sessions_per_gpu
        NVDEC.workers_per_gpu = cfg.engine.nvdec_workers
        NVDEC.backend = cfg.engine.nvdec_backend
        self.service = StreamService(
            self.engine,
            self.publisher,
            window=cfg.window,
            alerts=cfg.alerts,
            strategy=get_strategy(cfg.detector.strategy),
            configured=cfg.streams,
            on_stream_added=self.discovery.announce if self.discovery is not None else None,
            recorder=self.recorder,
        )
        self.metrics = ServiceMetrics(self.service, self.engine, self.publisher, shard, mps=self.mps is not None)
        self.engine.on_batch = self.metrics.chain_on_batch(self.engine.on_batch)
        if cfg.http.enabled:
            self.http = HttpServer(cfg.http, self._web_app(self.service, self.publisher, self.metrics))
            await self.http.start()
        await asyncio.to_thread(prepare_demo_media, [s for s in cfg.streams if shard.owns(s.name)])  # a `demo:` clip is built off the loop
        self.service.start_configured(shard.owns)
        return self.service

    def _load_engine(self) -> Engine:
        det = self.cfg.detector
        engine = build_engine(det, self.cfg.engine)
        devices = ", ".join(str(e.device) for e in engine.engines) if isinstance(engine, EnginePool) else str(engine.device)
        log.info("classifier: %s on %s, input %d px", engine.ensemble.label, devices, engine.input_size)
        return engine

    def _start_publisher(self, instance: str | None) -> Publisher:
        if not self.cfg.mqtt.enabled:
            return NullPublisher()
        mqtt = MqttPublisher(self.cfg.mqtt, instance=instance)
        self._mqtt_task = asyncio.create_task(mqtt.run(), name="mqtt")
        return mqtt

    def _web_app(self, service: StreamService, publisher: Publisher, service_metrics: ServiceMetrics) -> web.Application:
        cfg = self.cfg
        app = web.Application(client_max_size=max(cfg.whip.max_sdp_bytes, 1024) + 1024)
        health.add_routes(app, service, publisher, broker=f"{cfg.mqtt.host}:{cfg.mqtt.port}", stream_grace_s=cfg.health.stream_grace_s, shard=self.shard)
        metrics.add_routes(app, service_metrics)
        if cfg.whip.enabled:
            whip.add_routes(app, service, cfg.whip)
        dashboard.add_routes(app, service, self.recorder, cfg.alerts, publish_page=whip.PAGE_PATH if cfg.whip.enabled else None)
        return app

    async def stop(self) -> None:
        """Stop every stream, end alerts, flush MQTT, release the engine."""
        self._stop_requested.set()
        if self.service is not None:
            await self.service.stop()
        if self.http is not None:
            await self.http.stop()
        if isinstance(self.publisher, MqttPublisher):
            await self.publisher.close()
            if self._mqtt_task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._mqtt_task
        await asyncio.to_thread(close_pools)  # NVDEC worker processes, after their streams
        if self.engine is not None:
            await asyncio.to_thread(self.engine.close)
        if self.mps is not None:  # last: every CUDA client of it is gone
            await asyncio.to_thread(self.mps.stop)

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def wait(self, duration_s: float | None = None) -> None:
        """Until SIGINT/SIGTERM (``request_stop``) or ``duration_s``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), duration_s)


def stop_on_signals(app: App) -> None:
    """SIGINT/SIGTERM ask ``app`` to stop (where the platform lets the loop handle signals)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, app.request_stop)


async def serve(cfg: AppConfig, duration_s: float | None = None, shard: ShardPlan | None = None) -> None:
    app = App(cfg, shard=shard)
    stop_on_signals(app)
    try:
        service = await app.start()
    except BaseException:
        await app.stop()  # what did start (an MPS daemon, the engine, MQTT) is released, not left behind
        raise
    log.info("service running: %d stream(s)", len(service.streams))
    try:
        await app.wait(duration_s)
    finally:
        log.info("service stopping")
        await app.stop()


def run_service(cfg: AppConfig, duration_s: float | None = None, shard: ShardPlan | None = None) -> int:
    """Entry point of ``deepfake-stream run``; bad weights, a missing GPU, a port in use or MPS that must run are one clear line, exit 2."""
    try:
        asyncio.run(serve(cfg, duration_s, shard))
    except (CheckpointError, DeviceError, HttpBindError, MpsError) as exc:
        log.error("%s", exc)
        return 2
    return 0
