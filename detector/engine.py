"""One inference engine per device, batching frames across streams, detection and classification pipelined.

Streams ``submit`` sampled frames and get a ``concurrent.futures.Future``. Detection workers
form batches (up to ``max_batch`` frames, waiting at most ``max_wait_ms`` for company, but not
at all once every known stream has a frame waiting), run MTCNN and prepare the classifier's
input; a classifier worker scores the crops. The two stages run in their own threads and, on
a GPU, on their own CUDA streams, so detecting batch k+1 overlaps classifying batch k, and the
only host synchronisation after detection is the copy of the final scores.

Frames are NumPy arrays (CPU decoders) or CUDA tensors (NVDEC). A CUDA frame is cropped,
resized, padded and normalised on the GPU (``detector/gpu_preprocessing.py``) and never
copied to the host; a NumPy frame goes the winner's bit-exact CPU way (parity mode).

When the engine falls behind, a stream with ``max_pending_per_stream`` frames waiting loses
its oldest one (counted) instead of growing a queue. CUDA out of memory splits the batch and
retries the halves; any other failure of a batch is retried frame by frame, so only the
culprit frames fail. Nothing here kills the engine. No asyncio here: the service wraps the futures.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from detector.classifier import Ensemble
from detector.faces import FaceDetector, FrameFaces
from detector.preprocessing import normalize_batch, stack_crops

log = logging.getLogger(__name__)

Image = np.ndarray | torch.Tensor  # RGB uint8 HWC, on the host or on a CUDA device

DETECTION_STREAM_PRIORITY = -(2**16)
"""CUDA: the detection threads' streams come first (torch maps this to the device's highest priority).
A detection batch waits on the GPU several times (the host plans crops from its boxes); at normal
priority each wait queued behind the classifier's long graph replays, which now take the SMs detection leaves."""


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
    crop: Image = field(repr=False, compare=False)  # the margin crop; a view of a CUDA frame stays on the GPU


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
    image: Image
    submitted: float
    future: Future[FrameResult]


@dataclass
class _Detected:
    """A batch between the stages: its faces, and the classifier input already on the device."""

    batch: list[_Pending]
    faces: list[FrameFaces]
    inputs: torch.Tensor
    started: float
    detect_s: float
    ready: torch.cuda.Event | None


@dataclass
class EngineStats:
    batches: int = 0
    frames: int = 0
    faces: int = 0
    failed_batches: int = 0
    oom_splits: int = 0  # batches split in two after CUDA ran out of memory
    dropped: dict[str, int] = field(default_factory=dict)
    last_batch_frames: int = 0
    busy_s: float = 0.0  # detection + classification time (they overlap: this can exceed wall time)
    detect_s: float = 0.0
    classify_s: float = 0.0


