"""Several GPUs: one inference engine per GPU, each stream placed on one of them by load.

A stream keeps its engine for its life (its NVDEC session lives on that GPU too, so frames
never cross between GPUs); a new stream goes where the fewest streams are, ties broken by the
recently busier engine losing. The pool looks like one engine to the service.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import torch

from detector.engine import BatchHook, EngineStats, FrameResult, Image, InferenceEngine


class EnginePool:
    def __init__(self, engines: list[InferenceEngine]) -> None:
        if not engines:
            raise ValueError("an engine pool needs at least one engine")
        self.engines = engines
        self._placed: dict[str, InferenceEngine] = {}
        self._lock = threading.Lock()
        self._busy_seen = [(time.monotonic(), 0.0) for _ in engines]
        self._busy_rate = [0.0 for _ in engines]

    # what the service and the metrics read of an engine
    @property
    def ensemble(self):  # noqa: ANN201 - the first engine's: every engine runs the same models
        return self.engines[0].ensemble

    @property
    def input_size(self) -> int:
        return self.engines[0].input_size

    @property
    def device(self) -> torch.device:
        return self.engines[0].device

    @property
    def on_batch(self) -> BatchHook | None:
        return self.engines[0].on_batch

    @on_batch.setter
    def on_batch(self, hook: BatchHook | None) -> None:
        for engine in self.engines:
            engine.on_batch = hook

    @property
    def stats(self) -> EngineStats:
        """The engines' counters added up."""
        total = EngineStats()
        for engine in self.engines:
            s = engine.stats
            total.batches += s.batches
            total.frames += s.frames
            total.faces += s.faces
            total.failed_batches += s.failed_batches
            total.oom_splits += s.oom_splits
            total.busy_s += s.busy_s
            total.detect_s += s.detect_s
            total.classify_s += s.classify_s
            total.last_batch_frames = max(total.last_batch_frames, s.last_batch_frames)
            for name, n in s.dropped.items():
                total.dropped[name] = total.dropped.get(name, 0) + n
        return total

    def _refresh_busy(self) -> None:
        now = time.monotonic()
        for i, engine in enumerate(self.engines):
            seen_at, busy = self._busy_seen[i]
            if now - seen_at >= 1.0:
                self._busy_rate[i] = (engine.stats.busy_s - busy) / (now - seen_at)
                self._busy_seen[i] = (now, engine.stats.busy_s)

    def place(self, stream: str) -> InferenceEngine:
        """The engine serving ``stream``, chosen at its first use."""
        with self._lock:
            engine = self._placed.get(stream)
            if engine is None:
                self._refresh_busy()
                counts = {id(e): 0 for e in self.engines}
                for placed in self._placed.values():
                    counts[id(placed)] += 1
                best = min(range(len(self.engines)), key=lambda i: (counts[id(self.engines[i])], self._busy_rate[i], i))
                engine = self._placed[stream] = self.engines[best]
            return engine

    def device_for(self, stream: str) -> torch.device:
        return self.place(stream).device

    def placement(self) -> dict[str, str]:
        with self._lock:
            return {name: str(engine.device) for name, engine in self._placed.items()}

    def submit(self, stream: str, image: Image) -> Future[FrameResult]:
        return self.place(stream).submit(stream, image)

    def queue_depth(self) -> int:
        return sum(e.queue_depth() for e in self.engines)

    def forget(self, stream: str) -> None:
        with self._lock:
            engine = self._placed.pop(stream, None)
        if engine is not None:
            engine.forget(stream)

    def close(self, timeout_s: float = 10.0) -> None:
        for engine in self.engines:
            engine.close(timeout_s)


Engine = InferenceEngine | EnginePool  # what the service is given: one engine, or one per GPU
