"""Prometheus metrics for ``GET /metrics``, read from the live service at scrape time.

Each service gets its own CollectorRegistry (two services in one process, as in
the tests, never mix their numbers).  Counters and gauges are not mirrored into
prometheus-client objects: a custom collector reads the stream, engine and MQTT
counters the service already keeps, so they cannot drift.  Only the histograms
need state of their own: engine batch sizes are observed from the engine's
``on_batch`` hook (worker thread; prometheus-client is thread-safe), and the
frame-arrival-to-score latencies are taken from each pipeline's recent
``latencies`` at scrape time (the new ones since the previous scrape).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from detector.engine import BatchHook
from detector.engine_pool import Engine
from stream.outputs.publisher import Publisher
from stream.registry import StreamHandle, StreamRegistry
from stream.sharding import ShardPlan
from stream.sources.base import StreamState

log = logging.getLogger(__name__)

# the states a stream's own source or session reports (ERROR is a transient inference status, not a state gauge)
STREAM_STATES = tuple(s for s in StreamState if s is not StreamState.ERROR)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    """The registry behind one service's ``/metrics``."""

    def __init__(self, registry: StreamRegistry, engine: Engine, publisher: Publisher, shard: ShardPlan | None = None, mps: bool = False) -> None:
        self.streams = registry
        self.engine = engine
        self.publisher = publisher
        self.shard = shard
        self.mps = mps  # engine.mps took effect: the engine and the decoder workers share the GPU through MPS
        self.registry = CollectorRegistry(auto_describe=False)
        self.batch_frames = Histogram("deepfake_engine_batch_frames", "Frames per inference batch (cross-stream batching)", buckets=BATCH_BUCKETS, registry=None)
        self.batch_seconds = Histogram("deepfake_engine_batch_seconds", "Wall time of one inference batch (MTCNN + classifier)", buckets=BATCH_SECONDS_BUCKETS, registry=None)
        self.latency = Histogram(
            "deepfake_stream_latency_seconds", "Frame arrival (decoded) to score published, per stream", ["stream"], buckets=LATENCY_BUCKETS, registry=None
        )
        self._latency_seen: dict[str, tuple[int, int]] = {}  # stream -> (id of its pipeline, samples_scored already observed)
        self.registry.register(_LiveCollector(self))

    def on_batch(self, frames: int, faces: int, seconds: float) -> None:
        """The engine's ``on_batch`` hook (runs on the inference thread)."""
        self.batch_frames.observe(frames)
        self.batch_seconds.observe(seconds)

    def chain_on_batch(self, previous: BatchHook | None) -> BatchHook:
        """Our hook, calling a hook that was already set (benchmarks set their own)."""
        if previous is None:
            return self.on_batch

        def both(frames: int, faces: int, seconds: float) -> None:
            self.on_batch(frames, faces, seconds)
            previous(frames, faces, seconds)

        return both

    def sync_latencies(self) -> None:
        """Observe the latencies scored since the last scrape.

        Each scored sample appends one latency and increments ``samples_scored``, so the
        difference says how many of the newest entries are new (the list is bounded; if
        more arrived than it keeps between two scrapes, the oldest of them are lost).
        """
        for handle in self.streams.handles():
            name, pipeline = handle.name, handle.pipeline
            scored = pipeline.stats.samples_scored
            owner, seen = self._latency_seen.get(name, (id(pipeline), 0))
            if owner != id(pipeline):  # a new stream under an old name
                seen = 0
            new = max(scored - seen, 0)
            recent = pipeline.latencies[-new:] if new else []
            for value in recent:
                self.latency.labels(stream=name).observe(value)
            self._latency_seen[name] = (id(pipeline), scored)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition in the format the scraper asked for (Prometheus text by default)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def add_routes(app: web.Application, metrics: ServiceMetrics) -> None:
    """``GET /metrics`` in the format the scraper asks for."""

    async def prometheus(request: web.Request) -> web.Response:
        data, content_type = metrics.render(request.headers.get("Accept", ""))
        response = web.Response(body=data)
        response.headers["Content-Type"] = content_type  # carries version=/charset= parameters aiohttp's content_type= refuses
        return response

    app.router.add_get("/metrics", prometheus)


class _LiveCollector(Collector):
    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        metrics = self.metrics
        metrics.sync_latencies()
        yield GaugeMetricFamily("deepfake_uptime_seconds", "Seconds since the service started", value=time.time() - metrics.streams.started_at)
        if metrics.shard is not None:
            yield from _shard_metrics(metrics.shard)
        yield from _stream_metrics(metrics.streams.handles(), dict(metrics.engine.stats.dropped))
        yield from metrics.latency.collect()
        yield from _engine_metrics(metrics.engine)
        yield GaugeMetricFamily("deepfake_gpu_mps", "1 when the engine and the decoder workers share the GPU through CUDA MPS (engine.mps)", value=float(metrics.mps))
        yield from metrics.batch_frames.collect()
        yield from metrics.batch_seconds.collect()
        yield from _mqtt_metrics(metrics.publisher)


