"""One stream's path through the service: frames -> engine -> running score -> alerts -> MQTT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import cv2
import numpy as np

from detector.aggregation import Strategy, confident_strategy
from detector.engine import EngineClosed, EngineError, FrameResult, SampleDropped
from detector.engine_pool import Engine
from detector.preprocessing import to_host
from stream.alerts import AlertConfig, AlertEvent, AlertTracker, alert_state_off
from stream.logs import stream_log
from stream.outputs.publisher import Publisher
from stream.recorder import Recorder
from stream.scoring import FaceScore, RunningScore, ScoreSnapshot, WindowConfig, most_suspicious
from stream.sources.base import FrameSource, SampledFrame, StreamState

log = logging.getLogger(__name__)


@dataclass
class PipelineStats:
    samples_submitted: int = 0
    samples_scored: int = 0
    samples_dropped: int = 0  # the engine fell behind and discarded them
    samples_failed: int = 0  # inference errors
    faces: int = 0
    alerts: int = 0
    last_score: float | None = None
    last_latency_s: float | None = None
    last_frame_monotonic: float | None = None  # when the source last handed a sampled frame over (health: silence)


def encode_jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


class StreamPipeline:
    """Submits a source's sampled frames to the shared engine and turns results into scores and alerts.

    Submission and result handling are two tasks so a stream keeps several
    samples in flight (the engine batches them) while results are still
    consumed in order.
    """

    def __init__(
        self,
        name: str,
        source: FrameSource,
        engine: Engine,
        publisher: Publisher,
        window: WindowConfig,
        alerts: AlertConfig,
        strategy: Strategy = confident_strategy,
        recorder: Recorder | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self.engine = engine
        self.publisher = publisher
        self.recorder = recorder  # the dashboard's memory: score history, alert snapshots, timeline
        self.snapshots = alerts.snapshot
        self.running = RunningScore(window.seconds, window.max_scores, strategy)
        self._log = stream_log(log, name)
        self.alerts = AlertTracker(name, alerts.alert_threshold, alerts.clear_threshold, alerts.min_samples)
        self.stats = PipelineStats()
        self.latencies: list[float] = []  # recent latencies (bounded), for metrics and benchmarks
        self.last_snapshot: ScoreSnapshot | None = None
        self.inference_error: str | None = None
        self._alerts_closed_at = float("-inf")  # monotonic: samples decoded before it belong to a lost feed
        self._results: asyncio.Queue[tuple[SampledFrame, asyncio.Future[FrameResult]] | None] = asyncio.Queue()

    async def run(self) -> None:
        self.publisher.publish_alert_state(self.name, alert_state_off(time.time()))  # a fresh stream has no episode open
        consumer = asyncio.create_task(self._consume(), name=f"results-{self.name}")
        try:
            await self._produce()
            await self._results.put(None)
            await consumer
        finally:
            if not consumer.done():
                consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consumer
            self._discard_pending()
            self.close_alert("stream ended")

    def _discard_pending(self) -> None:
        """Cancel samples still in flight when the pipeline stops (the engine then skips them)."""
        while not self._results.empty():
            item = self._results.get_nowait()
            if item is not None:
                future = item[1]
                if future.done():
                    future.exception()  # retrieved: no 'never retrieved' noise
                else:
                    future.cancel()

    async def _produce(self) -> None:
        while (frame := await self.source.next_frame()) is not None:
            self.stats.last_frame_monotonic = time.monotonic()
            try:
                future = asyncio.wrap_future(self.engine.submit(self.name, frame.image))
            except EngineClosed:
                return
            self.stats.samples_submitted += 1
            await self._results.put((frame, future))

    async def _consume(self) -> None:
        while (item := await self._results.get()) is not None:
            frame, future = item
            try:
                result = await future
            except SampleDropped:
                self.stats.samples_dropped += 1
                continue
            except (EngineError, EngineClosed) as exc:
                self.stats.samples_failed += 1
                self._report_inference_error(str(exc))
                continue
            self._handle(frame, result)

    def _report_inference_error(self, message: str) -> None:
        if self.inference_error != message:
            self.inference_error = message
            self._log.error("stream %s: %s", self.name, message, extra={"event": "inference_error"})
            self.publisher.publish_status(self.name, {"state": StreamState.ERROR, "detail": message, "time": time.time()})

    def _handle(self, frame: SampledFrame, result: FrameResult) -> None:
        if self.inference_error is not None:
            self.inference_error = None
            self.publisher.publish_status(self.name, {"state": StreamState.STREAMING, "detail": "inference recovered", "time": time.time()})
        now_wall = time.time()
        latency = time.monotonic() - frame.arrival_monotonic
        faces = [FaceScore(tuple(float(v) for v in f.box), f.score, f.detection_prob) for f in result.faces]  # type: ignore[misc]
        snapshot = self.running.update(frame.arrival_monotonic, faces)
        self.last_snapshot = snapshot
        self.stats.samples_scored += 1
        self.stats.faces += len(faces)
        self.stats.last_score = snapshot.score
        self.stats.last_latency_s = latency
        self.latencies.append(latency)
        if len(self.latencies) > 1024:
            del self.latencies[:512]
        payload = snapshot.to_payload()
        payload.update(
            {
                "stream": self.name,
                "time": now_wall,
                "frame_time": frame.arrival_wall,
                "frame_pts": round(frame.pts_s, 3),
                "latency_ms": round(latency * 1000, 1),
            }
        )
        self.publisher.publish_score(self.name, payload)
        if self.recorder is not None:
            self.recorder.score(self.name, now_wall, snapshot.score, len(faces))
        # a sample decoded before the feed was lost (still in flight then) never opens a new episode
        event = self.alerts.update(now_wall, snapshot.score) if frame.arrival_monotonic > self._alerts_closed_at else None
        if event is not None:
            self._publish_alert(event)
            if event.kind == "start" and self.recorder is not None:
                self._record_frame(event, frame, result)
            if event.kind == "start" and self.snapshots:
                self._publish_snapshot(result)

    def _publish_alert(self, event: AlertEvent) -> None:
        if event.kind == "start":
            self.stats.alerts += 1
        self._log.warning("stream %s: alert %s %s score %.3f", self.name, event.kind, event.alert_id, event.score, extra={"event": f"alert_{event.kind}"})
        self.publisher.publish_alert(self.name, event.to_payload())
        self.publisher.publish_alert_state(self.name, event.state_payload())
        if self.recorder is not None:
            self.recorder.alert(event)

    def _record_frame(self, event: AlertEvent, frame: SampledFrame, result: FrameResult) -> None:
        """The frame and the most suspicious face's box at an alert's start, for the dashboard."""
        index = most_suspicious([FaceScore((0, 0, 0, 0), f.score) for f in result.faces])
        if index is not None and self.recorder is not None:
            face = result.faces[index]
            self.recorder.alert_frame(self.name, event.alert_id, event.time, face.score, to_host(frame.image), face.box)

    def _publish_snapshot(self, result: FrameResult) -> None:
        index = most_suspicious([FaceScore((0, 0, 0, 0), f.score) for f in result.faces])
        if index is None:
            return
        try:
            self.publisher.publish_snapshot(self.name, encode_jpeg(to_host(result.faces[index].crop)))
        except ValueError as exc:
            self._log.warning("stream %s: snapshot not sent: %s", self.name, exc)

    def close_alert(self, reason: str) -> None:
        """End an open alert episode (stream ended, feed lost, service stopping)."""
        self._alerts_closed_at = time.monotonic()
        score = self.stats.last_score if self.stats.last_score is not None else 0.0
        event = self.alerts.end(time.time(), score, reason)
        if event is not None:
            self._publish_alert(event)