BatchHook = Callable[[int, int, float], None]  # (frames, faces, seconds)


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def is_gpu_frame(image: Image) -> bool:
    return isinstance(image, torch.Tensor) and image.device.type == "cuda"


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
        detect_workers: int = 1,
        pipeline_depth: int = 2,
    ) -> None:
        self.detector = detector
        self.ensemble = ensemble
        self.device = ensemble.device
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
        self._stats_lock = threading.Lock()
        self._closed = False
        self._detected: queue.Queue[_Detected | None] = queue.Queue(maxsize=max(pipeline_depth, 1))
        self._detectors = [threading.Thread(target=self._detect_loop, name=f"inference-detect-{i}", daemon=True) for i in range(max(detect_workers, 1))]
        self._classifier = threading.Thread(target=self._classify_loop, name="inference-classify", daemon=True)
        self._detectors_left = len(self._detectors)
        for thread in (*self._detectors, self._classifier):
            thread.start()

    # ---- submission side (any thread) -------------------------------------------------
    def submit(self, stream: str, image: Image) -> Future[FrameResult]:
        future: Future[FrameResult] = Future()
        with self._cond:
            if self._closed:
                raise EngineClosed("inference engine is closed")
            queue_ = self._queues.get(stream)
            if queue_ is None:
                queue_ = self._queues[stream] = deque()
                self._order.append(stream)
            while len(queue_) >= self.max_pending_per_stream:
                old = queue_.popleft()
                self.stats.dropped[stream] = self.stats.dropped.get(stream, 0) + 1
                old.future.set_exception(SampleDropped(f"{stream}: engine behind, oldest pending sample dropped"))
            queue_.append(_Pending(stream, image, time.monotonic(), future))
            self._cond.notify()
        return future

    def queue_depth(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def device_for(self, stream: str) -> torch.device:
        """Where ``stream``'s frames are analysed (a pool of GPUs answers per stream)."""
        return self.device

    def streams(self) -> int:
        """Streams that have submitted and not been forgotten (the multi-GPU placement reads it)."""
        with self._cond:
            return len(self._queues)

    def forget(self, stream: str) -> None:
        """A stream went away: fail its pending samples and drop its queue."""
        with self._cond:
            queue_ = self._queues.pop(stream, None)
            if stream in self._order:
                self._order.remove(stream)
        for item in queue_ or ():
            item.future.set_exception(SampleDropped(f"{stream}: stream removed"))

    def close(self, timeout_s: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in (*self._detectors, self._classifier):
            thread.join(max(deadline - time.monotonic(), 0.0))
        with self._cond:
            leftovers = [item for q in self._queues.values() for item in q]
            self._queues.clear()
        for item in leftovers:
            item.future.set_exception(EngineClosed("inference engine closed before this sample ran"))

    # ---- batching ---------------------------------------------------------------------
    def _pending_count(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _take_batch(self) -> list[_Pending] | None:
        with self._cond:
            while not self._closed and self._pending_count() == 0:
                self._cond.wait()
            if self._closed:
                return None
            deadline = time.monotonic() + self.max_wait_s
            # wait for company, but not for streams that have nothing to send: once every known
            # stream has a frame waiting (one camera alone, say) the batch goes at once
            while self._pending_count() < min(self.max_batch, len(self._queues)) and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[_Pending] = []
            # round robin across streams so a busy stream cannot starve the others
            while len(batch) < self.max_batch and self._pending_count():
                stream = self._order[0]
                self._order.rotate(-1)
                queue_ = self._queues[stream]
                if queue_:
                    batch.append(queue_.popleft())
            return batch

    # ---- stage 1: detection and classifier input ----------------------------------------
    def _cuda_stream(self, priority: int = 0) -> contextlib.AbstractContextManager[Any]:
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.cuda.stream(torch.cuda.Stream(self.device, priority=priority))

    def _detect_loop(self) -> None:
        try:
            with self._cuda_stream(DETECTION_STREAM_PRIORITY), torch.inference_mode():
                while (batch := self._take_batch()) is not None:
                    live = [item for item in batch if item.future.set_running_or_notify_cancel()]
                    if live:
                        for detected in self._detect_safely(live):
                            self._detected.put(detected)
        finally:
            with self._cond:
                self._detectors_left -= 1
                last = self._detectors_left == 0
            if last:
                self._detected.put(None)

    def _detect_safely(self, batch: list[_Pending]) -> Iterator[_Detected]:
        """Detection of ``batch``; on CUDA OOM the halves, on any other error frame by frame."""
        try:
            yield self._detect(batch)
            return
        except Exception as exc:  # noqa: BLE001 - one bad batch must not stop the engine
            error = exc
        yield from self._retry(batch, error, "detection", self._detect_safely)

    def _retry(self, batch: list[_Pending], exc: Exception, stage: str, again: Callable[[list[_Pending]], Iterator[Any]]) -> Iterator[Any]:
        streams = ", ".join(sorted({i.stream for i in batch}))
        if len(batch) > 1:
            if is_out_of_memory(exc):
                with self._stats_lock:
                    self.stats.oom_splits += 1
                log.warning("CUDA out of memory in %s of %d frames (%s); splitting the batch", stage, len(batch), streams)
                self._release_cached_memory()
                half = len(batch) // 2
                yield from again(batch[:half])
                yield from again(batch[half:])
            else:  # one stream's bad frame must not fail the other frames of its batch
                log.warning("%s failed on a batch of %d frames (%s): %s; retrying them one by one", stage, len(batch), streams, exc)
                for item in batch:
                    yield from again([item])
            return
        with self._stats_lock:
            self.stats.failed_batches += 1
        log.error("%s failed on a frame of %s: %s", stage, streams, exc)
        batch[0].future.set_exception(EngineError(f"inference failed: {type(exc).__name__}: {exc}"))

    def _release_cached_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _detect(self, batch: list[_Pending]) -> _Detected:
        started = time.monotonic()
        images = [item.image for item in batch]
        faces = self.detector.detect(images)
        inputs = self._classifier_input(images, faces)
        ready = None
        if self.device.type == "cuda":
            ready = torch.cuda.Event()
            ready.record()
        return _Detected(batch, faces, inputs, started, time.monotonic() - started, ready)

    def _classifier_input(self, images: Sequence[Image], faces: Sequence[FrameFaces]) -> torch.Tensor:
        """Every crop of the batch as one normalised NCHW tensor on the model's device, in frame order.

        CUDA frames are cropped and resized on the GPU; host frames the winner's way on the CPU.
        """
        gpu = [i for i, image in enumerate(images) if is_gpu_frame(image) and len(faces[i])]
        host = [i for i, image in enumerate(images) if not is_gpu_frame(image) and len(faces[i])]
        parts: dict[int, torch.Tensor] = {}
        if gpu:
            from detector.gpu_preprocessing import crops_to_batch

            boxes = torch.as_tensor(np.concatenate([faces[i].boxes for i in gpu]), dtype=torch.int64)
            index = torch.as_tensor(np.repeat(np.arange(len(gpu)), [len(faces[i]) for i in gpu]), dtype=torch.int64)
            batch = crops_to_batch([images[i] for i in gpu], boxes, index, self.input_size, self.ensemble.dtype)
            offset = 0
            for i in gpu:
                parts[i] = batch[offset : offset + len(faces[i])]
                offset += len(faces[i])
        for i in host:
            parts[i] = normalize_batch(stack_crops(faces[i].crops, self.input_size), self.device, self.ensemble.dtype)
        if not parts:
            return torch.zeros((0, 3, self.input_size, self.input_size), dtype=self.ensemble.dtype, device=self.device)
        x = torch.cat([parts[i] for i in sorted(parts)]).to(self.device)
        if self.ensemble.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # ---- stage 2: classification ----------------------------------------------------------
    def _classify_loop(self) -> None:
        with self._cuda_stream(), torch.inference_mode():
            while (detected := self._detected.get()) is not None:
                try:
                    self._classify(detected)
                except Exception as exc:  # noqa: BLE001 - the worker must survive anything
                    log.exception("classifier stage failed")
                    for item in detected.batch:
                        if not item.future.done():
                            item.future.set_exception(EngineError(f"inference failed: {type(exc).__name__}: {exc}"))

    def _predict(self, x: torch.Tensor) -> np.ndarray:
        """Mean probability per crop over the ensemble, in chunks of ``classify_batch``; CUDA OOM halves the chunk."""
        out = []
        for start in range(0, x.shape[0], self.classify_batch):
            out.append(self._predict_chunk(x[start : start + self.classify_batch]))
        return np.concatenate(out) if out else np.zeros((0,), dtype=np.float32)

    def _predict_chunk(self, x: torch.Tensor) -> np.ndarray:
        try:
            return self.ensemble.predict(x).mean(axis=0)
        except Exception as exc:
            if not is_out_of_memory(exc) or x.shape[0] <= 1:
                raise
        with self._stats_lock:
            self.stats.oom_splits += 1
        log.warning("CUDA out of memory classifying %d faces; splitting", x.shape[0])
        self._release_cached_memory()
        half = x.shape[0] // 2
        return np.concatenate([self._predict_chunk(x[:half]), self._predict_chunk(x[half:])])

    def _classify(self, detected: _Detected) -> None:
        started = time.monotonic()
        if detected.ready is not None:
            torch.cuda.current_stream(self.device).wait_event(detected.ready)
        try:
            scores = self._predict(detected.inputs)
        except Exception as exc:  # noqa: BLE001 - retried per frame below, so only culprits fail
            if len(detected.batch) == 1:
                with self._stats_lock:
                    self.stats.failed_batches += 1
                log.error("classification failed on a frame of %s: %s", detected.batch[0].stream, exc)
                detected.batch[0].future.set_exception(EngineError(f"inference failed: {type(exc).__name__}: {exc}"))
                return
            log.warning("classification failed on a batch of %d frames: %s; retrying them one by one", len(detected.batch), exc)
            offset = 0
            for item, faces in zip(detected.batch, detected.faces, strict=True):
                part = detected.inputs[offset : offset + len(faces)]
                offset += len(faces)
                self._classify(_Detected([item], [faces], part, started, 0.0, None))
            return
        finished = time.monotonic()
        cursor = 0
        for item, frame in zip(detected.batch, detected.faces, strict=True):
            results = []
            for box, prob, crop in zip(frame.boxes, frame.probs, frame.crops, strict=True):
                x1, y1, x2, y2 = (int(v) for v in box)
                results.append(FaceResult((x1, y1, x2, y2), float(prob), float(scores[cursor]), crop))
                cursor += 1
            item.future.set_result(FrameResult(results, item.submitted, finished, len(detected.batch)))
        faces = int(detected.inputs.shape[0])
        with self._stats_lock:
            self.stats.batches += 1
            self.stats.frames += len(detected.batch)
            self.stats.faces += faces
            self.stats.last_batch_frames = len(detected.batch)
            self.stats.detect_s += detected.detect_s
            self.stats.classify_s += finished - started
            self.stats.busy_s += detected.detect_s + finished - started
        if self.on_batch is not None:
            self.on_batch(len(detected.batch), faces, finished - detected.started)
