"""One inference worker for the whole process, batching frames across streams.

Streams ``submit`` sampled frames and get a ``concurrent.futures.Future``; a
single worker thread forms batches (up to ``max_batch`` frames, waiting at most
``max_wait_ms`` for more after the first), runs MTCNN on the batch and then the
classifier on every crop of the batch.  When the engine falls behind, a stream
with ``max_pending_per_stream`` frames waiting loses its oldest one (counted)
instead of growing a queue.  No asyncio here: the service wraps the futures.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from detector.classifier import Ensemble
from detector.faces import FaceDetector
from detector.pipeline import faces_to_scores

log = logging.getLogger(__name__)


class SampleDropped(Exception):
    """The engine fell behind and this stream's oldest pending sample was discarded."""


class EngineError(RuntimeError):
    """Inference failed for a frame (a failing batch is retried frame by frame, so only the culprits get this)."""


class EngineClosed(RuntimeError):
    """The engine is shut down and takes no more work."""


@dataclass(frozen=True)
class FaceResult:
    box: tuple[int, int, int, int]
    detection_prob: float
    score: float  # mean of the ensemble's probabilities for this face
    crop: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class FrameResult:
    faces: list[FaceResult]
    submitted: float  # time.monotonic() at submit
    finished: float
    batch_frames: int

    @property
    def latency_s(self) -> float:
        return self.finished - self.submitted


@dataclass
class _Pending:
    stream: str
    image: np.ndarray
    submitted: float
    future: Future[FrameResult]


@dataclass
class EngineStats:
    batches: int = 0
    frames: int = 0
    faces: int = 0
    failed_batches: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    last_batch_frames: int = 0
    busy_s: float = 0.0


BatchHook = Callable[[int, int, float], None]  # (frames, faces, seconds)


class InferenceEngine:
    def __init__(
        self,
        detector: FaceDetector,
        ensemble: Ensemble,
        input_size: int = 380,
        max_batch: int = 32,
        max_wait_ms: float = 20.0,
        max_pending_per_stream: int = 4,
        classify_batch: int = 64,
        on_batch: BatchHook | None = None,
    ) -> None:
        self.detector = detector
        self.ensemble = ensemble
        self.input_size = input_size
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_pending_per_stream = max_pending_per_stream
        self.classify_batch = classify_batch
        self.on_batch = on_batch
        self.stats = EngineStats()
        self._queues: dict[str, deque[_Pending]] = {}
        self._order: deque[str] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="inference-engine", daemon=True)
        self._thread.start()

    # ---- submission side (any thread) -------------------------------------------------
    def submit(self, stream: str, image: np.ndarray) -> Future[FrameResult]:
        future: Future[FrameResult] = Future()
        with self._cond:
            if self._closed:
                raise EngineClosed("inference engine is closed")
            queue = self._queues.get(stream)
            if queue is None:
                queue = self._queues[stream] = deque()
                self._order.append(stream)
            while len(queue) >= self.max_pending_per_stream:
                old = queue.popleft()
                self.stats.dropped[stream] = self.stats.dropped.get(stream, 0) + 1
                old.future.set_exception(SampleDropped(f"{stream}: engine behind, oldest pending sample dropped"))
            queue.append(_Pending(stream, image, time.monotonic(), future))
            self._cond.notify()
        return future

    def queue_depth(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def forget(self, stream: str) -> None:
        """A stream went away: fail its pending samples and drop its queue."""
        with self._cond:
            queue = self._queues.pop(stream, None)
            if stream in self._order:
                self._order.remove(stream)
        for item in queue or ():
            item.future.set_exception(SampleDropped(f"{stream}: stream removed"))

    def close(self, timeout_s: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        with self._cond:
            leftovers = [item for q in self._queues.values() for item in q]
            self._queues.clear()
        for item in leftovers:
            item.future.set_exception(EngineClosed("inference engine closed before this sample ran"))

    # ---- worker side --------------------------------------------------------------------
    def _pending_count(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _take_batch(self) -> list[_Pending] | None:
        with self._cond:
            while not self._closed and self._pending_count() == 0:
                self._cond.wait()
            if self._closed:
                return None
            deadline = time.monotonic() + self.max_wait_s
            while self._pending_count() < self.max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[_Pending] = []
            # round robin across streams so a busy stream cannot starve the others
            while len(batch) < self.max_batch and self._pending_count():
                stream = self._order[0]
                self._order.rotate(-1)
                queue = self._queues[stream]
                if queue:
                    batch.append(queue.popleft())
            return batch

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            live = [item for item in batch if item.future.set_running_or_notify_cancel()]
            if live:
                self._process(live)

    def _process(self, batch: list[_Pending]) -> None:
        started = time.monotonic()
        try:
            detections = self.detector.detect([item.image for item in batch])
            crops = [crop for frame in detections for crop in frame.crops]
            scores = faces_to_scores(crops, self.ensemble, self.input_size, self.classify_batch).mean(axis=0)
        except Exception as exc:  # noqa: BLE001 - one bad batch must not stop the engine
            if len(batch) > 1:  # one stream's bad frame must not fail the other frames of its batch
                log.warning("inference failed on a batch of %d frames (%s): %s; retrying them one by one", len(batch), ", ".join(sorted({i.stream for i in batch})), exc)
                for item in batch:
                    self._process([item])
                return
            self.stats.failed_batches += 1
            log.error("inference failed on a batch of %d frames (%s): %s", len(batch), ", ".join(sorted({i.stream for i in batch})), exc)
            for item in batch:
                item.future.set_exception(EngineError(f"inference failed: {type(exc).__name__}: {exc}"))
            return
        finished = time.monotonic()
        cursor = 0
        for item, frame in zip(batch, detections, strict=True):
            faces = []
            for box, prob, crop in zip(frame.boxes, frame.probs, frame.crops, strict=True):
                x1, y1, x2, y2 = (int(v) for v in box)
                faces.append(FaceResult((x1, y1, x2, y2), float(prob), float(scores[cursor]), crop))
                cursor += 1
            item.future.set_result(FrameResult(faces, item.submitted, finished, len(batch)))
        self.stats.batches += 1
        self.stats.frames += len(batch)
        self.stats.faces += len(crops)
        self.stats.last_batch_frames = len(batch)
        self.stats.busy_s += finished - started
        if self.on_batch is not None:
            self.on_batch(len(batch), len(crops), finished - started)