def _stream_metrics(handles: list[StreamHandle], engine_dropped: dict[str, int]) -> Iterator[Metric]:
    state = GaugeMetricFamily("deepfake_stream_state", "1 for the stream's current state", labels=["stream", "state"])
    fps = GaugeMetricFamily("deepfake_stream_fps_in", "Frames decoded per second (last few seconds)", labels=["stream"])
    decoded = CounterMetricFamily("deepfake_stream_frames_decoded", "Frames decoded from the source", labels=["stream"])
    sampled = CounterMetricFamily("deepfake_stream_frames_sampled", "Frames sampled for the detector", labels=["stream"])
    dropped = CounterMetricFamily(
        "deepfake_stream_frames_dropped",
        "Sampled frames dropped: stage=source (overwritten before the pipeline took them), stage=engine (inference behind)",
        labels=["stream", "stage"],
    )
    scored = CounterMetricFamily("deepfake_stream_samples_scored", "Samples scored", labels=["stream"])
    failed = CounterMetricFamily("deepfake_stream_samples_failed", "Samples lost to inference errors", labels=["stream"])
    faces = CounterMetricFamily("deepfake_stream_faces", "Faces detected and classified", labels=["stream"])
    score = GaugeMetricFamily("deepfake_stream_score", "Current running fakeness score (0..1); absent while no face is in the window", labels=["stream"])
    alerts = CounterMetricFamily("deepfake_stream_alerts", "Alert episodes started", labels=["stream"])
    alert_active = GaugeMetricFamily("deepfake_stream_alert_active", "1 while an alert episode is open", labels=["stream"])
    reconnects = CounterMetricFamily("deepfake_stream_reconnects", "Source reconnection attempts", labels=["stream"])
    for handle in handles:
        name = handle.name
        for known in STREAM_STATES:
            state.add_metric([name, known.value], 1.0 if handle.state == known else 0.0)
        source_stats = handle.source.stats
        fps.add_metric([name], float(source_stats.fps_in))
        decoded.add_metric([name], float(source_stats.frames_decoded))
        sampled.add_metric([name], float(source_stats.frames_sampled))
        dropped.add_metric([name, "source"], float(source_stats.frames_dropped))
        dropped.add_metric([name, "engine"], float(engine_dropped.get(name, 0)))
        reconnects.add_metric([name], float(source_stats.reconnects))
        stats = handle.pipeline.stats
        scored.add_metric([name], float(stats.samples_scored))
        failed.add_metric([name], float(stats.samples_failed))
        faces.add_metric([name], float(stats.faces))
        alerts.add_metric([name], float(stats.alerts))
        alert_active.add_metric([name], 1.0 if handle.pipeline.alerts.active else 0.0)
        if stats.last_score is not None:
            score.add_metric([name], float(stats.last_score))
    yield from (state, fps, decoded, sampled, dropped, scored, failed, faces, score, alerts, alert_active, reconnects)


def _shard_metrics(shard: ShardPlan) -> Iterator[Metric]:
    """Which shard this replica is, and its share: ``sum(deepfake_shard_streams)`` over a fleet is every enabled stream."""
    spec = shard.spec
    info = GaugeMetricFamily("deepfake_shard_info", "1, labelled with this replica's shard and instance name", labels=["instance", "index", "count"])
    info.add_metric([spec.instance, str(spec.index), str(spec.count)], 1.0)
    yield info
    yield GaugeMetricFamily("deepfake_shard_streams", "Configured streams this replica's shard watches", value=len(shard.kept))
    yield GaugeMetricFamily("deepfake_shard_streams_skipped", "Configured streams left to the other shards", value=len(shard.skipped))


def _engine_metrics(engine: Engine) -> Iterator[Metric]:
    s = engine.stats
    yield GaugeMetricFamily("deepfake_engine_queue_depth", "Samples waiting for the inference worker", value=engine.queue_depth())
    yield CounterMetricFamily("deepfake_engine_batches", "Inference batches run", value=s.batches)
    yield CounterMetricFamily("deepfake_engine_frames", "Frames through the inference worker", value=s.frames)
    yield CounterMetricFamily("deepfake_engine_faces", "Faces classified", value=s.faces)
    yield CounterMetricFamily("deepfake_engine_failed_batches", "Batches that failed", value=s.failed_batches)
    yield CounterMetricFamily("deepfake_engine_busy_seconds", "Seconds the inference worker spent on batches", value=s.busy_s)
    yield GaugeMetricFamily("deepfake_gpu_memory_allocated_bytes", "torch.cuda.memory_allocated on the engine's device (0 on CPU)", value=_gpu_memory(engine))


def _gpu_memory(engine: Engine) -> float:
    device = engine.ensemble.device
    if device.type != "cuda":
        return 0.0
    import torch

    try:
        return float(torch.cuda.memory_allocated(device))
    except RuntimeError:  # CUDA gone bad: report, do not break the scrape
        log.warning("could not read CUDA memory", exc_info=True)
        return 0.0


def _mqtt_metrics(publisher: Publisher) -> Iterator[Metric]:
    yield GaugeMetricFamily("deepfake_mqtt_enabled", "1 when results are published over MQTT", value=1.0 if publisher.enabled else 0.0)
    if not publisher.enabled:
        return
    yield GaugeMetricFamily("deepfake_mqtt_connected", "1 while connected to the broker", value=1.0 if publisher.connected else 0.0)
    yield GaugeMetricFamily("deepfake_mqtt_pending_alerts", "Alerts not yet acknowledged by the broker", value=publisher.pending_alerts)
    yield CounterMetricFamily("deepfake_mqtt_alerts_delivered", "Alerts acknowledged by the broker", value=publisher.alerts_delivered)
    yield CounterMetricFamily("deepfake_mqtt_alerts_dropped", "Alerts dropped (outbox full or publisher closed)", value=publisher.alerts_dropped)
    yield CounterMetricFamily("deepfake_mqtt_scores_published", "Score messages sent", value=publisher.scores_published)
    yield CounterMetricFamily("deepfake_mqtt_scores_dropped", "Scores not sent (offline or superseded within the interval)", value=publisher.scores_dropped)
    yield CounterMetricFamily("deepfake_mqtt_reconnects", "Successful reconnections to the broker", value=publisher.reconnects)
